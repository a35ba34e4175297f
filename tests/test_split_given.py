"""evaluate.protocol given: the split comes with the data (a split column or split files).

Literal tiny data: the loaded rows and the rejects, the queries (truth, seen, one query time after
all train rows), features from the train rows only, rows without timestamps, and the metrics with
the masks and recall computed by hand.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import T0_SECONDS as T0, utc

from llmrec_ray import serialize
from llmrec_ray.build import feature_dataset
from llmrec_ray.config import ConfigError, DataConfig, SerializeConfig, load_config
from llmrec_ray.datasets import load_dataset
from llmrec_ray.datasets.generic import SYNTHETIC_START
from llmrec_ray.metrics import ranking_metrics, top_k
from llmrec_ray.split import given_eval_split
from llmrec_ray.stats import item_stats, user_stats

ITEMS = "item_id,title\na,Alpha\nb,Bravo\nc,Charlie\nd,Delta\ne,Echo\nf,Foxtrot\n"
# u1's test rows are older than its train rows: under given, test timestamps must not matter.
INTER = (
    "user_id,item_id,event_timestamp,rating,fold\n"
    f"u1,a,{T0 + 100},4,train\n"
    f"u1,b,{T0 + 200},5,train\n"
    f"u1,c,{T0 + 50},3,test\n"
    f"u1,f,{T0 + 60},3,test\n"
    f"u1,d,{T0 + 300},4,valid\n"
    f"u2,a,{T0 + 110},5,train\n"
    f"u2,e,{T0 + 120},2,TRAIN\n"
    f"u2,a,{T0 + 400},4,test\n"  # also a train item of u2: masked, not truth
    f"u2,f,{T0 + 410},3,test\n"
    f"u2,b,{T0 + 420},3,Validation\n"
    f"u3,c,{T0 + 130},4,train\n"
    f"u3,b,{T0 + 140},1,holdout\n"  # row 11: not a split value
    f"u3,d,{T0 + 150},5, val \n"
)


def column_split(tmp_path: Path):
    (tmp_path / "inter.csv").write_text(INTER)
    (tmp_path / "items.csv").write_text(ITEMS)
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                     items=str(tmp_path / "items.csv"), columns={"split": "fold"},
                     max_reject_fraction=1.0)
    return cfg, load_dataset(cfg, given_split=True)


def rows(table: pa.Table) -> list[tuple]:
    return [(r["user_id"], r["item_id"]) for r in table.to_pylist()]


def test_split_column_rows_rejects_and_queries(tmp_path: Path) -> None:
    cfg, ds = column_split(tmp_path)
    assert [(r["table"], r["source"], r["row"], r["column"], r["reason"], r["value"])
            for r in ds.rejects.rows] == [
        ("interactions", str(tmp_path / "inter.csv"), 11, "split",
         "split value not one of train, valid (validation, val), test", "holdout")]
    summary = ds.summary()["interactions"]
    assert summary == {"in": 13, "accepted": 12, "rejected": 1}
    assert ds.interactions.column("split").to_pylist() == [
        "train", "train", "test", "test", "valid", "train", "train", "test", "test", "valid",
        "train", "valid"]

    split = given_eval_split(ds.interactions)
    assert split.protocol == "given"
    assert rows(split.fit) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "e"), ("u3", "c")]
    assert rows(split.valid) == [("u1", "d"), ("u2", "b"), ("u3", "d")]
    assert rows(split.test) == [("u1", "c"), ("u1", "f"), ("u2", "a"), ("u2", "f")]
    assert "split" not in split.fit.column_names

    end = max(split.fit.column("event_timestamp").to_pylist())
    query_time = pd.Timestamp(end + timedelta(seconds=1))
    assert end == utc(T0 + 200)
    v, t = split.valid_queries, split.test_queries
    assert v["user_id"].tolist() == ["u1", "u2", "u3"]
    assert v["truth"].tolist() == [["d"], ["b"], ["d"]]
    assert v["seen"].tolist() == [["a", "b"], ["a", "e"], ["c"]]
    assert t["user_id"].tolist() == ["u1", "u2"]
    assert t["truth"].tolist() == [["c", "f"], ["f"]]  # u2's a is a train item: not truth
    assert t["seen"].tolist() == [["a", "b"], ["a", "e"]]  # train items only, not valid ones
    assert set(v["query_time"]) == set(t["query_time"]) == {query_time}
    assert split.info["test_items_in_train"] == 1 and split.info["valid_items_in_train"] == 0
    assert split.summary()["fit"] == 5 and split.summary()["test_queries"] == 2

    # a later user snapshot (a cadence boundary after the last row) moves the query time there
    later = pa.table({"user_id": ["u1"], "event_timestamp": pa.array([utc(T0 + 86_400)],
                                                                       pa.timestamp("us", tz="UTC"))})
    assert set(given_eval_split(ds.interactions, later).test_queries["query_time"]) == {
        pd.Timestamp(utc(T0 + 86_400))}


def test_features_from_train_rows_only(tmp_path: Path) -> None:
    _, ds = column_split(tmp_path)
    fds = feature_dataset(ds, "given")
    assert fds.interactions.num_rows == 5 and "split" not in fds.interactions.column_names
    s = SerializeConfig(history_item_template="{title}", history_length=10)
    items, users = serialize.serialize_dataset(fds.items, fds.interactions, s, 0)
    train_titles = {"u1": {"Alpha", "Bravo"}, "u2": {"Alpha", "Echo"}, "u3": {"Charlie"}}
    titles = {"Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"}
    for user, text in zip(users.column("entity_id").to_pylist(), users.column("text").to_pylist()):
        assert {w for w in titles if w in text} <= train_titles[user], (user, text)
    final = {u: t for u, t in zip(users.column("entity_id").to_pylist(), users.column("text").to_pylist())}
    assert final["u1"] == "Recently watched, newest first: Bravo; Alpha."
    assert final["u2"] == "Recently watched, newest first: Echo; Alpha."
    # statistics: train rows only (u1 and u2 have two, u3 one); Delta and Foxtrot never counted
    us = user_stats(fds.interactions, users.rename_columns(
        ["entity", "user_id", "event_timestamp", "text", "n_history"]))
    assert us.group_by("user_id").aggregate([("n_interactions", "max")]).sort_by("user_id") \
        .column("n_interactions_max").to_pylist() == [2, 2, 1]
    starts = pa.table({"item_id": items.column("entity_id"), "event_timestamp": items.column("event_timestamp")})
    st = item_stats(fds.interactions, starts, serialize.parse_duration_us("1d")).to_pandas()
    assert st.groupby("item_id")["n_interactions"].max().to_dict() == {
        "a": 2, "b": 1, "c": 1, "d": 0, "e": 1, "f": 0}
    # other protocols build from every row
    assert feature_dataset(ds, "user-temporal") is ds


def test_split_files_without_timestamps(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text(ITEMS)
    (tmp_path / "train.csv").write_text("user_id,item_id\nu1,c\nu2,a\nu1,a\nu1,b\nu1,a\n")
    (tmp_path / "valid.csv").write_text("user_id,item_id\nu1,d\n")
    (tmp_path / "test.csv").write_text("user_id,item_id\nu1,e\nu2,zz\nu2,f\nu3,f\n")
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "train.csv"),
                     valid_interactions=str(tmp_path / "valid.csv"),
                     test_interactions=str(tmp_path / "test.csv"), items=str(tmp_path / "items.csv"),
                     max_reject_fraction=1.0, untimed_order="file")
    ds = load_dataset(cfg, given_split=True)
    # the unknown item is rejected with its own file and row
    assert [(r["source"], r["row"], r["reason"]) for r in ds.rejects.rows] == [
        (str(tmp_path / "test.csv"), 1, "unknown item_id (not in the accepted items)")]
    assert ds.summary()["interactions"] == {"in": 10, "accepted": 9, "rejected": 1}
    # synthetic times: SYNTHETIC_START + position in train, valid, test read one after the other
    got = [(r["user_id"], r["item_id"], r["split"], r["event_timestamp"]) for r in ds.interactions.to_pylist()]
    at = [SYNTHETIC_START + timedelta(seconds=n) for n in range(10)]
    assert got == [("u1", "c", "train", at[0]), ("u2", "a", "train", at[1]), ("u1", "a", "train", at[2]),
                   ("u1", "b", "train", at[3]), ("u1", "a", "train", at[4]), ("u1", "d", "valid", at[5]),
                   ("u1", "e", "test", at[6]), ("u2", "f", "test", at[8]), ("u3", "f", "test", at[9])]
    # history truncation keeps the last train rows in file order; repeats stay distinct rows
    fds = feature_dataset(ds, "given")
    s = SerializeConfig(history_item_template="{title}", history_length=2)
    _, users = serialize.serialize_dataset(fds.items, fds.interactions, s, 0)
    u1 = [t for u, t in zip(users.column("entity_id").to_pylist(), users.column("text").to_pylist()) if u == "u1"]
    assert u1[-1] == "Recently watched, newest first: Alpha; Bravo."
    split = given_eval_split(ds.interactions)
    assert set(split.test_queries["query_time"]) == {pd.Timestamp(at[4] + timedelta(seconds=1))}
    assert split.test_queries[["user_id", "truth", "seen"]].values.tolist() == [
        ["u1", ["e"], ["a", "b", "c"]], ["u2", ["f"], ["a"]]]
    assert split.info["test_users_without_train"] == 1  # u3: no features, not queried


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text(ITEMS)
    (tmp_path / "plain.csv").write_text(f"user_id,item_id,event_timestamp\nu1,a,{T0}\n")
    (tmp_path / "fold.csv").write_text("user_id,item_id,split\nu1,a,test\n")
    base = dict(source="generic", items=str(tmp_path / "items.csv"))
    with pytest.raises(ValueError, match=r"plain.csv: evaluate.protocol given needs the split: no "
                                         r"interactions column 'split'.*data.columns.split"):
        load_dataset(DataConfig(**base, interactions=str(tmp_path / "plain.csv")), given_split=True)
    with pytest.raises(ValueError, match="give the split one way only"):
        load_dataset(DataConfig(**base, interactions=str(tmp_path / "plain.csv"),
                                test_interactions=str(tmp_path / "fold.csv")), given_split=True)
    # without given, a split column is an ordinary extra column and timestamps stay required
    ds = load_dataset(DataConfig(**base, interactions=str(tmp_path / "plain.csv")))
    assert "split" not in ds.interactions.column_names
    with pytest.raises(ValueError, match="'event_timestamp' \\(for event_timestamp\\) not found"):
        load_dataset(DataConfig(**base, interactions=str(tmp_path / "fold.csv")))
    with pytest.raises(ValueError, match="no split column"):
        given_eval_split(ds.interactions)
    with pytest.raises(ConfigError, match="data.source movielens-100k has no split"):
        load_config(None, ["evaluate.protocol=given", "data.source=movielens-100k"])
    with pytest.raises(ConfigError, match="read under evaluate.protocol given only"):
        load_config(None, ["data.source=generic", "data.test_interactions=x.csv"])
    assert load_config(None, ["evaluate.protocol=given", "data.source=generic"]).evaluate.protocol == "given"


def test_metrics_mask_train_items_and_recall_is_hits_over_test_items(tmp_path: Path) -> None:
    from llmrec_ray.model_inputs import query_mask, query_times_us, truth_sets

    _, ds = column_split(tmp_path)
    split = given_eval_split(ds.interactions)
    q = split.test_queries  # u1: truth c, f, seen a, b; u2: truth f, seen a, e
    item_ids = ["a", "b", "c", "d", "e", "f"]
    mask = query_mask(item_ids, q["seen"].tolist(), ds.items, query_times_us(q))[:]
    assert mask.tolist() == [[True, True, False, False, False, False],
                             [True, False, False, False, True, False]]
    scores = np.array([[.9, .8, .7, .6, .1, .2],     # u1 ranks c, d, f, e (d: a valid item, not masked)
                       [.95, .1, .2, .3, .9, .4]])   # u2 ranks f, d, c, b
    top = top_k(scores, mask, 4)
    assert top.tolist() == [[2, 3, 5, 4], [5, 3, 2, 1]]
    m = ranking_metrics(top, truth_sets(q["truth"].tolist(), item_ids), [1, 3])
    # recall@1: u1 1 hit of 2 test items = 0.5 (not 1/min(1, 2)), u2 1 of 1 -> 0.75
    assert m["recall@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["precision@1"] == pytest.approx(1.0) and m["users"] == 2


def test_build_features_under_given_uses_train_rows_only(tmp_path: Path, monkeypatch) -> None:
    """The real build (encoder faked, no Ray): the user texts it encodes, the user-history and
    statistics views hold train rows only, and the query time serves the whole train history."""
    import shutil

    import pyarrow.compute as pc

    from llmrec_ray import build, pipeline
    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import ITEM_STATS_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW
    from llmrec_ray.schemas import VECTOR_ROWS

    (tmp_path / "inter.csv").write_text(INTER)
    (tmp_path / "items.csv").write_text(ITEMS)
    repo = tmp_path / "repo"
    repo.mkdir()
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(Path(__file__).resolve().parents[1] / "feature_repo" / f, repo / f)
    encoded = []

    def fake_encode(text_rows, cfg, cache=None):
        encoded.append(text_rows)
        h = pc.unique(text_rows.column("text_hash"))
        return pa.table({"text_hash": h, "embedding": [[1.0, 0.0]] * len(h), "n_tokens": [1] * len(h),
                         "truncated": [False] * len(h)}, schema=VECTOR_ROWS), {"dim": 2}

    monkeypatch.setattr(build, "encode_texts", fake_encode)
    cfg = load_config(None, [
        "evaluate.protocol=given", "data.source=generic", f"data.interactions={tmp_path}/inter.csv",
        f"data.items={tmp_path}/items.csv", "data.columns={split: fold}", "data.max_reject_fraction=1",
        f"output_dir={tmp_path}/runs", f"featurestore.repo_path={repo}", "encode.cache=false",
        "serialize.history_item_template='{title}'"])
    summary = build.build_features(cfg)
    assert summary["feature_interactions"] == 5
    texts = pa.concat_tables(encoded).to_pandas()
    user_texts = " ".join(texts.loc[texts["entity"] == "user", "text"])
    assert "Alpha" in user_texts and "Delta" not in user_texts and "Foxtrot" not in user_texts
    r = FeatureRepo(repo)
    hist = r.read_view(USER_HISTORY_VIEW).to_pandas()
    assert hist.groupby("user_id")["n_history"].max().to_dict() == {"u1": 2, "u2": 2, "u3": 1}
    assert r.read_view(USER_STATS_VIEW).to_pandas().groupby("user_id")["n_interactions"].max().to_dict() \
        == {"u1": 2, "u2": 2, "u3": 1}
    istats = r.read_view(ITEM_STATS_VIEW).to_pandas().groupby("item_id")["n_interactions"].max()
    assert istats["d"] == 0 and istats["f"] == 0
    # the saved dataset keeps every row and its split; the queries see the whole train history
    saved = build.load_saved_dataset(cfg.run_dir)
    assert saved["interactions"].num_rows == 12
    split = pipeline.eval_split(cfg, saved, r)
    q = split.test_queries
    assert (q["query_time"] >= hist["event_timestamp"].max()).all()
    df = pd.DataFrame({"row_id": range(len(q)), "user_id": q["user_id"],
                       "event_timestamp": pd.to_datetime(q["query_time"], utc=True)})
    got = r.historical_table(df, [f"{USER_HISTORY_VIEW}:n_history", f"{USER_STATS_VIEW}:n_interactions"])
    assert got.column(f"{USER_HISTORY_VIEW}__n_history").to_pylist() == [2, 2]
    assert got.column(f"{USER_STATS_VIEW}__n_interactions").to_pylist() == [2, 2]
    # another protocol over these features is refused (they hold train rows only)
    with pytest.raises(ValueError, match="built for protocol given"):
        pipeline.eval_split(cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
            update={"protocol": "user-temporal"})}), saved, r)


def test_untimed_rows_are_not_ordered_by_the_file(tmp_path: Path) -> None:
    """The Last.fm collapse: a published random split lists each user's items by id, so ordered by
    the file a user's later rows are the items numbered last (the rarest), and every model trained
    on point-in-time histories learned "the next item is a rare one". Without timestamps the
    default order is a fixed random permutation: no trend of time against file position."""
    n_items, n_users = 80, 6
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},t{i}\n" for i in range(n_items)))
    rows = [f"{u},{i},train" for u in range(n_users) for i in range(n_items)]  # ascending ids per user
    (tmp_path / "inter.csv").write_text("user_id,item_id,split\n" + "\n".join(rows) + "\n")
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                     items=str(tmp_path / "items.csv"))
    assert cfg.untimed_order == "shuffle"
    ds = load_dataset(cfg, given_split=True)
    t = ds.interactions.to_pandas()
    assert len(t) == n_users * n_items and t["event_timestamp"].is_unique
    for _, g in t.groupby("user_id"):
        by_time = g.sort_values("event_timestamp")["item_id"].astype(int).to_numpy()
        # Spearman's rho of time against the item id (the file position): 1.0 in file order
        rho = np.corrcoef(np.arange(len(by_time)), by_time)[0, 1]
        assert abs(rho) < 0.4, rho
    # fixed: the same data gives the same order (the features are reproducible)
    again = load_dataset(cfg, given_split=True).interactions.column("event_timestamp")
    assert again.equals(ds.interactions.column("event_timestamp"))
    # untimed_order file: the file order is time order
    ordered = load_dataset(cfg.model_copy(update={"untimed_order": "file"}), given_split=True)
    assert ordered.interactions.column("event_timestamp").to_pandas().is_monotonic_increasing


def test_train_and_test_only_gets_validation_carved_from_train() -> None:
    from llmrec_ray.split import carve_validation

    users = [f"u{u}" for u in range(5) for _ in range(2 + 4 * u)]  # 2, 6, 10, 14, 18 rows
    t = pa.table({"user_id": users, "item_id": [str(k) for k in range(len(users))],
                  "split": ["train"] * len(users)})
    t = pa.concat_tables([t, pa.table({"user_id": ["u0"], "item_id": ["x"], "split": ["test"]})])
    out, moved = carve_validation(t, 0.25, seed=3)
    df = out.to_pandas()
    per_user = df[df.split == "valid"].groupby("user_id").size().reindex([f"u{u}" for u in range(5)],
                                                                          fill_value=0)
    assert per_user.tolist() == [0, 1, 2, 3, 4] and moved == 10  # floor(n * 0.25) each
    assert (df.groupby("user_id")["split"].apply(lambda s: (s == "train").sum()) >= 1).all()
    assert df.split.iloc[-1] == "test" and out.num_rows == t.num_rows
    again, _ = carve_validation(t, 0.25, seed=3)
    assert again.equals(out)  # seeded
    # a split with validation rows, or fraction 0, stays as it is
    assert carve_validation(out, 0.25)[1] == 0 and carve_validation(t, 0.0)[1] == 0


def test_a_random_split_builds_features_from_the_history_as_a_set() -> None:
    """A random split asks for a user's missing items given all the others: its train rows take
    the user's own times in a random order (each training snapshot a random subset), and the
    held-out rows and the user's times are unchanged. A temporal split keeps its order."""
    from llmrec_ray.build import given_history_order
    from llmrec_ray.datasets.base import Dataset
    from llmrec_ray.split import held_out_in_time, history_as_set

    n = 60
    t = pa.table({"user_id": ["a"] * n + ["b"] * n, "item_id": [str(i) for i in range(2 * n)],
                  "event_timestamp": pa.array(list(range(n)) * 2).cast(pa.timestamp("us", tz="UTC")),
                  "split": (["train"] * 50 + ["test"] * 10) * 2})
    temporal = t
    rng = np.random.default_rng(0)
    random_split = t.set_column(3, "split", pa.array(list(rng.permutation(t.column("split").to_pylist()))))
    assert held_out_in_time(temporal) == 1.0 and held_out_in_time(random_split) == 0.0
    out = history_as_set(random_split, seed=1).to_pandas()
    before = random_split.to_pandas()
    for user in ("a", "b"):
        train, old = out[(out.user_id == user) & (out.split == "train")], before[(before.user_id == user) & (before.split == "train")]
        assert sorted(train.event_timestamp) == sorted(old.event_timestamp)  # the user's own times
        items_in_time = train.sort_values("event_timestamp").item_id.astype(int).to_numpy()
        assert abs(np.corrcoef(np.arange(len(items_in_time)), items_in_time)[0, 1]) < 0.4
    held = out.split != "train"
    assert out[held].equals(before[held])
    ds = Dataset("x", random_split, pa.table({"item_id": ["0"]}), pa.table({"user_id": ["a", "b"]}))
    assert given_history_order(ds, "auto", 0)[1] == "set"
    kept, mode = given_history_order(dataclasses.replace(ds, interactions=temporal), "auto", 0)
    assert mode == "time" and kept.interactions.equals(temporal)
