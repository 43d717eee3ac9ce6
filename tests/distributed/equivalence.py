"""Worker: one model trained on one device and data-parallel, same steps.

Run as a script in a fresh process (the distribution engines need setting up
before the backend starts):

    python -m tests.distributed.equivalence --engine mirrored --output out.npz
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m ... --engine jax
    torchrun --nproc_per_node=2 -m tests.distributed.equivalence --engine torch ...
    (and --engine multiworker with TF_CONFIG set, one process per worker)

For each mode (SimCLR, MoCo v2) it builds the same model twice (same seed),
trains one copy on the global batch on a single device and the other
data-parallel over 2 replicas, for two steps, and writes the per-step losses
and every variable (weights, key network, queue) of both to an .npz file.
"""

import argparse
import json
import os
import sys

GLOBAL_BATCH = 8
STEPS = 2
IMAGE = (8, 8, 1)


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(STEPS * GLOBAL_BATCH,) + IMAGE).astype("float32")
    views = np.stack([images, images[:, ::-1]], axis=1)  # two views, (N, 2, 8, 8, 1)
    views = views + 0.05 * rng.normal(size=views.shape).astype("float32")
    return views.astype("float32")


def make_model(mode):
    import keras

    import keras_fmicl

    keras.utils.set_random_seed(7)
    encoder = keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(12),
        ],
        name="encoder",
    )
    method = (
        keras_fmicl.methods.MoCoV2(momentum=0.9, queue_size=32)
        if mode == "moco"
        else keras_fmicl.methods.SimCLR()
    )
    model = keras_fmicl.ContrastiveModel(
        encoder, method=method, projector=keras_fmicl.ProjectionHead(16, 8)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        # alpha 4, not the default 40 (10x larger gradients): the float32
        # round-off of two SGD steps stays within the 1e-5 tolerance
        loss=keras_fmicl.FMICLLoss("js", sigma=0.6, alpha=4.0),
    )
    model.build((GLOBAL_BATCH, 2) + IMAGE)
    return model


def state(model):
    import keras

    return [keras.ops.convert_to_numpy(v.value) for v in model.variables]


def same_start(parallel, initial):
    """Gives the data-parallel model the single model's initial variables
    (Keras draws different initial values under a distribution scope)."""
    for variable, value in zip(parallel.variables, initial):
        variable.assign(value)
    return parallel


def train(model, views, batches=None):
    """Runs STEPS train steps through `fit`; `batches` maps a global batch to
    what this process feeds (its shard, under torch.distributed).

    `fit` on a dataset, one batch per call: under `tf.distribute` it splits
    the global batch over the replicas (`train_on_batch` would hand every
    replica the whole batch).
    """
    import tensorflow as tf

    losses = []
    for step in range(STEPS):
        batch = views[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
        batch = batch if batches is None else batches(batch)
        dataset = tf.data.Dataset.from_tensor_slices(batch).batch(len(batch))
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        losses.append(float(history.history["loss"][0]))
    return losses


def save(path, results):
    import numpy as np

    arrays = {}
    for mode, (single, parallel) in results.items():
        arrays[f"{mode}/single_losses"] = np.array(single[0])
        arrays[f"{mode}/parallel_losses"] = np.array(parallel[0])
        for index, (a, b) in enumerate(zip(single[1], parallel[1])):
            arrays[f"{mode}/single_{index}"] = a
            arrays[f"{mode}/parallel_{index}"] = b
    np.savez(path, **arrays)


def run_mirrored(output):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    views = data()
    results = {}
    # one strategy for the process: a second one would reuse collective keys
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for mode in ("simclr", "moco"):
        single = make_model(mode)
        initial = state(single)
        single_out = (train(single, views), state(single))
        with strategy.scope():
            parallel = same_start(make_model(mode), initial)
        parallel_out = (train(parallel, views), state(parallel))
        results[mode] = (single_out, parallel_out)
    save(output, results)


def run_multiworker(output):
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    views = data()
    results = {}
    for mode in ("simclr", "moco"):
        single = make_model(mode)
        initial = state(single)
        single_out = (train(single, views), state(single))
        with strategy.scope():
            parallel = same_start(make_model(mode), initial)
        # each worker feeds the whole global batch; the strategy gives each
        # replica its half (auto-sharding by data)
        parallel_out = (train(parallel, views), state(parallel))
        results[mode] = (single_out, parallel_out)
    if task["index"] == 0:
        save(output, results)


def run_jax(output):
    import jax
    import keras

    assert len(jax.devices()) == 2, jax.devices()
    views = data()
    results = {}
    for mode in ("simclr", "moco"):
        keras.distribution.set_distribution(None)
        single = make_model(mode)
        initial = state(single)
        single_out = (train(single, views), state(single))
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        parallel = same_start(make_model(mode), initial)
        parallel_out = (train(parallel, views), state(parallel))
        keras.distribution.set_distribution(None)
        results[mode] = (single_out, parallel_out)
    save(output, results)


def run_torch(output):
    import numpy as np
    import torch
    import torch.distributed as dist

    # the single-device reference first, before the process group exists
    views = data()
    singles, initials = {}, {}
    for mode in ("simclr", "moco"):
        model = make_model(mode)
        initials[mode] = state(model)
        singles[mode] = (train(model, views), state(model))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    local = GLOBAL_BATCH // world
    results = {}
    for mode in ("simclr", "moco"):
        parallel = same_start(make_model(mode), initials[mode])
        losses = train(parallel, views, lambda batch: batch[rank * local : (rank + 1) * local])
        # each rank logs its local mean: the global loss is their average
        losses = torch.tensor(losses)
        dist.all_reduce(losses)
        parallel_out = ((losses / world).tolist(), state(parallel))
        results[mode] = (singles[mode], parallel_out)
    if rank == 0:
        save(output, results)
    dist.barrier()
    dist.destroy_process_group()
    del np


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("mirrored", "multiworker", "jax", "torch"), required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    {"mirrored": run_mirrored, "multiworker": run_multiworker, "jax": run_jax, "torch": run_torch}[
        args.engine
    ](args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
