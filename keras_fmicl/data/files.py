"""Reading files: IDX arrays and text lines, with path checks."""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np

from keras_fmicl.utils.errors import shorten

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------
# IDX files (MNIST / Fashion-MNIST format)
# ---------------------------------------------------------------------------

def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not.

    An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndim>`, `ndim`
    big-endian `uint32` dimensions, then the values in row-major order.
    Gzip compression is recognised from the file's first bytes.

    Args:
        path: the file.
        expected_ndim: when given, the number of dimensions the file must
            have (3 for MNIST images, 1 for labels).

    Returns:
        The array, in the file's element type (native byte order).

    Raises:
        ValueError: the file is not a well-formed IDX file (bad magic
            number, unknown type code, wrong `ndim`, truncated or oversized
            data, broken gzip stream).

    Example:

    >>> images = read_idx("train-images-idx3-ubyte.gz", expected_ndim=3)
    >>> images.shape, images.dtype
    ((60000, 28, 28), dtype('uint8'))
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = file.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable IDX file: {shorten(err)}") from err

    def invalid(reason: str) -> ValueError:
        return ValueError(f"{path} is not a valid IDX file: {reason}")

    if len(raw) < 4:
        raise invalid(f"{len(raw)} bytes, shorter than the 4-byte magic number")
    magic = raw[:4]
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise invalid(
            f"magic number 0x{magic.hex()} is not 0x0000<type><ndim> with type "
            f"in {{{', '.join(f'0x{code:02x}' for code in _IDX_DTYPES)}}}"
        )
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise invalid(
            f"magic number 0x{magic.hex()} says {ndim} dimensions, "
            f"expected {expected_ndim}"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise invalid(f"truncated header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected_size:
        raise invalid(
            f"{len(raw) - header_size} data bytes, expected "
            f"{expected_size - header_size} for shape {shape} of {dtype.name}"
        )
    values = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def find_file(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def check_path(path: Any, argument: str = "path") -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"`{argument}` must be a path (str or os.PathLike). Received: "
            f"{argument}={path!r:.80}"
        )
    return os.fspath(path)


def text_lines(path: str, argument: str = "path") -> list[str]:
    """The lines of the UTF-8 text file `path`, without line ends.

    A missing file, a directory, a binary file (a NUL byte) or bytes that
    are not UTF-8 raise a `ValueError` naming the file and the line.
    """
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "no such file"
        raise ValueError(
            f"`{argument}` must be an existing UTF-8 text file. Received: "
            f"{argument}={path!r} ({what})"
        )
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.splitlines()
    for number, line in enumerate(lines, start=1):
        if b"\x00" in line:
            raise ValueError(
                f"`{argument}` must be a UTF-8 text file; {path!r} holds a NUL "
                f"byte on line {number}: it looks binary. Received: {argument}={path!r}"
            )
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"`{argument}` must be a UTF-8 text file; line {number} of "
                f"{path!r} is not valid UTF-8 ({err.reason} at byte {err.start}). "
                f"Received: {argument}={path!r}"
            ) from None
    return raw.decode("utf-8").splitlines()
