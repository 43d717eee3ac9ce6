"""Evaluation of representations: kNN, linear probe, alignment/uniformity and STS."""

from keras_fmicl.evaluation import arrays
from keras_fmicl.evaluation import embedding
from keras_fmicl.evaluation import features
from keras_fmicl.evaluation import knn
from keras_fmicl.evaluation import linear
from keras_fmicl.evaluation import sts
from keras_fmicl.evaluation.embedding import alignment
from keras_fmicl.evaluation.embedding import uniformity
from keras_fmicl.evaluation.features import extract_features
from keras_fmicl.evaluation.knn import DEFAULT_KNN_K
from keras_fmicl.evaluation.knn import DEFAULT_KNN_TEMPERATURE
from keras_fmicl.evaluation.knn import KNNMonitor
from keras_fmicl.evaluation.knn import knn_accuracy
from keras_fmicl.evaluation.knn import knn_predict
from keras_fmicl.evaluation.linear import class_balanced_subset
from keras_fmicl.evaluation.linear import few_label_accuracy
from keras_fmicl.evaluation.linear import linear_evaluation
from keras_fmicl.evaluation.linear import linear_probe_accuracy
from keras_fmicl.evaluation.sts import STS_AVERAGE
from keras_fmicl.evaluation.sts import evaluate_sts
from keras_fmicl.evaluation.sts import sts_correlation
from keras_fmicl.evaluation.sts import sts_table
