"""Every public path of the flat layout keeps working (issue 25's constraint).

`OLD_PATHS` is the list of public names each module of the flat package
(before the move into folders, 887dbd7) offered; `keras_fmicl.<module>.<name>`
must resolve for one release after the move (the old modules become deprecated
aliases that forward to the new ones). Every class a `.keras` file names keeps
its registered name `keras_fmicl>ClassName`.
"""

import importlib
import inspect
import warnings

import keras
import pytest

import keras_fmicl

OLD_PATHS = {
    "augmentation": """
        RandomResizedCrop SimCLRAugmentation
    """.split(),
    "backend_ops": """
        backend elementwise_ops_fuse models_run_in_tf_data squared_row_norms view_dots
    """.split(),
    "contrast": """
        ContrastiveBatch KEY_VIEWS build candidate_logsumexp check_embeddings check_labels
        compute_dtype embedding_metrics masked_sum negative_logsumexp positive_sum validate
    """.split(),
    "contrastive_model": """
        ContrastiveModel VIEWS_KEY
    """.split(),
    "data": """
        CLASS_NAMES DEFAULT_RESCALE DIGITS_SPLIT_SEED DIGITS_TRAIN_FRACTION DOWNLOAD_PROBE_TIMEOUT
        DatasetNotAvailableError FASHION_MNIST_DIR GLUE_STSB_SPLITS MissingDependencyError
        NUM_CLASSES SPLITS STSPairs STS_SPLITS STS_SUBSETS STS_TASKS SYNTHETIC_SIZES cifar10
        cifar100 digits fashion_mnist image_dataset load load_glue_stsb load_sentences load_sts
        load_sts_tasks multiview_dataset read_idx sentence_dataset stl10 synthetic_cifar
    """.split(),
    "diagnostics": """
        PositivesDriftMonitor PositivesDriftWarning drifting_epochs
    """.split(),
    "distributed": """
        GlobalBatchNormalization all_gather average_gradients broadcast_variables cross_replica_sum
        is_multi_worker_strategy num_replicas patch_keras_multi_worker_fit replica_index scale_loss
        synchronize_optimizer
    """.split(),
    "divergences": """
        ALIASES BUILTIN_DIVERGENCES Divergence JensenShannon KullbackLeibler NEGATIVE_CORES
        NegativeForm Pearson REGISTRY SquaredHellinger Tsallis VinczeLeCam capped_exp deserialize
        get max_exponent names serialize
    """.split(),
    "encoders": """
        BATCH_NORM_EPSILON BATCH_NORM_MOMENTUM DATA_FORMAT RESNET18_STAGE_BLOCKS RESNET18_VARIANTS
        resnet18 small_cnn
    """.split(),
    "evaluation": """
        DEFAULT_KNN_K DEFAULT_KNN_TEMPERATURE KNNMonitor STS_AVERAGE alignment class_balanced_subset
        evaluate_sts extract_features few_label_accuracy knn_accuracy knn_predict linear_evaluation
        linear_probe_accuracy sts_correlation sts_table uniformity
    """.split(),
    "fast_paths": """
        MAX_ERROR_AMPLIFICATION PATHS ScorePlan largest_exponent negative_form negative_sum
        score_plan subtraction_is_accurate symmetric_row_sum warn_if_beyond_exact_range
    """.split(),
    "heads": """
        PredictionHead ProjectionHead
    """.split(),
    "losses": """
        ContrastiveLoss DEFAULT_ALPHA DEFAULT_INFONCE_TEMPERATURE FMICLLoss InfoNCELoss
        SUPERVISED_FORMS fmicl info_nce
    """.split(),
    "methods": """
        HARD_NEGATIVES Method MoCoV2 MoCoV3 MomentumMethod STANDARDIZE_EPSILON SimCLR SimCSE
        SupervisedSimCSE VIEWS_KEY as_float_images encoder_input_rank flatten_views get group_rows
        map_shapes repeat_views select_views standardize_over_batch
    """.split(),
    "schedules": """
        CosineMomentum
    """.split(),
    "similarities": """
        ALIASES BUILTIN_SIMILARITIES Cosine DEFAULT_SIGMA DEFAULT_TEMPERATURE Gaussian REGISTRY
        Similarity canonical_name cosine_matrix get l2_normalize names row_dot serialize
    """.split(),
    "text": """
        BERT_RESERVED_TOKENS PADDING_MASK POOLINGS SEGMENT_IDS SIMCSE_NLI_HEADER SUFFIX_INDICATOR
        SentenceEncoder TOKEN_IDS UNUSED_POOLER_LAYERS import_keras_hub load_sentence_tuples
        sentence_tuple_dataset tiny_backbone word_piece_vocabulary
    """.split(),
    "validation": """
        ConfigEquality Registry check_bool check_choice check_integer check_positive_integer
        check_positive_number check_sample_weight concrete_values describe is_integer is_real
        registry_key
    """.split(),
}

TOP_LEVEL = """
    ContrastiveLoss ContrastiveModel Cosine CosineMomentum Divergence FMICLLoss Gaussian InfoNCELoss
    JensenShannon KNNMonitor KullbackLeibler NegativeForm Pearson PositivesDriftMonitor
    PredictionHead ProjectionHead RandomResizedCrop SentenceEncoder SimCLRAugmentation Similarity
    SquaredHellinger Tsallis VinczeLeCam alignment fmicl info_nce knn_accuracy linear_evaluation
    resnet18 small_cnn uniformity
""".split()

REGISTERED = """
    ContrastiveModel Cosine CosineMomentum Divergence FMICLLoss Gaussian GlobalBatchNormalization
    InfoNCELoss JensenShannon KullbackLeibler Method MoCoV2 MoCoV3 MomentumMethod Pearson
    PositivesDriftMonitor PredictionHead ProjectionHead RandomResizedCrop SentenceEncoder SimCLR
    SimCLRAugmentation SimCSE Similarity SquaredHellinger SupervisedSimCSE Tsallis VinczeLeCam
""".split()


def resolve(module_name, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(f"keras_fmicl.{module_name}")
        return getattr(module, name)


@pytest.mark.parametrize("module_name", sorted(OLD_PATHS))
def test_every_public_name_of_the_flat_layout_still_resolves(module_name):
    missing = []
    for name in OLD_PATHS[module_name]:
        try:
            resolve(module_name, name)
        except AttributeError:
            missing.append(name)
    assert not missing, f"keras_fmicl.{module_name} lost {missing}"


def test_the_top_level_names_stay_and_are_the_same_objects_as_their_module_paths():
    for name in TOP_LEVEL:
        assert hasattr(keras_fmicl, name), name
    for module_name, names in OLD_PATHS.items():
        for name in names:
            if name in TOP_LEVEL and inspect.isclass(getattr(keras_fmicl, name)):
                assert resolve(module_name, name) is getattr(keras_fmicl, name), (module_name, name)


def test_every_saved_class_keeps_its_registered_name():
    registered = {}
    for module_name, names in OLD_PATHS.items():
        for name in names:
            value = resolve(module_name, name)
            if inspect.isclass(value) and name in REGISTERED:
                registered[name] = keras.saving.get_registered_name(value)
    assert registered == {name: f"keras_fmicl>{name}" for name in REGISTERED}
    for name in REGISTERED:
        assert keras.saving.get_registered_object(f"keras_fmicl>{name}") is not None, name
