"""examples/train_cifar.py imported as a module, once per test process.

The example defines its absl flags at import; importing it a second time
under another name would define them twice (absl's DuplicateFlagError), so
every test that reads the example's constants goes through `load_example`.
Importing it does not import Keras (the example imports it lazily).
"""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "train_cifar.py")
_MODULE_NAME = "keras_fmicl_examples_train_cifar"


def load_example():
    """The module of examples/train_cifar.py (its flags unparsed)."""
    module = sys.modules.get(_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_MODULE_NAME]
            raise
    return module
