"""An independent float64 numpy reference of the f-MICL contract.

Written from the definitions of `docs/fmicl-math.md`, not from the package:
divergences from their generator f and its derivative f' (the negative score
is the Fenchel-Young identity u f'(u) - f(u)), similarities from the
normalised embeddings directly (the Gaussian one from the norm of the
difference, not from a dot product), and the loss by explicit loops over
anchors and their positive and negative sets.
"""

import numpy as np

LOG2 = np.log(2.0)


def generator(name, order=1.5):
    """Returns (f, f') of a divergence, as float64 numpy functions of u > 0."""
    a = order
    table = {
        "kl": (lambda u: u * np.log(u), lambda u: np.log(u) + 1.0),
        "js": (
            lambda u: u * np.log(u) - (u + 1.0) * np.log((u + 1.0) / 2.0),
            lambda u: np.log(2.0 * u / (u + 1.0)),
        ),
        "pearson": (lambda u: (u - 1.0) ** 2, lambda u: 2.0 * (u - 1.0)),
        "squared_hellinger": (
            lambda u: (np.sqrt(u) - 1.0) ** 2,
            lambda u: 1.0 - 1.0 / np.sqrt(u),
        ),
        "tsallis": (
            lambda u: (u**a - u) / (a - 1.0),
            lambda u: (a * u ** (a - 1.0) - 1.0) / (a - 1.0),
        ),
        "vlc": (
            lambda u: (u - 1.0) ** 2 / (u + 1.0),
            lambda u: (u - 1.0) * (u + 3.0) / (u + 1.0) ** 2,
        ),
    }
    return table[name]


def scores(name, log_ratio, order=1.5):
    """(positive, negative) scores f'(u), u f'(u) - f(u) at u = exp(l)."""
    f, fp = generator(name, order)
    u = np.exp(np.asarray(log_ratio, dtype=np.float64))
    return fp(u), u * fp(u) - f(u)


def normalise(z):
    z = np.asarray(z, dtype=np.float64)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def cosines(y):
    """float64 `(M, M)` cosines of the flattened `(N, V, d)` embeddings."""
    z = normalise(np.asarray(y).reshape(-1, y.shape[-1]))
    return z @ z.T


def negative_mask(n, v):
    """`(M, M)` bool: the anchors' in-batch negatives (every other sample)."""
    sample = np.repeat(np.arange(n), v)
    return sample[:, None] != sample[None, :]


def log_ratio(a, b, similarity, parameter):
    """l(a, b) for two single embeddings, from the contract's definitions."""
    a, b = normalise(a), normalise(b)
    if similarity == "gaussian":
        return -np.sum((a - b) ** 2) / (2.0 * parameter**2)
    if similarity == "cosine":
        return float(np.dot(a, b)) / parameter
    raise ValueError(similarity)


def pair_sets(n, v, labels=None, key_mode=False):
    """Positive and negative index sets of every anchor (i, w), as lists.

    Returns a dict mapping (i, v) to (positives, negatives), each a list of
    (j, w) pairs, per the contract (section 4); in key mode the candidates
    are keys and only keys of other views (w != v) are contrasted.
    """
    sets = {}
    for i in range(n):
        for a in range(v):
            positives, negatives = [], []
            for j in range(n):
                for w in range(v):
                    if key_mode and w == a:
                        continue
                    if j == i:
                        if w != a:
                            positives.append((j, w))
                    elif labels is not None and labels[j] == labels[i]:
                        positives.append((j, w))
                    else:
                        negatives.append((j, w))
            sets[(i, a)] = (positives, negatives)
    return sets


def fmicl_loss(
    y_pred,
    labels=None,
    divergence="kl",
    similarity="gaussian",
    parameter=0.5,
    alpha=1.0,
    order=1.5,
    keys=None,
    queue=None,
    queue_mask=None,
    in_batch_negatives=True,
    return_estimate=False,
):
    """Per-sample f-MICL loss, shape (N,), by explicit loops."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n, v, _ = y_pred.shape
    key_mode = keys is not None
    candidates = y_pred if keys is None else np.asarray(keys, dtype=np.float64)
    queue_rows = []
    if queue is not None:
        mask = np.ones(len(queue), bool) if queue_mask is None else np.asarray(queue_mask)
        queue_rows = [q for q, m in zip(np.asarray(queue, np.float64), mask) if m]
    f, fp = generator(divergence, order)
    losses = np.zeros((n, v))
    estimates = np.zeros((n, v))
    for (i, a), (positives, negatives) in pair_sets(n, v, labels, key_mode).items():
        anchor = y_pred[i, a]
        pos = [fp(np.exp(log_ratio(anchor, candidates[j, w], similarity, parameter))) for j, w in positives]
        neg_rows = [candidates[j, w] for j, w in negatives] if in_batch_negatives else []
        neg_rows = neg_rows + list(queue_rows)
        neg = []
        for row in neg_rows:
            u = np.exp(log_ratio(anchor, row, similarity, parameter))
            neg.append(u * fp(u) - f(u))
        neg_mean = np.mean(neg) if neg else 0.0
        losses[i, a] = -np.mean(pos) + alpha * neg_mean
        estimates[i, a] = np.mean(pos) - neg_mean
    if return_estimate:
        return losses.mean(axis=1), estimates.mean()
    return losses.mean(axis=1)


def info_nce_loss(
    y_pred,
    labels=None,
    similarity="cosine",
    parameter=0.2,
    keys=None,
    queue=None,
    queue_mask=None,
    in_batch_negatives=True,
):
    """Per-sample InfoNCE (contract section 5), shape (N,), by explicit loops."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n, v, _ = y_pred.shape
    key_mode = keys is not None
    candidates = y_pred if keys is None else np.asarray(keys, dtype=np.float64)
    queue_rows = []
    if queue is not None:
        mask = np.ones(len(queue), bool) if queue_mask is None else np.asarray(queue_mask)
        queue_rows = [q for q, m in zip(np.asarray(queue, np.float64), mask) if m]
    losses = np.zeros((n, v))
    for (i, a), (positives, negatives) in pair_sets(n, v, labels, key_mode).items():
        anchor = y_pred[i, a]
        neg_rows = [candidates[j, w] for j, w in negatives] if in_batch_negatives else []
        neg_l = [log_ratio(anchor, r, similarity, parameter) for r in neg_rows + queue_rows]
        terms = []
        for j, w in positives:
            lp = log_ratio(anchor, candidates[j, w], similarity, parameter)
            logits = np.array([lp] + neg_l)
            top = logits.max()
            terms.append(-lp + top + np.log(np.sum(np.exp(logits - top))))
        losses[i, a] = np.mean(terms)
    return losses.mean(axis=1)


def alignment_uniformity(y_pred, labels=None):
    """Batch alignment (mean over positive pairs of ||a - p||^2) and uniformity
    (log mean over negative pairs of exp(-2 ||a - n||^2)) of the contract."""
    y_pred = normalise(y_pred)
    n, v, _ = y_pred.shape
    pos_d, neg_d = [], []
    for (i, a), (positives, negatives) in pair_sets(n, v, labels).items():
        pos_d += [np.sum((y_pred[i, a] - y_pred[j, w]) ** 2) for j, w in positives]
        neg_d += [np.sum((y_pred[i, a] - y_pred[j, w]) ** 2) for j, w in negatives]
    return np.mean(pos_d), np.log(np.mean(np.exp(-2.0 * np.array(neg_d))))


def _logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return top + np.log(np.sum(np.exp(values - top)))


def supcon_loss(
    y_pred,
    labels=None,
    similarity="cosine",
    parameter=0.2,
    keys=None,
    queue=None,
    queue_mask=None,
    in_batch_negatives=True,
):
    """Per-sample SupCon L_out (Khosla et al. 2020), shape (N,), by explicit loops.

    loss(a) = -mean_{p in P(a)} [ l(a,p) - log sum_{b in P(a) U N(a)} e^l(a,b) ]:
    one softmax over every candidate of the anchor (every other embedding of
    the batch, or in key mode the keys of the other views, plus the queue),
    its positives included; log-sum-exp with the maximum shifted out.
    """
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n, v, _ = y_pred.shape
    key_mode = keys is not None
    candidates = y_pred if keys is None else np.asarray(keys, dtype=np.float64)
    queue_rows = []
    if queue is not None:
        mask = np.ones(len(queue), bool) if queue_mask is None else np.asarray(queue_mask)
        queue_rows = [q for q, m in zip(np.asarray(queue, np.float64), mask) if m]
    losses = np.zeros((n, v))
    for (i, a), (positives, negatives) in pair_sets(n, v, labels, key_mode).items():
        anchor = y_pred[i, a]
        pos_l = [log_ratio(anchor, candidates[j, w], similarity, parameter) for j, w in positives]
        neg_rows = [candidates[j, w] for j, w in negatives] if in_batch_negatives else []
        neg_l = [log_ratio(anchor, r, similarity, parameter) for r in neg_rows + queue_rows]
        denominator = _logsumexp(pos_l + neg_l)
        losses[i, a] = -np.mean([lp - denominator for lp in pos_l])
    return losses.mean(axis=1)
