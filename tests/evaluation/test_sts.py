"""keras_fmicl.evaluation, STS: `sts_correlation` against a float64 numpy
reference (and scipy where installed), `evaluate_sts` on a tiny backbone."""

import keras
import numpy as np
import pytest

from keras_fmicl import evaluation


def reference_spearman(x, y):
    """Independent float64 reference: O(N^2) average ranks, then Pearson."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)

    def ranks(v):
        below = (v[None, :] < v[:, None]).sum(axis=1)
        equal = (v[None, :] == v[:, None]).sum(axis=1)
        return below + (equal + 1) / 2.0

    rx, ry = ranks(x) - ranks(x).mean(), ranks(y) - ranks(y).mean()
    return 100.0 * (rx @ ry) / np.sqrt((rx @ rx) * (ry @ ry))


def reference_cosine(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def random_case(seed, n=40, f=6, ties=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, f))
    b = rng.normal(size=(n, f))
    gold = rng.uniform(0, 5, size=n)
    if ties:
        gold = np.round(gold * 2) / 2  # many tied gold scores
        b[1::3] = b[0::3][: len(b[1::3])]  # tied similarities: repeated pairs
        a[1::3] = a[0::3][: len(a[1::3])]
    return a.astype(np.float32), b.astype(np.float32), gold


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_sts_correlation_matches_float64_reference(seed, ties):
    a, b, gold = random_case(seed, ties=ties)
    cosine = reference_cosine(a, b)
    if ties:
        assert len(np.unique(cosine)) < len(cosine) and len(np.unique(gold)) < len(gold)
    expected = reference_spearman(cosine, gold)
    got = evaluation.sts_correlation(a, b, gold)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # backend tensors, (N, 1) gold and row scaling give the same figure
    # (powers of two keep the tied similarities exactly tied)
    scaled = a * (2.0 ** (np.arange(len(a)) % 5 - 2))[:, None].astype(np.float32)
    again = evaluation.sts_correlation(
        keras.ops.convert_to_tensor(scaled), keras.ops.convert_to_tensor(b), gold[:, None]
    )
    np.testing.assert_allclose(again, expected, rtol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_sts_correlation_matches_scipy(ties):
    stats = pytest.importorskip("scipy.stats")
    a, b, gold = random_case(3, n=60, ties=ties)
    cosine = reference_cosine(a, b)
    expected = 100.0 * stats.spearmanr(cosine, gold)[0]
    np.testing.assert_allclose(evaluation.sts_correlation(a, b, gold), expected, rtol=1e-9)


def test_average_ranks_match_scipy_rankdata():
    stats = pytest.importorskip("scipy.stats")
    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0, -0.0, 0.0])
    np.testing.assert_array_equal(evaluation.sts.average_ranks(values), stats.rankdata(values))


def test_sts_correlation_hand_checked():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert evaluation.sts_correlation(a, b, [5.0, 3.0, 0.0]) == pytest.approx(100.0)
    assert evaluation.sts_correlation(a, b, [0.0, 3.0, 5.0]) == pytest.approx(-100.0)
    # a zero row counts as similarity 0 (no NaN): ties with the orthogonal pair
    zero = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(
        evaluation.sts_correlation(zero, b, [2.0, 1.0, 0.0]),
        reference_spearman([1.0, 0.0, 0.0], [2.0, 1.0, 0.0]),
    )


def test_constant_similarities_give_nan():
    a = np.ones((4, 3))
    assert np.isnan(evaluation.sts_correlation(a, a, [1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_identical_pairs_give_nan_not_rank_noise(dtype):
    """cos(a_i, a_i) = 1 for every pair, up to rounding in the last bits:
    ranking that rounding gave 11.46 instead of the documented NaN."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 16)).astype(dtype)
    gold = rng.uniform(0, 5, size=200)
    assert np.isnan(evaluation.sts_correlation(a, a, gold))
    assert np.isnan(evaluation.sts_correlation(a, a * 3.0, gold))  # same directions


def test_small_but_real_spread_of_similarities_is_ranked():
    """Cosines spread by 1e-3 (far above rounding) are scored as usual."""
    angles = np.array([0.0, 0.01, 0.02, 0.03, 0.045])
    a = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    b = np.tile([[1.0, 0.0]], (5, 1))
    gold = [5.0, 4.0, 3.5, 2.0, 1.0]
    np.testing.assert_allclose(
        evaluation.sts_correlation(a, b, gold), reference_spearman(np.cos(angles), gold)
    )


@pytest.mark.parametrize(
    "a, b, gold, match",
    [
        (np.ones((3,)), np.ones((3,)), [1, 2, 3], "`embeddings_a` must have shape"),
        (np.ones((3, 2)), np.ones((3, 3)), [1, 2, 3], "the same shape"),
        (np.ones((3, 0)), np.ones((3, 0)), [1, 2, 3], "`embeddings_a` must have shape"),
        (np.ones((3, 2)), np.ones((3, 2)), [1, 2], "`gold_scores` must have shape"),
        (np.ones((1, 2)), np.ones((1, 2)), [1.0], "at least 2 pairs"),
        (np.ones((0, 2)), np.ones((0, 2)), [], "at least 2 pairs"),
        (np.array([[1.0, np.nan], [1, 2], [2, 1]]), np.ones((3, 2)), [1, 2, 3], "`embeddings_a` must be finite"),
        (np.ones((3, 2)), np.array([[1.0, 2], [np.inf, 2], [2, 1]]), [1, 2, 3], "`embeddings_b` must be finite"),
        (np.ones((3, 2)), np.ones((3, 2)), [1.0, np.nan, 3], "`gold_scores` must be finite"),
        (np.ones((3, 2)), np.ones((3, 2)), [2.0, 2.0, 2.0], "must not all be equal"),
        (np.ones((3, 2)), np.ones((3, 2)), ["a", "b", "c"], "`gold_scores` must hold numbers"),
    ],
)
def test_sts_correlation_bad_inputs(a, b, gold, match):
    with pytest.raises(ValueError, match=match):
        evaluation.sts_correlation(a, b, gold)


def test_sts_table():
    table = evaluation.sts_table({"STS12": 68.4, "STSBenchmark": 76.851, "average": 72.6255})
    assert table.splitlines() == [
        "| STS12 | STSBenchmark | average |",
        "|---|---|---|",
        "| 68.40 | 76.85 | 72.63 |",
    ]
    with pytest.raises(ValueError, match="`results`"):
        evaluation.sts_table({})


# ---------------------------------------------------------------------------
# evaluate_sts on a tiny random backbone
# ---------------------------------------------------------------------------

PAIRS = [
    ("a cat sits on the mat", "a cat is on the mat", 4.8),
    ("a dog runs in the park", "the dog is running", 3.9),
    ("a man plays a guitar", "a woman cooks food", 0.4),
    ("the sun is bright", "it is sunny today", 3.1),
    ("kids play football", "children are playing soccer", 4.2),
    ("the market fell", "a bird sings", 0.0),
]


@pytest.fixture(scope="module")
def tiny_encoder():
    pytest.importorskip("keras_hub")
    from keras_fmicl.layers import SentenceEncoder
    from keras_fmicl.layers import text_backbone

    corpus = [s for pair in PAIRS for s in pair[:2]]
    keras.utils.set_random_seed(0)
    backbone, preprocessor = text_backbone.tiny_backbone(
        corpus, vocabulary_size=100, sequence_length=12, hidden_dim=16, num_heads=2
    )
    return SentenceEncoder(backbone, pooling="mean"), preprocessor


def tasks():
    a, b, gold = (list(column) for column in zip(*PAIRS))
    return {"first": (a[:4], b[:4], gold[:4]), "second": (a[2:], b[2:], np.array(gold[2:]))}


def test_evaluate_sts_per_task_and_average(tiny_encoder):
    # One batch shape (8 sentences) throughout: a single compilation on JAX.
    encoder, preprocessor = tiny_encoder
    results = evaluation.evaluate_sts(encoder, tasks(), preprocessor, batch_size=8)
    assert list(results) == ["first", "second", evaluation.STS_AVERAGE]
    for name, (a, b, gold) in tasks().items():
        features = encoder.predict(preprocessor(a + b), batch_size=8, verbose=0)
        expected = evaluation.sts_correlation(features[:4], features[4:], gold)
        np.testing.assert_allclose(results[name], expected, rtol=1e-5, atol=1e-4)
    assert results["average"] == pytest.approx((results["first"] + results["second"]) / 2)


def test_evaluate_sts_with_a_head_scores_the_head_outputs(tiny_encoder):
    """SimCSE's supervised convention (`cls`): the MLP is kept at test time."""
    encoder, preprocessor = tiny_encoder
    keras.utils.set_random_seed(1)
    head = keras.layers.Dense(6, activation="tanh")
    head.build((None, 16))
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w), np.float64) for w in head.weights)
    results = evaluation.evaluate_sts(encoder, tasks(), preprocessor, batch_size=8, head=head)
    plain = evaluation.evaluate_sts(encoder, tasks(), preprocessor, batch_size=8)
    assert results != plain
    for name, (a, b, gold) in tasks().items():
        features = encoder.predict(preprocessor(a + b), batch_size=8, verbose=0)
        projected = np.tanh(features.astype(np.float64) @ kernel + bias)  # the head, by hand
        expected = evaluation.sts_correlation(projected[:4], projected[4:], gold)
        np.testing.assert_allclose(results[name], expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="`head`"):
        evaluation.evaluate_sts(encoder, tasks(), preprocessor, head="mlp")


def test_evaluate_sts_with_a_plain_callable_over_several_batches(tiny_encoder):
    _, preprocessor = tiny_encoder
    rng = np.random.default_rng(0)
    table = rng.normal(size=(100, 5))
    seen = []

    def encoder(batch):  # a bag of random token vectors, in numpy
        ids = keras.ops.convert_to_numpy(batch["token_ids"])
        seen.append(ids.shape)
        mask = keras.ops.convert_to_numpy(batch["padding_mask"])[..., None]
        return (table[ids] * mask).sum(axis=1)

    results = evaluation.evaluate_sts(encoder, tasks(), preprocessor, batch_size=3)
    # 8 sentences a task, padded to 9: full batches only, one shape for every task
    assert seen == [(3, 12)] * 6
    for name, (a, b, gold) in tasks().items():
        features = encoder(preprocessor(a + b))
        expected = evaluation.sts_correlation(features[:4], features[4:], gold)
        np.testing.assert_allclose(results[name], expected, rtol=1e-12)


def test_evaluate_sts_bad_arguments(tiny_encoder):
    encoder, preprocessor = tiny_encoder
    with pytest.raises(ValueError, match="`tasks`"):
        evaluation.evaluate_sts(encoder, {}, preprocessor)
    with pytest.raises(ValueError, match="`tasks`"):
        evaluation.evaluate_sts(encoder, [("a", "b", 1.0)], preprocessor)
    with pytest.raises(ValueError, match="as many second sentences"):
        evaluation.evaluate_sts(encoder, {"t": (["a", "b"], ["c"], [1, 2])}, preprocessor)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        evaluation.evaluate_sts(encoder, {"t": (["a"], ["c"], [1])}, preprocessor)
    with pytest.raises(ValueError, match="'average'"):
        evaluation.evaluate_sts(encoder, {"average": tasks()["first"]}, preprocessor)
    with pytest.raises(ValueError, match="`encoder`"):
        evaluation.evaluate_sts("encoder", tasks(), preprocessor)
    with pytest.raises(ValueError, match="`batch_size`"):
        evaluation.evaluate_sts(encoder, tasks(), preprocessor, batch_size=0)
    def ones(batch):
        return np.ones((len(batch["token_ids"]), 3))

    with pytest.raises(ValueError, match="STS task 't'.*must not all be equal"):
        evaluation.evaluate_sts(ones, {"t": (["a", "b"], ["c", "d"], [1, 1])}, preprocessor)

    def one_short(batch):
        return np.ones((len(batch["token_ids"]) - 1, 3))

    with pytest.raises(ValueError, match=r"one row per sentence: 8 for task 'first'.*Received: 7 rows"):
        evaluation.evaluate_sts(one_short, tasks(), preprocessor, batch_size=8)

    def flat(batch):
        return np.ones((len(batch["token_ids"]),))

    with pytest.raises(ValueError, match=r"`encoder` must map .* \(N, F\)"):
        evaluation.evaluate_sts(flat, tasks(), preprocessor)
