"""Evaluate with the user-temporal protocol and full ranking, against a popularity baseline.

Each test user is scored with their features as of their split time (fetched from Feast, point in
time), against every item; the items the user saw in training and the items not yet available at
the split time are masked. Metrics at each K for the model and for popularity (training counts).
"""

from __future__ import annotations

import json
import logging
import time
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


BASELINES = ("popularity", "bpr_mf", "implicit_als", "zero_shot_cosine")


def available_baselines(requested: list[str] | None) -> list[str]:
    """The baselines to run: the requested ones (an unavailable one is an error), or by default all
    whose packages are installed (implicit ALS needs the `als` extra)."""
    if requested is not None:
        unknown = [b for b in requested if b not in BASELINES]
        if unknown:
            raise ValueError(f"evaluate.baselines: unknown {unknown} (known: {list(BASELINES)})")
        if "implicit_als" in requested:
            import implicit  # noqa: F401  (a clear ImportError names the package)
        return list(requested)
    try:
        import implicit  # noqa: F401
        return list(BASELINES)
    except ImportError:
        logger.warning("implicit is not installed: the implicit_als baseline is skipped "
                       "(pip install 'llmrec-ray[als]')")
        return [b for b in BASELINES if b != "implicit_als"]


def slices(truth: list[set[int]], train: pa.Table, users: list[str], item_ids: list[str],
           light_user_max: int) -> dict[str, list[set[int]]]:
    """Test items per user for each slice (a user with an empty set is not evaluated in it).

    all: every test user. cold_items: only test items without any training interaction (their only
    representation is their text). light_users: users with at most `light_user_max` training
    interactions.
    """
    trained = set(train.column("item_id").to_pylist())
    cold = {k for k, i in enumerate(item_ids) if i not in trained}
    counts = pc.value_counts(train.column("user_id"))
    n_train = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    light = [n_train.get(u, 0) <= light_user_max for u in users]
    return {"all": truth,
            "cold_items": [t & cold for t in truth],
            "light_users": [t if is_light else set() for t, is_light in zip(truth, light)]}


def model_inputs(repo: FeatureRepo, model, users: list[str], times: list, item_ids: list[str],
                 end, model_dir: Path | None) -> dict:
    """What the trained model scores: user features as of each user's time (Feast, point in
    time), item text vectors as of `end`, and for a hybrid the user and item ID indices (items
    without training interactions get the unknown ID)."""
    from llmrec_ray.featurestore import USER_STATS_VIEW, embedding_matrix
    from llmrec_ray.train import user_extra_features

    df = pd.DataFrame({"row_id": np.arange(len(users)), "user_id": users,
                       "event_timestamp": pd.to_datetime(times, utc=True)})
    refs = [f"{USER_HISTORY_VIEW}:embedding"]
    extra = model.hparams.get("user_extra_dim", 0) > 0
    if extra:
        refs += [f"{USER_STATS_VIEW}:{f}" for f in ("n_interactions", "mean_rating", "n_30d",
                                                    "last_interaction_unix")]
    out = repo.historical(df, refs).to_pandas().sort_values("row_id")
    inputs = {"user_emb": torch.from_numpy(embedding_matrix(out[f"{USER_HISTORY_VIEW}__embedding"]))}
    if extra:
        inputs["user_extra"] = torch.from_numpy(user_extra_features(out))
    inputs["item_emb"] = torch.from_numpy(
        _features_as_of(repo, "item_id", item_ids, [end] * len(item_ids), ITEM_TEXT_VIEW))
    if getattr(model, "hybrid", False):
        from llmrec_ray.train import item_id_index, user_id_index

        inputs["user_idx"] = user_id_index(model_dir, users)
        missing = [u for u, k in zip(users, inputs["user_idx"].tolist()) if k < 0]
        if missing:
            raise KeyError(f"users {missing[:5]} have no ID embedding (not in the training rows)")
        inputs["item_idx"] = item_id_index(model_dir, item_ids)
    return inputs


def evaluate(repo: FeatureRepo, model, train: pa.Table, test: pa.Table, cuts: pa.Table,
             items: pa.Table, item_ids: list[str], ks: list[int], baselines: list[str] | None = None,
             light_user_max: int = 20, seed: int = 0,
             model_dir: Path | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{slice: {model: metrics}} for the trained model and the baselines, all fitted on `train`
    and ranked over every item available at each user's split time, training items masked."""
    from llmrec_ray import baselines as base

    users = cuts.column("user_id").to_pylist()
    times = cuts.column("split_time").to_pylist()
    split_us = cuts.column("split_time").cast(pa.int64()).to_numpy()
    end = max(times)
    inputs = model_inputs(repo, model, users, times, item_ids, end, model_dir)
    user_emb, item_emb = inputs["user_emb"].numpy(), inputs["item_emb"].numpy()  # (U, H), (I, H)
    mask = masks(item_ids, users, train, items, split_us)
    truth = truth_sets(test, users, item_ids)
    k_max = max(ks)

    scores: dict[str, np.ndarray] = {}
    name = "hybrid" if getattr(model, "hybrid", False) else "two_tower"
    with torch.inference_mode():
        scores[name] = model.score(inputs["user_emb"], inputs["item_emb"], inputs.get("user_extra"),
                                   inputs.get("user_idx"), inputs.get("item_idx")).numpy()
    for name in available_baselines(baselines):
        start = time.perf_counter()
        if name == "popularity":
            scores[name] = base.popularity(train, users, item_ids)
        elif name == "bpr_mf":
            scores[name] = base.bpr_mf(train, users, item_ids, seed=seed)
        elif name == "implicit_als":
            scores[name] = base.implicit_als(train, users, item_ids, seed=seed)
        elif name == "zero_shot_cosine":
            scores[name] = base.zero_shot_cosine(user_emb, item_emb)
        logger.info("baseline %s fitted and scored in %.1fs", name, time.perf_counter() - start)
    groups = slices(truth, train, users, item_ids, light_user_max)
    results: dict[str, dict[str, dict[str, float]]] = {s: {} for s in groups}
    for name, sc in scores.items():
        ranked = top_k(sc, mask, k_max)
        for slice_name, slice_truth in groups.items():
            results[slice_name][name] = ranking_metrics(ranked, slice_truth, ks)
    return results


def format_table(results: dict[str, dict[str, dict[str, float]]], ks: list[int]) -> str:
    """Markdown: one table per slice, one row per model, Recall/NDCG/HR/Precision/F1/MRR at each K."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr", "precision", "f1", "mrr")]
    out = []
    for slice_name, models in results.items():
        users = next(iter(models.values()))["users"] if models else 0
        out.append(f"**{slice_name}** ({users} users)\n")
        out.append("| model | " + " | ".join(cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for name, m in models.items():
            out.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def write_results(results: dict, path: Path) -> list[Path]:
    """The metrics as JSON at `path`, the tables as markdown beside it (.md) and one bar chart
    per slice (<stem>-<slice>.png: Recall@20 and NDCG@20 of every model). Returns the files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    ks = sorted({int(k.split("@")[1]) for m in next(iter(results.values())).values() for k in m if "@" in k})
    md = path.with_suffix(".md")
    md.write_text(format_table(results, ks) + "\n")
    return [path, md] + plot_results(results, path.parent / path.stem, k=max(ks))


def plot_results(results: dict, prefix: Path, k: int = 20) -> list[Path]:
    """One PNG per slice: Recall@k and NDCG@k of every model, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for slice_name, models in results.items():
        names = list(models)
        x = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
        for offset, metric in ((-0.2, "recall"), (0.2, "ndcg")):
            values = [models[n][f"{metric}@{k}"] for n in names]
            bars = ax.bar(x + offset, values, width=0.4, label=f"{metric}@{k}")
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        users = models[names[0]]["users"] if names else 0
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(f"{slice_name} ({users} users)")
        ax.legend()
        fig.tight_layout()
        out = Path(f"{prefix}-{slice_name}.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        files.append(out)
    return files
