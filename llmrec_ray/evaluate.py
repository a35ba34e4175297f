"""Evaluate with the user-temporal protocol and full ranking, against a popularity baseline.

Each test user is scored with their features as of their split time (fetched from Feast, point in
time), against every item; the items the user saw in training and the items not yet available at
the split time are masked. Metrics at each K for the model and for popularity (training counts).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from llmrec_ray.featurestore import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, FeatureRepo
from llmrec_ray.metrics import ranking_metrics, top_k

logger = logging.getLogger(__name__)


def _features_as_of(repo: FeatureRepo, key: str, ids: list[str], times: list, view: str) -> np.ndarray:
    """One vector per (id, time), point in time, in input order."""
    from llmrec_ray.featurestore import embedding_matrix

    df = pd.DataFrame({"row_id": np.arange(len(ids)), key: ids,
                       "event_timestamp": pd.to_datetime(times, utc=True)})
    out = repo.historical(df, [f"{view}:embedding"]).to_pandas().sort_values("row_id")
    return embedding_matrix(out[f"{view}__embedding"])


def masks(item_ids: list[str], users: list[str], train: pa.Table, items: pa.Table,
          split_times: np.ndarray) -> np.ndarray:
    """(U, I) True where an item is excluded: seen in training, or not yet available."""
    index = {item: i for i, item in enumerate(item_ids)}
    row = {u: k for k, u in enumerate(users)}
    mask = np.zeros((len(users), len(item_ids)), dtype=bool)
    for u, i in zip(train.column("user_id").to_pylist(), train.column("item_id").to_pylist()):
        if u in row:
            mask[row[u], index[i]] = True
    avail = items.column("available_from")
    if avail.null_count < items.num_rows:
        order = pc.index_in(pa.array(item_ids), value_set=items.column("item_id").combine_chunks())
        a = avail.combine_chunks().take(order).cast(pa.int64()).to_numpy(zero_copy_only=False)
        a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=-np.inf)
        mask |= a[None, :] > split_times[:, None]
    return mask


def truth_sets(test: pa.Table, users: list[str], item_ids: list[str]) -> list[set[int]]:
    index = {item: i for i, item in enumerate(item_ids)}
    row = {u: k for k, u in enumerate(users)}
    truth: list[set[int]] = [set() for _ in users]
    for u, i in zip(test.column("user_id").to_pylist(), test.column("item_id").to_pylist()):
        truth[row[u]].add(index[i])
    return truth


def evaluate(repo: FeatureRepo, model, train: pa.Table, test: pa.Table, cuts: pa.Table,
             items: pa.Table, item_ids: list[str], ks: list[int]) -> dict[str, dict[str, float]]:
    """Metrics per model: {"two_tower": {...}, "popularity": {...}}."""
    users = cuts.column("user_id").to_pylist()
    times = cuts.column("split_time").to_pylist()
    split_us = cuts.column("split_time").cast(pa.int64()).to_numpy()
    user_emb = _features_as_of(repo, "user_id", users, times, USER_HISTORY_VIEW)  # (U, H)
    end = max(times)
    item_emb = _features_as_of(repo, "item_id", item_ids, [end] * len(item_ids), ITEM_TEXT_VIEW)  # (I, H)
    mask = masks(item_ids, users, train, items, split_us)
    truth = truth_sets(test, users, item_ids)
    k_max = max(ks)

    with torch.inference_mode():
        scores = model.score(torch.from_numpy(user_emb), torch.from_numpy(item_emb)).numpy()  # (U, I)
    results = {"two_tower": ranking_metrics(top_k(scores, mask, k_max), truth, ks)}

    counts = pc.value_counts(train.column("item_id"))
    pop = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    pop_scores = np.array([pop.get(i, 0) for i in item_ids], dtype=np.float64)
    pop_scores = np.broadcast_to(pop_scores, (len(users), len(item_ids)))
    results["popularity"] = ranking_metrics(top_k(pop_scores, mask, k_max), truth, ks)
    return results


def format_table(results: dict[str, dict[str, float]], ks: list[int]) -> str:
    """Markdown table: one row per model, Recall/NDCG/HR/Precision/F1 at each K."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr", "precision", "f1")]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def write_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
