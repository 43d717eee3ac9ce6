"""train_cifar.py on data sets streamed from disk: STL-10 (train + unlabelled), Tiny ImageNet, ImageNet.

The views are drawn in tf.data (`keras_fmicl.data.multiview_stream`: random
resized crops to `--image_size`, then colour jitter, grey and flips on the
batch), so images of any size are read as needed; the frozen encoder is
evaluated on centre crops (`keras_fmicl.data.eval_stream`): weighted kNN and a
linear probe on the features of the labelled training split, scored on the
test (STL-10) or val (Tiny ImageNet, ImageNet) split. No online linear probe
(STL-10's unlabelled images have no label) and no kNN curve during training
(one kNN pass over ImageNet's features costs an epoch).

`run_streamed(example, backend, output_dir)` is called by train_cifar.py with
itself as `example`: the loss, model, optimizer, outputs and summary table are
the example's own.
"""

from __future__ import annotations

import json
import os
import time

from _common import FlagError
from _common import HistoryCSV
from _common import describe_loss
from _common import import_frameworks
from _common import print_results_table

EVAL_BATCH = 256


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


def run_streamed(example, backend, output_dir):
    """Pretrains on the streamed split, evaluates and writes the example's outputs."""
    flags = example.FLAGS
    if flags.evaluate_on != "test" or flags.distribute or flags.pipeline != "tf_data":
        raise FlagError(
            f"{flags.dataset} streams from disk: --evaluate_on validation, --distribute and --pipeline model "
            "apply to the in-memory data sets."
        )
    keras, np, keras_fmicl = import_frameworks(flags.debug, tensorflow=True)
    keras.utils.set_random_seed(flags.seed)
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
    epochs = example.get_setting("epochs")
    print(
        f"Pretraining on {flags.dataset} {preset['pretrain_split']} ({stream.num_examples} images, "
        f"{image_size}x{image_size} views) with {loss.get_config()} in {flags.mode} mode, backend {backend}, "
        f"{epochs} epochs of {steps_per_epoch} steps."
    )
    history_csv = HistoryCSV(os.path.join(output_dir, "history.csv"))
    start = time.time()
    logs = {"loss": []}
    if epochs > 0:
        logs = model.fit(views, epochs=epochs, callbacks=[history_csv.callback(keras)], verbose=flags.verbose).history
    pretraining = example.Pretraining(
        logs={key: [float(v) for v in values] for key, values in logs.items()}, knn_epochs=[], knn_curve=[],
        knn_train_images=0, knn_test_images=0, history_path=history_csv.path, seconds=time.time() - start,
    )
    scores, (train_count, test_count), test_y = evaluate_streamed(example, np, keras_fmicl, model.encoder, image_size)
    run_title = (
        f"{flags.dataset}: {describe_loss(loss)}, {flags.mode} mode, {backend} backend, "
        f"{epochs} epoch{'' if epochs == 1 else 's'} on {stream.num_examples:,} images"
    )
    outputs, embedding_method, embedding_seconds = example.write_model_and_figures(
        keras_fmicl, model, output_dir, pretraining, scores, run_title, test_y
    )
    settings = ("encoder", "width", "depth", "patch_size", "image_size", "projection_dim", "epochs", "batch_size",
                "learning_rate", "weight_decay", "max_train_samples", "linear_epochs", "knn_k")
    results = {
        "flags": {name: getattr(flags, name) for name in flags if name in example.OWN_FLAGS},
        "settings": dict({name: example.get_setting(name) for name in settings},
                         warmup_epochs=example.warmup_epochs(), pretrain_split=preset["pretrain_split"],
                         eval_splits=list(preset["eval_splits"])),
        "backend": backend,
        "distribution": "one device",
        "loss": loss.get_config(),
        "mode": flags.mode,
        "method": keras.saving.serialize_keras_object(model.method),
        "evaluate_on": "test",
        "pretrain_samples": int(stream.num_examples),
        "train_samples": int(train_count),
        "test_samples": int(test_count),
        "history": pretraining.logs,
        "knn_curve": {"epochs": [], "accuracy": []},
        "knn_top1": float(scores.knn),
        "linear_top1": float(scores.linear["test_accuracy"]),
        "linear_train_top1": float(scores.linear["train_accuracy"]),
        "few_label": scores.few_label,
        "pretrain_seconds": pretraining.seconds,
        "evaluation_seconds": scores.seconds,
        "embedding_seconds": embedding_seconds,
        "versions": {"keras": keras.__version__, "keras_fmicl": keras_fmicl.__version__, "numpy": np.__version__},
        "embedding_method": embedding_method,
        "outputs": outputs,
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    print_results_table(example.summary_rows(results, loss, steps_per_epoch, batch_size, output_dir))
    return results
