"""Full-ranking evaluation of the trained model and the baselines on one split's test queries.

Each query (a user at a moment: the user-temporal split time, or in the global-temporal protocol
the snapshot serving the user's next interactions) is scored with the user's features as of the
query time (fetched from Feast, point in time) against every item; the items the user saw before
it and the items not yet available are masked. Metrics at each K, per slice, for every model.
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

from llmrec_ray.featurestore import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, FeatureRepo
from llmrec_ray.metrics import ranking_metrics
from llmrec_ray.recommender import Queries, Recommender, TrainedModel

logger = logging.getLogger(__name__)


def _features_as_of(repo: FeatureRepo, key: str, ids: list[str], times: list, view: str) -> np.ndarray:
    """One vector per (id, time), point in time, in input order."""
    from llmrec_ray.featurestore import embedding_matrix

    df = pd.DataFrame({"row_id": np.arange(len(ids)), key: ids,
                       "event_timestamp": pd.to_datetime(times, utc=True)})
    out = repo.historical_table(df, [f"{view}:embedding"])  # in input order
    return embedding_matrix(out.column(f"{view}__embedding"))


def masks(item_ids: list[str], seen: list[list[str]], items: pa.Table, query_times: np.ndarray) -> np.ndarray:
    """(Q, I) True where an item is excluded from query q's ranking: the user saw it before the
    query (`seen[q]`), or it is not yet available at the query time (µs since the epoch)."""
    index = {item: i for i, item in enumerate(item_ids)}
    mask = np.zeros((len(seen), len(item_ids)), dtype=bool)
    for q, items_seen in enumerate(seen):
        mask[q, [index[i] for i in items_seen]] = True
    avail = items.column("available_from")
    if avail.null_count < items.num_rows:
        order = pc.index_in(pa.array(item_ids), value_set=items.column("item_id").combine_chunks())
        a = avail.combine_chunks().take(order).cast(pa.int64()).to_numpy(zero_copy_only=False)
        a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=-np.inf)
        mask |= a[None, :] > np.asarray(query_times, dtype=np.float64)[:, None]
    return mask


def truth_sets(truth: list[list[str]], item_ids: list[str]) -> list[set[int]]:
    """Each query's test items as item indices."""
    index = {item: i for i, item in enumerate(item_ids)}
    return [{index[i] for i in items} for items in truth]


def available_baselines(requested: list[str] | None) -> list[str]:
    """The baselines to run: the requested ones (an unavailable one is an error), or by default all
    whose packages are installed (implicit ALS and BPR need the `als` extra)."""
    from llmrec_ray.baselines import BASELINES, NEEDS_IMPLICIT

    if requested is not None:
        unknown = [b for b in requested if b not in BASELINES]
        if unknown:
            raise ValueError(f"evaluate.baselines: unknown {unknown} (known: {list(BASELINES)})")
        if any(b in NEEDS_IMPLICIT for b in requested):
            import implicit  # noqa: F401  (a clear ImportError names the package)
        return list(requested)
    try:
        import implicit  # noqa: F401
        return list(BASELINES)
    except ImportError:
        logger.warning("implicit is not installed: the implicit_als and bpr baselines are skipped "
                       "(pip install 'llmrec-ray[als]')")
        return [b for b in BASELINES if b not in NEEDS_IMPLICIT]


def slices(truth: list[set[int]], fit: pa.Table, users: list[str], item_ids: list[str],
           light_user_max: int, new_users: bool = False) -> dict[str, list[set[int]]]:
    """Test items per query for each slice (a query with an empty set is not evaluated in it).

    all: every query. cold_items: only test items without any interaction in the fit rows (their
    only representation is their text). light_users: users with at most `light_user_max` fit
    interactions. new_users (with `new_users`): users with no fit interaction at all, who arrived
    after the cut (global-temporal protocol).
    """
    trained = set(fit.column("item_id").to_pylist())
    cold = {k for k, i in enumerate(item_ids) if i not in trained}
    counts = pc.value_counts(fit.column("user_id"))
    n_fit = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    light = [n_fit.get(u, 0) <= light_user_max for u in users]
    out = {"all": truth,
           "cold_items": [t & cold for t in truth],
           "light_users": [t if is_light else set() for t, is_light in zip(truth, light)]}
    if new_users:
        out["new_users"] = [t if u not in n_fit else set() for t, u in zip(truth, users)]
    return out


STAT_COLUMNS = ("n_interactions", "mean_rating", "n_30d", "last_interaction_unix")


def query_inputs(repo: FeatureRepo, users: list[str], times: list, item_ids: list[str],
                 vocab: dict | None = None) -> dict[str, np.ndarray]:
    """Every feature input of ranking queries: user-history vectors and user statistics as of
    each query time (Feast, point in time), item text vectors as of the last query time, and,
    with a checkpoint's `vocab`, the ID rows of users and items (-1, the unknown ID, for those
    the fit rows never saw)."""
    from llmrec_ray.featurestore import USER_STATS_VIEW, embedding_matrix
    from llmrec_ray.model_inputs import item_id_index, user_extra_features, user_id_index

    df = pd.DataFrame({"row_id": np.arange(len(users)), "user_id": users,
                       "event_timestamp": pd.to_datetime(times, utc=True)})
    refs = [f"{USER_HISTORY_VIEW}:embedding"] + [f"{USER_STATS_VIEW}:{f}" for f in STAT_COLUMNS]
    out = repo.historical_table(df, refs)  # in input order
    inputs = {"user_emb": embedding_matrix(out.column(f"{USER_HISTORY_VIEW}__embedding")),
              "user_extra": user_extra_features(out),
              "item_emb": latest_item_vectors(repo, item_ids, max(df["event_timestamp"], default=None))}
    if vocab is not None:
        inputs["user_idx"] = user_id_index(vocab, users).numpy()
        inputs["item_idx"] = item_id_index(vocab, item_ids).numpy()
    return inputs


def latest_item_vectors(repo: FeatureRepo, item_ids: list[str], as_of=None) -> np.ndarray:
    """(I, D) item text vectors as of `as_of` (the last query), or of the newest item row when
    items arrive later (those are masked until they are available: `masks`)."""
    newest_item = pc.max(repo.read_view(ITEM_TEXT_VIEW, columns=["event_timestamp"])
                         .column("event_timestamp")).as_py()
    end = pd.Timestamp(newest_item) if as_of is None else max(pd.Timestamp(as_of), pd.Timestamp(newest_item))
    return _features_as_of(repo, "item_id", item_ids, [end] * len(item_ids), ITEM_TEXT_VIEW)


def ranking_queries(repo: FeatureRepo, queries: pd.DataFrame, item_ids: list[str], vocab: dict) -> Queries:
    """A split's query frame -> `Queries`: each query's history (the items before it), its user's
    row in the fitted vocabulary, and its features as of the query time (`query_inputs`)."""
    from llmrec_ray.baselines import history_matrix

    users = queries["user_id"].tolist()
    known = {u: k for k, u in enumerate(vocab["users"])}
    return Queries(history_matrix(queries["seen"].tolist(), item_ids),
                   np.array([known.get(u, -1) for u in users], dtype=np.int64),
                   query_inputs(repo, users, queries["query_time"].tolist(), item_ids, vocab))


def validation_score(model, valid: dict, metric: str) -> float:
    """`metric` (e.g. "ndcg@20") of a trained model on prepared validation queries
    (`train.validation_data`: queries, mask, truth)."""
    return metric_on(TrainedModel(model), valid, metric)


def metric_on(rec: Recommender, valid: dict, metric: str) -> float:
    k = int(metric.split("@")[1])
    return ranking_metrics(rec.top_k(valid["queries"], valid["mask"], k), valid["truth"], [k])[metric]


def query_times_us(queries: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(queries["query_time"], utc=True).astype("int64").to_numpy() // 1000


def evaluate(repo: FeatureRepo, model, split, items: pa.Table, item_ids: list[str], ks: list[int],
             baselines: list[str] | None = None, light_user_max: int = 20, seed: int = 0,
             grids: dict[str, dict[str, list]] | None = None, metric: str = "ndcg@20",
             valid: dict | None = None) -> tuple[dict[str, dict[str, dict[str, float]]], dict]:
    """({slice: {model: metrics}}, {baseline: tuning}) over `split.test_queries` for the trained
    model and the baselines, all fitted on `split.fit`, each query ranked over every item
    available at its time, the items the user saw before it masked. Each baseline's
    hyperparameters are chosen from `grids` (default `baselines.DEFAULT_GRIDS`) by `metric` on
    the validation queries (`valid`, as `train.validation_data` prepares them)."""
    from llmrec_ray import baselines as base

    queries = split.test_queries
    if queries.empty:
        raise ValueError(f"{split.protocol}: no test queries (too few interactions for this split)")
    vocab = model.vocab
    test = ranking_queries(repo, queries, item_ids, vocab)
    mask = masks(item_ids, queries["seen"].tolist(), items, query_times_us(queries))
    truth = truth_sets(queries["truth"].tolist(), item_ids)
    k_max = max(ks)

    trained = TrainedModel(model)
    # each model's (Q, I) scores are ranked block by block as soon as they exist: one at a time
    ranked: dict[str, np.ndarray] = {trained.name: trained.top_k(test, mask, k_max)}
    fit = base.FitData(base.interaction_matrix(split.fit, vocab["users"], item_ids), vocab["users"],
                       item_ids, seed)
    grids = base.DEFAULT_GRIDS if grids is None else grids
    tuning = {}
    for name in available_baselines(baselines):
        start = time.perf_counter()
        score_fn = (lambda rec: metric_on(rec, valid, metric)) if valid is not None else None
        rec, trials = base.tune(name, grids.get(name, {}), fit, score_fn)
        ranked[name] = rec.top_k(test, mask, k_max)
        tuning[name] = {"chosen": rec.params, "trials": trials, "metric": f"valid {metric}"}
        logger.info("baseline %s %s fitted, tuned, scored and ranked in %.1fs", name, rec.params,
                    time.perf_counter() - start)
    groups = slices(truth, split.fit, queries["user_id"].tolist(), item_ids, light_user_max,
                    new_users=split.protocol == "global-temporal")
    results: dict[str, dict[str, dict[str, float]]] = {s: {} for s in groups}
    for name, top in ranked.items():
        for slice_name, slice_truth in groups.items():
            results[slice_name][name] = ranking_metrics(top, slice_truth, ks)
    return results, tuning


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


def format_tuning(tuning: dict) -> str:
    """One line per baseline: the hyperparameters chosen on validation, out of how many tried."""
    lines = []
    for name, t in tuning.items():
        chosen = ", ".join(f"{k}={v}" for k, v in t["chosen"].items())
        tried = len(t["trials"])
        best = max((x["value"] for x in t["trials"] if x["value"] is not None), default=None)
        lines.append(f"- {name}: {chosen or 'no hyperparameters'}" + (
            f" (best of {tried} on {t['metric']}: {best:.4f})" if tried > 1 and best is not None else ""))
    return "Baseline hyperparameters (chosen on the validation queries):\n" + "\n".join(lines)


def write_results(results: dict, path: Path, tuning: dict | None = None) -> list[Path]:
    """The metrics as JSON at `path` (with the baselines' chosen hyperparameters under
    "tuning" in <stem>-tuning.json), the tables as markdown beside it (.md) and one bar chart per
    slice (<stem>-<slice>.png: Recall@20 and NDCG@20 of every model). Returns the files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    ks = sorted({int(k.split("@")[1]) for m in next(iter(results.values())).values() for k in m if "@" in k})
    md = path.with_suffix(".md")
    md.write_text(format_table(results, ks) + "\n" + (f"\n{format_tuning(tuning)}\n" if tuning else ""))
    if tuning:
        tuned = path.parent / f"{path.stem}-tuning.json"
        tuned.write_text(json.dumps(tuning, indent=2, default=float))
        return [path, md, tuned] + plot_results(results, path.parent / path.stem, k=max(ks))
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
