"""The scripts' names of divergences and similarities follow the package's registries (issue 11).

The scripts define their flags, and pick the backend of their workers,
before Keras is imported, so the names are spelt out once, in
examples/registry_names.py: these tests keep that copy equal to
`keras_fmicl.losses.divergences.names()` and `keras_fmicl.losses.similarities.names()`,
and check that the scripts take their names from it rather than from a
copy of their own.
"""

import os
import re

import pytest

from benchmarks import loss_speed
from benchmarks import quality
from examples import registry_names
from keras_fmicl.losses import divergences
from keras_fmicl.losses import similarities
from tests.examples.example_module import load_example
from tests.examples.scripts import ROOT


def test_registry_names_are_the_registered_ones():
    assert registry_names.DIVERGENCES == divergences.names()
    assert registry_names.SIMILARITIES == similarities.names()


def test_example_flags_offer_the_registered_names():
    example = load_example()
    assert example.DIVERGENCES == divergences.names()
    assert tuple(example.flags.FLAGS["divergence"].parser.enum_values) == divergences.names()
    assert tuple(example.flags.FLAGS["similarity"].parser.enum_values) == similarities.names()


def test_benchmarks_use_the_registered_names():
    assert quality.DIVERGENCES == divergences.names()
    assert (loss_speed.DIVERGENCES, loss_speed.SIMILARITIES) == (divergences.names(), similarities.names())


@pytest.mark.parametrize("folder", ["examples", "benchmarks"])
def test_no_script_keeps_a_copy_of_the_names(folder):
    """A second copy could drift: only registry_names.py spells the lists out."""
    copy = re.compile(r"""["']squared_hellinger["']|["']gaussian["'],\s*["']cosine["']""")
    for name in sorted(os.listdir(os.path.join(ROOT, folder))):
        if name.endswith(".py") and name != "registry_names.py":
            with open(os.path.join(ROOT, folder, name), encoding="utf-8") as f:
                assert not copy.search(f.read()), f"{folder}/{name} spells out the registry's names"
