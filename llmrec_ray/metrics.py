"""Top-K ranking and the metrics of full-ranking evaluation. Pure numpy.

Conventions: ties in score are broken by the lower item index (deterministic); masked items never
appear in a top-K list (the list is padded with -1 when fewer items are left); a user with no test
item is skipped (`users` counts the users evaluated). Each metric is the mean over evaluated users.
"""

from __future__ import annotations

import numpy as np

METRICS = ("recall", "ndcg", "hr", "precision", "f1", "mrr")


def top_k(scores: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    """(U, I) scores, (U, I) bool mask (True = excluded) -> (U, k) item indices, -1 padded."""
    s = np.asarray(scores, dtype=np.float64).copy()
    if mask is not None:
        s[mask] = -np.inf
    k_eff = min(k, s.shape[1])
    # stable sort on -score: equal scores keep item-index order
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k_eff]
    picked = np.take_along_axis(s, idx, axis=1)
    idx = np.where(np.isneginf(picked), -1, idx)
    if k_eff < k:
        idx = np.pad(idx, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return idx


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
