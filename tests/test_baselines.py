"""Baselines on a tiny dataset with a known answer, and the evaluation slices."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from llmrec_ray import baselines
from llmrec_ray.evaluate import available_baselines, slices
from llmrec_ray.schemas import TIMESTAMP

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


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


@pytest.mark.parametrize("fit", [
    lambda t, u, i: baselines.bpr_mf(t, u, i, factors=8, epochs=60, lr=0.05),
    lambda t, u, i: baselines.implicit_als(t, u, i, factors=8, iterations=15),
], ids=["bpr_mf", "implicit_als"])
def test_id_models_learn_the_communities_and_know_nothing_of_cold_items(fit):
    pytest.importorskip("implicit")
    train, users, items = two_communities()
    scores = fit(train, users, items)
    assert scores.shape == (40, 21)
    seen = baselines.interaction_matrix(train, users, items).toarray().astype(bool)
    masked = np.where(seen, -np.inf, scores)
    best = masked[:, :20].argmax(axis=1)
    # a user's best unseen item is from their own community
    assert ((best < 10) == (np.arange(40) < 20)).mean() >= 0.9
    np.testing.assert_allclose(scores[:, 20], 0.0, atol=1e-3)  # the cold item: no factors


def test_popularity_counts_training_interactions():
    train = pa.table({"user_id": ["a", "b", "b"], "item_id": ["x", "x", "y"]})
    s = baselines.popularity(train, ["a", "b"], ["x", "y", "z"])
    assert s.tolist() == [[2, 1, 0], [2, 1, 0]]


def test_zero_shot_cosine():
    u = np.array([[3.0, 4.0]])
    v = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(baselines.zero_shot_cosine(u, v), [[0.6, 0.8]])


def test_interaction_matrix_is_binary():
    train = pa.table({"user_id": ["a", "a", "b"], "item_id": ["x", "x", "y"]})
    m = baselines.interaction_matrix(train, ["a", "b"], ["x", "y"]).toarray()
    assert m.tolist() == [[1, 0], [0, 1]]


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


def test_rows_for_repeats_users_and_zeroes_unknown_ones():
    scores = np.array([[1.0, 2.0], [3.0, 4.0]])
    got = baselines.rows_for(scores, ["a", "b"], ["b", "new", "a", "b"])
    assert got.tolist() == [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]


def test_als_fold_in_serves_histories_including_new_users():
    """With histories, ALS recomputes each query's user factors from it (implicit's
    recalculate_user): a fitted user's own history gives the fitted scores, and a user who never
    appeared in the fit rows is served from their history like a community member."""
    pytest.importorskip("implicit")
    train, users, items = two_communities()
    fitted = baselines.implicit_als(train, users, items, factors=4, iterations=30, seed=0)
    history_u0 = [i for u, i in zip(train.column("user_id").to_pylist(), train.column("item_id").to_pylist())
                  if u == users[0]]
    folded = baselines.implicit_als(train, users, items, factors=4, iterations=30, seed=0,
                                    histories=[history_u0, history_u0[:2], []])
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
