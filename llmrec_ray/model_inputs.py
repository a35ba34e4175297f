"""Model inputs shared by training, evaluation and serving: the Feast columns they read, user
statistics as features, the ID rows of users and items (-1, the unknown ID, for those training
never saw), and ranking queries (`Queries`, masks, truth) built from Feast rows as of each query
time. Training, evaluation and recommendation import this module, not each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW, embedding_matrix
from llmrec_ray.recommender import Queries
from llmrec_ray.models.age import times_days

USER_EXTRA_DIM = 4
# the user_stats view's columns the models read (llmrec_ray.stats writes them)
STAT_COLUMNS = ("n_interactions", "mean_rating", "n_30d", "last_interaction_unix")


def user_extra_features(stats: Mapping[str, object], times) -> np.ndarray:
    """User statistics (`stats`: each of STAT_COLUMNS -> one value per row, None/NaN for a user
    without interactions) as of `times` -> (N, 4) float32: log counts, mean rating / 5, log days
    since the last interaction (0 for a user without one)."""
    def col(name):
        return pd.Series(stats[name], dtype="float64").fillna(0).to_numpy(np.float64)

    n, mean, n30, last = (col(c) for c in STAT_COLUMNS)
    now = pd.to_datetime(pd.Series(times), utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    days = np.where(n > 0, np.maximum(now - last, 0) / 86_400, 0.0)
    return np.stack([np.log1p(n), mean / 5.0, np.log1p(n30), np.log1p(days)], axis=1).astype(np.float32)


def retrieved_user_extra(rows) -> np.ndarray:
    """`user_extra_features` of retrieved rows (a pandas frame or an Arrow table with Feast's
    `user_stats__<column>` columns and `event_timestamp`)."""
    def col(name):
        return rows[name].to_numpy() if isinstance(rows, pd.DataFrame) else rows.column(name).to_pandas().to_numpy()

    return user_extra_features({c: col(f"{USER_STATS_VIEW}__{c}") for c in STAT_COLUMNS},
                               col("event_timestamp"))


def user_id_index(vocab: dict, users: list[str]) -> torch.Tensor:
    """Hybrid ID rows of `users` in a checkpoint's vocabulary (`vocab["users"]`); -1 (the unknown
    ID) for a user absent from the training rows."""
    known = {u: k for k, u in enumerate(vocab["users"])}
    return torch.tensor([known.get(u, -1) for u in users], dtype=torch.long)


def item_id_index(vocab: dict, item_ids: list[str]) -> torch.Tensor:
    """Hybrid ID rows of `item_ids` in a checkpoint's vocabulary (`vocab["items"]`); -1 (the
    unknown ID) for an item without training interactions (`vocab["trained_items"]`)."""
    position = {i: k for k, i in enumerate(vocab["items"])}
    trained = set(vocab["trained_items"])
    return torch.tensor([position.get(i, -1) if i in trained else -1 for i in item_ids], dtype=torch.long)


def features_as_of(repo: FeatureRepo, key: str, ids: list[str], times: list, view: str) -> np.ndarray:
    """One vector per (id, time), point in time, in input order."""
    df = pd.DataFrame({"row_id": np.arange(len(ids)), key: ids,
                       "event_timestamp": pd.to_datetime(times, utc=True)})
    out = repo.historical_table(df, [f"{view}:embedding"])  # in input order
    return embedding_matrix(out.column(f"{view}__embedding"))


def query_inputs(repo: FeatureRepo, users: list[str], times: list, item_ids: list[str],
                 vocab: dict | None = None) -> dict[str, np.ndarray]:
    """Every feature input of ranking queries: user-history vectors and user statistics as of
    each query time (Feast, point in time), item text vectors as of the last query time, each
    query's time in days since the epoch (`query_day`, for the item-age term), and,
    with a checkpoint's `vocab`, the ID rows of users and items (-1, the unknown ID, for those
    the fit rows never saw)."""
    df = pd.DataFrame({"row_id": np.arange(len(users)), "user_id": users,
                       "event_timestamp": pd.to_datetime(times, utc=True)})
    refs = [f"{USER_HISTORY_VIEW}:embedding"] + [f"{USER_STATS_VIEW}:{f}" for f in STAT_COLUMNS]
    out = repo.historical_table(df, refs)  # in input order
    inputs = {"user_emb": embedding_matrix(out.column(f"{USER_HISTORY_VIEW}__embedding")),
              "user_extra": retrieved_user_extra(out),
              "item_emb": latest_item_vectors(repo, item_ids, max(df["event_timestamp"], default=None)),
              "query_day": times_days(df["event_timestamp"])}
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
    return features_as_of(repo, "item_id", item_ids, [end] * len(item_ids), ITEM_TEXT_VIEW)


def ranking_queries(repo: FeatureRepo, queries: pd.DataFrame, item_ids: list[str], vocab: dict) -> Queries:
    """A split's query frame -> `Queries`: each query's history (the items before it), its user's
    row in the fitted vocabulary, and its features as of the query time (`query_inputs`)."""
    from llmrec_ray.baselines import history_matrix

    users = queries["user_id"].tolist()
    known = {u: k for k, u in enumerate(vocab["users"])}
    return Queries(history_matrix(queries["seen"].tolist(), item_ids),
                   np.array([known.get(u, -1) for u in users], dtype=np.int64),
                   query_inputs(repo, users, queries["query_time"].tolist(), item_ids, vocab))


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


def query_times_us(queries: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(queries["query_time"], utc=True).astype("int64").to_numpy() // 1000


def query_data(repo: FeatureRepo, q: pd.DataFrame, items: pa.Table, item_ids: list[str],
               vocab: dict) -> dict:
    """A split's query frame as the models score it: {"queries": `Queries` as of each query time
    (Feast, point in time; ID rows from the training `vocab`), "mask": the seen / unavailable
    items, "truth": the truth sets}."""
    return {"queries": ranking_queries(repo, q, item_ids, vocab),
            "mask": masks(item_ids, q["seen"].tolist(), items, query_times_us(q)),
            "truth": truth_sets(q["truth"].tolist(), item_ids)}


def validation_data(repo: FeatureRepo, split, items: pa.Table, item_ids: list[str],
                    vocab: dict) -> dict | None:
    """The validation queries as the workers score them (`query_data`); None without any."""
    q = split.valid_queries
    return None if q.empty else query_data(repo, q, items, item_ids, vocab)
