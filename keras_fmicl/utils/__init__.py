"""Shared utilities: argument checks, registries, errors, optional imports, backend-specific operations and collectives."""

from keras_fmicl.utils import backend_ops
from keras_fmicl.utils import checks
from keras_fmicl.utils import distributed
from keras_fmicl.utils import errors
from keras_fmicl.utils import imports
from keras_fmicl.utils import registry
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_choice
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import check_positive_number
from keras_fmicl.utils.checks import check_sample_weight
from keras_fmicl.utils.checks import check_seed
from keras_fmicl.utils.checks import check_sentences
from keras_fmicl.utils.checks import concrete_values
from keras_fmicl.utils.checks import describe
from keras_fmicl.utils.checks import is_integer
from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.errors import DatasetNotAvailableError
from keras_fmicl.utils.errors import MissingDependencyError
from keras_fmicl.utils.imports import import_keras_hub
from keras_fmicl.utils.imports import import_tensorflow
from keras_fmicl.utils.registry import PACKAGE
from keras_fmicl.utils.registry import ConfigEquality
from keras_fmicl.utils.registry import Registry
from keras_fmicl.utils.registry import registry_key
