"""keras_fmicl: f-MICL contrastive learning for Keras 3 (TensorFlow, JAX, PyTorch).

f-MICL (Lu, Zhang, Sun, Guo, Yu, TMLR 2023) generalises InfoNCE: the KL
mutual information becomes any f-divergence and cosine similarity gives way
to the f-Gaussian similarity.
"""

from keras_fmicl import augmentation
from keras_fmicl import backend_ops
from keras_fmicl import contrast
from keras_fmicl import contrastive_model
from keras_fmicl import data
from keras_fmicl import diagnostics
from keras_fmicl import divergences
from keras_fmicl import encoders
from keras_fmicl import evaluation
from keras_fmicl import fast_paths
from keras_fmicl import heads
from keras_fmicl import losses
from keras_fmicl import methods
from keras_fmicl import schedules
from keras_fmicl import similarities
from keras_fmicl import text
from keras_fmicl.augmentation import RandomResizedCrop
from keras_fmicl.augmentation import SimCLRAugmentation
from keras_fmicl.contrastive_model import ContrastiveModel
from keras_fmicl.diagnostics import PositivesDriftMonitor
from keras_fmicl.divergences import Divergence
from keras_fmicl.divergences import JensenShannon
from keras_fmicl.divergences import KullbackLeibler
from keras_fmicl.divergences import NegativeForm
from keras_fmicl.divergences import Pearson
from keras_fmicl.divergences import SquaredHellinger
from keras_fmicl.divergences import Tsallis
from keras_fmicl.divergences import VinczeLeCam
from keras_fmicl.encoders import resnet18
from keras_fmicl.encoders import small_cnn
from keras_fmicl.evaluation import KNNMonitor
from keras_fmicl.evaluation import alignment
from keras_fmicl.evaluation import knn_accuracy
from keras_fmicl.evaluation import linear_evaluation
from keras_fmicl.evaluation import uniformity
from keras_fmicl.heads import PredictionHead
from keras_fmicl.heads import ProjectionHead
from keras_fmicl.losses import ContrastiveLoss
from keras_fmicl.losses import FMICLLoss
from keras_fmicl.losses import InfoNCELoss
from keras_fmicl.losses import fmicl
from keras_fmicl.losses import info_nce
from keras_fmicl.schedules import CosineMomentum
from keras_fmicl.similarities import Cosine
from keras_fmicl.similarities import Gaussian
from keras_fmicl.similarities import Similarity
from keras_fmicl.text import SentenceEncoder
from keras_fmicl.version import __version__
