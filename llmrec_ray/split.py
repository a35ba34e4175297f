"""Evaluation splits. Pure functions over the interactions table.

`user_temporal_eval_split` / `global_temporal_eval_split` / `given_eval_split`: the evaluation
protocols (fit / validation / test rows and the ranking queries of each window).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


# ---------------------------------------------------------------------------------------------
# Evaluation splits: the rows every model fits on, validation (early stopping) and test, each
# evaluation window turned into ranking queries.
#
# A query is one user at one moment: the user's features are taken as of `query_time` (point in
# time, from the feature store), `truth` holds the items the user interacts with from then on in
# the window the query covers, and `seen` the items the user interacted with before it (masked
# from the ranking).
# ---------------------------------------------------------------------------------------------

QUERY_COLUMNS = ["user_id", "query_time", "truth", "seen"]


@dataclass
class EvalSplit:
    """fit: the rows every model and baseline fits on; valid / test: the held-out interactions;
    valid_queries / test_queries: pandas frames with QUERY_COLUMNS (truth and seen: lists of
    item ids); info: the protocol and its cut points (JSON-able)."""

    protocol: str
    fit: pa.Table
    valid: pa.Table
    test: pa.Table
    valid_queries: pd.DataFrame
    test_queries: pd.DataFrame
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {**self.info, "fit": self.fit.num_rows, "valid": self.valid.num_rows,
                "test": self.test.num_rows, "valid_queries": len(self.valid_queries),
                "test_queries": len(self.test_queries)}


def _ordered(interactions: pa.Table) -> pd.DataFrame:
    """user_id, item_id, event_timestamp (UTC), pos: the row's place in (user, time, item) order."""
    df = interactions.select(["user_id", "item_id", "event_timestamp"]).to_pandas()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df = df.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable").reset_index(drop=True)
    df["pos"] = df.groupby("user_id", sort=False).cumcount()
    return df


def _queries(ordered: pd.DataFrame, window: np.ndarray, group: np.ndarray) -> pd.DataFrame:
    """One query per (user, group) of the rows flagged by `window`: query_time = the group's first
    interaction, truth = its items, seen = the user's items before that interaction (in order)."""
    rows = ordered[window].assign(group=group[window])
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in QUERY_COLUMNS})
    items_by_user = ordered.groupby("user_id", sort=False)["item_id"].agg(list)
    out = []
    for (user, _), g in rows.groupby(["user_id", "group"], sort=True):
        first = int(g["pos"].min())
        seen = items_by_user[user][:first]
        seen_set = set(seen)
        truth = list(dict.fromkeys(i for i in g["item_id"] if i not in seen_set))
        if truth:
            out.append((user, g["event_timestamp"].min(), truth, sorted(seen_set)))
    q = pd.DataFrame(out, columns=QUERY_COLUMNS)
    return q.sort_values(["query_time", "user_id"], kind="stable").reset_index(drop=True)


def user_temporal_eval_split(interactions: pa.Table, test_fraction: float = 0.2,
                             valid_fraction: float = 0.1) -> EvalSplit:
    """Per user, in time order: the last `test_fraction` is test, the last `valid_fraction` of
    what remains is validation, the rest is fit (each count rounded down; ties in time ordered by
    item id). A user with too few interactions for one test row stays entirely in fit. One query
    per user and window, at the window's first interaction (the user's split time)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    df = _ordered(interactions)
    size = df.groupby("user_id", sort=False)["pos"].transform("size").to_numpy()
    pos = df["pos"].to_numpy()
    n_test = np.floor(size * test_fraction + 1e-9).astype(np.int64)
    n_valid = np.floor((size - n_test) * valid_fraction + 1e-9).astype(np.int64)
    is_test = pos >= size - n_test
    is_valid = ~is_test & (pos >= size - n_test - n_valid)
    label = np.where(is_test, 2, np.where(is_valid, 1, 0))
    table = _table_in_order(interactions, df)
    one_group = np.zeros(len(df), dtype=np.int64)
    return EvalSplit(
        "user-temporal", table.filter(pa.array(label == 0)), table.filter(pa.array(label == 1)),
        table.filter(pa.array(label == 2)), _queries(df, label == 1, one_group),
        _queries(df, label == 2, one_group),
        {"protocol": "user-temporal", "test_fraction": test_fraction, "valid_fraction": valid_fraction})


def _table_in_order(interactions: pa.Table, ordered: pd.DataFrame) -> pa.Table:
    order = pc.sort_indices(interactions, [("user_id", "ascending"), ("event_timestamp", "ascending"),
                                           ("item_id", "ascending")])
    t = interactions.take(order)
    assert t.num_rows == len(ordered)
    return t


def global_temporal_eval_split(interactions: pa.Table, quantiles: tuple[float, float] = (0.8, 0.9),
                               snapshots: pa.Table | None = None) -> EvalSplit:
    """Global cuts at quantiles of time: before the first cut is fit, between the cuts is
    validation, after the second is test. Every held-out interaction is scored with the user's
    features as of just before it: interactions served by the same user snapshot (`snapshots`:
    user_id, event_timestamp of the user-history feature rows; a snapshot at s covers what
    happened before s) form one query; without snapshots, each distinct (user, time) does.
    Users who arrive after the cut are queried like everyone else, from their features."""
    q1, q2 = quantiles
    if not 0 < q1 < q2 < 1:
        raise ValueError(f"evaluate.global_quantiles must satisfy 0 < first < second < 1, got {quantiles}")
    df = _ordered(interactions)
    table = _table_in_order(interactions, df)
    ts = df["event_timestamp"]
    cut1, cut2 = ts.quantile(q1), ts.quantile(q2)
    label = np.where(ts >= cut2, 2, np.where(ts >= cut1, 1, 0))
    if snapshots is not None and snapshots.num_rows:
        snaps = snapshots.select(["user_id", "event_timestamp"]).to_pandas()
        snaps["snapshot"] = pd.to_datetime(snaps["event_timestamp"], utc=True)
        snaps = snaps.drop(columns="event_timestamp").sort_values("snapshot")
        probe = df[["user_id", "event_timestamp"]].reset_index().sort_values("event_timestamp")
        joined = pd.merge_asof(probe, snaps, left_on="event_timestamp", right_on="snapshot",
                               by="user_id", direction="backward", allow_exact_matches=True)
        joined = joined.set_index("index").sort_index()
        # no snapshot at or before the interaction (should not happen: the first is at the
        # user's first interaction): the interaction is its own query
        group = joined["snapshot"].fillna(joined["event_timestamp"]).astype("int64").to_numpy()
    else:
        group = ts.astype("int64").to_numpy()
    fit_users = set(df.loc[label == 0, "user_id"])
    test_q = _queries(df, label == 2, group)
    return EvalSplit(
        "global-temporal", table.filter(pa.array(label == 0)), table.filter(pa.array(label == 1)),
        table.filter(pa.array(label == 2)), _queries(df, label == 1, group), test_q,
        {"protocol": "global-temporal", "quantiles": [q1, q2], "cuts": [cut1.isoformat(), cut2.isoformat()],
         "test_users_new_after_cut": int((~test_q["user_id"].isin(fit_users)).sum()) if len(test_q) else 0})


GIVEN_LABELS = ("train", "valid", "test")
GIVEN_QUERY_GAP = pd.Timedelta(seconds=1)


def carve(interactions: pa.Table, fraction: float, into: str, seed: int = 0,
          keep: int = 1) -> tuple[pa.Table, int]:
    """A seeded random `fraction` of each user's train rows (rounded down; a user keeps at least
    `keep` train rows) relabelled `into` (valid or test). Returns (the rows, rows moved)."""
    label = np.asarray(interactions.column("split").to_numpy(zero_copy_only=False), dtype=object)
    if fraction <= 0:
        return interactions, 0
    users = np.asarray(interactions.column("user_id").to_numpy(zero_copy_only=False), dtype=object)
    train = np.flatnonzero(label == "train")
    rng = np.random.default_rng(seed)
    order = train[rng.permutation(len(train))]  # random order, then grouped by user (stable)
    order = order[np.argsort(users[order], kind="stable")]
    grouped = users[order]
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    n_out = np.clip(np.floor(sizes * fraction + 1e-9).astype(np.int64), 0, np.maximum(sizes - keep, 0))
    rank = np.arange(len(order)) - np.repeat(starts, sizes)  # position within the user's rows
    moved = order[rank < np.repeat(n_out, sizes)]
    label = label.copy()
    label[moved] = into
    col = interactions.column_names.index("split")
    return interactions.set_column(col, "split", pa.array(label.tolist(), pa.string())), len(moved)


def carve_validation(interactions: pa.Table, fraction: float, seed: int = 0) -> tuple[pa.Table, int]:
    """A given split without validation rows (train and test only): a seeded random `fraction`
    of each user's train rows becomes `valid` (rounded down; a user keeps at least one train
    row), so early stopping and tuning have validation queries. Returns (the rows, rows moved);
    a split that has validation rows, or fraction 0, is returned as it is."""
    label = np.asarray(interactions.column("split").to_numpy(zero_copy_only=False), dtype=object)
    if (label == "valid").any():
        return interactions, 0
    return carve(interactions, fraction, "valid", seed)


def random_split(interactions: pa.Table, test_fraction: float, valid_fraction: float,
                 seed: int = 0) -> tuple[pa.Table, dict]:
    """evaluate.protocol random: rows all `train` -> a seeded random `test_fraction` of each
    user's rows is test, then `valid_fraction` of the rest validation (each rounded down, a user
    keeps at least one train row: a user with one row is train only). Returns (the rows,
    {"test": rows, "valid": rows})."""
    inter, n_test = carve(interactions, test_fraction, "test", seed)
    inter, n_valid = carve(inter, valid_fraction, "valid", seed + 1)
    return inter, {"test": n_test, "valid": n_valid}


def held_out_in_time(interactions: pa.Table) -> float:
    """The share of users with held-out (valid / test) rows whose held-out rows all come at or
    after their last train row: 1.0 for a temporal split (leave-last-out), near 0 for a random
    one."""
    df = interactions.select(["user_id", "event_timestamp", "split"]).to_pandas()
    train = df[df["split"] == "train"].groupby("user_id")["event_timestamp"].max()
    held = df[df["split"] != "train"].groupby("user_id")["event_timestamp"].min()
    both = held.index.intersection(train.index)
    return float((held[both] >= train[both]).mean()) if len(both) else 1.0


def history_as_set(interactions: pa.Table, seed: int = 0) -> pa.Table:
    """Each user's train rows get their own timestamps in a seeded random order (the multiset of
    a user's times, and every other row, unchanged): features built from them see a user's
    history as a set, each training row's snapshot a random subset of it."""
    label = np.asarray(interactions.column("split").to_numpy(zero_copy_only=False), dtype=object)
    users = np.asarray(interactions.column("user_id").to_numpy(zero_copy_only=False), dtype=object)
    ts = interactions.column("event_timestamp").combine_chunks()
    t = np.asarray(ts.cast(pa.int64()).to_numpy(zero_copy_only=False))
    train = np.flatnonzero(label == "train")
    rng = np.random.default_rng(seed)
    order = train[np.lexsort((rng.random(len(train)), users[train]))]  # by user, random within
    by_time = train[np.lexsort((t[train], users[train]))]  # by user, in time
    out = t.copy()
    out[order] = t[by_time]  # the user's k-th random row takes the user's k-th time
    col = interactions.column_names.index("event_timestamp")
    return interactions.set_column(col, "event_timestamp", pa.array(out, pa.int64()).cast(ts.type))


GIVEN_PROTOCOLS = ("given", "random")  # the rows carry their split label (random: carved at build)


def given_eval_split(interactions: pa.Table, snapshots: pa.Table | None = None,
                     protocol: str = "given") -> EvalSplit:
    """The split that comes with the data (evaluate.protocol given): the `split` column of the
    interactions (train / valid / test, from the generic loader) decides, time does not.

    - fit = the train rows; valid / test = the validation / test rows. The features (user
      snapshots, user and item statistics) are built from the train rows only (`build.py`), so no
      validation or test row reaches any feature, and their timestamps do not matter.
    - One query time for every query: the end of training (the last train row) + 1 s, or the
      latest user snapshot (`snapshots`: user_id, event_timestamp of the user-history rows, built
      from the train rows) when that is later (a snapshot at a cadence boundary after the last
      row), so every query sees the user's whole training history.
    - One validation (test) query per user with validation (test) rows and train rows: truth =
      the user's distinct validation (test) items that are not among the user's train items
      (those are masked anyway), in row order; seen (masked) = the user's train items. For test
      queries the validation items are neither masked nor truth: models fit on the train rows
      only, as the published protocols do. A query with no truth left is dropped; a user without
      train rows has no features and is not queried (both counted in `info`).
    - Metrics as everywhere (llmrec_ray.metrics): Recall@K = hits / number of truth items.
    """
    label = given_labels(interactions)
    df = interactions.select(["user_id", "item_id", "event_timestamp"]).to_pandas()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    is_train = label == "train"
    query_time = df.loc[is_train, "event_timestamp"].max() + GIVEN_QUERY_GAP
    if snapshots is not None and snapshots.num_rows:
        latest = pd.Timestamp(pc.max(snapshots.column("event_timestamp")).as_py())
        query_time = max(query_time, latest.tz_convert("UTC") if latest.tzinfo else latest.tz_localize("UTC"))
    train_items = df[is_train].groupby("user_id", sort=False)["item_id"].agg(lambda s: sorted(set(s)))
    counts: dict = {"query_time": query_time.isoformat()}
    valid_q = given_queries(df[label == "valid"], train_items, query_time, "valid", counts)
    test_q = given_queries(df[label == "test"], train_items, query_time, "test", counts)
    order = [("user_id", "ascending"), ("event_timestamp", "ascending"), ("item_id", "ascending")]

    def rows(which: str) -> pa.Table:
        t = interactions.filter(pa.array(label == which)).drop_columns(["split"])
        return t.take(pc.sort_indices(t, order))

    return EvalSplit(protocol, rows("train"), rows("valid"), rows("test"), valid_q, test_q,
                     {"protocol": protocol, **counts})


def given_labels(interactions: pa.Table) -> np.ndarray:
    """The interactions' `split` column as an object array, checked: present, only GIVEN_LABELS,
    and some train rows."""
    if "split" not in interactions.column_names:
        raise ValueError("evaluate.protocol given: the saved interactions have no split column; "
                         "build the features with evaluate.protocol given (data with a split "
                         "column or split files) first")
    split = interactions.column("split")
    unknown = sorted(set(map(str, pc.unique(split).to_pylist())) - set(GIVEN_LABELS))
    if unknown:
        raise ValueError(f"evaluate.protocol given: split values {unknown}; expected {list(GIVEN_LABELS)}")
    label = np.asarray(split.to_numpy(zero_copy_only=False), dtype=object)
    if not (label == "train").any():
        raise ValueError("evaluate.protocol given: no train rows")
    return label


def given_queries(df: pd.DataFrame, train_items: pd.Series, query_time, which: str,
                  counts: dict) -> pd.DataFrame:
    """One query per user of `df` (the `which` rows) with train rows: truth = the user's distinct
    items not among its train items (`train_items`), in row order; seen = its train items. Users
    without train rows and items left out of truth are counted in `counts`."""
    out, no_train, in_train = [], 0, 0
    for user, g in df.groupby("user_id", sort=True):
        if user not in train_items.index:
            no_train += 1
            continue
        seen = train_items[user]
        seen_set = set(seen)
        items = list(dict.fromkeys(g["item_id"]))
        truth = [i for i in items if i not in seen_set]
        in_train += len(items) - len(truth)
        if truth:
            out.append((user, query_time, truth, list(seen)))
    counts[f"{which}_users_without_train"] = no_train
    counts[f"{which}_items_in_train"] = in_train  # distinct (user, item) pairs left out of truth
    return pd.DataFrame(out, columns=QUERY_COLUMNS) if out else \
        pd.DataFrame({c: pd.Series(dtype=object) for c in QUERY_COLUMNS})
