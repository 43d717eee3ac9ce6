"""Keras layers: projection/prediction heads, image encoders (ResNet, ViT, pooled backbones), augmentation and the sentence encoder."""

from keras_fmicl.layers import augmentation
from keras_fmicl.layers import backbones
from keras_fmicl.layers import heads
from keras_fmicl.layers import image_encoders
from keras_fmicl.layers import normalization
from keras_fmicl.layers import sentence_encoder
from keras_fmicl.layers import text_backbone
from keras_fmicl.layers import vision_transformer
from keras_fmicl.layers.augmentation import RandomResizedCrop
from keras_fmicl.layers.augmentation import SimCLRAugmentation
from keras_fmicl.layers.backbones import pooled_encoder
from keras_fmicl.layers.heads import PredictionHead
from keras_fmicl.layers.heads import ProjectionHead
from keras_fmicl.layers.image_encoders import resnet18
from keras_fmicl.layers.image_encoders import resnet50
from keras_fmicl.layers.image_encoders import small_cnn
from keras_fmicl.layers.normalization import GlobalBatchNormalization
from keras_fmicl.layers.sentence_encoder import SentenceEncoder
from keras_fmicl.layers.text_backbone import tiny_backbone
from keras_fmicl.layers.text_backbone import word_piece_vocabulary
from keras_fmicl.layers.vision_transformer import ClassTokenAndPositionEmbedding
from keras_fmicl.layers.vision_transformer import sincos_position_embedding
from keras_fmicl.layers.vision_transformer import vit_small
