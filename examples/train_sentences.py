"""Train sentence embeddings with f-MICL (or InfoNCE) in the SimCSE setting.

The paper's text experiment (Lu et al., TMLR 2023): BERT-base trained on
10^6 English Wikipedia sentences as unsupervised SimCSE (the two views of
a sentence are two forward passes with different dropout masks, the first
pass the anchor and the second passes of the batch its candidates, as
SimCSE's `cl_forward`; batch 64, learning rate 3e-5, 1 epoch), evaluated by
the average Spearman correlation over the seven STS tasks (with
`--loss infonce` the objective is SimCSE's own):

    # the paper's setting, on a GPU (downloads BERT-base from keras-hub once)
    python examples/train_sentences.py --backbone bert_base_en_uncased \\
        --corpus wiki1m_for_simcse.txt --sts_dir SentEval/data --backend jax

    # offline smoke test: a tiny random-init BERT, its WordPiece vocabulary
    # built from the corpus (here the small built-in synthetic one)
    python examples/train_sentences.py --backbone tiny --max_steps 5

The corpus is SimCSE's `wiki1m_for_simcse.txt` (one sentence a line; from
https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse). The STS
data is SentEval's folder (`SentEval/data/downstream/download_dataset.sh` of
the SimCSE repository): STS12-16, STS-B and SICK-R, scored in SimCSE's "all"
setting. Without `--sts_dir` there is no STS table: the script says so and
reports the alignment and uniformity of a held-out slice of the corpus
instead. `--method supervised` trains supervised SimCSE
(`keras_fmicl.methods.SupervisedSimCSE`) on a CSV or TSV of (premise,
entailment, contradiction) rows given as `--corpus`, e.g. SimCSE's
`nli_for_simcse.csv` (same source).

`--backbone tiny` has no pretrained weights: its STS figures (or held-out
metrics) only show that the pipeline runs end to end; they say nothing of
f-MICL. With a keras-hub preset name (`bert_base_en_uncased`,
`roberta_base_en`, ...) the weights are downloaded once; without network
the run stops with one sentence saying so.

Outputs in `--output_dir` (default a new
`runs/sentences_<backbone>_<method>_<loss>_<backend>_<N>/`, e.g.
`runs/sentences_tiny_simcse_fmicl-kl-gaussian_jax_1/`, N counting up; an
explicit `--output_dir` must be empty or new):

    flags.json      the run's flags (what --resume must repeat)
    checkpoint/     the weights (optimizer state included) and the logs of the
                    last completed epoch: a killed run continues from there
                    when started again with the same flags and --resume
    results.json    flags, settings, per-step history, STS table (or the
                    held-out metrics), timings, versions (backend's too),
                    device; written before the figure. A run whose loss
                    turns non-finite stops (exit status 1) and writes it with
                    "diverged": true
    curves.png      loss, alignment, uniformity and mi_estimate per step
                    (the running means of the epoch that `fit` prints)
    encoder.keras   the trained `keras_fmicl.SentenceEncoder` (without
                    SimCSE's MLP), `keras.models.load_model`
    mlp.keras       with --method supervised (or --keep_mlp): the MLP the
                    evaluation runs the encoder's features through
    vocabulary.txt  with --backbone tiny: the WordPiece vocabulary, one
                    token a line (keras_hub.models.BertTokenizer(vocabulary=...))
"""

from __future__ import annotations

import math
import os
import re
import sys
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/_common.py
from _common import FlagError  # noqa: E402
from _common import RunDiverged  # noqa: E402
from _common import backend_version_and_device  # noqa: E402
from _common import check_batch  # noqa: E402
from _common import check_at_least_two  # noqa: E402
from _common import check_finite  # noqa: E402
from _common import check_positive  # noqa: E402
from _common import default_output_dir  # noqa: E402
from _common import describe_loss as describe_any_loss  # noqa: E402
from _common import divergence_check  # noqa: E402
from _common import exit_code  # noqa: E402
from _common import import_frameworks  # noqa: E402
from _common import loss_flag_rules  # noqa: E402
from _common import loss_tag  # noqa: E402
from _common import open_run_folder  # noqa: E402
from _common import print_results_table  # noqa: E402
from _common import quiet_native_logging  # noqa: E402
from _common import refuse_ignored_flags  # noqa: E402
from _common import run_in_folder  # noqa: E402
from _common import select_backend  # noqa: E402
from _common import write_json  # noqa: E402
from _figures import plot_safely  # noqa: E402
from _figures import pyplot  # noqa: E402
from _figures import save_figure  # noqa: E402
from registry_names import BACKENDS  # noqa: E402
from registry_names import DIVERGENCES  # noqa: E402
from registry_names import SIMILARITIES  # noqa: E402

TINY = "tiny"

# The paper's text setting (Lu et al. 2023, the setup table, text column;
# docs/fmicl-math.md section 8): the f-Gaussian similarity with
# (2 sigma^2)^-1 = 20, i.e. sigma = sqrt(1/40) ~ 0.1581, and alpha = 409600
# (doubled from 100 until it stopped helping).
PAPER_TEXT_SIGMA = math.sqrt(1.0 / 40.0)
PAPER_TEXT_ALPHA = 409600.0
# SimCSE's temperature of the cosine similarity (Gao et al. 2021).
SIMCSE_TEMPERATURE = 0.05
HELD_OUT_SENTENCES = 256

flags.DEFINE_enum("backend", None, BACKENDS, "Keras backend (default: $KERAS_BACKEND, else tensorflow).")
flags.DEFINE_string(
    "backbone", TINY,
    "A keras-hub preset name (bert_base_en_uncased, roberta_base_en, ...; downloaded once), or 'tiny': a "
    "small random-init BERT with a WordPiece vocabulary built from the corpus, fully offline (a smoke test).",
)
flags.DEFINE_string(
    "corpus", None,
    "--method simcse: a text file, one sentence a line (SimCSE's wiki1m_for_simcse.txt); with --backbone "
    "tiny it defaults to a small built-in synthetic corpus. --method supervised: a CSV or TSV of (premise, "
    "entailment, contradiction) rows (SimCSE's nli_for_simcse.csv).",
)
flags.DEFINE_string("sts_dir", None, "SentEval's data folder (SentEval/data): evaluate on STS12-16, STS-B and SICK-R.")
flags.DEFINE_list(
    "sts_tasks", ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"],
    "The STS tasks of --sts_dir to evaluate on (default: the seven SimCSE and the paper average).",
)
flags.DEFINE_enum(
    "method", "simcse", ("simcse", "supervised"),
    "simcse: views from dropout (keras_fmicl.methods.SimCSE); supervised: entailments as positives, "
    "contradictions as hard negatives (keras_fmicl.methods.SupervisedSimCSE).",
)
flags.DEFINE_enum("loss", "fmicl", ("fmicl", "infonce"), "f-MICL, or InfoNCE (with --method's default pairs, SimCSE's loss exactly).")
flags.DEFINE_enum("divergence", "kl", DIVERGENCES, "f-divergence of f-MICL.")
flags.DEFINE_float("tsallis_order", 1.5, "Order of the Tsallis divergence.")
flags.DEFINE_enum("similarity", None, SIMILARITIES, "Similarity (default: gaussian for f-MICL, cosine for InfoNCE).")
flags.DEFINE_float("sigma", None, f"Bandwidth of the f-Gaussian similarity (default: the paper's text setting, sqrt(1/40) = {PAPER_TEXT_SIGMA:.4f}).")
flags.DEFINE_float("alpha", None, f"Weight of the negative term of f-MICL (default: the paper's text setting, {PAPER_TEXT_ALPHA:g}).")
flags.DEFINE_float("temperature", None, f"Temperature of the cosine similarity (default: SimCSE's {SIMCSE_TEMPERATURE}).")
flags.DEFINE_enum("pooling", "cls", ("cls", "mean"), "Sentence features: [CLS] before the pooler (SimCSE's), or the masked mean.")
flags.DEFINE_bool(
    "keep_mlp", None,
    "Evaluate through the training MLP too (SimCSE's 'cls' pooler) rather than without it "
    "('cls_before_pooler'). Default: SimCSE's convention, kept for --method supervised, dropped for simcse.",
)
flags.DEFINE_bool("symmetric", False, "Let every view anchor (SimCLR's pairs) instead of SimCSE's first pass only.")
flags.DEFINE_integer("sequence_length", 32, "Tokens per sentence, [CLS] and [SEP] included (SimCSE: 32).")
flags.DEFINE_integer("batch_size", 64, "Sentences (or sentence tuples) per batch, at least 2 (the others are the negatives).")
flags.DEFINE_float("learning_rate", 3e-5, "Initial learning rate of Adam, decaying linearly to 0.")
flags.DEFINE_integer("epochs", 1, "Passes over the corpus.")
flags.DEFINE_integer("max_steps", None, "Stop after this many training steps (quick runs).")
flags.DEFINE_integer("max_sentences", None, "Use only the first N sentences (or tuples) of the corpus.")
flags.DEFINE_integer("seed", 0, "Random seed (weights, dropout, data order).")
flags.DEFINE_string(
    "output_dir", None,
    "Where the run goes; refused if it holds anything, unless --resume (default: a new "
    "runs/sentences_<backbone>_<method>_<loss>-<divergence>-<similarity>_<backend>_<N>, N counting up).",
)
flags.DEFINE_bool(
    "resume", False,
    "Continue the run in --output_dir (default: the last runs/sentences_..._<N> of these flags) from its "
    "last completed epoch (checkpoint/); its flags (flags.json) must be these.",
)
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
flags.DEFINE_bool("debug", False, "Show TensorFlow/XLA's C++ start-up logging, hidden by default.")

FLAGS = flags.FLAGS


def check_flags():
    """Checks the values absl cannot: one sentence per problem."""
    check_positive({name: getattr(FLAGS, name) for name in (
        "sigma", "temperature", "alpha", "learning_rate", "batch_size", "epochs", "max_steps", "max_sentences")})
    check_finite({name: getattr(FLAGS, name) for name in _OWN_FLAGS})
    check_at_least_two({name: getattr(FLAGS, name) for name in ("batch_size", "max_sentences")}, "sentences")
    if FLAGS.sequence_length < 2:
        raise FlagError(f"--sequence_length must be at least 2 ([CLS] and [SEP]), got {FLAGS.sequence_length}.")
    if FLAGS.divergence == "tsallis" and (FLAGS.tsallis_order <= 0 or FLAGS.tsallis_order == 1):
        raise FlagError(f"--tsallis_order must be positive and not 1, got {FLAGS.tsallis_order}.")
    if FLAGS.loss == "infonce" and FLAGS.alpha is not None:
        raise FlagError("--alpha weighs the negative term of f-MICL; InfoNCE has none (drop --alpha or use --loss fmicl).")
    if not FLAGS.backbone.strip():
        raise FlagError("--backbone must be a keras-hub preset name (e.g. bert_base_en_uncased) or 'tiny'.")
    if FLAGS.corpus is None:
        if FLAGS.method == "supervised":
            raise FlagError(
                "--method supervised trains on sentence triples: pass --corpus pointing to a CSV or TSV of "
                "(premise, entailment, contradiction) rows, e.g. SimCSE's nli_for_simcse.csv."
            )
        if FLAGS.backbone != TINY:
            raise FlagError(
                f"--corpus is needed with --backbone {FLAGS.backbone}: a text file with one sentence a line, "
                "e.g. SimCSE's wiki1m_for_simcse.txt (only --backbone tiny has a built-in corpus)."
            )
    elif not os.path.isfile(FLAGS.corpus):
        raise FlagError(f"--corpus {FLAGS.corpus!r} is not a file.")
    if not FLAGS.sts_tasks:
        raise FlagError("--sts_tasks must name at least one STS task, e.g. STSBenchmark.")
    if FLAGS.sts_dir is not None and not os.path.isdir(FLAGS.sts_dir):
        raise FlagError(
            f"--sts_dir {FLAGS.sts_dir!r} is not a folder; pass SentEval's data folder (SentEval/data, "
            "filled by SentEval/data/downstream/download_dataset.sh)."
        )
    refuse_ignored_flags(FLAGS, loss_flag_rules(FLAGS) + [("sts_tasks", FLAGS.sts_dir is not None, "--sts_dir")])


def synthetic_corpus(count=2048, seed=0):
    """A small built-in corpus of template sentences, for offline smoke runs."""
    import random

    rng = random.Random(seed)
    subjects = ["a man", "a woman", "the child", "an old dog", "the cat", "two students",
                "my neighbour", "the teacher", "a young girl", "the farmer"]
    verbs = ["reads", "paints", "watches", "carries", "cleans", "builds", "finds", "sells",
             "opens", "follows"]
    objects = ["a red book", "the small boat", "a wooden chair", "the bright kite", "an empty box",
               "a green apple", "the long letter", "a broken clock", "the new bicycle", "a warm coat"]
    places = ["in the park", "at home", "near the river", "on the beach", "in the kitchen",
              "at the station", "under the bridge", "in the garden"]
    times = ["in the morning", "at night", "after lunch", "every day", "on sunday", "before dinner"]
    return [
        f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.choice(objects)} "
        f"{rng.choice(places)} {rng.choice(times)}."
        for _ in range(count)
    ]


def load_corpus(keras_fmicl, hold_out):
    """(training data, held-out sentences, description). The training data is
    a list of sentences (simcse) or a tuple of 3 columns (supervised)."""
    if FLAGS.method == "supervised":
        columns = keras_fmicl.data.load_sentence_tuples(FLAGS.corpus)
        if len(columns) != 3:
            raise FlagError(
                f"--method supervised needs (premise, entailment, contradiction) rows; {FLAGS.corpus!r} "
                f"has {len(columns)} sentences a row."
            )
        if FLAGS.max_sentences:
            columns = tuple(column[: FLAGS.max_sentences] for column in columns)
        count = len(columns[0])
        held = min(HELD_OUT_SENTENCES, count // 10) if hold_out else 0
        train = tuple(column[: count - held] for column in columns)
        return train, columns[0][count - held:], f"{FLAGS.corpus} ({count:,} sentence triples)"
    if FLAGS.corpus is None:
        sentences, description = synthetic_corpus(), "built-in synthetic corpus"
    else:
        sentences, description = keras_fmicl.data.load_sentences(FLAGS.corpus), FLAGS.corpus
    if FLAGS.max_sentences:
        sentences = sentences[: FLAGS.max_sentences]
    held = min(HELD_OUT_SENTENCES, len(sentences) // 10) if hold_out else 0
    return (
        sentences[: len(sentences) - held],
        sentences[len(sentences) - held:],
        f"{description} ({len(sentences):,} sentences)",
    )


def _first_line(error, limit=200):
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_backbone(keras_fmicl, corpus_sentences):
    """(backbone, preprocessor, vocabulary or None) of --backbone."""
    if FLAGS.backbone == TINY:
        backbone, preprocessor = keras_fmicl.layers.tiny_backbone(
            corpus_sentences, sequence_length=FLAGS.sequence_length
        )
        return backbone, preprocessor, preprocessor.tokenizer.get_vocabulary()
    keras_hub = keras_fmicl.utils.import_keras_hub()
    name = FLAGS.backbone
    try:
        with quiet_native_logging(FLAGS.debug):
            backbone = keras_hub.models.Backbone.from_preset(name)
            preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
                name, sequence_length=FLAGS.sequence_length
            )
    except Exception as error:  # network, unknown preset, ...: one sentence
        raise FlagError(
            f"--backbone {name!r} could not be loaded from keras-hub ({type(error).__name__}: "
            f"{_first_line(error)}); presets are downloaded once and need network (or a preset "
            "folder path); --backbone tiny runs offline."
        ) from None
    return backbone, preprocessor, None


def build_loss(keras_fmicl):
    similarity = FLAGS.similarity or ("gaussian" if FLAGS.loss == "fmicl" else "cosine")
    temperature = FLAGS.temperature or (SIMCSE_TEMPERATURE if similarity == "cosine" else None)
    sigma = FLAGS.sigma or (PAPER_TEXT_SIGMA if similarity == "gaussian" else None)
    if FLAGS.loss == "infonce":
        return keras_fmicl.InfoNCELoss(temperature=temperature, similarity=similarity, sigma=sigma)
    divergence = FLAGS.divergence
    if divergence == "tsallis":
        divergence = keras_fmicl.Tsallis(order=FLAGS.tsallis_order)
    alpha = PAPER_TEXT_ALPHA if FLAGS.alpha is None else FLAGS.alpha
    return keras_fmicl.FMICLLoss(
        divergence, similarity=similarity, sigma=sigma, temperature=temperature, alpha=alpha
    )


def describe_loss(loss):
    """'f-MICL kl, f-Gaussian (sigma 0.1581), alpha 409600' or 'InfoNCE, cosine (T 0.05)'."""
    return describe_any_loss(loss, sigma_format=".4g", upper_short_names=False)


class StepHistory:
    """The logs `fit` reports after every step (running means of the epoch)
    and at every epoch's end; `state`/`restore` carry them over a resume."""

    def __init__(self):
        self.steps = []
        self.logs = {}
        self.epoch_logs = {}

    def state(self):
        return {"steps": self.steps, "logs": self.logs, "epoch_logs": self.epoch_logs}

    def restore(self, state):
        self.steps, self.logs, self.epoch_logs = state["steps"], state["logs"], state["epoch_logs"]

    def callback(self, keras):
        history = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                history.steps.append(len(history.steps) + 1)
                for key, value in (logs or {}).items():
                    history.logs.setdefault(key, []).append(float(value))

            def on_epoch_end(self, epoch, logs=None):
                for key, value in (logs or {}).items():
                    history.epoch_logs.setdefault(key, []).append(float(value))

        return _Callback()


def plot_curves(history, title, path):
    """curves.png: the step logs, one panel each."""
    plt = pyplot("curves.png")
    if plt is None:
        return None
    panels = [("loss", "training loss"), ("alignment", "alignment (lower: positives closer)"),
              ("uniformity", "uniformity (lower: more spread)"), ("mi_estimate", "mi_estimate (nats)")]
    figure, axes = plt.subplots(2, 2, figsize=(9.5, 7))
    for axis, (key, label) in zip(axes.flat, panels):
        values = history.logs.get(key, [])
        axis.plot(history.steps[: len(values)], values, marker="o" if len(values) < 50 else None, markersize=3)
        axis.set_title(label)
        axis.set_xlabel("step (running mean of the epoch)")
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    save_figure(plt, figure, path, dpi=100)
    return path


def held_out_metrics(keras, keras_fmicl, encoder, sentences, preprocessor, head=None):
    """Alignment of two dropout views and uniformity of the inference
    features of held-out sentences (Wang & Isola 2020); with `head`, of the
    features through it."""

    class HeldOutViews(keras.Model):
        """Two dropout views and the inference features, in one `predict`
        (one compiled function)."""

        def __init__(self, inner, head):
            super().__init__()
            self.inner = inner
            self.head = head

        def features(self, inputs, training):
            x = self.inner(inputs, training=training)
            return x if self.head is None else self.head(x, training=False)

        def call(self, inputs, training=None):
            return (
                self.features(inputs, training=True),
                self.features(inputs, training=True),
                self.features(inputs, training=False),
            )

    # one batch (at most HELD_OUT_SENTENCES): one compiled shape
    dataset = keras_fmicl.data.sentence_dataset(
        sentences, preprocessor, batch_size=len(sentences), shuffle=False, drop_remainder=False
    )
    first, second, features = HeldOutViews(encoder, head).predict(dataset, verbose=0)
    return {
        "sentences": len(sentences),
        "alignment": float(keras_fmicl.alignment(first, second)),
        "uniformity": float(keras_fmicl.uniformity(features)),
    }


def run():
    check_flags()
    backend = select_backend(FLAGS.backend, FLAGS.debug)
    backbone_tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(FLAGS.backbone.rstrip("/")))
    run_flags = dict({name: getattr(FLAGS, name) for name in _OWN_FLAGS}, backend=backend)
    prefix = default_output_dir(
        "sentences", backbone_tag, FLAGS.method,
        loss_tag(FLAGS.loss, FLAGS.divergence, FLAGS.similarity, FLAGS.tsallis_order), backend,
    )
    folder = open_run_folder(FLAGS.output_dir, prefix, FLAGS.resume, run_flags)
    return run_in_folder(folder, lambda folder: run_in(backend, folder))


def build(keras, keras_fmicl, train, supervised):
    """(model, dataset, preprocessor, vocabulary or None, steps per epoch,
    total steps) of the flags, compiled with Adam, its learning rate
    decaying linearly to 0 (SimCSE's trainer)."""
    count = len(train[0]) if supervised else len(train)
    if FLAGS.batch_size > count:
        raise FlagError(f"--batch_size ({FLAGS.batch_size}) is larger than the {count} training samples.")
    check_batch(FLAGS.batch_size, count)
    vocabulary_corpus = [s for column in train for s in column] if supervised else train
    backbone, preprocessor, vocabulary = build_backbone(keras_fmicl, vocabulary_corpus)
    if supervised:
        dataset = keras_fmicl.data.sentence_tuple_dataset(
            train, preprocessor, batch_size=FLAGS.batch_size, seed=FLAGS.seed
        )
        method = keras_fmicl.methods.SupervisedSimCSE(symmetric=FLAGS.symmetric)
    else:
        dataset = keras_fmicl.data.sentence_dataset(
            train, preprocessor, batch_size=FLAGS.batch_size, seed=FLAGS.seed
        )
        method = keras_fmicl.methods.SimCSE(symmetric=FLAGS.symmetric)
    # The features are taken before BERT's pooler (SimCSE's cls_before_pooler);
    # SentenceEncoder freezes that pooler, which gets no gradient.
    encoder = keras_fmicl.SentenceEncoder(backbone, pooling=FLAGS.pooling)
    # SimCSE's MLP over [CLS]: Dense(F) + tanh; at evaluation dropped
    # (unsupervised, cls_before_pooler) or kept (supervised, cls): --keep_mlp
    projector = keras.layers.Dense(encoder.output_dim, activation="tanh", name="simcse_mlp")
    model = keras_fmicl.ContrastiveModel(encoder, method=method, projector=projector)
    steps_per_epoch = count // FLAGS.batch_size
    total_steps = FLAGS.epochs * steps_per_epoch
    if FLAGS.max_steps:
        total_steps = min(total_steps, FLAGS.max_steps)
    schedule = keras.optimizers.schedules.PolynomialDecay(
        FLAGS.learning_rate, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=1.0
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=build_loss(keras_fmicl))
    return model, dataset, preprocessor, vocabulary, steps_per_epoch, total_steps


def train(keras, model, dataset, folder, steps_per_epoch, total_steps):
    """Runs `fit` from the run folder's start epoch, checkpointing every
    epoch; returns the StepHistory. A non-finite loss raises `RunDiverged`."""
    history = StepHistory()
    if folder.log is not None:
        history.restore(folder.log)
    folder.checkpoint.restore(keras, model, dataset)
    callbacks = [divergence_check(keras, every_batch=True), history.callback(keras),
                 folder.checkpoint.callback(keras, history.state)]
    if total_steps < FLAGS.epochs * steps_per_epoch:  # --max_steps: one epoch of them
        model.fit(dataset.repeat(), epochs=1, initial_epoch=folder.start, steps_per_epoch=total_steps,
                  callbacks=callbacks, verbose=FLAGS.verbose, shuffle=False)
    else:  # the dataset reshuffles every epoch itself
        model.fit(dataset, epochs=FLAGS.epochs, initial_epoch=folder.start, callbacks=callbacks,
                  verbose=FLAGS.verbose, shuffle=False)
    return history


def evaluate(keras, keras_fmicl, model, tasks, held_out, preprocessor, keep_mlp):
    """(STS table or None, held-out metrics or None)."""
    head = model.projector if keep_mlp else None
    if tasks is not None:
        return keras_fmicl.evaluation.evaluate_sts(model.encoder, tasks, preprocessor, head=head), None
    print(
        "STS: skipped, no --sts_dir (get SentEval's data with SimCSE's "
        "SentEval/data/downstream/download_dataset.sh and pass --sts_dir SentEval/data); "
        f"held-out metrics on {len(held_out)} sentences of the corpus instead."
    )
    if len(held_out) < 2:
        return None, None
    return None, held_out_metrics(keras, keras_fmicl, model.encoder, held_out, preprocessor, head=head)


def run_in(backend, folder):
    keras, np, keras_fmicl = import_frameworks(FLAGS.debug, FLAGS.seed)  # the backend is set first
    loss = build_loss(keras_fmicl)
    # the STS files first: a missing one stops the run before any training
    tasks = None if FLAGS.sts_dir is None else keras_fmicl.data.load_sts_tasks(FLAGS.sts_dir, FLAGS.sts_tasks)
    data, held_out, corpus_text = load_corpus(keras_fmicl, hold_out=FLAGS.sts_dir is None)
    supervised = FLAGS.method == "supervised"
    model, dataset, preprocessor, vocabulary, steps_per_epoch, total_steps = build(keras, keras_fmicl, data, supervised)
    keep_mlp = supervised if FLAGS.keep_mlp is None else FLAGS.keep_mlp
    backend_version, device = backend_version_and_device(backend)
    results = {
        "flags": {name: getattr(FLAGS, name) for name in _OWN_FLAGS},
        "backend": backend,
        "device": device,
        "backbone": {"name": FLAGS.backbone, "hidden_dim": model.encoder.output_dim,
                     "parameters": int(model.encoder.backbone.count_params()), "pretrained": FLAGS.backbone != TINY},
        "method": keras.saving.serialize_keras_object(model.method),
        "loss": loss.get_config(),
        "loss_description": describe_loss(loss),
        "evaluated_features": "encoder + MLP (SimCSE's cls)" if keep_mlp else "encoder (SimCSE's cls_before_pooler)",
        "corpus": corpus_text,
        "train_samples": len(data[0]) if supervised else len(data),
        "resumed_from_epoch": folder.start,
        "versions": {"keras": keras.__version__, "keras_fmicl": keras_fmicl.__version__,
                     "numpy": np.__version__, backend: backend_version},
    }
    print(
        f"Training {FLAGS.backbone} ({model.encoder.output_dim}-d, {FLAGS.pooling} pooling) with "
        f"{describe_loss(loss)}, {FLAGS.method}, on {corpus_text}; backend {backend}, {total_steps} steps of "
        f"{FLAGS.batch_size}."
    )
    start = time.time()
    try:
        history = train(keras, model, dataset, folder, steps_per_epoch, total_steps)
    except RunDiverged as error:
        state = folder.checkpoint.state()
        write_json(folder.file("results.json"), dict(results, diverged=True, diverged_at=str(error),
                                                     epoch_history=state["log"]["epoch_logs"] if state else {}))
        raise
    train_seconds = time.time() - start

    start = time.time()
    sts, held = evaluate(keras, keras_fmicl, model, tasks, held_out, preprocessor, keep_mlp)
    results.update({
        "diverged": False,
        "steps": len(history.steps),
        "history": {"step": history.steps, **history.logs},
        "epoch_history": history.epoch_logs,
        "sts": sts,
        "sts_skipped": None if sts is not None else "no --sts_dir",
        "held_out": held,
        "train_seconds": train_seconds,
        "evaluation_seconds": time.time() - start,
        "outputs": write_models(keras, model, folder.path, vocabulary, keep_mlp),
    })
    write_json(folder.file("results.json"), results)  # before the figure: a failed plot loses nothing
    title = (
        f"{FLAGS.backbone}, {describe_loss(loss)}, {FLAGS.method}, {backend} backend, "
        f"{len(history.steps)} steps of {FLAGS.batch_size}"
    )
    curves = plot_safely("curves.png", lambda: plot_curves(history, title, folder.file("curves.png")))
    if curves:
        results["outputs"]["curves"] = curves
        write_json(folder.file("results.json"), results)
    print_results_table(summary_rows(results, history, folder.path))
    if sts is not None:
        print("\n" + keras_fmicl.evaluation.sts_table(sts))
    return results


def write_models(keras, model, output_dir, vocabulary, keep_mlp):
    """encoder.keras, mlp.keras (when evaluated through) and vocabulary.txt
    (--backbone tiny); returns them, name -> path."""
    encoder_path = os.path.join(output_dir, "encoder.keras")
    model.encoder.save(encoder_path)
    outputs = {"encoder": encoder_path}
    if keep_mlp:  # the evaluated features are the MLP's: save it beside the encoder
        outputs["mlp"] = os.path.join(output_dir, "mlp.keras")
        keras.Sequential([keras.Input((model.encoder.output_dim,)), model.projector]).save(outputs["mlp"])
    if vocabulary is not None:
        outputs["vocabulary"] = os.path.join(output_dir, "vocabulary.txt")
        with open(outputs["vocabulary"], "w", encoding="utf-8") as f:
            f.write("\n".join(vocabulary) + "\n")
    return outputs


def summary_rows(results, history, output_dir):
    """The (result, value) rows of the table printed at the end of a run."""
    final = {key: values[-1] for key, values in history.logs.items() if values}
    sts, held = results["sts"], results["held_out"]
    rows = [
        ("backbone", f"{FLAGS.backbone} ({results['backbone']['hidden_dim']}-d, {FLAGS.pooling} pooling"
                     + (", random init: a smoke test)" if FLAGS.backbone == TINY else ")")),
        ("backend", results["backend"]),
        ("method", f"{FLAGS.method}, {results['loss_description']}"),
        ("corpus", results["corpus"]),
        ("steps", f"{len(history.steps)} (batch {FLAGS.batch_size})"),
        ("final loss", f"{final.get('loss', float('nan')):.4f}"),
        ("alignment / uniformity", f"{final.get('alignment', float('nan')):.4g} / "
                                   f"{final.get('uniformity', float('nan')):.4g}"),
    ]
    if sts is not None:
        rows += [(f"STS {name}", f"{value:.2f}") for name, value in sts.items()]
    else:
        rows.append(("STS", "skipped (no --sts_dir)"))
        if held is not None:
            rows.append((f"held-out ({held['sentences']} sentences)",
                         f"alignment {held['alignment']:.4g}, uniformity {held['uniformity']:.4g}"))
    rows += [("training time", f"{results['train_seconds']:.0f} s"), ("outputs", output_dir)]
    return rows


_OWN_FLAGS = (
    "backend", "backbone", "corpus", "sts_dir", "sts_tasks", "method", "loss", "divergence", "tsallis_order",
    "similarity", "sigma", "alpha", "temperature", "pooling", "keep_mlp", "symmetric", "sequence_length", "batch_size",
    "learning_rate", "epochs", "max_steps", "max_sentences", "seed", "output_dir", "verbose", "debug", "resume",
)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    return exit_code("train_sentences.py", argv, run)


if __name__ == "__main__":
    app.run(main)
