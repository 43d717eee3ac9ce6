"""Loaders (IDX parser, Fashion-MNIST, tfds mock data, digits) and tf.data pipelines."""

import contextlib
import gzip
import os
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_fmicl import data
from keras_fmicl.data import images as image_sets
from keras_fmicl.data import sources
from tests.helpers import backend_independent

tf = pytest.importorskip("tensorflow")

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


# ---------------------------------------------------------------------------
# IDX files written by hand
# ---------------------------------------------------------------------------


def idx_bytes(array, dtype):
    """The IDX encoding of `array` (independent of the parser under test)."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(dtype).tobytes()


def write(path, payload, compress):
    with open(path, "wb") as file:
        file.write(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    for dtype in sorted(IDX_CODES):
        for shape in [(5,), (3, 2, 4)]:
            expected = rng.integers(-100, 100, size=shape)
            if dtype == "u1":
                expected = np.abs(expected)
            if dtype.startswith(">f"):
                expected = expected + 0.25
            expected = expected.astype(dtype)
            path = write(tmp_path / "x.idx", idx_bytes(expected, dtype), compress)
            got = data.read_idx(path, expected_ndim=len(shape))
            assert got.shape == shape, (dtype, shape)
            assert got.dtype == np.dtype(dtype).newbyteorder("="), (dtype, shape)
            np.testing.assert_array_equal(got, expected, err_msg=f"{dtype} {shape}")


def test_read_idx_three_dimensional_uint8_layout(tmp_path):
    # 0x00000803, dims 2x2x3, then values 0..11 in row-major order
    payload = b"\x00\x00\x08\x03" + struct.pack(">III", 2, 2, 3) + bytes(range(12))
    got = data.read_idx(write(tmp_path / "images.gz", payload, True))
    np.testing.assert_array_equal(got, np.arange(12, dtype=np.uint8).reshape(2, 2, 3))


def corrupted_payloads():
    good = idx_bytes(np.arange(6).reshape(2, 3), "u1")
    return {
        "nonzero first byte": b"\x01" + good[1:],
        "nonzero second byte": b"\x00\x05" + good[2:],
        "unknown type code": good[:2] + b"\x0a" + good[3:],
        "wrong ndim": good[:3] + b"\x03" + good[4:],
        "truncated data": good[:-1],
        "trailing data": good + b"\x00",
        "truncated header": good[:6],
        "empty": b"",
    }


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_rejects_corrupted_files(tmp_path, compress):
    for case, payload in corrupted_payloads().items():
        path = write(tmp_path / "bad.gz", payload, compress)
        with pytest.raises(ValueError, match="not a valid IDX file"):
            data.read_idx(path, expected_ndim=2)
            pytest.fail(f"accepted a file with {case}")


def test_read_idx_rejects_a_broken_gzip_stream(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(600).reshape(20, 30), ">i4"))
    path = tmp_path / "broken.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="not a readable IDX file"):
        data.read_idx(path)


def write_fashion_dir(directory, num_train=7, num_test=3):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, size=(count, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images_name, labels_name = FASHION_FILES[split]
        write(directory / images_name, idx_bytes(images, "u1"), True)
        write(directory / labels_name, idx_bytes(labels, "u1"), True)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch, split):
    expected_images, expected_labels = write_fashion_dir(tmp_path)[split]

    def no_download():
        raise AssertionError("must not download when the IDX files are there")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", no_download)
    for images, labels in (
        data.fashion_mnist(split, data_dir=tmp_path),
        data.load("fashion_mnist", split, data_dir=str(tmp_path)),
    ):
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, expected_images[..., None])
        np.testing.assert_array_equal(labels, expected_labels)
    # the default directory is looked up at call time
    monkeypatch.setattr(image_sets, "FASHION_MNIST_DIR", str(tmp_path))
    np.testing.assert_array_equal(data.load("fashion-mnist", split)[1], expected_labels)


def test_fashion_mnist_corrupted_files_raise(tmp_path):
    write_fashion_dir(tmp_path)
    images_name = FASHION_FILES["test"][0]
    payload = gzip.decompress((tmp_path / images_name).read_bytes())
    write(tmp_path / images_name, b"\x00\x00\x08\x01" + payload[4:], True)
    with pytest.raises(ValueError, match="expected 3"):
        data.fashion_mnist("test", data_dir=tmp_path)


def test_fashion_mnist_mismatched_counts_raise(tmp_path):
    write_fashion_dir(tmp_path)
    labels_name = FASHION_FILES["train"][1]
    write(tmp_path / labels_name, idx_bytes(np.zeros(5), "u1"), True)
    with pytest.raises(ValueError, match="7 images .* 5 labels"):
        data.fashion_mnist("train", data_dir=tmp_path)


@pytest.mark.parametrize("bad_label", [10, 200, 255])
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_labels_outside_0_to_9_raise(tmp_path, split, bad_label):
    """Issue 13 item 6: a label byte of 200 used to load silently."""
    labels = write_fashion_dir(tmp_path)[split][1].copy()
    labels[1] = bad_label
    labels_name = FASHION_FILES[split][1]
    write(tmp_path / labels_name, idx_bytes(labels, "u1"), True)
    with pytest.raises(ValueError) as info:
        data.load("fashion_mnist", split, data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / labels_name) in message
    assert "0..9" in message and f"is {bad_label}" in message and "index 1" in message
    # the other split, with valid labels, still loads
    other = "test" if split == "train" else "train"
    assert data.load("fashion_mnist", other, data_dir=tmp_path)[1].max() <= 9


def test_fashion_mnist_without_files_falls_back_to_keras(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    train = (rng.integers(0, 256, (4, 28, 28)).astype(np.uint8), np.arange(4, dtype=np.uint8))
    test = (rng.integers(0, 256, (2, 28, 28)).astype(np.uint8), np.array([9, 3], np.uint8))
    monkeypatch.setattr(image_sets, "FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: (train, test))
    for split, (expected_images, expected_labels) in (("train", train), ("test", test)):
        images, labels = data.fashion_mnist(split)
        assert images.shape == (len(expected_labels), 28, 28, 1)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images[..., 0], expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_fashion_mnist_unavailable_gives_one_clear_sentence(tmp_path, monkeypatch):
    cause = Exception(
        "URL fetch failure on https://storage.googleapis.com/x.gz: None -- "
        "[Errno -2] Name or service not known\n  a long\n  traceback"
    )

    def failing_download():
        raise cause

    monkeypatch.setattr(image_sets, "FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", failing_download)
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load("fashion_mnist", "train")
    message = str(info.value)
    assert "\n" not in message
    assert "dataset-fashion-mnist" in message and "network" in message
    assert info.value.__cause__ is cause
    assert isinstance(info.value, RuntimeError)


# ---------------------------------------------------------------------------
# The real Fashion-MNIST files of the Debian package
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debian_fashion_mnist():
    paths = [os.path.join(data.FASHION_MNIST_DIR, f) for pair in FASHION_FILES.values() for f in pair]
    if not all(os.path.isfile(p) for p in paths):
        pytest.skip(f"Debian package dataset-fashion-mnist absent ({data.FASHION_MNIST_DIR})")
    return {split: data.load("fashion_mnist", split) for split in ("train", "test")}


@pytest.mark.parametrize("split, count", [("train", 60000), ("test", 10000)])
def test_debian_fashion_mnist(debian_fashion_mnist, split, count):
    images, labels = debian_fashion_mnist[split]
    assert images.shape == (count, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.int64
    # Fashion-MNIST is balanced: count / 10 images of each of the 10 classes
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [count // 10] * 10)
    assert images.min() == 0 and images.max() == 255
    assert len(np.unique(images[:100].reshape(100, -1), axis=0)) == 100


# ---------------------------------------------------------------------------
# tensorflow-datasets (mock data: random values, the dataset's real shapes)
# ---------------------------------------------------------------------------

TFDS_CASES = [
    ("cifar10", ("train", "test"), (32, 32, 3), 10),
    ("cifar100", ("train", "test"), (32, 32, 3), 100),
    ("stl10", ("train", "test", "unlabelled"), (96, 96, 3), 10),
]


@backend_independent  # numpy only
def test_one_registry_of_data_sets_and_its_derived_tables():
    assert set(data.DATASETS) == {
        "cifar10", "cifar100", "stl10", "fashion_mnist", "digits", "synthetic_cifar", "tiny_imagenet", "imagenet"}
    for name, dataset in data.DATASETS.items():
        assert isinstance(dataset, data.Dataset)
        assert callable(dataset.loader) or name == "imagenet"  # too large for memory: streams only
        assert (dataset.files is not None) == (name in ("tiny_imagenet", "imagenet"))
        assert data.SPLITS[name] == dataset.splits and data.NUM_CLASSES[name] == dataset.num_classes
        if dataset.class_names is not None:
            assert data.CLASS_NAMES[name] == dataset.class_names
            assert len(dataset.class_names) == dataset.num_classes
    assert set(data.CLASS_NAMES) == {"cifar10", "stl10", "fashion_mnist", "digits"}
    assert data.CLASS_NAMES["fashion_mnist"][9] == "Ankle boot" and data.CLASS_NAMES["stl10"][2] == "car"
    # one name normalisation: case, dashes and spaces
    images, _ = data.load(" Digits ", "test")
    assert images.shape == (360, 8, 8, 1)
    with pytest.raises(ValueError, match="Unknown `name`"):
        data.load("mnist", "test")


@pytest.mark.parametrize("name, splits, shape, num_classes", TFDS_CASES)
def test_tfds_loaders_with_mock_data(name, splits, shape, num_classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    assert data.SPLITS[name] == splits
    assert data.NUM_CLASSES[name] == num_classes
    with tfds.testing.mock_data(num_examples=6), no_download_probe():
        for split in splits:
            for images, labels in (data.load(name, split), getattr(data, name)(split)):
                assert images.shape == (6, *shape) and images.dtype == np.uint8, split
                assert labels.shape == (6,) and labels.dtype == np.int64, split
                # real "unlabelled" STL-10 labels are -1; mock ones are classes
                assert labels.min() >= -1 and labels.max() < num_classes, split


def test_tfds_failure_gives_one_clear_sentence(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    cause = OSError("Failed to download https://www.cs.toronto.edu/...\n" + "  frame\n" * 50)

    def failing_load(*args, **kwargs):
        raise cause

    monkeypatch.setattr(tfds, "load", failing_load)
    monkeypatch.setattr(sources, "DOWNLOAD_PROBE_TIMEOUT", None)  # straight to tfds.load
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load("cifar100", "test", data_dir="/nowhere")
    message = str(info.value)
    assert "\n" not in message and len(message) < 500
    assert "'cifar100'" in message and "network" in message and "data_dir" in message
    assert info.value.__cause__ is cause


def test_missing_tfds_gives_one_clear_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(data.DatasetNotAvailableError, match="pip install tensorflow-datasets") as info:
        data.stl10("unlabelled")
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)
    assert isinstance(info.value, ImportError)


@contextlib.contextmanager
def no_download_probe():
    """tfds mock data needs no network: skip the loaders' connectivity check."""
    saved = sources.DOWNLOAD_PROBE_TIMEOUT
    sources.DOWNLOAD_PROBE_TIMEOUT = None
    try:
        yield
    finally:
        sources.DOWNLOAD_PROBE_TIMEOUT = saved


def test_tfds_cifar10_builder_works_with_the_installed_extras(tmp_path):
    """Issue 13 item 10: `pip install -e ".[all]"` left out `importlib_resources`,
    which tensorflow-datasets (through etils) needs to read the checksums of
    its downloads: CIFAR-10 could not load, with an error blaming the network.
    Builds the builder and reads its download URLs, without downloading."""
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    urls = sources.download_urls(builder)
    assert any("cifar-10" in url for url in urls), urls
    assert sources.needs_download(builder)


def test_extras_declare_what_the_tfds_loaders_need():
    """Every extra that installs tensorflow-datasets also installs the
    packages it needs at run time but does not declare (see setup.cfg)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.cfg"))
    extras = config["options.extras_require"]
    for extra in ("tensorflow", "all", "test"):
        requirements = extras[extra]
        assert "tensorflow-datasets" in requirements, extra
        assert "importlib_resources" in requirements, extra


def test_missing_package_inside_tfds_is_named_with_its_pip_command(monkeypatch):
    """A package tensorflow-datasets imports lazily is missing: a
    MissingDependencyError (an ImportError) naming it, not a network error."""
    tfds = pytest.importorskip("tensorflow_datasets")
    cause = ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

    def missing(builder):
        raise cause

    monkeypatch.setattr(sources, "download_urls", missing)
    with pytest.raises(ImportError) as info:
        data.load("cifar10", "test", data_dir="/nowhere")
    message = str(info.value)
    assert isinstance(info.value, data.MissingDependencyError)
    assert isinstance(info.value, data.DatasetNotAvailableError)
    assert "`pip install importlib_resources`" in message
    assert "not a network problem" in message and "\n" not in message
    assert info.value.__cause__ is cause
    # the same from inside tfds.load
    monkeypatch.setattr(sources, "download_urls", lambda builder: [])
    monkeypatch.setattr(tfds, "load", lambda *args, **kwargs: missing(None))
    with pytest.raises(data.MissingDependencyError, match="pip install importlib_resources"):
        data.load("cifar10", "test", data_dir="/nowhere")


@backend_independent  # tensorflow-datasets' download, whatever the Keras backend
def test_offline_tfds_download_fails_fast_with_one_sentence(tmp_path):
    """Issue 13 item 11: offline, tfds retried for ~205 s before failing. A
    subprocess whose proxy is a closed port (127.0.0.1:9) must fail with the
    one-sentence error well within the timeout (the probe waits 5 s at most)."""
    pytest.importorskip("tensorflow_datasets")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
               NO_PROXY="", no_proxy="", PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    code = (
        "import sys\n"
        "from keras_fmicl import data\n"
        "try:\n"
        f"    data.load('cifar10', 'test', data_dir={str(tmp_path)!r})\n"
        "except data.DatasetNotAvailableError as error:\n"
        "    print(type(error).__name__, error)\n"
        "    sys.exit(3)\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        pytest.fail("an offline CIFAR-10 download did not fail within 60 s")
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("DatasetNotAvailableError Could not download 'cifar10'")
    assert "no answer from www.cs.toronto.edu (waited at most 5 s" in result.stdout
    assert "network" in result.stdout and "data_dir" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "downloads" / "extracted")


# ---------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------


def test_digits_split_is_a_deterministic_partition():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    train_images, train_labels = data.load("digits", "train")
    test_images, test_labels = data.digits("test")
    assert train_images.shape == (1437, 8, 8, 1) and test_images.shape == (360, 8, 8, 1)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int64
    assert train_labels.shape == (1437,) and test_labels.shape == (360,)
    # train + test is every (image, label) pair exactly once, scaled 0..16 -> 0..255
    scaled = np.round(bunch.images * 255 / 16).astype(np.uint8)

    def rows(images, labels):
        flat = np.concatenate([images.reshape(len(labels), -1), labels[:, None]], axis=1)
        return flat[np.lexsort(flat.T[::-1])]

    np.testing.assert_array_equal(
        rows(np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])),
        rows(scaled, bunch.target.astype(np.int64)),
    )
    assert train_images.max() == 255 and train_images.min() == 0
    # shuffled, not the first 80% in file order
    assert not np.array_equal(train_labels, bunch.target[:1437])
    again_images, again_labels = data.load("DIGITS", "train")
    np.testing.assert_array_equal(again_images, train_images)
    np.testing.assert_array_equal(again_labels, train_labels)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(data.DatasetNotAvailableError, match="pip install scikit-learn"):
        data.digits("train")


# ---------------------------------------------------------------------------
# Bad names and splits
# ---------------------------------------------------------------------------


def test_unknown_names_and_splits_raise():
    cases = [
        (lambda: data.load("imagenet21k"), r"`name`.*'cifar10'.*'digits'.*'imagenet'.*name='imagenet21k'"),
        (lambda: data.load(3), r"`name`.*name=3"),
        (lambda: data.load("cifar10", "validation"), r"`split`.*'train', 'test'.*split='validation'"),
        (lambda: data.load("stl10", "unlabeled"), r"'train', 'test', 'unlabelled'.*split='unlabeled'"),
        (lambda: data.cifar100("unlabelled"), r"`split` for 'cifar100'"),
        (lambda: data.fashion_mnist("val"), r"`split` for 'fashion_mnist'"),
        (lambda: data.digits("all"), r"`split` for 'digits'"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


def collect(dataset):
    return [keras.tree.map_structure(lambda t: t.numpy(), element) for element in dataset]


def indexed_images(count, height=3, width=3, channels=1):
    """Image i is filled with the value i: its pixels say which image it is."""
    values = np.arange(count, dtype=np.uint8)[:, None, None, None]
    return np.broadcast_to(values, (count, height, width, channels)).copy()


def label_of(index):
    return (index * 7 + 3) % 11


@pytest.mark.parametrize("augmenter", ["none", "crop", "pipeline"])
def test_multiview_shapes_and_dtypes(augmenter):
    for num_views, with_labels in [(1, False), (2, True), (3, False), (3, True)]:
        check_multiview_shapes(augmenter, num_views, with_labels)


def check_multiview_shapes(augmenter, num_views, with_labels):
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(20) % 4 if with_labels else None
    layer = {
        "none": None,
        "crop": keras.layers.RandomCrop(6, 5, seed=1),
        "pipeline": keras.layers.Pipeline(
            [keras.layers.RandomFlip("horizontal", seed=1), keras.layers.RandomCrop(6, 5, seed=2)]
        ),
    }[augmenter]
    out_size = (8, 8) if layer is None else (6, 5)
    seed = 0 if with_labels else None  # unseeded: the parallel map
    dataset = data.multiview_dataset(
        images, labels, augmenter=layer, num_views=num_views, batch_size=8, seed=seed
    )
    assert isinstance(dataset, tf.data.Dataset)
    spec = dataset.element_spec
    features = spec[0] if with_labels else spec
    assert set(features) == {"views"}
    assert features["views"].shape.as_list() == [8, num_views, *out_size, 3]
    assert features["views"].dtype == tf.float32
    if with_labels:
        assert spec[1].shape.as_list() == [8] and spec[1].dtype == tf.int64
    batches = collect(dataset)
    assert len(batches) == 2  # 20 images, batches of 8, remainder dropped
    for batch in batches:
        views = (batch[0] if with_labels else batch)["views"]
        assert views.shape == (8, num_views, *out_size, 3) and views.dtype == np.float32
        assert 0.0 <= views.min() and views.max() <= 1.0  # rescale=1/255


@pytest.mark.parametrize("drop_remainder, sizes", [(True, [4, 4]), (False, [4, 4, 2])])
def test_drop_remainder(drop_remainder, sizes):
    images = indexed_images(10)
    dataset = data.multiview_dataset(
        images, batch_size=4, shuffle=False, drop_remainder=drop_remainder, rescale=1.0
    )
    batches = collect(dataset)
    assert [len(b["views"]) for b in batches] == sizes
    seen = np.concatenate([b["views"][:, 0, 0, 0, 0] for b in batches])
    # without shuffling, the images come in order
    np.testing.assert_array_equal(seen, np.arange(sum(sizes)))
    expected_batch = 4 if drop_remainder else None
    assert dataset.element_spec["views"].shape.as_list()[0] == expected_batch


def test_labels_follow_their_images_through_shuffling():
    count = 50
    images = indexed_images(count)
    labels = label_of(np.arange(count))
    dataset = data.multiview_dataset(
        images, labels, num_views=3, batch_size=8, drop_remainder=False, rescale=1.0, seed=3
    )
    orders = []
    for _ in range(2):
        order = []
        for features, batch_labels in collect(dataset):
            views = features["views"]
            index = views[:, 0, 0, 0, 0].astype(np.int64)
            # augmenter None: every view is the image itself
            np.testing.assert_array_equal(views, np.repeat(views[:, :1], 3, axis=1))
            expected = np.broadcast_to(images[index][:, None], views.shape)
            np.testing.assert_array_equal(views, expected.astype(np.float32))
            np.testing.assert_array_equal(batch_labels, label_of(index))
            order.extend(index)
        assert sorted(order) == list(range(count))  # each image once per epoch
        orders.append(order)
    assert orders[0] != list(range(count))  # shuffled
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_default_rescale_maps_uint8_to_unit_interval():
    images = indexed_images(256, 2, 2)
    batches = collect(data.multiview_dataset(images, batch_size=64, shuffle=False))
    views = np.concatenate([b["views"] for b in batches])
    np.testing.assert_allclose(views[:, 0, 0, 0, 0], np.arange(256) / 255.0, rtol=1e-6)


def test_shuffle_buffer_of_one_keeps_the_order():
    dataset = data.multiview_dataset(indexed_images(12), batch_size=4, shuffle_buffer=1, rescale=1.0)
    order = np.concatenate([b["views"][:, 0, 0, 0, 0] for b in collect(dataset)])
    np.testing.assert_array_equal(order, np.arange(12))


def flip_probe_images(count, width=4):
    """Channel 0: the image index; channel 1: the column, so flips show."""
    images = np.zeros((count, 2, width, 2), np.uint8)
    images[..., 0] = np.arange(count)[:, None, None]
    images[..., 1] = np.arange(width)[None, None, :]
    return images


def test_views_are_independent_per_image_and_per_epoch():
    count, num_views = 64, 3
    images = flip_probe_images(count)
    dataset = data.multiview_dataset(
        images,
        np.arange(count),
        augmenter=keras.layers.RandomFlip("horizontal", seed=11),
        num_views=num_views,
        batch_size=32,
        rescale=1.0,
        seed=5,
    )
    epochs = []
    for _ in range(2):
        flips = np.zeros((count, num_views), bool)
        for features, labels in collect(dataset):
            views = features["views"]
            index = views[:, 0, 0, 0, 0].astype(np.int64)
            np.testing.assert_array_equal(labels, index)
            for v in range(num_views):
                flipped = views[:, v, 0, 0, 1] > views[:, v, 0, -1, 1]
                expected = np.where(
                    flipped[:, None, None, None], images[index, :, ::-1], images[index]
                )
                # each view is the image or its mirror image
                np.testing.assert_array_equal(views[:, v], expected.astype(np.float32))
                flips[index, v] = flipped
        epochs.append(flips)
    for flips in epochs:
        # drawn per image: neither all nor no images of a view are flipped
        assert 0.2 < flips[:, 0].mean() < 0.8
        # drawn per view: the views of one image often disagree
        for a in range(num_views):
            for b in range(a + 1, num_views):
                assert 0.2 < (flips[:, a] != flips[:, b]).mean() < 0.8
    assert 0.2 < (epochs[0] != epochs[1]).mean() < 0.8  # fresh draws every epoch


@pytest.mark.parametrize("augmented", [False, True])
def test_seeded_pipelines_are_reproducible(augmented):
    images = flip_probe_images(40)

    def run(seed):
        augmenter = keras.layers.RandomFlip("horizontal", seed=4) if augmented else None
        dataset = data.multiview_dataset(
            images, np.arange(40), augmenter=augmenter, batch_size=8, seed=seed, rescale=1.0
        )
        return [collect(dataset) for _ in range(2)]

    def flatten(epochs):
        return [
            np.concatenate([np.ravel(features["views"]) for features, _ in epoch])
            for epoch in epochs
        ]

    first, again, other = flatten(run(7)), flatten(run(7)), flatten(run(8))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], first[1])


def test_plain_callables_as_augmenters():
    images = indexed_images(8)
    seen_training = []

    def with_training(x, training=False):
        seen_training.append(training)
        return x + 1.0

    for augmenter, offset in ((lambda x: x * 2.0, "double"), (with_training, "plus_one")):
        batches = collect(
            data.multiview_dataset(images, augmenter=augmenter, batch_size=4, shuffle=False, rescale=1.0)
        )
        views = np.concatenate([b["views"] for b in batches])
        base = images.astype(np.float32)[:, None]
        expected = base * 2.0 if offset == "double" else base + 1.0
        np.testing.assert_array_equal(views, np.repeat(expected, 2, axis=1))
    assert seen_training and all(seen_training)


def test_sequential_augmenter_outside_tensorflow_backend():
    augmenter = keras.Sequential([keras.layers.RandomFlip("horizontal", seed=1)])
    images = indexed_images(8)
    if keras.backend.backend() == "tensorflow":
        batches = collect(data.multiview_dataset(images, augmenter=augmenter, batch_size=4))
        assert batches[0]["views"].shape == (4, 2, 3, 3, 1)
    else:
        with pytest.raises(ValueError, match="keras.layers.Pipeline"):
            data.multiview_dataset(images, augmenter=augmenter, batch_size=4)


def test_augmenter_value_range_must_match_the_rescaled_images():
    import keras_fmicl

    images = np.random.default_rng(0).integers(0, 256, (8, 6, 6, 1)).astype(np.uint8)
    default = keras_fmicl.SimCLRAugmentation(6, seed=0)  # value_range (0, 255)
    pipeline = keras.layers.Pipeline([keras.layers.RandomFlip(seed=1), default])
    for augmenter, owner in ((default, "augmenter"), (pipeline, f"augmenter layer '{default.name}'")):
        with pytest.raises(
            ValueError, match=rf"The {owner} expects .*value_range=\(0.0, 255.0\), rescale=0.00392157$"
        ):
            data.multiview_dataset(images, augmenter=augmenter, batch_size=4)
    with pytest.raises(ValueError, match=r"value_range=\(0, 1\), rescale=1$"):
        data.multiview_dataset(images, augmenter=keras.layers.RandomBrightness(0.2, value_range=(0, 1)),
                               batch_size=4, rescale=1.0)
    matching = [
        (default, {"rescale": 1.0}),  # [0, 255]; its own inner layers are not checked
        (keras_fmicl.SimCLRAugmentation(6, value_range=(0, 1), seed=0), {}),
        (default, {"images": images.astype(np.float32) / 255.0}),  # float images: scale unknown
    ]
    for augmenter, kwargs in matching:
        arguments = {"images": images, "augmenter": augmenter, "batch_size": 4, **kwargs}
        views = collect(data.multiview_dataset(**arguments))[0]["views"]
        assert views.shape == (4, 2, 6, 6, 1)


def test_fit_consumes_the_pipeline_under_the_backend():
    images = np.random.default_rng(0).integers(0, 256, (32, 6, 6, 1)).astype(np.uint8)
    labels = np.arange(32) % 3
    dataset = data.multiview_dataset(
        images, labels, augmenter=keras.layers.RandomCrop(4, 4, seed=1), batch_size=8, seed=0
    )
    inputs = {"views": keras.Input((2, 4, 4, 1), name="views")}
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs["views"]))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_image_dataset_in_order_with_the_last_batch():
    images = indexed_images(10)
    labels = label_of(np.arange(10))
    dataset = data.image_dataset(images, labels, batch_size=4)
    batches = collect(dataset)
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = np.concatenate([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    unlabelled = collect(data.image_dataset(images, batch_size=3, rescale=1.0))
    np.testing.assert_array_equal(np.concatenate(unlabelled), images.astype(np.float32))
    shuffled = collect(data.image_dataset(images, labels, batch_size=5, shuffle=True, seed=1))
    index = np.round(np.concatenate([x for x, _ in shuffled])[:, 0, 0, 0] * 255).astype(int)
    assert sorted(index) == list(range(10)) and list(index) != list(range(10))
    np.testing.assert_array_equal(np.concatenate([y for _, y in shuffled]), label_of(index))


BAD_ARGUMENTS = [
    ({"images": np.zeros((4, 3, 3), np.uint8)}, r"`images`.*\(N, H, W, C\).*\(4, 3, 3\)"),
    ({"images": np.zeros((0, 3, 3, 1), np.uint8)}, r"`images`.*\(0, 3, 3, 1\)"),
    ({"labels": np.zeros(5)}, r"`labels`.*N = 4.*\(5,\)"),
    ({"num_views": 0}, r"`num_views`.*num_views=0"),
    ({"batch_size": 0}, r"`batch_size`.*batch_size=0"),
    ({"batch_size": True}, r"`batch_size`.*batch_size=True"),
    ({"batch_size": 5}, r"`batch_size`.*drop_remainder.*batch_size=5"),
    ({"shuffle_buffer": 0}, r"`shuffle_buffer`.*shuffle_buffer=0"),
    ({"seed": "a"}, r"`seed`.*seed='a'"),
    ({"rescale": 0}, r"`rescale`.*rescale=0"),
    ({"augmenter": "flip"}, r"`augmenter`.*augmenter='flip'"),
    ({"num_parallel_calls": 0}, r"`num_parallel_calls`.*num_parallel_calls=0"),
    ({"shuffle": "no"}, r"`shuffle` must be True or False.*shuffle='no'"),
    ({"drop_remainder": 1}, r"`drop_remainder` must be True or False.*drop_remainder=1"),
    ({"prefetch": None}, r"`prefetch` must be True or False.*prefetch=None"),
]


def test_multiview_rejects_bad_arguments():
    for kwargs, match in BAD_ARGUMENTS:
        arguments = {"images": indexed_images(4), "batch_size": 2, **kwargs}
        with pytest.raises(ValueError, match=match):
            data.multiview_dataset(**arguments)


def test_batch_larger_than_the_data_is_fine_when_keeping_the_remainder():
    batches = collect(data.multiview_dataset(indexed_images(3), batch_size=8, drop_remainder=False))
    assert [len(b["views"]) for b in batches] == [3]


@backend_independent  # numpy only
def test_synthetic_cifar_is_deterministic_and_learnable():
    from keras_fmicl import data

    train_x, train_y = data.load("synthetic_cifar", "train")
    test_x, test_y = data.load("synthetic_cifar", "test")
    assert train_x.shape == (50000, 32, 32, 3) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 32, 32, 3) and train_y.dtype == np.int64
    assert set(np.unique(train_y)) == set(range(10))
    again_x, again_y = data.load("synthetic_cifar", "test")
    np.testing.assert_array_equal(again_x, test_x)
    np.testing.assert_array_equal(again_y, test_y)
    assert not np.array_equal(train_x[:100], test_x[:100])
    # colour carries no label: per-class mean colours are alike ...
    means = np.array([train_x[train_y == c].mean(axis=(0, 1, 2)) for c in range(10)])
    assert np.ptp(means, axis=0).max() < 10
    # ... while the orientation does: a nearest-centroid classifier on the
    # image gradients' orientation histogram is far above chance
    def orientation_features(x):
        g = x.astype("float32").mean(axis=-1)
        gy, gx = np.gradient(g, axis=(1, 2))
        angle = np.mod(np.arctan2(gy, gx), np.pi)
        bins = np.floor(angle / np.pi * 20).astype(int).clip(0, 19)
        weight = np.hypot(gx, gy)
        return np.stack([(weight * (bins == b)).sum(axis=(1, 2)) for b in range(20)], axis=1)

    f_train, f_test = orientation_features(train_x[:5000]), orientation_features(test_x[:2000])
    f_train /= f_train.sum(axis=1, keepdims=True)
    f_test /= f_test.sum(axis=1, keepdims=True)
    centroids = np.stack([f_train[train_y[:5000] == c].mean(axis=0) for c in range(10)])
    predicted = np.argmin(((f_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == test_y[:2000]) > 0.5
