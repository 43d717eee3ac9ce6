"""train_cifar.py on data sets streamed from disk: STL-10 (train + unlabelled), Tiny ImageNet, ImageNet.

The views are drawn in tf.data (`keras_fmicl.data.multiview_stream`: random
resized crops to `--image_size`, then colour jitter, grey and flips on the
batch), so images of any size are read as needed; the frozen encoder is
evaluated on centre crops (`keras_fmicl.data.eval_stream`): weighted kNN and a
linear probe on the features of the labelled training split, scored on the
test (STL-10) or val (Tiny ImageNet, ImageNet) split. No online linear probe
(STL-10's unlabelled images have no label) and no kNN curve during training
(one kNN pass over ImageNet's features costs an epoch).

`run_streamed(example, backend, folder)` is called by train_cifar.py with
itself as `example` and its run folder: the loss, model, optimizer, training
loop (history.csv, the per-epoch checkpoint that --resume continues from, the
stop at a non-finite loss), outputs and summary table are the example's own.
"""

from __future__ import annotations

import time

from _common import Distribution
from _common import FlagError
from _common import import_frameworks
from _common import print_results_table

EVAL_BATCH = 256


def refuse_in_memory_flags(flags) -> None:
    """FlagError for the flags that apply only to the in-memory data sets."""
    if flags.evaluate_on != "test" or flags.distribute or flags.pipeline != "tf_data" or flags.knn_every:
        raise FlagError(
            f"{flags.dataset} streams from disk: --evaluate_on validation, --distribute, --pipeline model and "
            "--knn_every apply to the in-memory data sets."
        )


def limited(stream, count):
    """The first `count` examples of an `ImageStream` (all with None)."""
    if not count or count >= stream.num_examples:
        return stream
    records = None if stream.records is None else stream.records.take(count)
    return stream._replace(dataset=stream.dataset.take(count), records=records, num_examples=count)


def stream_features(np, encoder, data, stream, image_size):
    """Encoder features and labels of every image of `stream` (centre crops)."""
    features, labels = [], []
    for images, batch_labels in data.eval_stream(stream, image_size, EVAL_BATCH).as_numpy_iterator():
        features.append(np.asarray(encoder.predict_on_batch(images), dtype="float32"))
        labels.append(batch_labels)
    return np.concatenate(features), np.concatenate(labels).astype("int64")


def build_views(keras_fmicl, flags, preset, stream, batch_size, image_size):
    """The tf.data pipeline of two views per image; the crop is
    `multiview_stream`'s, so the augmenter's own crop keeps the whole view."""
    augmenter = keras_fmicl.SimCLRAugmentation(
        image_size=(image_size, image_size), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
        flip=preset["flip"], color_jitter_probability=0.8 if preset["color"] else 0.0,
        grayscale_probability=0.2 if preset["color"] else 0.0, blur_probability=preset.get("blur_probability", 0.0),
        value_range=(0.0, 1.0), seed=flags.seed,
    )
    return keras_fmicl.data.multiview_stream(
        stream, augmenter, batch_size=batch_size, image_size=image_size, seed=flags.seed,
        scale=preset["crop_scale"],
    )


def evaluate_streamed(example, np, keras_fmicl, encoder, image_size):
    """kNN, linear and --few_label scores of the frozen encoder."""
    flags, setting = example.FLAGS, example.PRESETS[example.FLAGS.dataset]
    data = keras_fmicl.data
    train_split, test_split = setting["eval_splits"]
    start = time.time()
    train = limited(data.image_stream(flags.dataset, train_split, flags.data_dir),
                    example.get_setting("max_train_samples"))
    test = limited(data.image_stream(flags.dataset, test_split, flags.data_dir), flags.max_test_samples)
    train_features, train_y = stream_features(np, encoder, data, train, image_size)
    test_features, test_y = stream_features(np, encoder, data, test, image_size)
    num_classes = data.NUM_CLASSES[flags.dataset]
    knn = keras_fmicl.knn_accuracy(
        train_features, train_y, test_features, test_y, k=example.get_setting("knn_k"), temperature=0.1
    )
    linear = keras_fmicl.evaluation.linear_probe_accuracy(
        train_features, train_y, test_features, test_y, num_classes=num_classes,
        epochs=example.get_setting("linear_epochs"), learning_rate=1e-2, batch_size=256, seed=flags.seed,
    )
    few_label = {
        fraction: keras_fmicl.evaluation.few_label_accuracy(
            train_features, train_y, test_features, test_y, float(fraction), draws=flags.few_label_draws,
            num_classes=num_classes, seed=flags.seed, learning_rate=1e-2, batch_size=256,
            epochs=example.few_label_epochs(train_y, float(fraction), batch_size=256),
        )
        for fraction in flags.few_label
    }
    scores = example.Scores(train_features, test_features, knn, linear, few_label, time.time() - start)
    return scores, (len(train_y), len(test_y)), test_y


def run_streamed(example, backend, folder):
    """Pretrains on the streamed split (from the checkpoint of `folder`
    with --resume), evaluates and writes the example's outputs."""
    flags = example.FLAGS
    keras, np, keras_fmicl = import_frameworks(flags.debug, flags.seed)
    preset = example.PRESETS[flags.dataset]
    image_size = example.get_setting("image_size")
    stream = limited(
        keras_fmicl.data.image_stream(flags.dataset, preset["pretrain_split"], flags.data_dir),
        example.get_setting("max_train_samples"),
    )
    batch_size = min(example.get_setting("batch_size"), stream.num_examples)
    steps_per_epoch = stream.num_examples // batch_size
    views = build_views(keras_fmicl, flags, preset, stream, batch_size, image_size)
    loss = example.build_loss(keras_fmicl)
    model = example.build_model(keras_fmicl, (image_size, image_size, 3), None, steps_per_epoch)
    model.compile(optimizer=example.build_optimizer(keras, steps_per_epoch), loss=loss)
    folder.checkpoint.restore(keras, model, views)  # a resumed run's last epoch, if any
    print(
        f"Pretraining on {flags.dataset} {preset['pretrain_split']} ({stream.num_examples} images, "
        f"{image_size}x{image_size} views) with {loss.get_config()} in {flags.mode} mode, backend {backend}, "
        f"{example.get_setting('epochs')} epochs of {steps_per_epoch} steps."
    )
    results = example.run_description(keras, keras_fmicl, np, backend, Distribution(), loss, model)
    results["settings"].update(
        {name: example.get_setting(name) for name in ("depth", "patch_size", "image_size")},
        pretrain_split=preset["pretrain_split"], eval_splits=list(preset["eval_splits"]),
    )
    results.update(pretrain_samples=int(stream.num_examples), resumed_from_epoch=folder.start)
    no_images = (np.zeros((0,)), np.zeros((0,), "int64"))  # no kNN monitor (--knn_every is refused)
    pretraining = example.pretrain_recording_divergence(results, folder, True, lambda: example.pretrain(
        keras, keras_fmicl, model, {"x": views}, no_images, no_images, folder, True,
    ))
    scores, (train_count, test_count), test_y = evaluate_streamed(example, np, keras_fmicl, model.encoder, image_size)
    results.update(train_samples=int(train_count), test_samples=int(test_count))
    example.write_outputs(keras_fmicl, model, folder, results, pretraining, scores, test_y,
                          example.describe_run(loss, backend, stream.num_examples))
    print_results_table(example.summary_rows(results, loss, steps_per_epoch, batch_size, folder.path))
    return results
