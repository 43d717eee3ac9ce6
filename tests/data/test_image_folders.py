"""Folder data sets (Tiny ImageNet, ImageNet), streams from disk, stream views and centre crops."""

import os

import keras
import numpy as np
import pytest

from keras_fmicl import data
from keras_fmicl.data import image_streams
from keras_fmicl.data import sources
from tests.helpers import backend_independent

tf = pytest.importorskip("tensorflow")

WNIDS = ("n02", "n07", "n01")  # wnids.txt order, not sorted: label i is line i
WORDS = {"n07": "goldfish, Carassius auratus", "n01": "tench", "n99": "unused"}
# val images: file name -> wnid, in annotation order (not grouped by class)
VAL = {"val_0.JPEG": "n01", "val_1.JPEG": "n02", "val_2.JPEG": "n01", "val_3.JPEG": "n07", "val_10.JPEG": "n02"}


def pixel_value(index):
    """Image `index` is filled with this grey level: its pixels say which file it is."""
    return 20 + 15 * index


def write_image(path, value, shape=(10, 12, 3), fmt="jpeg"):
    image = np.full(shape, value, np.uint8)
    encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=100)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(str(path), encoded)


def make_tiny_imagenet(parent, words=True):
    """A 3-class Tiny ImageNet in the official layout; returns what it should read as."""
    root = parent / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    if words:
        (root / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in WORDS.items()))
    train, count = [], 0
    for label, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        (folder / f"{wnid}_boxes.txt").parent.mkdir(parents=True)
        (folder / f"{wnid}_boxes.txt").write_text("not an image\n")
        for i in (3, 0, 2, 1):  # written out of order: listed sorted by name
            write_image(folder / "images" / f"{wnid}_{i}.JPEG", pixel_value(count))
            count += 1
        train += [(str(folder / "images" / f"{wnid}_{i}.JPEG"), label) for i in range(4)]
    val = []
    lines = []
    for i, (name, wnid) in enumerate(VAL.items()):
        write_image(root / "val" / "images" / name, pixel_value(i))
        lines.append(f"{name}\t{wnid}\t0\t1\t9\t11")
        val.append((str(root / "val" / "images" / name), WNIDS.index(wnid)))
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root, train, val


IMAGENET_CLASSES = ("n03", "n01", "n02")  # created in this order, labelled sorted
ENDINGS = (".JPEG", ".jpg", ".png", ".jpeg")


def make_imagenet(root, fmt="jpeg", sizes=((10, 12), (12, 10), (9, 9), (16, 20))):
    expected = {}
    for split in ("train", "val"):
        entries = []
        for name in IMAGENET_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            (folder / "notes.txt").write_text("ignored")
            (folder / ".hidden.JPEG").write_bytes(b"ignored")
            for i, (height, width) in enumerate(sizes):
                path = folder / f"img{i}{ENDINGS[i % len(ENDINGS)]}"
                write_image(path, pixel_value(i), (height, width, 3), fmt)
                entries.append((str(path), sorted(IMAGENET_CLASSES).index(name), (height, width)))
        expected[split] = sorted(entries, key=lambda entry: (entry[1], entry[0]))
    return expected


def collect(dataset):
    return [keras.tree.map_structure(lambda t: t.numpy(), element) for element in dataset]


# ---------------------------------------------------------------------------
# Listing files
# ---------------------------------------------------------------------------


@backend_independent  # file listing
@pytest.mark.parametrize("given", ["parent", "root"])
def test_tiny_imagenet_files_labels_and_class_names(tmp_path, given):
    root, train, val = make_tiny_imagenet(tmp_path)
    data_dir = tmp_path if given == "parent" else root
    for split, expected in (("train", train), ("val", val)):
        files = data.list_images("tiny_imagenet", split, data_dir=str(data_dir))
        assert isinstance(files, data.ImageFiles)
        assert files.paths == tuple(path for path, _ in expected), split
        assert files.labels.dtype == np.int32
        np.testing.assert_array_equal(files.labels, [label for _, label in expected])
        assert files.class_names == ("n02", "goldfish, Carassius auratus", "tench")
    # the val annotations, file by file: val_1 and val_10 are n02 (label 0)
    files = data.list_images("tiny_imagenet", "val", data_dir)
    labels = {os.path.basename(p): int(l) for p, l in zip(files.paths, files.labels)}
    assert labels == {"val_0.JPEG": 2, "val_1.JPEG": 0, "val_2.JPEG": 2, "val_3.JPEG": 1, "val_10.JPEG": 0}
    both = data.list_images("tiny_imagenet", "train+val", data_dir)
    assert both.paths == tuple(p for p, _ in train + val) and len(both.labels) == 17


@backend_independent  # file listing
def test_tiny_imagenet_without_words_names_classes_by_wnid(tmp_path):
    make_tiny_imagenet(tmp_path, words=False)
    assert data.list_images("tiny_imagenet", "val", tmp_path).class_names == WNIDS


@backend_independent  # file listing
def test_imagenet_class_folders(tmp_path):
    expected = make_imagenet(tmp_path)
    for split in ("train", "val"):
        files = data.list_images("ImageNet", split, tmp_path)
        assert files.class_names == ("n01", "n02", "n03")
        assert files.paths == tuple(path for path, _, _ in expected[split])
        np.testing.assert_array_equal(files.labels, [label for _, label, _ in expected[split]])
        assert files.labels.dtype == np.int32


# ---------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------


@backend_independent  # tf.data decoding, no Keras layer
def test_image_stream_decodes_the_files_in_order(tmp_path):
    root, train, _ = make_tiny_imagenet(tmp_path)
    stream = data.image_stream("tiny_imagenet", "train", tmp_path)
    assert isinstance(stream, data.ImageStream)
    assert (stream.num_examples, stream.num_classes) == (12, 3)
    assert stream.class_names[2] == "tench"
    elements = collect(stream.dataset)
    assert len(elements) == 12
    values = {}
    for (path, label), (image, got_label) in zip(train, elements):
        assert image.shape == (10, 12, 3) and image.dtype == np.uint8
        assert got_label.dtype == np.int32 and got_label == label
        values[os.path.basename(path)] = image
    # file {wnid}_{i} was written with value pixel_value(4 * class + order written)
    for label, wnid in enumerate(WNIDS):
        for written, i in enumerate((3, 0, 2, 1)):
            np.testing.assert_allclose(values[f"{wnid}_{i}.JPEG"], pixel_value(4 * label + written), atol=1)
    # arrays of the same images
    images, labels = data.load("tiny_imagenet", "train", tmp_path)
    assert images.shape == (12, 10, 12, 3) and labels.dtype == np.int64
    np.testing.assert_array_equal(images, np.stack([image for image, _ in elements]))
    np.testing.assert_array_equal(labels, [label for _, label in train])


@backend_independent  # tf.data decoding
def test_imagenet_stream_of_mixed_sizes_and_formats(tmp_path):
    expected = make_imagenet(tmp_path, fmt="png")
    grey = tmp_path / "val" / "n02" / "img0.JPEG"
    tf.io.write_file(str(grey), tf.io.encode_jpeg(np.full((5, 6, 1), 99, np.uint8)))
    stream = data.image_stream("imagenet", "val", tmp_path)
    assert (stream.num_examples, stream.num_classes) == (12, 3)
    for (path, label, size), (image, got) in zip(expected["val"], collect(stream.dataset)):
        assert got == label
        if path == str(grey):
            assert image.shape == (5, 6, 3)
            np.testing.assert_allclose(image, 99, atol=1)
        else:
            assert image.shape == (*size, 3)
            np.testing.assert_array_equal(image, pixel_value(int(os.path.basename(path)[3])))


@backend_independent  # tf.data decoding
def test_files_that_are_not_images_stop_the_stream_naming_them(tmp_path):
    make_imagenet(tmp_path)
    html = tmp_path / "train" / "n01" / "img1.jpg"
    html.write_bytes(b"<html>404</html>")
    truncated = tmp_path / "train" / "n03" / "img0.JPEG"
    payload = tf.io.encode_jpeg(np.random.default_rng(0).integers(0, 256, (30, 30, 3)).astype(np.uint8))
    truncated.write_bytes(payload.numpy()[:200])
    stream = data.image_stream("imagenet", "train", tmp_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="img1.jpg"):
        collect(stream.dataset)
    files = data.list_images("imagenet", "train", tmp_path)
    assert data.find_unreadable_images(files) == (str(html), str(truncated))


def test_multiview_stream_shapes_dtypes_and_value_range(tmp_path):
    make_tiny_imagenet(tmp_path)
    stream = data.image_stream("tiny_imagenet", "train", tmp_path)
    augmenter = keras.layers.Pipeline([keras.layers.RandomFlip("horizontal", seed=3)])
    views = data.multiview_stream(stream, augmenter, batch_size=5, image_size=8, num_views=3, seed=1)
    batches = collect(views)
    assert len(batches) == 2  # 12 images, the remainder dropped
    for batch in batches:
        assert set(batch) == {"views"}
        assert batch["views"].shape == (5, 3, 8, 8, 3) and batch["views"].dtype == np.float32
        # constant grey images stay constant under crops and flips, in [0, 1]
        assert batch["views"].min() >= 0.0 and batch["views"].max() <= 1.0
    values = np.concatenate([b["views"][:, 0, 0, 0, 0] for b in batches]) * 255
    assert len(np.unique(np.round(values))) == 10  # 10 different images of 12
    with_labels = data.multiview_stream(stream, batch_size=12, image_size=4, labels=True, seed=0)
    features, labels = collect(with_labels)[0]
    assert labels.dtype == np.int32 and sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4
    # the labels travel with their images (value = pixel_value(index), index // 4 = label)
    index = (np.round(features["views"][:, 0, 0, 0, 0] * 255) - 20) / 15
    np.testing.assert_array_equal(np.round(index).astype(int) // 4, labels)
    with pytest.raises(ValueError, match="value_range"):
        data.multiview_stream(stream, keras.layers.RandomBrightness(0.2, value_range=(0, 255)), 4, 8)


def test_streams_feed_keras_models_under_the_backend(tmp_path):
    make_imagenet(tmp_path)
    stream = data.image_stream("imagenet", "val", tmp_path)
    batches = data.eval_stream(stream, 8, batch_size=5)
    crops = np.concatenate([images for images, _ in collect(batches)])
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    features = model.predict(batches.map(lambda images, labels: images), verbose=0)
    np.testing.assert_allclose(features, crops.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    views = data.multiview_stream(stream, keras.layers.RandomFlip("horizontal"), batch_size=4, image_size=8)
    pooled = keras.Sequential([keras.Input((2, 8, 8, 3)), keras.layers.Reshape((16, 8, 3)),
                               keras.layers.GlobalAveragePooling2D()])
    assert pooled.predict(views.map(lambda features: features["views"]), verbose=0).shape == (12, 3)


@backend_independent  # tf.data, no Keras layer
def test_views_differ_and_seeds_reproduce():
    images, labels = data.load("digits", "test")
    images, labels = images[:64], labels[:64]
    stream = image_streams.arrays_stream(images, labels, 10, None)

    def pipeline(seed):
        return data.multiview_stream(stream, batch_size=32, image_size=8, seed=seed, shuffle_buffer=50)

    seeded = pipeline(7)
    one, again, other = collect(seeded), collect(pipeline(7)), collect(pipeline(8))
    for a, b in zip(one, again):
        np.testing.assert_array_equal(a["views"], b["views"])
    assert not np.array_equal(one[0]["views"], other[0]["views"])
    views = one[0]["views"]
    assert views.shape == (32, 2, 8, 8, 1)
    assert np.mean(np.abs(views[:, 0] - views[:, 1]).max(axis=(1, 2, 3)) > 0) > 0.9  # views differ
    # a new epoch draws new crops and a new order, reproducibly
    epoch2 = collect(seeded)
    assert not np.array_equal(one[0]["views"], epoch2[0]["views"])
    np.testing.assert_array_equal(collect(pipeline(7))[0]["views"], one[0]["views"])
    # whole-image boxes (scale 1, the image's own ratio) at the image's size: the images
    exact = data.multiview_stream(stream, batch_size=64, image_size=8, shuffle=False, scale=(1, 1), ratio=(1, 1))
    np.testing.assert_allclose(collect(exact)[0]["views"][:, 1], images / 255.0, atol=1e-6)


def reference_box(height, width, ratio):
    """torchvision's fallback box: the whole image narrowed to the allowed ratios."""
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_boxes(height, width, scale, ratio, count):
    """`count` boxes of `random_crop_box`, seeds (0, 5) .. (count - 1, 5), in one graph."""
    seeds = tf.data.Dataset.range(count).map(lambda draw: tf.stack([draw, tf.constant(5, tf.int64)]))
    boxes = seeds.map(lambda seed: tf.stack(image_streams.random_crop_box(tf, seed, height, width, scale, ratio)))
    return next(iter(boxes.batch(count))).numpy()


@backend_independent  # tf.random only
def test_random_crop_boxes_follow_torchvision():
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for height, width in ((10, 12), (32, 32), (7, 40)):
        top, left, h, w = crop_boxes(height, width, scale, ratio, 300).T
        assert (top >= 0).all() and (top + h <= height).all() and (left >= 0).all() and (left + w <= width).all()
        assert (h >= 1).all() and (w >= 1).all()
        assert len({tuple(box) for box in zip(top, left, h, w)}) > 100  # boxes vary with the seed
        if (height, width) == (32, 32):  # boxes fit: area and ratio within range, up to rounding
            areas, ratios = h * w / (height * width), w / h
            assert areas.min() >= 0.06 and areas.max() <= 1.0 and 0.4 < areas.mean() < 0.65
            assert ratios.min() >= 0.65 and ratios.max() <= 1.5
            # positions are uniform over the free range: both ends are reached
            assert (top == 0).any() and (top + h == height).any()
    # no box can fit: the fallback, exactly as torchvision places it
    for height, width, ratio in ((1, 50, (3 / 4, 4 / 3)), (50, 2, (3 / 4, 4 / 3)), (4, 5, (2.0, 3.0))):
        box = crop_boxes(height, width, (0.9, 1.0), ratio, 1)[0]
        assert tuple(box) == reference_box(height, width, ratio), (height, width)


# ---------------------------------------------------------------------------
# Centre crops for evaluation
# ---------------------------------------------------------------------------


def resize_weights(size_in, size_out):
    """Antialiased bilinear resampling matrix (triangle kernel widened by the
    downscale factor, half-pixel centres, renormalised at the borders)."""
    scale = size_out / size_in
    support = max(1.0, 1.0 / scale)
    centres = (np.arange(size_out) + 0.5) / scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(size_in)[None, :] - centres[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


def reference_eval_crop(image, size, fraction):
    height, width = image.shape[:2]
    resize = int(np.floor(size / fraction))
    new_h, new_w = resize * height // min(height, width), resize * width // min(height, width)
    resized = np.einsum("ij,jkc->ikc", resize_weights(height, new_h), image.astype(np.float64))
    resized = np.einsum("kj,ijc->ikc", resize_weights(width, new_w), resized)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return resized[top:top + size, left:left + size] / 255.0


@backend_independent  # tf.data, no Keras layer
@pytest.mark.parametrize("size, fraction", [(7, 0.875), (8, 1.0), (5, 0.5)])
def test_eval_stream_resizes_the_shorter_side_and_crops_the_centre(tmp_path, size, fraction):
    rng = np.random.default_rng(size)
    shapes = [(8, 13), (16, 20), (21, 9), (9, 9), (30, 11)]
    originals = []
    for i, (height, width) in enumerate(shapes):
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        originals.append(image)
        tf.io.write_file(str(tmp_path / "val" / f"c{i % 2}" / f"{i}.png"), tf.io.encode_png(image))
    os.makedirs(tmp_path / "train")  # no train folder classes to compare against
    os.rmdir(tmp_path / "train")
    stream = data.image_stream("imagenet", "val", tmp_path)
    batches = collect(data.eval_stream(stream, size, batch_size=2, crop_fraction=fraction))
    assert [len(labels) for _, labels in batches] == [2, 2, 1]  # in order, the last batch kept
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    assert images.dtype == np.float32 and images.shape == (5, size, size, 3)
    assert labels.dtype == np.int32
    files = data.list_images("imagenet", "val", tmp_path)
    np.testing.assert_array_equal(labels, files.labels)
    for path, got in zip(files.paths, images):
        expected = reference_eval_crop(originals[int(os.path.basename(path)[0])], size, fraction)
        np.testing.assert_allclose(got, expected, atol=2e-6 * 255, err_msg=path)


# ---------------------------------------------------------------------------
# Errors: one sentence naming what is missing
# ---------------------------------------------------------------------------


def one_sentence(info, *parts):
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


@backend_independent  # file listing
def test_tiny_imagenet_missing_or_malformed_folders(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.list_images("tiny_imagenet", "train", tmp_path)
    one_sentence(info, "tiny-imagenet-200/wnids.txt", f"Received: data_dir={str(tmp_path)!r}")
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.image_stream("tiny_imagenet", "val")
    one_sentence(info, "`data_dir`", "data_dir=None")
    root, _, _ = make_tiny_imagenet(tmp_path)
    annotations = root / "val" / "val_annotations.txt"
    text = annotations.read_text()
    annotations.write_text(text.replace("val_3.JPEG\tn07", "val_3.JPEG\tn08"))
    with pytest.raises(ValueError) as info:
        data.list_images("tiny_imagenet", "val", tmp_path)
    one_sentence(info, "Line 4", "val_annotations.txt", "wnids")
    annotations.write_text(text.replace("val_3.JPEG", "val_33.JPEG"))
    with pytest.raises(ValueError) as info:
        data.list_images("tiny_imagenet", "val", tmp_path)
    one_sentence(info, "val_33.JPEG", "does not exist")
    annotations.unlink()
    with pytest.raises(ValueError) as info:
        data.image_stream("tiny_imagenet", "val", tmp_path)
    one_sentence(info, "tiny-imagenet-200/val/val_annotations.txt")
    for image in (root / "train" / "n07" / "images").iterdir():
        image.unlink()
    with pytest.raises(ValueError) as info:
        data.list_images("tiny_imagenet", "train", tmp_path)
    one_sentence(info, str(root / "train" / "n07" / "images"), "is empty")
    (root / "train" / "n07" / "images").rmdir()
    with pytest.raises(ValueError, match="is missing"):
        data.list_images("tiny_imagenet", "train", tmp_path)


@backend_independent  # file listing
def test_imagenet_missing_or_malformed_folders(tmp_path):
    make_imagenet(tmp_path)
    for image in (tmp_path / "val" / "n02").glob("img*"):
        image.unlink()
    with pytest.raises(ValueError) as info:
        data.list_images("imagenet", "val", tmp_path)
    one_sentence(info, str(tmp_path / "val" / "n02"), "is empty")
    (tmp_path / "val" / "n04").mkdir()
    with pytest.raises(ValueError) as info:
        data.list_images("imagenet", "val", tmp_path)
    one_sentence(info, "val/ and train/", "'n04'")
    for split in ("train", "val"):
        os.rename(tmp_path / split, tmp_path / f"old_{split}")
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.list_images("imagenet", "train", tmp_path)
    one_sentence(info, "no train/ folder", "train/<class>/*.JPEG")


@backend_independent  # tensorflow-datasets' builder, offline
def test_imagenet_without_folders_or_tfds_archives_says_what_is_missing(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.image_stream("imagenet", "val", tmp_path)
    one_sentence(info, "train/<class>/*.JPEG", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                 str(tmp_path / "downloads" / "manual"), f"Received: data_dir={str(tmp_path)!r}")


@backend_independent  # argument checks
def test_unknown_splits_and_non_folder_data_sets(tmp_path):
    make_tiny_imagenet(tmp_path)
    cases = [
        (lambda: data.image_stream("tiny_imagenet", "test", tmp_path), r"'train', 'val'.*split='test'"),
        (lambda: data.list_images("tiny_imagenet", "train+train", tmp_path), "twice"),
        (lambda: data.list_images("cifar10", "train"), r"folder data sets.*'tiny_imagenet', 'imagenet'"),
        (lambda: data.load("imagenet", "val"), "image_stream"),
        (lambda: data.multiview_stream("not a stream", None, 4, 8), "`stream`"),
        (lambda: data.eval_stream(data.image_stream("digits", "test"), 8, 4, crop_fraction=1.5), "crop_fraction"),
        (lambda: data.multiview_stream(data.image_stream("digits", "test"), None, 4, 8, scale=(0.5, 2)), "`scale`"),
        (lambda: data.multiview_stream(data.image_stream("digits", "test"), None, 400, 8), "batch_size"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ---------------------------------------------------------------------------
# tensorflow-datasets streams (mock data)
# ---------------------------------------------------------------------------


@backend_independent  # tf.data, no Keras layer
def test_stl10_unlabelled_streams_for_pretraining():
    tfds = pytest.importorskip("tensorflow_datasets")
    saved = sources.DOWNLOAD_PROBE_TIMEOUT
    sources.DOWNLOAD_PROBE_TIMEOUT = None  # mock data needs no network
    try:
        with tfds.testing.mock_data(num_examples=6):
            unlabelled = data.image_stream("stl10", "unlabelled")
            assert (unlabelled.num_examples, unlabelled.num_classes) == (6, 10)
            assert unlabelled.class_names == data.CLASS_NAMES["stl10"] and unlabelled.records is None
            elements = collect(unlabelled.dataset)
            assert [label for _, label in elements] == [-1] * 6  # mock labels are classes
            assert all(image.shape == (96, 96, 3) and image.dtype == np.uint8 for image, _ in elements)
            both = data.image_stream("stl10", "train+unlabelled")
            labels = np.array([label for _, label in collect(both.dataset)])
            assert both.num_examples == 12 and labels.dtype == np.int32
            assert labels[:6].min() >= 0 and labels[:6].max() < 10 and (labels[6:] == -1).all()
            views = data.multiview_stream(both, batch_size=4, image_size=32, seed=0)
            shapes = [batch["views"].shape for batch in collect(views)]
            assert shapes == [(4, 2, 32, 32, 3)] * 3
            test = collect(data.eval_stream(data.image_stream("stl10", "test"), 64, 4))
            assert [images.shape for images, _ in test] == [(4, 64, 64, 3), (2, 64, 64, 3)]
    finally:
        sources.DOWNLOAD_PROBE_TIMEOUT = saved
