"""Top-K ranking and the metrics of full-ranking evaluation. Pure numpy, vectorized: no Python loop
per query or per user.

Conventions: ties in score are broken by the lower item index (deterministic); masked items never
appear in a top-K list (the list is padded with -1 when fewer items are left); a user with no test
item is skipped (`users` counts the users evaluated). Each metric is the mean over evaluated users,
summed in user order (as a loop over users would add them).
"""

from __future__ import annotations

from itertools import chain

import numpy as np

METRICS = ("recall", "ndcg", "hr", "precision", "f1", "mrr")


CHUNK_CELLS = 1 << 22  # scores ranked at a time (rows x items): bounds top_k's temporaries


def top_k(scores: np.ndarray, mask, k: int) -> np.ndarray:
    """(U, I) scores, mask (True = excluded: a (U, I) bool array, or any object whose `[rows]` is
    that block, e.g. `model_inputs.QueryMask`) -> (U, k) item indices, -1 padded.

    Exact (ties by the lower item index) and in row chunks of about CHUNK_CELLS scores, so the
    temporaries stay small whatever U: a partition finds each row's k-th best score, and only the
    items at or above it are sorted."""
    scores = np.asarray(scores)
    n_rows, n_items = scores.shape
    out = np.full((n_rows, k), -1, dtype=np.int64)
    step = max(1, CHUNK_CELLS // max(n_items, 1))
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        s = scores[lo:hi].astype(np.float64, copy=True)
        if mask is not None:
            s[mask[lo:hi]] = -np.inf
        out[lo:hi] = top_k_rows(s, k)
    return out


def top_k_rows(s: np.ndarray, k: int) -> np.ndarray:
    """(R, I) float64 scores, masked ones -inf -> (R, k) best item indices, -1 padded; no loop
    per row. A partition picks each row's k best; where scores equal to the k-th best straddle
    the cut, the lowest indices among them are taken instead (`tied_best`). The k are then sorted
    by score, stably over ascending item index (ties keep the lower index first), and -inf scores
    (masked items) are dropped to the padding."""
    rows, n_items = s.shape
    k_eff = min(k, n_items)
    out = np.full((rows, k), -1, dtype=np.int64)
    if k_eff == 0 or rows == 0:
        return out
    best = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff]  # (R, k) the k best, any of ties
    kth = np.take_along_axis(s, best[:, -1:], axis=1)  # (R, 1) the k-th best score
    straddle = (s >= kth).sum(axis=1) != k_eff  # (R,) more ties than places (or kth NaN)
    cand = np.sort(best, axis=1)  # (R, k) ascending item index
    if straddle.any():
        cand[straddle] = tied_best(s[straddle], kth[straddle], k_eff)
    row = np.arange(rows)[:, None]
    key = np.where(cand >= 0, -s[row, cand], np.inf)  # (R, k) -score; +inf: no item
    order = np.argsort(key, axis=1, kind="stable")  # (R, k)
    cand = np.take_along_axis(cand, order, axis=1)
    cand[np.take_along_axis(key, order, axis=1) == np.inf] = -1  # masked (-inf score) or none
    out[:, :k_eff] = cand
    return out


def tied_best(s: np.ndarray, kth: np.ndarray, k: int) -> np.ndarray:
    """(R, I) scores, (R, 1) each row's k-th best -> (R, k) ascending indices of every item above
    the k-th best score and, of the items equal to it, the lowest indices up to k; -1 padded (a
    NaN k-th best: fewer than k scores are numbers, none is taken)."""
    above = s > kth  # (R, I)
    tied = s == kth  # (R, I)
    room = k - above.sum(axis=1, keepdims=True)  # (R, 1) places left for tied items
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))  # (R, I) at most k per row
    r, items = np.nonzero(chosen)  # row-major: ascending item index within each row
    counts = np.bincount(r, minlength=len(s))  # (R,)
    out = np.full((len(s), k), -1, dtype=np.int64)
    out[r, np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)] = items
    return out


def hit_matrix(topk: np.ndarray, truth: list[set[int]]) -> np.ndarray:
    """(Q, K) bool: topk[q, j] is one of query q's test items (-1 padding never is)."""
    topk = np.asarray(topk, dtype=np.int64)
    sizes = np.fromiter(map(len, truth), dtype=np.int64, count=len(truth))  # (Q,)
    items = np.fromiter(chain.from_iterable(truth), dtype=np.int64, count=int(sizes.sum()))
    width = int(max(topk.max(initial=-1), items.max(initial=-1))) + 2  # item i -> key i + 1 >= 0
    owner = np.repeat(np.arange(len(truth), dtype=np.int64), sizes)
    keys = (np.arange(len(truth), dtype=np.int64)[:, None] * width + topk + 1)  # (Q, K)
    return np.isin(keys, owner * width + items + 1) & (topk >= 0)


def ranking_metrics(topk: np.ndarray, truth: list[set[int]], ks: list[int]) -> dict[str, float]:
    """Metrics at each k for top-K lists (U, >=max(ks)) against each user's set of test items,
    computed over the (users, K) hit matrix of the users with test items."""
    sizes = np.fromiter(map(len, truth), dtype=np.int64, count=len(truth))  # (U,)
    evaluated = np.flatnonzero(sizes)
    hits = hit_matrix(np.asarray(topk)[:, :max(ks)], truth)[evaluated]  # (Q, K) evaluated users
    sizes = sizes[evaluated]  # (Q,)
    out: dict[str, float] = {}
    for k in ks:
        per_user = user_metrics(hits[:, :k], sizes, k)
        for m in METRICS:
            total = np.cumsum(per_user[m])[-1] if len(evaluated) else 0.0  # in user order
            mean = total / max(len(evaluated), 1)
            out[f"{m}@{k}"] = float(mean)
    out["users"] = len(evaluated)
    return out


def user_metrics(hits: np.ndarray, sizes: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each metric of each user at k: `hits` (Q, k) bool, `sizes` (Q,) test items per user."""
    rel = hits.astype(np.float64)  # (Q, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    ideal = np.array([discounts[:n].sum() for n in range(k + 1)])  # (k + 1,) IDCG of n test items
    n_hits = rel.sum(axis=1)  # (Q,)
    recall, precision = n_hits / sizes, n_hits / k
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(n_hits == 0, 0.0, 2 * precision * recall / (precision + recall))
        mrr = np.where(n_hits == 0, 0.0, 1.0 / (hits.argmax(axis=1) + 1))
    return {"recall": recall, "precision": precision, "hr": (n_hits > 0).astype(np.float64),
            "ndcg": (rel * discounts).sum(axis=1) / ideal[np.minimum(k, sizes)], "f1": f1, "mrr": mrr}
