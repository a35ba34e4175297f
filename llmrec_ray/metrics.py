"""Top-K ranking and the metrics of full-ranking evaluation. Pure numpy.

Conventions: ties in score are broken by the lower item index (deterministic); masked items never
appear in a top-K list (the list is padded with -1 when fewer items are left); a user with no test
item is skipped (`users` counts the users evaluated). Each metric is the mean over evaluated users.
"""

from __future__ import annotations

import numpy as np

METRICS = ("recall", "ndcg", "hr", "precision", "f1", "mrr")


CHUNK_CELLS = 1 << 22  # scores ranked at a time (rows x items): bounds top_k's temporaries


def top_k(scores: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    """(U, I) scores, (U, I) bool mask (True = excluded) -> (U, k) item indices, -1 padded.

    Exact (ties by the lower item index) and in row chunks of about CHUNK_CELLS scores, so the
    temporaries stay small whatever U: a partition finds each row's k-th best score, and only the
    items at or above it (ties included) are sorted."""
    scores = np.asarray(scores)
    n_rows, n_items = scores.shape
    out = np.full((n_rows, k), -1, dtype=np.int64)
    step = max(1, CHUNK_CELLS // max(n_items, 1))
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        s = scores[lo:hi].astype(np.float64, copy=True)
        if mask is not None:
            s[mask[lo:hi]] = -np.inf
        out[lo:hi] = _top_k_rows(s, k)
    return out


def _top_k_rows(s: np.ndarray, k: int) -> np.ndarray:
    rows, n_items = s.shape
    k_eff = min(k, n_items)
    out = np.full((rows, k), -1, dtype=np.int64)
    if k_eff == 0 or rows == 0:
        return out
    kth = -np.partition(-s, k_eff - 1, axis=1)[:, k_eff - 1]  # (R,) k-th best score of each row
    for r in range(rows):
        cand = np.flatnonzero(s[r] >= kth[r])  # ascending item index: ties keep that order
        order = cand[np.argsort(-s[r, cand], kind="stable")][:k_eff]
        order = order[~np.isneginf(s[r, order])]
        out[r, :len(order)] = order
    return out


def ranking_metrics(topk: np.ndarray, truth: list[set[int]], ks: list[int]) -> dict[str, float]:
    """Metrics at each k for top-K lists (U, >=max(ks)) against each user's set of test items."""
    out: dict[str, float] = {}
    evaluated = [u for u, t in enumerate(truth) if t]
    for k in ks:
        sums = dict.fromkeys(METRICS, 0.0)
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        for u in evaluated:
            rel = np.array([i in truth[u] for i in topk[u, :k]], dtype=np.float64)
            hits = rel.sum()
            recall = hits / len(truth[u])
            precision = hits / k
            idcg = discounts[:min(k, len(truth[u]))].sum()
            sums["recall"] += recall
            sums["precision"] += precision
            sums["hr"] += float(hits > 0)
            sums["ndcg"] += float((rel * discounts).sum() / idcg)
            sums["f1"] += 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
            first = np.flatnonzero(rel)
            sums["mrr"] += 0.0 if first.size == 0 else 1.0 / (first[0] + 1)
        n = max(len(evaluated), 1)
        for m in METRICS:
            out[f"{m}@{k}"] = sums[m] / n
    out["users"] = len(evaluated)
    return out
