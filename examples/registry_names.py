"""The names the scripts' flags offer, known without importing Keras.

The Keras backends, `keras_fmicl.losses.divergences.names()` and
`keras_fmicl.losses.similarities.names()`, spelt out: a script must pick its
backend (or the backend of a worker process) before Keras is imported, and
importing keras_fmicl imports Keras. tests/examples/test_example_registry.py
keeps these copies equal to the registries.

The examples import this module from their own folder (`import
registry_names`); the benchmarks, which run the examples, import it as
`examples.registry_names`.
"""

BACKENDS = ("tensorflow", "jax", "torch")
DIVERGENCES = ("kl", "js", "pearson", "squared_hellinger", "tsallis", "vlc")
SIMILARITIES = ("gaussian", "cosine")
