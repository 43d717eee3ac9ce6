"""Loss values and gradients of every divergence x similarity x pair set, to check a refactoring changes no bit.

    KERAS_BACKEND=jax python benchmarks/loss_fingerprint.py before-jax.npz   # on the old commit
    KERAS_BACKEND=jax python benchmarks/loss_fingerprint.py after-jax.npz    # on the new one
    python benchmarks/loss_fingerprint.py --compare before-jax.npz after-jax.npz

Forms: plain (self-supervised), supervised (labels), keys, queue, and keys of
other views (`key_views="all"`), plus InfoNCE at two temperatures: 124 arrays.
"""
import sys

import numpy as np

if len(sys.argv) == 4 and sys.argv[1] == "--compare":
    before, after = np.load(sys.argv[2]), np.load(sys.argv[3])
    differ = [key for key in before.files if not np.array_equal(before[key], after[key])]
    print(f"{len(before.files)} arrays, {len(differ)} differ: {differ[:10]}")
    sys.exit(1 if differ or set(before.files) != set(after.files) else 0)

import keras  # noqa: E402
from keras import ops  # noqa: E402

import keras_fmicl as kf  # noqa: E402

out = {}
rng = np.random.default_rng(0)
z = rng.normal(size=(8, 2, 6)).astype("float32")
labels = np.array([0, 1, 2, 0, 1, 2, 3, 3])
keys = rng.normal(size=(8, 2, 6)).astype("float32")
queue = rng.normal(size=(16, 6)).astype("float32")

def grad_of(fn, x):
    b = keras.backend.backend()
    if b == "tensorflow":
        import tensorflow as tf
        x = tf.Variable(x)
        with tf.GradientTape() as t:
            v = fn(x)
        return v.numpy(), t.gradient(v, x).numpy()
    if b == "jax":
        import jax
        v, g = jax.value_and_grad(lambda a: fn(a))(x)
        return np.asarray(v), np.asarray(g)
    import torch
    x = torch.tensor(x, requires_grad=True)
    v = fn(x)
    v.backward()
    return v.detach().numpy(), x.grad.numpy()

divs = list(kf.losses.divergences.names())
sims = list(kf.losses.similarities.names())
for d in divs:
    for s in sims:
        loss = kf.FMICLLoss(d, similarity=s)
        for form in ("plain", "supervised", "keys", "queue", "all"):
            def fn(x):
                if form == "plain":
                    return loss(None, x)
                if form == "supervised":
                    return ops.mean(kf.fmicl(labels, x, divergence=d, similarity=s))
                if form == "keys":
                    return ops.mean(kf.fmicl(None, x, divergence=d, similarity=s, keys=keys))
                if form == "queue":
                    return ops.mean(kf.fmicl(None, x, divergence=d, similarity=s, queue=queue))
                return ops.mean(kf.fmicl(None, x[:, :1], divergence=d, similarity=s, keys=keys, queue=queue, key_views="all"))
            try:
                v, g = grad_of(fn, z)
            except Exception as e:
                print("skip", d, s, form, type(e).__name__, str(e)[:100]); continue
            out[f"{d}-{s}-{form}-v"] = v; out[f"{d}-{s}-{form}-g"] = g
for t in (0.1, 0.5):
    v, g = grad_of(lambda x: kf.InfoNCELoss(temperature=t)(None, x), z)
    out[f"infonce-{t}-v"] = v; out[f"infonce-{t}-g"] = g
np.savez(sys.argv[1], **out)
print(len(out), "arrays")
