"""The scripts' own lists of divergences follow the package's registry (issue 11).

examples/train_cifar.py and benchmarks/quality.py spell the divergence names
out (their flags are defined before Keras is imported); these tests keep the
lists equal to `keras_fmicl.divergences.names()`, as
tests/benchmarks/test_loss_speed.py does for benchmarks/loss_speed.py.
"""

from benchmarks import quality
from keras_fmicl import divergences
from tests.examples.example_module import load_example


def test_example_divergences_are_the_registered_ones():
    example = load_example()
    assert example.DIVERGENCES == divergences.names()
    # the --divergence flag offers exactly that list
    assert tuple(example.flags.FLAGS["divergence"].parser.enum_values) == divergences.names()


def test_quality_benchmark_divergences_are_the_registered_ones():
    assert quality.DIVERGENCES == divergences.names()
