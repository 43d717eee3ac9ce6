"""keras_fmicl: f-MICL contrastive learning for Keras 3 (TensorFlow, JAX, PyTorch).

f-MICL (Lu, Zhang, Sun, Guo, Yu, TMLR 2023) generalises InfoNCE: the KL
mutual information becomes any f-divergence and cosine similarity gives way
to the f-Gaussian similarity.

Folders by role, imports only downward: `utils` <- `losses`, `data` <-
`layers`, `evaluation` <- `methods` <- `models`.
"""

import sys as _sys

from keras_fmicl import data
from keras_fmicl import evaluation
from keras_fmicl import layers
from keras_fmicl import losses
from keras_fmicl import methods
from keras_fmicl import models
from keras_fmicl import utils
from keras_fmicl.evaluation import KNNMonitor
from keras_fmicl.evaluation import alignment
from keras_fmicl.evaluation import knn_accuracy
from keras_fmicl.evaluation import linear_evaluation
from keras_fmicl.evaluation import uniformity
from keras_fmicl.layers import PredictionHead
from keras_fmicl.layers import ProjectionHead
from keras_fmicl.layers import RandomResizedCrop
from keras_fmicl.layers import SentenceEncoder
from keras_fmicl.layers import SimCLRAugmentation
from keras_fmicl.layers import resnet18
from keras_fmicl.layers import small_cnn
from keras_fmicl.losses import ContrastiveLoss
from keras_fmicl.losses import Cosine
from keras_fmicl.losses import Divergence
from keras_fmicl.losses import FMICLLoss
from keras_fmicl.losses import Gaussian
from keras_fmicl.losses import InfoNCELoss
from keras_fmicl.losses import JensenShannon
from keras_fmicl.losses import KullbackLeibler
from keras_fmicl.losses import NegativeForm
from keras_fmicl.losses import Pearson
from keras_fmicl.losses import Similarity
from keras_fmicl.losses import SquaredHellinger
from keras_fmicl.losses import Tsallis
from keras_fmicl.losses import VinczeLeCam
from keras_fmicl.losses import fmicl
from keras_fmicl.losses import info_nce
from keras_fmicl.methods import CosineMomentum
from keras_fmicl.models import ContrastiveModel
from keras_fmicl.models import PositivesDriftMonitor
from keras_fmicl.utils.deprecation import alias_module
from keras_fmicl.version import __version__

# The modules of the flat layout (before 0.10), forwarded for one release.
for _old, _new in {
    "augmentation": [layers.augmentation],
    "backend_ops": [utils.backend_ops],
    "contrast": [losses.pairs, losses.pair_sums, utils.backend_ops],
    "contrastive_model": [models.contrastive_model],
    "diagnostics": [models.diagnostics],
    "distributed": [utils.distributed, layers.normalization],
    "divergences": [losses.divergences],
    "encoders": [layers.image_encoders],
    "fast_paths": [losses.fast_paths],
    "heads": [layers.heads],
    "schedules": [methods.schedules],
    "similarities": [losses.similarities],
    "text": [layers.sentence_encoder, layers.text_backbone, data.sentences, utils.imports],
    "validation": [utils.checks, utils.registry],
}.items():
    alias_module(_sys.modules[__name__], _old, _new)
del alias_module, _old, _new
