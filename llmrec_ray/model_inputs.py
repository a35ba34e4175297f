"""Model inputs shared by training, evaluation and serving: the Feast columns they read, user
statistics as features, the ID rows of users and items (-1, the unknown ID, for those training
never saw), and ranking queries (`Queries`, `QueryMask`, truth) built from Feast rows as of each
query time. Training, evaluation and recommendation import this module, not each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW, embedding_matrix
from llmrec_ray.recommender import Queries
from llmrec_ray.models.age import times_days
from llmrec_ray.models.vocab import item_id_index, user_id_index

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
    items arrive later (those are masked until they are available: `query_mask`)."""
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


@dataclass(frozen=True, eq=False)
class QueryMask:
    """The items excluded from each query's ranking, (Q, I) in effect but never built whole:
    `mask[rows]` builds the dense bool block of those rows only (`Recommender.top_k` ranks
    `QUERY_CHUNK` rows at a time), so it pickles small to the Ray Train workers. An item is
    excluded when the user saw it before the query (`indptr`/`indices`: the seen items, CSR by
    query) or when it is not yet available at the query time (`available_from` (I,) µs since
    the epoch, -inf for an item always available, None when every item is; `query_times` (Q,)
    µs)."""

    indptr: np.ndarray  # (Q + 1,) int64
    indices: np.ndarray  # (seen,) int32 item indices
    n_items: int
    query_times: np.ndarray  # (Q,) float64
    available_from: np.ndarray | None = None  # (I,) float64

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.query_times), self.n_items

    def __len__(self) -> int:
        return len(self.query_times)

    def __getitem__(self, rows) -> np.ndarray:
        """The dense block of `rows` (a slice, an index array or one index), True = excluded."""
        if isinstance(rows, slice):
            picked = np.arange(*rows.indices(len(self)))
        else:
            picked = np.arange(len(self))[rows]
        q = np.atleast_1d(picked)  # (R,)
        starts, lengths = self.indptr[q], self.indptr[q + 1] - self.indptr[q]  # (R,)
        first = np.cumsum(lengths) - lengths  # (R,) each row's start among the gathered items
        where = np.arange(lengths.sum()) - np.repeat(first - starts, lengths)  # positions in indices
        block = np.zeros((len(q), self.n_items), dtype=bool)  # (R, I)
        block[np.repeat(np.arange(len(q)), lengths), self.indices[where]] = True
        if self.available_from is not None:
            block |= self.available_from[None, :] > self.query_times[q][:, None]
        return block[0] if picked.ndim == 0 else block


def query_mask(item_ids: list[str], seen: list[list[str]], items: pa.Table,
               query_times: np.ndarray) -> QueryMask:
    """The `QueryMask` of queries that saw `seen[q]` before their time `query_times[q]` (µs since
    the epoch), over `item_ids` (availability from `items.available_from`)."""
    index = {item: i for i, item in enumerate(item_ids)}
    lengths = np.fromiter(map(len, seen), dtype=np.int64, count=len(seen))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.fromiter((index[i] for i in chain.from_iterable(seen)), dtype=np.int32,
                          count=int(indptr[-1]))
    times = np.asarray(query_times, dtype=np.float64)
    avail = items.column("available_from")
    a = None
    if avail.null_count < items.num_rows:
        order = pc.index_in(pa.array(item_ids), value_set=items.column("item_id").combine_chunks())
        a = avail.combine_chunks().take(order).cast(pa.int64()).to_numpy(zero_copy_only=False)
        a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=-np.inf)
    return QueryMask(indptr, indices, len(item_ids), times, a)


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
    items (`QueryMask`: dense a block of rows at a time), "truth": the truth sets}."""
    return {"queries": ranking_queries(repo, q, item_ids, vocab),
            "mask": query_mask(item_ids, q["seen"].tolist(), items, query_times_us(q)),
            "truth": truth_sets(q["truth"].tolist(), item_ids)}


def validation_data(repo: FeatureRepo, split, items: pa.Table, item_ids: list[str],
                    vocab: dict) -> dict | None:
    """The validation queries as the workers score them (`query_data`); None without any."""
    q = split.valid_queries
    return None if q.empty else query_data(repo, q, items, item_ids, vocab)
