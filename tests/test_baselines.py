"""Baselines on a tiny dataset with a known answer, and the evaluation slices."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0

from llmrec_ray import baselines
from llmrec_ray.evaluate import available_baselines, slices
from llmrec_ray.recommender import FitData, Queries
from llmrec_ray.schemas import TIMESTAMP


def two_communities(n_users=40, n_items=20, seed=0):
    """Users 0..19 interact with items 0..9, users 20..39 with items 10..19; item 'cold' never."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = range(0, 10) if u < n_users // 2 else range(10, 20)
        for i in rng.choice(list(group), 6, replace=False):
            rows.append((f"u{u}", f"i{i}"))
    train = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                      "event_timestamp": pa.array([T0] * len(rows), TIMESTAMP)})
    users = [f"u{u}" for u in range(n_users)]
    items = [f"i{i}" for i in range(n_items)] + ["cold"]
    return train, users, items


def fit_data(train, users, items, seed=0):
    return FitData(baselines.interaction_matrix(train, users, items), users, items, seed)


def queries_of(histories, items, user_rows=None, **features):
    rows = np.arange(len(histories)) if user_rows is None else np.asarray(user_rows)
    return Queries(baselines.history_matrix(histories, items), rows, features)


def own_histories(train, users):
    pairs = zip(train.column("user_id").to_pylist(), train.column("item_id").to_pylist())
    by_user = {u: [] for u in users}
    for u, i in pairs:
        by_user[u].append(i)
    return [by_user[u] for u in users]


@pytest.mark.parametrize("rec", [
    lambda: baselines.BPR(factors=8, learning_rate=0.05, iterations=200),
    lambda: baselines.ImplicitALS(factors=8, iterations=15),
    lambda: baselines.EASE(l2=10.0),
    lambda: baselines.ItemKNN(neighbors=5),
], ids=["bpr", "implicit_als", "ease", "item_knn"])
def test_interaction_models_learn_the_communities_and_know_nothing_of_cold_items(rec):
    pytest.importorskip("implicit")
    train, users, items = two_communities()
    r = rec().fit(fit_data(train, users, items))
    scores = r.score(queries_of(own_histories(train, users), items))
    assert scores.shape == (40, 21)
    seen = baselines.interaction_matrix(train, users, items).toarray().astype(bool)
    masked = np.where(seen, -np.inf, scores)
    best = masked[:, :20].argmax(axis=1)
    # a user's best unseen item is from their own community
    assert ((best < 10) == (np.arange(40) < 20)).mean() >= 0.9
    np.testing.assert_allclose(scores[:, 20], 0.0, atol=1e-3)  # the cold item: nothing learned


def test_ease_matches_the_closed_form_by_hand():
    """Two items a, b; a seen by 3 users, b by 2, both by 1. EASE's B[a, b] is the ridge
    regression of column b on column a: c / (n_a + l2) = 1 / (3 + 1); B[b, a] = 1 / (2 + 1);
    the diagonal is 0. A user who saw a scores b at B[a, b]."""
    train = pa.table({"user_id": ["u1", "u1", "u2", "u3", "u4"], "item_id": ["a", "b", "a", "a", "b"]})
    r = baselines.EASE(l2=1.0).fit(fit_data(train, ["u1", "u2", "u3", "u4"], ["a", "b"]))
    np.testing.assert_allclose(r.b, [[0.0, 1 / 4], [1 / 3, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(r.score(queries_of([["a"], ["a", "b"]], ["a", "b"])),
                               [[0.0, 0.25], [1 / 3, 0.25]], rtol=1e-6)


def test_item_knn_cosine_and_neighbour_cut_by_hand():
    """Items x, y, z. x: users 1, 2; y: users 1, 2, 3; z: user 3. cos(x, y) = 2 / sqrt(2 * 3),
    cos(y, z) = 1 / sqrt(3), cos(x, z) = 0. With one neighbour per item, z keeps only y and y
    keeps only x."""
    train = pa.table({"user_id": ["1", "2", "1", "2", "3", "3"], "item_id": ["x", "x", "y", "y", "y", "z"]})
    items = ["x", "y", "z"]
    full = baselines.ItemKNN(neighbors=2).fit(fit_data(train, ["1", "2", "3"], items))
    cxy, cyz = 2 / np.sqrt(6), 1 / np.sqrt(3)
    np.testing.assert_allclose(full.sim.toarray(), [[0, cxy, 0], [cxy, 0, cyz], [0, cyz, 0]], rtol=1e-6)
    one = baselines.ItemKNN(neighbors=1).fit(fit_data(train, ["1", "2", "3"], items))
    np.testing.assert_allclose(one.sim.toarray(), [[0, cxy, 0], [cxy, 0, cyz], [0, 0, 0]], rtol=1e-6)
    # a query who saw y: x and z are scored by their similarity to y, in the kept neighbours
    np.testing.assert_allclose(one.score(queries_of([["y"]], items)), [[cxy, 0, cyz]], rtol=1e-6)


def test_tune_picks_the_best_validation_point_and_reports_every_trial():
    train, users, items = two_communities()
    grid = {"l2": [1.0, 10.0, 100.0]}
    value = {1.0: 0.2, 10.0: 0.5, 100.0: 0.5}  # a tie: the earlier point wins
    best, trials = baselines.tune("ease", grid, fit_data(train, users, items),
                                  lambda rec: value[rec.params["l2"]])
    assert best.params == {"l2": 10.0}
    assert [t["value"] for t in trials] == [0.2, 0.5, 0.5]
    # the shared eigendecomposition gives the same B as a fresh fit
    fresh = baselines.EASE(l2=10.0).fit(fit_data(train, users, items))
    np.testing.assert_allclose(best.b, fresh.b, atol=1e-5)
    assert baselines.grid_points({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_popularity_counts_training_interactions():
    train = pa.table({"user_id": ["a", "b", "b"], "item_id": ["x", "x", "y"]})
    r = baselines.Popularity().fit(fit_data(train, ["a", "b"], ["x", "y", "z"]))
    assert r.score(queries_of([[], []], ["x", "y", "z"])).tolist() == [[2, 1, 0], [2, 1, 0]]


def test_zero_shot_cosine():
    u = np.array([[3.0, 4.0]])
    v = np.array([[1.0, 0.0], [0.0, 2.0]])
    q = queries_of([[]], ["x", "y"], user_emb=u, item_emb=v)
    np.testing.assert_allclose(baselines.ZeroShotCosine().score(q), [[0.6, 0.8]])


def test_interaction_matrix_is_binary():
    train = pa.table({"user_id": ["a", "a", "b"], "item_id": ["x", "x", "y"]})
    m = baselines.interaction_matrix(train, ["a", "b"], ["x", "y"]).toarray()
    assert m.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="outside the item table"):
        baselines.interaction_matrix(train, ["a", "b"], ["x"])


def test_slices_by_hand():
    train = pa.table({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "x", "y"]})
    truth = [{1, 2}, {0, 2}, set()]  # items: x=0, y=1, z=2 (z has no training interaction)
    got = slices(truth, train, ["a", "b", "c"], ["x", "y", "z"], light_user_max=1)
    assert got["all"] == truth
    assert got["cold_items"] == [{2}, {2}, set()]
    assert got["light_users"] == [set(), {0, 2}, set()]  # a has 3 training rows, b has 1
    assert "new_users" not in got
    # global-temporal: queries of users without any fit row (c, d) form the new_users slice
    got = slices([{0}, {1}, {2}], train, ["a", "d", "b"], ["x", "y", "z"], light_user_max=1, new_users=True)
    assert got["new_users"] == [set(), {1}, set()]


def test_als_fold_in_serves_histories_including_new_users():
    """With histories, ALS recomputes each query's user factors from it (implicit's
    recalculate_user): a fitted user's own history gives the fitted scores, and a user who never
    appeared in the fit rows is served from their history like a community member."""
    pytest.importorskip("implicit")
    train, users, items = two_communities()
    als = baselines.ImplicitALS(factors=4, iterations=30).fit(fit_data(train, users, items))
    fitted = np.asarray(als.model.user_factors) @ np.asarray(als.model.item_factors).T
    history_u0 = own_histories(train, users)[0]
    folded = als.score(queries_of([history_u0, history_u0[:2], []], items, [0, -1, -1]))
    assert folded.shape == (3, len(items))
    np.testing.assert_allclose(folded[0], fitted[0], atol=0.05)
    # a newcomer who saw two items of the first community is recommended that community
    seen = [items.index(i) for i in history_u0[:2]]
    ranked = [k for k in np.argsort(-folded[1]) if k not in seen][:5]
    assert all(k < 10 for k in ranked), ranked
    assert np.allclose(folded[2], 0)  # no history: nothing to go on


def test_unknown_baseline_is_named():
    with pytest.raises(ValueError, match="unknown \\['als'\\]"):
        available_baselines(["als"])


class Fixed(baselines.Recommender):
    """Scores given by hand, the same for every query."""

    def __init__(self, name, scores, **params):
        super().__init__(**params)
        self.name, self.scores = name, np.asarray(scores, np.float32)

    def score(self, queries):
        return np.broadcast_to(self.scores, (len(queries), len(self.scores)))


def test_blend_standardizes_each_model_then_weighs():
    from llmrec_ray.recommender import Blend, standardize

    a = Fixed("a", [0.0, 1.0, 2.0])         # z: -1.22, 0, 1.22
    b = Fixed("b", [300.0, 100.0, 200.0])   # z: 1.22, -1.22, 0 (another scale)
    q = queries_of([[], []], ["i0", "i1", "i2"])
    z = np.sqrt(1.5)
    np.testing.assert_allclose(standardize(np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])),
                               [[-z, 0, z], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(Blend(a, b, 0.25).score(q)[0],
                               [0.75 * -z + 0.25 * z, 0.25 * -z, 0.75 * z], atol=1e-6)
    assert Blend(a, b, 0.0).top_k(q, np.zeros((2, 3), bool), 1)[0, 0] == 2  # a alone: item 2
    assert Blend(a, b, 1.0).top_k(q, np.zeros((2, 3), bool), 1)[0, 0] == 0  # b alone: item 0
    blend = Blend(a, Fixed("ease", [0, 0, 1], l2=200.0), 0.5)
    assert blend.name == "a+ease" and blend.params == {"weight": 0.5, "ease.l2": 200.0}
    # item 2 unknown to b (no training interaction): it keeps a's standing, z(a) = +z, whole
    cold = Blend(a, b, 0.75, b_items=np.array([True, True, False])).score(q)[0]
    np.testing.assert_allclose(cold, [0.25 * -z + 0.75 * z, 0.75 * -z, z], atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        Blend(a, b, 1.5)
    # the new-item boost: added to the cold item's z(a), the others untouched
    boosted = Blend(a, b, 0.75, b_items=np.array([True, True, False]), cold_boost=0.5)
    np.testing.assert_allclose(boosted.score(q)[0], cold + [0, 0, 0.5], atol=1e-6)
    assert boosted.params == {"weight": 0.75, "cold_boost": 0.5}
    with pytest.raises(ValueError, match="b_items"):
        Blend(a, b, 0.5, cold_boost=0.5)


@pytest.mark.parametrize("tolerance, chosen", [(0.0, 0.0), (0.05, 0.25), (0.25, 1.0)])
def test_the_cold_boost_is_the_largest_within_the_accuracy_budget(monkeypatch, tolerance, chosen):
    """Validation values by boost 0 / 0.25 / 0.5 / 1.0: 0.50 / 0.49 / 0.47 / 0.40. Tolerance 0:
    the best (0); 5%: the largest at or above 0.475 (0.25); 25%: at or above 0.375 (1.0)."""
    from llmrec_ray import evaluate
    from llmrec_ray.recommender import Blend

    by_boost = {0.0: 0.50, 0.25: 0.49, 0.5: 0.47, 1.0: 0.40}

    def metric_on(rec, valid, metric):
        if not isinstance(rec, Blend):
            return 0.3  # the peer
        return by_boost[rec.cold_boost] if rec.weight == 0.5 else 0.45
    monkeypatch.setattr(evaluate, "metric_on", metric_on)
    items = np.array([True, True, True, False])  # i3: no training interaction
    trained, peer = Fixed("hybrid", [0, 0, 0, 0]), Fixed("ease", [0, 0, 0, 0])
    tuned = evaluate.tune_blend(trained, {"ease": peer}, {}, "ndcg@20", [0.25, 0.5], items,
                                [1.0, 0.25, 0.5], tolerance)
    blend, trials = tuned.rec, tuned.trials
    assert blend.weight == 0.5 and blend.cold_boost == chosen
    # the tuning records its value for the guard: the best weight's, before the boost's cost
    assert tuned.value == 0.50 and [t for t in trials if t.get("chosen")][0]["value"] == by_boost[chosen]
    assert [(t["cold_boost"], t["value"]) for t in trials if "cold_boost" in t] == [
        (0.25, 0.49), (0.5, 0.47), (1.0, 0.40)]
    # every item with training interactions: nothing to boost, no boost tried
    tuned = evaluate.tune_blend(trained, {"ease": peer}, {}, "ndcg@20", [0.5], np.ones(4, bool),
                                [0.5], tolerance)
    blend, trials = tuned.rec, tuned.trials
    assert blend.cold_boost == 0.0 and not [t for t in trials if "cold_boost" in t]


def test_tune_blend_takes_the_best_peer_on_validation_then_the_best_weight():
    from llmrec_ray.evaluate import tune_blend

    items = ["i0", "i1", "i2", "i3"]
    # one validation query whose truth is i3; the trained model ranks i2 first, i3 second
    valid = {"queries": queries_of([[]], items), "mask": np.zeros((1, 4), bool), "truth": [{3}]}
    trained = Fixed("hybrid", [0.0, 0.1, 1.0, 0.9])
    peers = {"weak": Fixed("weak", [1.0, 0.0, 0.0, 0.0]),       # misses i3
             "strong": Fixed("strong", [0.0, 0.0, 0.5, 1.0])}   # i3 first
    tuned = tune_blend(trained, peers, valid, "recall@1", [0.0, 0.5, 1.0])
    blend, trials = tuned.rec, tuned.trials
    assert [t.get("peer") for t in trials[:2]] == ["weak", "strong"]
    assert trials[0]["value"] == 0.0 and trials[1]["value"] == 1.0
    assert blend.b is peers["strong"]
    # weight 0 (the model alone) misses; 0.5 and 1.0 both hit: ties go to the earlier weight
    assert [t["value"] for t in trials[2:]] == [0.0, 1.0, 1.0] and blend.weight == 0.5
