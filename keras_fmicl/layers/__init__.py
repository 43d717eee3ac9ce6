"""Keras layers: projection/prediction heads, image encoders, augmentation and the sentence encoder."""

from keras_fmicl.layers import augmentation
from keras_fmicl.layers import heads
from keras_fmicl.layers import image_encoders
from keras_fmicl.layers import normalization
from keras_fmicl.layers import sentence_encoder
from keras_fmicl.layers import text_backbone
from keras_fmicl.layers.augmentation import RandomResizedCrop
from keras_fmicl.layers.augmentation import SimCLRAugmentation
from keras_fmicl.layers.heads import PredictionHead
from keras_fmicl.layers.heads import ProjectionHead
from keras_fmicl.layers.image_encoders import resnet18
from keras_fmicl.layers.image_encoders import small_cnn
from keras_fmicl.layers.normalization import GlobalBatchNormalization
from keras_fmicl.layers.sentence_encoder import SentenceEncoder
from keras_fmicl.layers.text_backbone import tiny_backbone
from keras_fmicl.layers.text_backbone import word_piece_vocabulary
