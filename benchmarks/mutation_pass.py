"""Hand mutation pass: planted bugs in the methods, the evaluation and the text code, and the tests that kill them.

Each mutant is one textual replacement in one file of `keras_fmicl`. For
each, the package and the tests are copied into a temporary directory, the
replacement is applied there (the working tree is never modified), and a
targeted subset of the tests runs with `pytest -x -q` under one backend. A
mutant is *killed* when a test fails (or the run errors or times out) and
*survives* when the tests pass. Results go to
`benchmarks/results/mutation_pass.json` and `.md`.

To keep the pass fast on a small machine, one worker process per backend
imports Keras and the backend once, then forks a child per mutant that
imports the mutated package from its copy and runs pytest in-process
(`--no-fork`: a fresh interpreter per mutant instead).

    python benchmarks/mutation_pass.py                  # every mutant
    python benchmarks/mutation_pass.py --ids M01,E01    # some
    python benchmarks/mutation_pass.py --list           # the table of mutants
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
TIMEOUT_S = 900


class Mutant(NamedTuple):
    id: str
    file: str  # relative to keras_fmicl/
    old: str
    new: str
    description: str
    tests: tuple  # pytest node ids, run in this order (-x stops at the first failure)
    backend: str = "torch"


M = "methods/"
E = "evaluation/"
T_REF = "tests/methods/test_reference_methods.py"
T_IND = "tests/methods/test_methods_independent.py"
T_MET = "tests/methods/test_methods.py"
T_ONL = "tests/methods/test_methods_online.py"
T_SCH = "tests/methods/test_schedules.py"
T_CM = "tests/models/test_contrastive_model.py"
T_EV = "tests/evaluation/test_evaluation.py"
T_FEW = "tests/evaluation/test_few_label_independent.py"
T_STS = "tests/evaluation/test_sts.py"
T_SEN = "tests/data/test_sentences.py"
T_ENC = "tests/layers/test_sentence_encoder.py"
T_TXT = "tests/data/test_text_independent.py"
MOMENTUM = (T_IND, T_REF, T_ONL)
NEW_TESTS = (T_IND, T_FEW, T_TXT)  # the files written with this pass (--without-new leaves them out)
# The tests that kill the mutants of one function (kNN's vote, alignment and uniformity).
KNN_TESTS = (
    T_EV + "::test_knn_hand_checked_vote_and_temperature",
    T_EV + "::test_knn_matches_numpy_reference",
    T_EV + "::test_knn_class_tie_goes_to_smallest_label",
    T_EV + "::test_knn_k_larger_than_train_set_is_clipped",
)
EMBEDDING_TESTS = (
    T_EV + "::test_alignment_matches_numpy_float64",
    T_EV + "::test_uniformity_matches_numpy_float64",
    T_EV + "::test_alignment_known_values",
    T_EV + "::test_uniformity_known_values",
)

MUTANTS = [
    # ------------------------------------------------------------ methods
    Mutant(
        "M01", M + "momentum.py",
        "online_value = ops.stop_gradient(ops.cast(online.value, key.dtype))",
        "online_value = ops.cast(online.value, key.dtype)",
        "keys without stop-gradient: neither the EMA source nor the key output (JAX: the keys then carry a gradient)",
        MOMENTUM, "jax",
    ),
    Mutant(
        "M02", M + "momentum.py",
        "key.assign(momentum_value * key.value + (1.0 - momentum_value) * online_value)",
        "key.assign((1.0 - momentum_value) * key.value + momentum_value * online_value)",
        "EMA weights swapped (m on the online weights)", MOMENTUM,
    ),
    Mutant(
        "M03", M + "momentum.py",
        "        if training:\n            self._run_ema_update(",
        "        if not training:\n            self._run_ema_update(",
        "EMA of the key network never runs in training", MOMENTUM,
    ),
    Mutant(
        "M04", M + "momentum.py",
        "        return self.predictor(embeddings, training=training)",
        "        return embeddings",
        "MoCo v3 queries taken from the projection instead of the predictor", MOMENTUM,
    ),
    Mutant(
        "M05", M + "momentum.py",
        '"queries": queries, "keys": keys}',
        '"queries": queries, "keys": ops.flip(keys, axis=1) if self.mode == "mocov3" else keys}',
        "key views flipped for MoCo v3 only (q1 against k1)", MOMENTUM,
    ),
    Mutant(
        "M06", M + "momentum.py",
        "        return (0, 1), (1, model.num_views)",
        "        return (0, 1), (0, 1)",
        "MoCo v2 keys from the query's own view", MOMENTUM,
    ),
    Mutant(
        "M07", M + "momentum.py",
        "self.queue_pointer.assign((pointer + count) % self.queue_size)",
        "self.queue_pointer.assign(pointer % self.queue_size)",
        "queue pointer never advances (every batch overwrites the same slots)", MOMENTUM,
    ),
    Mutant(
        "M08", M + "momentum.py",
        "flat = ops.reshape(ops.stop_gradient(keys), (-1, self.queue.shape[-1]))",
        'flat = ops.reshape(ops.stop_gradient(outputs["queries"]), (-1, self.queue.shape[-1]))',
        "the queue stores the queries instead of the keys", MOMENTUM,
    ),
    Mutant(
        "M09", M + "momentum.py",
        "ops.minimum(self.queue_count.value + count, self.queue_size)",
        "ops.minimum(self.queue_count.value + 1, self.queue_size)",
        "queue count grows by one per step (an empty queue's unwritten slots unmasked too late)",
        MOMENTUM,
    ),
    Mutant(
        "M10", M + "momentum.py",
        "in_batch_negatives=False,",
        "in_batch_negatives=True,",
        "MoCo v2 also contrasts with the batch's keys", MOMENTUM,
    ),
    Mutant(
        "M11", M + "momentum.py",
        "            keys = standardize_over_batch(keys, global_batch)",
        "            keys = keys",
        "f-MICL standardises the queries but not the keys", MOMENTUM,
    ),
    Mutant(
        "M12", M + "momentum.py",
        "per_sample = (1.0 - weight) * per_sample + weight * online",
        "per_sample = per_sample + weight * online",
        "online contrast added instead of mixed", MOMENTUM,
    ),
    Mutant(
        "M13", M + "momentum.py",
        'return isinstance(getattr(model, "loss", None), FMICLLoss)',
        'return not isinstance(getattr(model, "loss", None), FMICLLoss)',
        "standardize='auto' standardises InfoNCE instead of f-MICL", MOMENTUM,
    ),
    Mutant(
        "M14", M + "momentum.py",
        "            if training:\n                for variable, value in zip(other, new_other):",
        "            if not training:\n                for variable, value in zip(other, new_other):",
        "the key network's batch-norm statistics never follow its batches",
        (T_IND + "::test_the_key_network_batch_norm_follows_the_key_batches",
         T_CM + "::test_key_forward_leaves_the_online_batch_norm_statistics_alone",
         T_CM + "::test_save_and_load_restore_every_variable"),
    ),
    Mutant(
        "M15", M + "views.py",
        "return ops.cast(centred * ops.rsqrt(variance + STANDARDIZE_EPSILON), dtype)",
        "return ops.cast(centred * ops.rsqrt(variance + 1.0), dtype)",
        "standardisation divides by sqrt(var + 1)", MOMENTUM,
    ),
    Mutant(
        "M16", M + "views.py",
        "grouped = ops.reshape(x, (-1, num_views) + tail)[:, start:stop]",
        "grouped = ops.reshape(x, (-1, num_views) + tail)[:, num_views - stop : num_views - start]",
        "select_views counts the views from the end (MoCo v2: query view 1, key view 0)",
        MOMENTUM,
    ),
    Mutant(
        "M17", M + "views.py",
        "lambda x: ops.repeat(x, num_views, axis=0), inputs",
        "lambda x: ops.tile(x, (num_views,) + (1,) * (len(x.shape) - 1)), inputs",
        "repeat_views view-major instead of sample-major", (T_MET,),
    ),
    Mutant(
        "M18", M + "simcse.py",
        "            queries[:, :1], keys=queries[:, 1:], queue=negatives,",
        "            queries[:, 1:], keys=queries[:, :1], queue=negatives,",
        "SimCSE anchors on the second pass instead of the first", (T_REF, T_IND),
    ),
    Mutant(
        "M19", M + "simcse.py",
        "outputs[HARD_NEGATIVES] = embeddings[:, num_views]",
        "outputs[HARD_NEGATIVES] = embeddings[:, 1]",
        "supervised SimCSE reads the hard negatives from the entailment column", (T_IND, T_REF),
    ),
    Mutant(
        "M20", M + "simcse.py",
        "outputs[HARD_NEGATIVES] = embeddings[:, num_views]",
        "outputs[HARD_NEGATIVES] = ops.stop_gradient(embeddings[:, num_views])",
        "supervised SimCSE's hard negatives get no gradient", (T_IND, T_REF),
    ),
    Mutant(
        "M21", M + "simcse.py",
        '"features": features[:, :num_views]',
        '"features": features[:, -num_views:]',
        "supervised SimCSE's features read from the last columns", (T_IND, T_REF, T_MET),
    ),
    Mutant(
        "M22", M + "simcse.py",
        "        negatives = outputs.get(HARD_NEGATIVES)\n",
        "        negatives = None\n",
        "supervised SimCSE ignores its hard negatives", (T_IND, T_REF),
    ),
    Mutant(
        "M23", M + "simcse.py",
        "        if self.symmetric:\n            return loss.contrast(",
        "        if not self.symmetric:\n            return loss.contrast(",
        "SimCSE's symmetric flag inverted", (T_REF, T_IND),
    ),
    Mutant(
        "M24", M + "schedules.py",
        "cosine = 0.5 * (ops.cos(math.pi * progress) + 1.0)",
        "cosine = 0.5 * (1.0 - ops.cos(math.pi * progress))",
        "cosine momentum runs backwards", (T_SCH,),
    ),
    Mutant(
        "M25", M + "momentum.py",
        "momentum = ops.cast(self.momentum(model.training_steps.value), \"float32\")",
        "momentum = ops.cast(self.momentum(model.training_steps.value + 1), \"float32\")",
        "a momentum schedule read one step late",
        (T_CM + "::test_key_weights_are_the_ema_of_the_online_weights",),
    ),
    # ------------------------------------------------------------ evaluation
    Mutant(
        "E01", E + "linear.py",
        "indices = class_balanced_subset(train_labels, fraction, seed=seed + draw)",
        "indices = class_balanced_subset(train_labels, fraction, seed=seed)",
        "few-label draws all use the same subset", (T_FEW, T_EV + "::test_few_label_accuracy_draws_subsets_and_averages"),
    ),
    Mutant(
        "E02", E + "linear.py",
        "return (train - mean) / std, (test - mean) / std",
        "return (train - mean) / std, (test - test.mean(axis=0, keepdims=True)) / std",
        "the probe standardises the test set with its own mean", (T_FEW, T_EV + "::test_linear_probe_separable_features"),
    ),
    Mutant(
        "E03", E + "linear.py",
        "per_class = max(1, int(round(fraction * labels.size / classes.size)))",
        "per_class = max(1, int(round(fraction * labels.size)))",
        "class-balanced subset takes fraction * N per class", (T_EV + "::test_class_balanced_subset_is_balanced_and_deterministic", T_FEW),
    ),
    Mutant(
        "E04", E + "linear.py",
        '"mean": float(np.mean(accuracies)),',
        '"mean": float(np.max(accuracies)),',
        "few-label mean reports the best draw", (T_FEW, T_EV + "::test_few_label_accuracy_draws_subsets_and_averages"),
    ),
    Mutant(
        "E05", E + "linear.py",
        "    if standardize:\n        train, test = _standardize(train, test)",
        "    if not standardize:\n        train, test = _standardize(train, test)",
        "the probe's standardize flag inverted", (T_FEW, T_EV + "::test_linear_probe_separable_features"),
    ),
    Mutant(
        "E06", E + "knn.py",
        "weights = ops.exp((top_similarity - top_similarity[:, :1]) / temperature)",
        "weights = ops.exp((top_similarity - top_similarity[:, :1]) * temperature)",
        "kNN vote weights exp(s * T)", KNN_TESTS,
    ),
    Mutant(
        "E07", E + "knn.py",
        "bank = ops.transpose(l2_normalize(train))  # (F, N)",
        "bank = ops.transpose(train)  # (F, N)",
        "kNN memory bank not normalised (dot product, not cosine)", KNN_TESTS,
    ),
    Mutant(
        "E08", E + "knn.py",
        "predictions = np.argmax(scores, axis=1).astype(np.int64)",
        "predictions = (scores.shape[1] - 1 - np.argmax(scores[:, ::-1], axis=1)).astype(np.int64)",
        "kNN class ties go to the largest label", KNN_TESTS,
    ),
    Mutant(
        "E09", E + "knn.py",
        "    k = min(k, num_train)\n",
        "    k = min(k, max(num_train - 1, 1))\n",
        "kNN drops the last neighbour when k >= N", KNN_TESTS,
    ),
    Mutant(
        "E10", E + "embedding.py",
        "ops.power(ops.relu(squared), alpha / 2.0)",
        "ops.power(ops.relu(squared), alpha)",
        "alignment raises the squared distance to alpha", EMBEDDING_TESTS,
    ),
    Mutant(
        "E11", E + "embedding.py",
        'log_kernel = ops.where(diagonal, float("-inf"), log_kernel)',
        "log_kernel = ops.where(diagonal, log_kernel, log_kernel)",
        "uniformity counts the pairs i = j", EMBEDDING_TESTS,
    ),
    Mutant(
        "E12", E + "embedding.py",
        "return total - math.log(num_samples * (num_samples - 1))",
        "return total - math.log(num_samples * num_samples)",
        "uniformity divides by N^2 instead of N (N - 1)", EMBEDDING_TESTS,
    ),
    Mutant(
        "E13", E + "features.py",
        "outputs.append(to_numpy(encoder(batch, training=False)))",
        "outputs.append(to_numpy(encoder(batch, training=True)))",
        "extract_features runs a layer in training mode (dropout on)", (T_FEW, T_EV + "::test_extract_features_batches_layers_and_models_alike"),
    ),
    Mutant(
        "E14", E + "features.py",
        "batch = images[start : start + batch_size]",
        "batch = images[start : start + batch_size][::-1]",
        "extract_features reverses each batch", (T_FEW, T_EV + "::test_extract_features_batches_layers_and_models_alike"),
    ),
    # ------------------------------------------------------------ text
    Mutant(
        "S01", E + "sts.py",
        "group_rank = (starts + ends + 1) / 2.0",
        "group_rank = starts + 1.0",
        "tied values get the lowest rank, not the average", (T_STS,),
    ),
    Mutant(
        "S02", E + "sts.py",
        "return 100.0 * _pearson(average_ranks(similarities), average_ranks(gold))",
        "return 100.0 * _pearson(similarities, gold)",
        "Pearson instead of Spearman", (T_STS,),
    ),
    Mutant(
        "S03", E + "sts.py",
        "results[name] = sts_correlation(features[:count], features[count:], scores)",
        "results[name] = sts_correlation(features[:count], np.roll(features[count:], 1, axis=0), scores)",
        "evaluate_sts pairs each first sentence with the wrong second one", (T_STS,),
    ),
    Mutant(
        "S04", E + "sts.py",
        "        return self.head(features, training=training)",
        "        return self.head(features, training=True)",
        "evaluate_sts runs the head in training mode (dropout on)", (T_STS, T_TXT),
    ),
    Mutant(
        "S05", E + "sts.py",
        "return np.sum(unit(a) * unit(b), axis=1)",
        "return np.sum(a * b, axis=1)",
        "STS scores dot products, not cosines", (T_STS,),
    ),
    Mutant(
        "D01", "data/sts.py",
        "a, b, scores = _load_sts_table(path, (5, 6, 4), header=False)",
        "a, b, scores = _load_sts_table(path, (5, 6, 3), header=False)",
        "STS-B gold score read from column 4 (the year) instead of 5", (T_SEN,),
    ),
    Mutant(
        "D02", "data/sts.py",
        "a, b, scores = _load_sts_table(path, (1, 2, 3), header=True)",
        "a, b, scores = _load_sts_table(path, (1, 2, 3), header=False)",
        "SICK-R header line not skipped", (T_SEN,),
    ),
    Mutant(
        "D03", "data/sts.py",
        '    return " ".join(sentence.split())',
        "    return sentence",
        "STS sentences keep their raw white space", (T_SEN,),
    ),
    Mutant(
        "D04", "data/sts.py",
        "        for subset in STS_SUBSETS[task]:",
        "        for subset in sorted(STS_SUBSETS[task]):",
        "STS12-16 subsets concatenated in alphabetical, not SentEval's, order", (T_SEN,),
    ),
    Mutant(
        "D05", "data/sentences.py",
        "sentences = [sentence for sentence in sentences if sentence]",
        "sentences = list(sentences)",
        "load_sentences keeps empty lines", (T_SEN,),
    ),
    Mutant(
        "D06", "data/sentences.py",
        "if not rows and tuple(f.lower() for f in fields) == SIMCSE_NLI_HEADER[: len(fields)]:",
        "if not rows and tuple(f.lower() for f in fields) == SIMCSE_NLI_HEADER:",
        "a two-column NLI header is read as a sentence pair", (T_ENC, T_TXT),
    ),
    Mutant(
        "D07", "data/sentences.py",
        "tf.nest.map_structure(lambda *parts: tf.stack(parts, axis=1), *outputs)",
        "tf.nest.map_structure(lambda *parts: tf.reverse(tf.stack(parts, axis=1), [1]), *outputs)",
        "sentence tuples stacked in reverse column order (contradiction first)", (T_ENC, T_TXT),
    ),
    Mutant(
        "D08", "data/sentences.py",
        'start_value=_token_id(tokenizer, ("cls_token_id", "start_token_id"), None),',
        "start_value=None,",
        "a bare tokenizer's sentences are packed without [CLS]", (T_SEN,),
    ),
    Mutant(
        "L01", "layers/sentence_encoder.py",
        "            return outputs[:, 0, :]",
        "            return outputs[:, 1, :]",
        "cls pooling reads the second token", (T_ENC,),
    ),
    Mutant(
        "L02", "layers/sentence_encoder.py",
        "total = ops.sum(outputs * ops.expand_dims(mask, -1), axis=1)",
        "total = ops.sum(outputs, axis=1)",
        "mean pooling sums the padded positions too", (T_ENC,),
    ),
    Mutant(
        "L03", "layers/sentence_encoder.py",
        "call_inputs[name] = ops.zeros_like(token_ids)",
        "call_inputs[name] = ops.ones_like(token_ids)",
        "missing segment ids default to segment 1", (T_ENC,),
    ),
    Mutant(
        "L04", "layers/sentence_encoder.py",
        "count = ops.sum(mask, axis=1, keepdims=True)",
        "count = ops.cast(ops.shape(mask)[1], mask.dtype)",
        "mean pooling divides by the padded length", (T_ENC,),
    ),
]

# Applied together with the mutant of the same id (the brief's "keys without
# stop-gradient" is both removals at once: either alone changes nothing).
EXTRA_EDITS = {
    "M01": [(M + "momentum.py", "        return ops.stop_gradient(x)\n\n    def query_and_key_views",
             "        return x\n\n    def query_and_key_views")],
}


def _edits(mutant):
    return [(mutant.file, mutant.old, mutant.new)] + EXTRA_EDITS.get(mutant.id, [])


def check_mutants(mutants):
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"duplicate ids: {ids}")
    for mutant in mutants:
        for file, old, new in _edits(mutant):
            with open(os.path.join(ROOT, "keras_fmicl", file), encoding="utf-8") as f:
                count = f.read().count(old)
            if count != 1:
                raise SystemExit(f"{mutant.id}: the old snippet occurs {count} times in {file}")
            if old == new:
                raise SystemExit(f"{mutant.id}: old == new")
        for test in mutant.tests:
            if not os.path.isfile(os.path.join(ROOT, test.split("::")[0])):
                raise SystemExit(f"{mutant.id}: no test file {test}")


def make_copy(mutant):
    """A temporary tree holding keras_fmicl (mutated), tests and setup.cfg."""
    directory = tempfile.mkdtemp(prefix=f"mutant_{mutant.id if mutant else 'none'}_")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("keras_fmicl", "tests"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(directory, name), ignore=ignore)
    shutil.copy(os.path.join(ROOT, "setup.cfg"), directory)
    if mutant is not None:
        for file, old, new in _edits(mutant):
            path = os.path.join(directory, "keras_fmicl", file)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(old, new, 1))
    return directory


def _pytest_args(tests):
    return ["-x", "-q", "-p", "no:cacheprovider", *tests]


def _first_failure(output):
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    return None


def _run_forked(directory, tests, log_path):
    """Runs pytest in a forked child of this (pre-imported) interpreter."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(directory)
            sys.path.insert(0, directory)
            os.environ["PYTHONPATH"] = directory
            import pytest

            code = pytest.main(_pytest_args(tests))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)
    deadline = time.time() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.2)


def _run_subprocess(directory, tests, backend, log_path):
    env = dict(os.environ, PYTHONPATH=directory, KERAS_BACKEND=backend)
    with open(log_path, "w") as log:
        try:
            return subprocess.run(
                [sys.executable, "-m", "pytest", *_pytest_args(tests)], cwd=directory, env=env,
                stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
            ).returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def run_one(mutant, backend, fork, tests=None):
    directory = make_copy(mutant)
    log_path = os.path.join(directory, "pytest.log")
    tests = tests or mutant.tests
    start = time.time()
    try:
        if fork:
            code = _run_forked(directory, tests, log_path)
        else:
            code = _run_subprocess(directory, tests, backend, log_path)
        with open(log_path, errors="replace") as f:
            output = f.read()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if code == 0:
        status = "survived"
    elif code == 1:
        status = "killed"
    else:
        status = f"error ({code})"  # collection error, crash, timeout: also a kill
    return {
        "status": status,
        "killed": code != 0,
        "killed_by": _first_failure(output),
        "seconds": round(time.time() - start, 1),
        "tail": "\n".join(output.strip().splitlines()[-6:]),
    }


def worker(backend, ids, fork, baseline, without_new=False):
    """Runs the given mutants under one backend; prints one JSON line per mutant."""
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":  # as tests/conftest.py, before JAX starts
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        )
    if fork:  # the slow imports, shared by the forked children
        for name in ("numpy", "keras", "pytest"):
            importlib.import_module(name)
    by_id = {m.id: m for m in MUTANTS}
    for mutant_id in ids:
        mutant = by_id[mutant_id]
        tests = mutant.tests
        if without_new:
            tests = tuple(t for t in tests if t.split("::")[0] not in NEW_TESTS)
        if not tests:
            result = {"status": "no tests", "killed": False, "killed_by": None, "seconds": 0.0, "tail": ""}
        else:
            result = run_one(None if baseline else mutant, backend, fork, tests=tests)
        print(json.dumps({"id": mutant_id, **result}), flush=True)


NOTES = """
Notes:

* The tests run in the order listed per mutant, the tests written with this
  pass first where they apply: "killed by" is the first failure, not the only
  test that fails.
* M01 is two edits (`_ema_update` without `stop_gradient` on the online
  value, `key_forward` returning `x` without `stop_gradient`): on JAX the
  assigned key weights are then traced functions of the online weights, and
  the keys carry a gradient. It runs on JAX only (the audit found it
  surviving there); neither edit alone, nor TensorFlow or PyTorch, was run.
* M14 survived the first pass (tests/models/test_contrastive_model.py only
  checks that the online statistics are left alone);
  `test_the_key_network_batch_norm_follows_the_key_batches` was added for it.
  E05 survived until the probe test's data was given a large offset.
"""


def _markdown(results):
    by_id = {m.id: m for m in MUTANTS}
    killed = sum(r["killed"] for r in results.values())
    lines = [
        "# Mutation pass",
        "",
        f"{killed} of {len(results)} mutants killed ({100.0 * killed / max(len(results), 1):.1f} %). "
        "Each mutant: one replacement in `keras_fmicl/<file>` (M01 two), the listed tests "
        "run with `pytest -x -q` under the backend given; the first failing test is shown.",
        "",
        "| id | file | mutant | backend | result | killed by | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mutant_id, result in results.items():
        mutant = by_id[mutant_id]
        lines.append(
            f"| {mutant_id} | {mutant.file} | {mutant.description} | {mutant.backend} | "
            f"{result['status']} | {('`' + result['killed_by'] + '`') if result['killed_by'] else ''} "
            f"| {result['seconds']} |"
        )
    return "\n".join(lines) + "\n" + NOTES


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", help="comma-separated mutant ids (default: all)")
    parser.add_argument("--no-fork", action="store_true", help="a fresh interpreter per mutant")
    parser.add_argument("--baseline", action="store_true",
                        help="run each mutant's tests on the unmutated package instead")
    parser.add_argument("--without-new", action="store_true",
                        help="leave out the test files written with this pass (does the old suite kill it?)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--output", default=os.path.join(RESULTS, "mutation_pass"),
                        help="path of the results without extension")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="combine the results of earlier runs (later files win) into --output")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_mutants(MUTANTS)
    ids = args.ids.split(",") if args.ids else [m.id for m in MUTANTS]
    fork = not args.no_fork and hasattr(os, "fork")
    if args.worker:
        worker(args.worker, ids, fork, args.baseline, args.without_new)
        return
    if args.merge:
        merged = {}
        for path in args.merge:
            with open(path) as f:
                merged.update(json.load(f)["mutants"])
        _write(args.output, merged)
        return
    if args.list:
        for m in MUTANTS:
            print(f"{m.id}  {m.backend:6s} {m.file:28s} {m.description}")
        return
    by_id = {m.id: m for m in MUTANTS}
    results = {}
    for backend in dict.fromkeys(by_id[i].backend for i in ids):
        chosen = [i for i in ids if by_id[i].backend == backend]
        command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--ids", ",".join(chosen)]
        command += ["--no-fork"] if not fork else []
        command += ["--baseline"] if args.baseline else []
        command += ["--without-new"] if args.without_new else []
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for line in process.stdout:
            if line.startswith("{"):
                result = json.loads(line)
                results[result.pop("id")] = result
                print(f"{list(results)[-1]}: {result['status']} {result['killed_by'] or ''} "
                      f"({result['seconds']} s)", flush=True)
        process.wait()
    results = {i: results[i] for i in ids if i in results}
    if args.baseline:
        print(json.dumps(results, indent=1))
        return
    previous = {}
    if args.ids and os.path.exists(args.output + ".json"):
        with open(args.output + ".json") as f:
            previous = json.load(f).get("mutants", {})
    _write(args.output, {**previous, **results})


def _write(output, results):
    """The results in the order of MUTANTS, as JSON and Markdown."""
    results = {m.id: results[m.id] for m in MUTANTS if m.id in results}
    killed = sum(r["killed"] for r in results.values())
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output + ".json", "w") as f:
        json.dump({"killed": killed, "total": len(results), "mutants": results}, f, indent=1)
    with open(output + ".md", "w") as f:
        f.write(_markdown(results))
    print(f"{killed}/{len(results)} killed")


if __name__ == "__main__":
    main()
