"""Image data sets stored as folders of image files: Tiny ImageNet and ImageNet."""

from __future__ import annotations

import os
from typing import Any
from typing import NamedTuple

import numpy as np

from keras_fmicl.data.files import check_path
from keras_fmicl.data.files import text_lines
from keras_fmicl.utils.errors import DatasetNotAvailableError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
"""The file endings (any case) that the folder data sets read as images."""

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"


class ImageFiles(NamedTuple):
    """The image files of a folder data set split, with their labels.

    Args:
        paths: the image files, in a fixed order (classes in order, files
            sorted by name within a class; Tiny ImageNet's `val` in the order
            of `val_annotations.txt`).
        labels: `int32` array `(N,)`, the class index of each file.
        class_names: the name of each class index.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]


def _data_dir(name: str, data_dir: Any, layout: str) -> str:
    if data_dir is None:
        raise DatasetNotAvailableError(
            f"{name!r} is read from folders of images and has no default location: pass "
            f"`data_dir`, the folder holding {layout}. Received: data_dir=None"
        )
    data_dir = check_path(data_dir, "data_dir")
    if not os.path.isdir(data_dir):
        raise DatasetNotAvailableError(
            f"`data_dir` must be an existing folder holding {layout}. "
            f"Received: data_dir={data_dir!r} (no such folder)"
        )
    return data_dir


def _image_names(folder: str) -> list[str]:
    """The image files of `folder` (by ending, hidden files left out), sorted."""
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _class_images(folder: str, what: str, data_dir: str) -> list[str]:
    """The paths of the images in a class folder; a `ValueError` when there are none."""
    names = _image_names(folder) if os.path.isdir(folder) else []
    if not names:
        found = "is empty" if os.path.isdir(folder) else "is missing"
        raise ValueError(
            f"The {what} {folder!r} {found}: every class needs at least one "
            f"{'/'.join(IMAGE_EXTENSIONS)} image. Received: data_dir={data_dir!r}"
        )
    return [os.path.join(folder, name) for name in names]


def _files(paths: list[str], labels: list[int], class_names: tuple[str, ...]) -> ImageFiles:
    return ImageFiles(tuple(paths), np.asarray(labels, np.int32).reshape(-1), tuple(class_names))


# ---------------------------------------------------------------------------
# Tiny ImageNet
# ---------------------------------------------------------------------------

def tiny_imagenet_root(data_dir: Any) -> str:
    """The `tiny-imagenet-200` folder: `data_dir` itself or its child of that name."""
    layout = f"the unpacked official archive {TINY_IMAGENET_FOLDER}.zip"
    data_dir = _data_dir("tiny_imagenet", data_dir, layout)
    for root in (data_dir, os.path.join(data_dir, TINY_IMAGENET_FOLDER)):
        if os.path.isfile(os.path.join(root, "wnids.txt")):
            return root
    raise DatasetNotAvailableError(
        f"`data_dir` has no {TINY_IMAGENET_FOLDER}/wnids.txt: expected {layout} (wnids.txt, "
        f"words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
        f"val/val_annotations.txt), either the folder {TINY_IMAGENET_FOLDER} or its "
        f"parent. Received: data_dir={data_dir!r}"
    )


def _tiny_imagenet_classes(root: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`(wnids, class names)`: names from `words.txt` when present, else the wnids."""
    wnids = tuple(line.strip() for line in text_lines(os.path.join(root, "wnids.txt")) if line.strip())
    if not wnids or len(set(wnids)) != len(wnids):
        problem = "lists no class" if not wnids else "lists a class twice"
        raise ValueError(
            f"{os.path.join(root, 'wnids.txt')!r} {problem}: it must hold one WordNet id "
            f"per line, each once. Received: {len(wnids)} lines"
        )
    words_path = os.path.join(root, "words.txt")
    words = {}
    if os.path.isfile(words_path):
        for line in text_lines(words_path):
            wnid, _, text = line.partition("\t")
            if text.strip():
                words[wnid.strip()] = text.strip()
    return wnids, tuple(words.get(wnid, wnid) for wnid in wnids)


def _tiny_imagenet_val(root: str, wnids: tuple[str, ...], data_dir: str) -> tuple[list, list]:
    annotations = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise ValueError(
            f"`data_dir` has no {TINY_IMAGENET_FOLDER}/val/val_annotations.txt, the labels of "
            f"the val split (lines 'file<TAB>wnid<TAB>box'). Received: data_dir={data_dir!r}"
        )
    index = {wnid: label for label, wnid in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(text_lines(annotations), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise ValueError(
                f"Line {number} of {annotations!r} must name an image and one of the "
                f"wnids of wnids.txt, separated by a tab. Received: {line[:80]!r}"
            )
        path = os.path.join(root, "val", "images", fields[0].strip())
        if not os.path.isfile(path):
            raise ValueError(
                f"Line {number} of {annotations!r} names the image {path!r}, which does "
                f"not exist. Received: data_dir={data_dir!r}"
            )
        paths.append(path)
        labels.append(index[fields[1].strip()])
    if not paths:
        raise ValueError(f"{annotations!r} lists no image. Received: data_dir={data_dir!r}")
    return paths, labels


def tiny_imagenet_files(split: str, data_dir: Any) -> ImageFiles:
    """The files of a Tiny ImageNet split, from the official archive's layout.

    `train/<wnid>/images/*.JPEG` (class `i` is line `i` of `wnids.txt`), or
    `val/images/*.JPEG` labelled by `val/val_annotations.txt`
    (`file<TAB>wnid<TAB>box`). Class names come from `words.txt` when it is
    there (its whole entry, e.g. `'goldfish, Carassius auratus'`), else the
    wnids.

    Args:
        split: `"train"` or `"val"` (the split a paper's "test" accuracy uses).
        data_dir: the folder `tiny-imagenet-200` or its parent.

    Returns:
        An `ImageFiles`.

    Raises:
        DatasetNotAvailableError: no `wnids.txt` under `data_dir`.
        ValueError: the folders are incomplete (an empty or missing class
            folder, no `val_annotations.txt`, an annotation naming an unknown
            wnid or a missing file).
    """
    root = tiny_imagenet_root(data_dir)
    wnids, class_names = _tiny_imagenet_classes(root)
    if split == "val":
        paths, labels = _tiny_imagenet_val(root, wnids, check_path(data_dir, "data_dir"))
        return _files(paths, labels, class_names)
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = os.path.join(root, "train", wnid, "images")
        images = _class_images(folder, f"class folder of {wnid!r}", os.fspath(data_dir))
        paths += images
        labels += [label] * len(images)
    return _files(paths, labels, class_names)


# ---------------------------------------------------------------------------
# ImageNet (class folders)
# ---------------------------------------------------------------------------

IMAGENET_LAYOUT = "train/<class>/*.JPEG and val/<class>/*.JPEG"


def _class_folders(folder: str) -> list[str]:
    return sorted(
        entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")
    )


def has_imagenet_folders(data_dir: Any) -> bool:
    """Whether `data_dir` holds a `train` or a `val` folder of class folders."""
    if data_dir is None:
        return False
    data_dir = check_path(data_dir, "data_dir")
    return any(os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "val"))


def imagenet_files(split: str, data_dir: Any) -> ImageFiles:
    """The files of an ImageNet split stored as class folders.

    `data_dir/<split>/<class>/*` (`.JPEG`, `.jpg`, `.png`, any case); the
    classes are the sorted folder names (the wnids `n01440764`, ...) of
    `train/`, which `val/` must repeat exactly (torchvision's `ImageFolder`
    convention, so labels agree between splits). Any number of classes is
    accepted (ImageNet-100 and other subsets).

    Args:
        split: `"train"` or `"val"`.
        data_dir: the folder holding `train/` and `val/`.

    Returns:
        An `ImageFiles`.

    Raises:
        DatasetNotAvailableError: `data_dir/<split>` does not exist.
        ValueError: an empty class folder, or `val/` and `train/` name
            different classes.
    """
    data_dir = _data_dir("imagenet", data_dir, IMAGENET_LAYOUT)
    folder = os.path.join(data_dir, split)
    if not os.path.isdir(folder):
        raise DatasetNotAvailableError(
            f"`data_dir` has no {split}/ folder: expected the ImageNet class folders "
            f"{IMAGENET_LAYOUT}. Received: data_dir={data_dir!r}"
        )
    classes = _class_folders(folder)
    train = os.path.join(data_dir, "train")
    if split != "train" and os.path.isdir(train) and _class_folders(train) != classes:
        differ = sorted(set(classes) ^ set(_class_folders(train)))
        raise ValueError(
            f"The class folders of {split}/ and train/ must be the same, so that labels "
            f"agree; {len(differ)} are in only one of them (the first: {differ[0]!r}). "
            f"Received: data_dir={data_dir!r}"
        )
    if not classes:
        raise ValueError(
            f"`data_dir`'s {split}/ folder has no class folders: expected "
            f"{IMAGENET_LAYOUT}. Received: data_dir={data_dir!r}"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        images = _class_images(os.path.join(folder, name), "class folder", data_dir)
        paths += images
        labels += [label] * len(images)
    return _files(paths, labels, tuple(classes))
