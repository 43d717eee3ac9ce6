"""Training throughput of `ContrastiveModel.fit` against hand-written loops.

For each backend, in one process per backend, the same encoder, projection
head, loss (`FMICLLoss`), optimizer and batches of pre-drawn views are
trained by

* `fit`: `keras_fmicl.ContrastiveModel.compile(...).fit(dataset)`;
* `loop`: the smallest hand-written loop of the backend (a `tf.function`
  step with `GradientTape`; a `jax.jit` step over `stateless_call` and
  `optimizer.stateless_apply`; an eager torch step with `backward()`);
* `keras_io` (TensorFlow only): a keras.io-style SimCLR `train_step` with
  `GradientTape` and the NT-Xent cross-entropy, the peer most Keras users
  start from.

It reports images per second (two views per sample count as two images) and
the overhead ratio `fit_seconds / loop_seconds` (target <= 1.05), prints a
Markdown table and writes JSON.

    python benchmarks/throughput.py                       # all backends
    python benchmarks/throughput.py --backends jax --steps 50 --batch_size 512
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: python benchmarks/throughput.py
    sys.path.append(ROOT)
from benchmarks import harness  # noqa: E402
from examples.registry_names import BACKENDS  # noqa: E402

ENCODER = {"name": "small_cnn"}
# What `fit` resolved `jit_compile="auto"` to (XLA on TensorFlow): the
# TensorFlow loop compiles the same way, so the ratio measures fit's own
# overhead, not XLA against the TF graph executor.
FIT_JIT_COMPILE = {"value": False}
# The training method `fit` ran (`model.mode`): SimCLR, as the loops do.
FIT_METHOD = {"value": None}


def build_networks(keras, keras_fmicl, image_shape, width, projection_dim):
    if ENCODER["name"] == "resnet18":
        encoder = keras_fmicl.resnet18(image_shape, width=width)
    else:
        encoder = keras_fmicl.small_cnn(image_shape, width=width)
    projector = keras_fmicl.ProjectionHead(2 * encoder.outputs[0].shape[-1], projection_dim)
    return encoder, projector


def make_views(args):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (args.steps * args.batch_size, 2) + tuple(args.image_shape)
    return rng.uniform(size=shape).astype("float32")


def time_fit(args, views):
    import keras

    import keras_fmicl

    keras.utils.set_random_seed(0)
    encoder, projector = build_networks(keras, keras_fmicl, tuple(args.image_shape), args.width, args.projection_dim)
    model = keras_fmicl.ContrastiveModel(encoder, method=keras_fmicl.methods.SimCLR(), projector=projector)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras_fmicl.FMICLLoss("js"))
    FIT_JIT_COMPILE["value"] = bool(model.jit_compile)
    FIT_METHOD["value"] = model.mode
    warmup = views[: args.warmup * args.batch_size]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices(views).batch(args.batch_size, drop_remainder=True).cache()
        model.fit(dataset.take(args.warmup), epochs=1, verbose=0)  # compile / trace
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        return time.perf_counter() - start
    # JAX and torch: numpy batches (no TensorFlow needed), as the loop gets
    model.fit(warmup, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(views, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start


def _loss_of(keras_fmicl, z):
    return keras_fmicl.FMICLLoss("js")(None, z)


def time_loop(args, views):
    """The minimal hand-written loop of the current backend."""
    import keras
    from keras import ops

    import keras_fmicl

    keras.utils.set_random_seed(0)
    backend = keras.backend.backend()
    encoder, projector = build_networks(keras, keras_fmicl, tuple(args.image_shape), args.width, args.projection_dim)
    network = keras.Sequential([encoder, projector])
    network.build((None,) + tuple(args.image_shape))
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(network.trainable_variables)
    batch, image = args.batch_size, tuple(args.image_shape)
    batches = [views[i * batch : (i + 1) * batch] for i in range(args.steps)]

    def embed(flat, training=True):
        return ops.reshape(network(flat, training=training), (batch, 2, -1))

    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=FIT_JIT_COMPILE["value"])
        def step(x):
            flat = tf.reshape(x, (-1,) + image)
            with tf.GradientTape() as tape:
                loss = _loss_of(keras_fmicl, embed(flat))
            grads = tape.gradient(loss, network.trainable_variables)
            optimizer.apply(grads, network.trainable_variables)
            return loss

        run = lambda x: step(tf.constant(x))  # noqa: E731
        sync = lambda out: float(out)  # noqa: E731
    elif backend == "jax":
        import jax

        def loss_fn(trainable, non_trainable, flat):
            z, non_trainable = network.stateless_call(trainable, non_trainable, flat, training=True)
            return _loss_of(keras_fmicl, ops.reshape(z, (batch, 2, -1))), non_trainable

        @jax.jit
        def step(state, x):
            trainable, non_trainable, optimizer_state = state
            flat = x.reshape((-1,) + image)
            (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, non_trainable, flat)
            trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
            return loss, (trainable, non_trainable, optimizer_state)

        # a tuple of lists, the structure `step` returns: no retracing
        state = (
            [v.value for v in network.trainable_variables],
            [v.value for v in network.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )

        def run(x):
            nonlocal state
            loss, state = step(state, x)
            return loss

        sync = lambda out: float(out.block_until_ready())  # noqa: E731
    else:
        import torch

        def run(x):
            flat = torch.as_tensor(x).reshape((-1,) + image)
            network.zero_grad()
            loss = _loss_of(keras_fmicl, embed(flat))
            loss.backward()
            variables = network.trainable_variables
            with torch.no_grad():
                optimizer.apply([v.value.grad for v in variables], variables)
            return loss

        sync = lambda out: float(out.detach())  # noqa: E731

    for x in batches[: args.warmup]:
        sync(run(x))
    start = time.perf_counter()
    for x in batches:
        out = run(x)
    sync(out)
    return time.perf_counter() - start


def time_keras_io(args, views):
    """A keras.io-style SimCLR model: custom train_step with GradientTape."""
    import keras
    import tensorflow as tf

    import keras_fmicl

    keras.utils.set_random_seed(0)
    encoder, projector = build_networks(keras, keras_fmicl, tuple(args.image_shape), args.width, args.projection_dim)
    image = tuple(args.image_shape)

    class GradientTapeSimCLR(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder, self.projector = encoder, projector
            self.temperature = 0.1
            self.loss_tracker = keras.metrics.Mean(name="loss")

        def contrastive_loss(self, z1, z2):
            z1, z2 = tf.math.l2_normalize(z1, axis=1), tf.math.l2_normalize(z2, axis=1)
            similarities = tf.matmul(z1, z2, transpose_b=True) / self.temperature
            labels = tf.range(tf.shape(z1)[0])
            forward = keras.losses.sparse_categorical_crossentropy(labels, similarities, from_logits=True)
            backward = keras.losses.sparse_categorical_crossentropy(
                labels, tf.transpose(similarities), from_logits=True
            )
            return tf.reduce_mean(forward + backward) / 2

        def train_step(self, data):
            x1, x2 = data[:, 0], data[:, 1]
            with tf.GradientTape() as tape:
                z1 = self.projector(self.encoder(x1, training=True), training=True)
                z2 = self.projector(self.encoder(x2, training=True), training=True)
                loss = self.contrastive_loss(z1, z2)
            variables = self.encoder.trainable_weights + self.projector.trainable_weights
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            self.loss_tracker.update_state(loss)
            return {"loss": self.loss_tracker.result()}

    model = GradientTapeSimCLR()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build((None, 2) + image)
    model.encoder.build((None,) + image)
    dataset = tf.data.Dataset.from_tensor_slices(views).batch(args.batch_size, drop_remainder=True).cache()
    model.fit(dataset.take(args.warmup), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - start


def worker(args):
    import keras

    backend = keras.backend.backend()
    views = make_views(args)
    images = args.steps * args.batch_size * 2
    result = {"backend": backend, "steps": args.steps, "batch_size": args.batch_size,
              "image_shape": args.image_shape, "width": args.width, "encoder": args.encoder}
    contenders = [("fit", time_fit), ("loop", time_loop)] + (
        [("keras_io", time_keras_io)] if backend == "tensorflow" else []
    )
    times = {name: [] for name, _ in contenders}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every contender
        for name, fn in contenders:
            times[name].append(fn(args, views))
    for name, seconds in times.items():
        result[name] = {"seconds": min(seconds), "images_per_second": images / min(seconds), "all_seconds": seconds}
    result["jit_compile"] = FIT_JIT_COMPILE["value"]
    result["method"] = FIT_METHOD["value"]
    result["fit_over_loop"] = result["fit"]["seconds"] / result["loop"]["seconds"]
    if "keras_io" in result:
        result["fit_over_keras_io"] = result["fit"]["seconds"] / result["keras_io"]["seconds"]
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per measurement.")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Best of this many measurements.")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_shape", type=int, nargs=3, default=[28, 28, 1])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--encoder", default="small_cnn", choices=("small_cnn", "resnet18"))
    parser.add_argument("--projection_dim", type=int, default=64)
    parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR, "throughput.json"))
    harness.add_worker_flags(parser)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (a smoke test).")
    args = parser.parse_args(argv)
    ENCODER["name"] = args.encoder
    if args.quick:
        args.steps, args.warmup, args.repeats, args.batch_size, args.width = 3, 1, 1, 16, 4
        args.image_shape = [8, 8, 1]
    return args


def worker_arguments(args):
    """The flags that hand this run's settings to a worker process."""
    return ["--worker", f"--steps={args.steps}", f"--warmup={args.warmup}", f"--repeats={args.repeats}",
            f"--batch_size={args.batch_size}", "--image_shape", *map(str, args.image_shape),
            f"--width={args.width}", f"--encoder={args.encoder}", f"--projection_dim={args.projection_dim}"]


def markdown(args, results):
    """The report's Markdown table, with the line saying what was timed."""
    lines = [
        f"\nbatch {args.batch_size} x 2 views of {tuple(args.image_shape)}, {args.encoder} width {args.width}, "
        f"{args.steps} steps, best of {args.repeats} interleaved measurements; on TensorFlow every contender "
        f"runs XLA-compiled, as fit's jit_compile='auto' does\n",
        harness.table_row(["backend", "fit (img/s)", "hand-written loop (img/s)", "fit / loop time",
                           "keras.io GradientTape (img/s)", "fit / keras.io time"]),
        harness.table_rule("llllll"),
    ]
    for r in results:
        keras_io = r.get("keras_io")
        cells = [r["backend"], f"{r['fit']['images_per_second']:.0f}", f"{r['loop']['images_per_second']:.0f}",
                 f"{r['fit_over_loop']:.3f}"]
        cells += [f"{keras_io['images_per_second']:.0f}", f"{r['fit_over_keras_io']:.3f}"] if keras_io else ["-", "-"]
        lines.append(harness.table_row(cells))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        harness.write_json(worker(args), args.worker_output)
        return 0
    results = []
    for backend in args.backends.split(","):
        result = harness.run_worker(os.path.abspath(__file__), backend, worker_arguments(args))
        if "error" in result:
            print(f"[throughput] {backend} FAILED:\n{result.get('stderr_tail', result['error'])}", file=sys.stderr)
            continue
        results.append(result)
    report = {
        "benchmark": "throughput",
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_output", "output")},
        "results": results,
        "machine": harness.machine_info(cpus="cpu_count", platform="platform", load_average="loadavg"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    harness.write_json(report, args.output)
    print(markdown(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
