"""serialize.user_vectors items_mean / items_recency: user snapshots pooled from item vectors.

Literal tiny data with hand-computed means and recency weights; a snapshot at s never holds an
interaction at or after s; the same snapshots as the text mode; a random check against a brute
force over several chunkings; and the real build (encoder faked, no Ray): the text mode encodes
user texts, the items modes none, the manifest and view tags tell the modes apart and
pipeline.feature_repo refuses features built the other way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import T0_SECONDS as T0

from llmrec_ray import serialize
from llmrec_ray.config import SerializeConfig, load_config
from llmrec_ray.user_vectors import pool_item_vectors, user_vectors_key

US = pa.timestamp("us", tz="UTC")
ITEM_IDS = ["a", "b", "c", "d"]
ITEM_VECS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)


def t(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def interactions(rows) -> pa.Table:
    return pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                     "event_timestamp": pa.array([t(r[2]) for r in rows]).cast(US),
                     "rating": [4.0] * len(rows)})


# u1: a at 10 s, b and c together at 20 s (c after b: ties in item_id order), d at 40 s; u2: d at 5 s
INTER = interactions([("u1", "d", 40), ("u2", "d", 5), ("u1", "c", 20), ("u1", "a", 10), ("u1", "b", 20)])
# (user, snapshot time s): at s itself an interaction is NOT covered (< s), one µs later it is
SNAPS = [("u1", 41), ("u1", 10), ("u1", 20), ("u1", 20.000001), ("u1", 40), ("u2", 5), ("u2", 6),
         ("ghost", 50)]


def snaps() -> pa.Table:
    return pa.table({"user_id": [u for u, _ in SNAPS], "event_timestamp": pa.array([t(s) for _, s in SNAPS]).cast(US)})


def pool(mode, pool_length=None, half_life=1.0, normalize=False, chunk_rows=None):
    return pool_item_vectors(INTER, snaps(), ITEM_IDS, ITEM_VECS, mode, pool_length, half_life, normalize,
                             chunk_rows=chunk_rows)


def test_mean_is_the_hand_computed_mean_of_exactly_the_items_before() -> None:
    got, n_history = pool("items_mean")
    assert n_history.tolist() == [4, 0, 1, 3, 3, 0, 1, 0]
    want = [[.5, .5, .25],          # u1 at 41 s: a, b, c, d = (1+0+0+1, 0+1+0+1, 1) / 4
            [0, 0, 0],              # u1 at 10 s: a is at 10 s, not before: nothing, zero vector
            [1, 0, 0],              # u1 at 20 s: a only (b, c at 20 s are not before 20 s)
            [1 / 3, 1 / 3, 1 / 3],  # u1 1 µs after 20 s: a, b, c
            [1 / 3, 1 / 3, 1 / 3],  # u1 at 40 s: d (at 40 s) not yet
            [0, 0, 0],              # u2 at its first interaction: nothing
            [1, 1, 0],              # u2 at 6 s: d
            [0, 0, 0]]              # a user without interactions
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the last 2 interactions only
    got2, n2 = pool("items_mean", pool_length=2)
    np.testing.assert_allclose(got2[0], [.5, .5, .5], atol=1e-6)  # c, d
    np.testing.assert_allclose(got2[3], [0, .5, .5], atol=1e-6)  # b, c
    np.testing.assert_allclose(got2[2], [1, 0, 0], atol=1e-6)  # a (only one before)
    assert n2.tolist() == n_history.tolist()  # n_history counts the whole history


def test_recency_weights_halve_every_half_life_from_the_newest() -> None:
    got, _ = pool("items_recency", half_life=1.0)
    # 1 µs after 20 s: c newest (weight 1), b 0.5, a 0.25
    np.testing.assert_allclose(got[3], np.array([.25, .5, 1]) / 1.75, atol=1e-6)
    # 41 s: d 1, c 0.5, b 0.25, a 0.125
    np.testing.assert_allclose(got[0], np.array([.125 + 1, .25 + 1, .5]) / 1.875, atol=1e-6)
    np.testing.assert_allclose(got[2], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[[1, 5, 7]], 0, atol=0)
    # half life 2: weights 2 ** -(k / 2); window of the last 2
    got2, _ = pool("items_recency", pool_length=2, half_life=2.0)
    w = 2 ** -0.5
    np.testing.assert_allclose(got2[0], (np.array([1, 1, 0]) + w * np.array([0, 0, 1])) / (1 + w), atol=1e-6)
    # normalised: unit vectors in the same direction, zeros stay zero
    unit, _ = pool("items_recency", half_life=1.0, normalize=True)
    np.testing.assert_allclose(unit[0], got[0] / np.linalg.norm(got[0]), atol=1e-6)
    assert np.linalg.norm(unit[1]) == 0


def test_chunking_does_not_change_the_result() -> None:
    for mode in ("items_mean", "items_recency"):
        ref, _ = pool(mode)
        for rows in (1, 2, 3, 100):
            np.testing.assert_allclose(pool(mode, chunk_rows=rows)[0], ref, atol=1e-6)


def test_random_histories_match_a_brute_force_over_the_serialized_snapshots() -> None:
    rng = np.random.default_rng(7)
    n, n_items, d = 600, 15, 5
    rows = [(f"u{rng.integers(12)}", f"i{rng.integers(n_items)}", float(rng.integers(0, 2000) * 60))
            for _ in range(n)]
    inter = interactions(rows)
    _, snap = serialize.user_snapshots(inter, "1h", 4)
    vecs = rng.normal(size=(n_items, d)).astype(np.float32)
    ids = [f"i{k}" for k in range(n_items)]
    ordered = sorted((u, t(s), i) for u, i, s in rows)
    snap_users = snap.column("user_id").to_pylist()
    snap_ts = snap.column("event_timestamp").cast(pa.int64()).to_pylist()
    for mode, length, half in (("items_mean", None, 1), ("items_mean", 3, 1),
                               ("items_recency", None, 2.5), ("items_recency", 4, 0.7)):
        for chunk in (None, 7):
            got, nh = pool_item_vectors(inter, snap.select(["user_id", "event_timestamp"]), ids, vecs, mode,
                                        length, half, True, chunk_rows=chunk)
            assert nh.tolist() == snap.column("n_history").to_pylist()
            for k, (u, s) in enumerate(zip(snap_users, snap_ts)):
                hist = [r for r in ordered if r[0] == u and r[1] < s]  # strictly before the snapshot
                assert all(r[1] < s for r in hist) and len(hist) == nh[k]
                hist = hist[-length:] if length else hist
                if not hist:
                    assert not got[k].any()
                    continue
                v = vecs[[int(r[2][1:]) for r in hist]].astype(np.float64)
                w = np.ones(len(v)) if mode == "items_mean" else 0.5 ** (np.arange(len(v))[::-1] / half)
                want = (w[:, None] * v).sum(0)
                np.testing.assert_allclose(got[k], want / np.linalg.norm(want), atol=1e-5)


def test_items_modes_serialize_the_same_snapshots_without_text() -> None:
    text_cfg = SerializeConfig(history_item_template="{title}", snapshot_every="1h", snapshot_max_new=1)
    items = pa.table({"item_id": ITEM_IDS, "title": ["A", "B", "C", "D"], "genres": [""] * 4,
                      "description": [""] * 4})
    _, users_text = serialize.serialize_dataset(items, INTER, text_cfg, 0)
    for mode in ("items_mean", "items_recency"):
        _, users = serialize.serialize_dataset(items, INTER, text_cfg.model_copy(update={"user_vectors": mode}), 0)
        assert "text" not in users.column_names
        for col in ("entity", "entity_id", "event_timestamp", "n_history"):
            assert users.column(col).to_pylist() == users_text.column(col).to_pylist()
    # snapshot_max_new 1: the first interaction, then 1 µs after each new timestamp
    u1 = [(r["event_timestamp"], r["n_history"]) for r in users_text.to_pylist() if r["entity_id"] == "u1"]
    assert [(int(ts.timestamp() * 1_000_000), k) for ts, k in u1] == [
        (t(10), 0), (t(10) + 1, 1), (t(20) + 1, 3), (t(40) + 1, 4)]


def test_keys_and_tags_tell_the_modes_apart() -> None:
    text, mean = SerializeConfig(), SerializeConfig(user_vectors="items_mean")
    assert user_vectors_key("enc", text) == "enc"  # the text mode keeps the encoder's key
    keys = {user_vectors_key("enc", c) for c in (
        text, mean, SerializeConfig(user_vectors="items_mean", user_pool_length=5),
        SerializeConfig(user_vectors="items_recency"),
        SerializeConfig(user_vectors="items_recency", user_half_life=3))}
    assert len(keys) == 5 and all(k.startswith("enc") for k in keys)
    with pytest.raises(ValueError):
        SerializeConfig(user_vectors="items_max")
    with pytest.raises(ValueError):
        SerializeConfig(user_pool_length=0)


ITEMS_CSV = "item_id,title\na,Alpha\nb,Bravo\nc,Charlie\nd,Delta\n"
INTER_CSV = ("user_id,item_id,event_timestamp,rating\n"
             f"u1,a,{T0 + 100},4\nu1,b,{T0 + 200},5\nu1,c,{T0 + 300},3\nu2,b,{T0 + 100},5\nu2,d,{T0 + 150},2\n")


def _fake_encoder(log: list):
    from llmrec_ray.schemas import VECTOR_ROWS

    def fake_encode(text_rows, cfg, cache=None):
        log.append(text_rows)
        h = pc.unique(text_rows.column("text_hash")).to_pylist()
        vecs = [np.random.default_rng(int(x[:8], 16)).normal(size=4) for x in h]
        vecs = [(v / np.linalg.norm(v)).astype(np.float32).tolist() for v in vecs]
        return pa.table({"text_hash": h, "embedding": vecs, "n_tokens": [3] * len(h),
                         "truncated": [False] * len(h)}, schema=VECTOR_ROWS), {
            "texts": text_rows.num_rows, "dim": 4}

    return fake_encode


@pytest.fixture
def tiny_build(tmp_path: Path, monkeypatch):
    from llmrec_ray import build

    (tmp_path / "inter.csv").write_text(INTER_CSV)
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    repo = tmp_path / "repo"
    repo.mkdir()
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(Path(__file__).resolve().parents[1] / "feature_repo" / f, repo / f)
    log: list = []
    monkeypatch.setattr(build, "encode_texts", _fake_encoder(log))

    def run(*overrides):
        log.clear()
        cfg = load_config(None, [
            "data.source=generic", f"data.interactions={tmp_path}/inter.csv",
            f"data.items={tmp_path}/items.csv", f"output_dir={tmp_path}/runs",
            f"featurestore.repo_path={repo}", "encode.cache=false", "serialize.snapshot_max_new=1",
            "serialize.history_item_template='{title}'", *overrides])
        summary = build.build_features(cfg)
        texts = pa.concat_tables(log)
        return cfg, summary, texts

    return run, repo


def test_build_text_mode_encodes_user_texts_items_modes_none(tiny_build) -> None:
    from llmrec_ray import pipeline
    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, embedding_matrix

    run, repo_dir = tiny_build
    cfg_text, s_text, texts = run()
    entities = texts.column("entity").to_pylist()
    assert entities.count("user") == s_text["encode"]["user_texts"] == s_text["encode"]["user_snapshots"] == 7
    assert entities.count("item") == 4 and s_text["encode"]["texts"] == 11
    repo = FeatureRepo(repo_dir)
    text_manifest = repo.read_manifest()
    assert text_manifest["encoder_key"] == text_manifest["item_encoder_key"]
    assert text_manifest["user_vectors"]["user_vectors"] == "text"
    pipeline.feature_repo(cfg_text)  # consistent

    for mode, half in (("items_mean", None), ("items_recency", 1.0)):
        extra = [f"serialize.user_vectors={mode}"] + ([f"serialize.user_half_life={half}"] if half else [])
        cfg, summary, texts = run(*extra)
        assert texts.column("entity").to_pylist() == ["item"] * 4  # no user text reaches the encoder
        assert summary["encode"]["texts"] == 4 and summary["encode"]["user_texts"] == 0
        assert summary["encode"]["user_snapshots"] == 7 and summary["views"][USER_HISTORY_VIEW] == 7
        repo = FeatureRepo(repo_dir)
        manifest = repo.read_manifest()
        assert manifest["item_encoder_key"] == text_manifest["item_encoder_key"]
        assert manifest["encoder_key"] != text_manifest["encoder_key"] and mode in manifest["encoder_key"]
        tags = repo.sources()[USER_HISTORY_VIEW]["tags"]
        assert tags["user_vectors"] == mode and tags["user_pool_length"] == "all"
        assert tags["encoder_key"] == manifest["encoder_key"] and tags["dim"] == "4"
        assert repo.sources()[ITEM_TEXT_VIEW]["tags"]["encoder_key"] == manifest["item_encoder_key"]
        pipeline.feature_repo(cfg)  # consistent
        with pytest.raises(ValueError, match="features were built"):
            pipeline.feature_repo(cfg_text)  # the text config refuses pooled features

        # the view's vectors: hand-pooled from the item view, same dim, unit length
        items = repo.read_view(ITEM_TEXT_VIEW).to_pandas().set_index("item_id")
        v = {i: np.asarray(items.loc[i, "embedding"], np.float64) for i in "abcd"}
        hist = repo.read_view(USER_HISTORY_VIEW).to_pandas().sort_values(["user_id", "event_timestamp"])
        assert hist["n_tokens"].tolist() == [0] * 7 and not hist["truncated"].any()
        rows = {(r.user_id, int(r.event_timestamp.timestamp() * 1e6)): np.asarray(r.embedding) for r in hist.itertuples()}
        u1 = {k[1]: e for k, e in rows.items() if k[0] == "u1"}
        at = {n: t(T0 + s) + 1 for n, s in ((1, 100), (2, 200), (3, 300))}  # 1 µs after each
        assert sorted(u1) == [t(T0 + 100)] + sorted(at.values())
        assert not u1[t(T0 + 100)].any()  # the first snapshot: no history, zero vector
        w = (lambda k: 1.0) if mode == "items_mean" else (lambda k: 0.5 ** k)  # k-th newest
        for n, ts in at.items():
            seq = [v[i] for i in "abc"[:n]]
            want = sum(w(n - 1 - p) * x for p, x in enumerate(seq))
            np.testing.assert_allclose(u1[ts], want / np.linalg.norm(want), atol=1e-5)
        assert embedding_matrix(pa.array(hist["embedding"].tolist())).shape[1] == 4

    # back to text: the text config is accepted again, the pooled one refused
    run()
    pipeline.feature_repo(cfg_text)
    with pytest.raises(ValueError, match="features were built"):
        pipeline.feature_repo(cfg)
