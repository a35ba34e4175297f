"""The item-age term (`train.item_age`, models/age.py): buckets, release dates from the items
table, the bias in scores and in the in-batch loss, learning, and the checkpoint round trip."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
import torch

from llmrec_ray.artifacts import build_model
from llmrec_ray.models.age import N_BUCKETS, buckets, released_days, times_days
from llmrec_ray.models.two_tower import TwoTower
from llmrec_ray.recommender import Queries
from llmrec_ray.schemas import TIMESTAMP


def test_buckets_on_literal_ages():
    ages = torch.tensor([-1.0, 0.0, 6.9, 7.0, 29.0, 30.0, 100.0, 200.0, 400.0, 800.0, 2000.0, math.nan],
                        dtype=torch.float64)
    assert buckets(ages).tolist() == [0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, N_BUCKETS - 1]


def day(y, m, d) -> datetime:
    return datetime(y, m, d, tzinfo=timezone.utc)


def test_release_days_prefer_released_then_available_from():
    items = pa.table({"item_id": ["a", "b", "c", "d"],
                      "available_from": pa.array([day(1970, 1, 11), day(1970, 1, 3), None, None], TIMESTAMP),
                      "released": pa.array([None, day(1970, 1, 2), day(1970, 1, 5), None], TIMESTAMP)})
    got = released_days(items, ["d", "c", "b", "a", "unknown"])
    np.testing.assert_array_equal(got[:4], [np.nan, 4.0, 1.0, 10.0])
    assert np.isnan(got[4])
    assert np.isnan(released_days(items.drop_columns(["released", "available_from"]), ["a"])).all()
    assert times_days([day(1970, 1, 2), "1970-01-01T12:00:00Z"]).tolist() == [1.0, 0.5]


def model(**kw) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(user_dim=3, item_dim=3, hidden_dim=8, out_dim=4, item_age=True, n_age_items=3,
                    released=[0.0, 100.0, math.nan], **kw)


def test_score_adds_the_bias_of_each_items_age_at_each_query():
    m = model().eval()
    with torch.no_grad():
        m.age.bias.weight.copy_(torch.arange(N_BUCKETS, dtype=torch.float32).unsqueeze(1) * 10)
    u, i = torch.randn(2, 3), torch.randn(3, 3)
    plain = m.user_vectors(u) @ m.item_vectors(i).T / m.temperature
    got = m.score(u, i, query_day=torch.tensor([50.0, 101.0], dtype=torch.float64))
    # query day 50: item 0 is 50 days old (bucket 3), item 1 comes out in 50 days (bucket 0),
    # item 2 has no date (the unknown bucket); day 101: 101 days (4), 1 day (1), unknown
    bias = torch.tensor([[30.0, 0.0, 10.0 * (N_BUCKETS - 1)], [40.0, 10.0, 10.0 * (N_BUCKETS - 1)]])
    torch.testing.assert_close(got, plain + bias)
    with pytest.raises(ValueError, match="query_day"):
        m.score(u, i)
    with pytest.raises(ValueError, match="release times of 3"):
        m.score(u, i[:2], query_day=torch.zeros(2, dtype=torch.float64))


def test_the_loss_scores_each_row_time_against_every_in_batch_items_release():
    m = model(logq=None).eval()
    with torch.no_grad():
        m.age.bias.weight.copy_(torch.randn(N_BUCKETS, 1))
    batch = {"user_emb": torch.randn(3, 3), "item_emb": torch.randn(3, 3), "item_idx": torch.tensor([0, 1, 2]),
             "query_day": torch.tensor([5.0, 120.0, 3000.0], dtype=torch.float64)}
    logits = m.score(batch["user_emb"], batch["item_emb"], query_day=batch["query_day"])
    want = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    torch.testing.assert_close(m.loss(batch), want)


def test_the_bias_learns_that_items_are_picked_soon_after_release():
    """Every positive is picked within a week of its release; in-batch negatives are other rows'
    items, released at other times: the fresh bucket's bias rises above the others'."""
    torch.manual_seed(0)
    n = 64
    released = np.arange(n, dtype=np.float64) * 100.0  # item k out on day 100k
    m = TwoTower(user_dim=4, item_dim=4, hidden_dim=8, out_dim=4, item_age=True, n_age_items=n,
                 released=released.tolist())
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    emb = torch.randn(n, 4)
    for _ in range(60):
        idx = torch.randperm(n)[:32]
        batch = {"user_emb": torch.randn(32, 4), "item_emb": emb[idx], "item_idx": idx,
                 "query_day": torch.as_tensor(released[idx.numpy()] + 3.0)}
        loss = m.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = m.age.bias.weight.detach().squeeze(1)
    assert w[1] > w[0] + 1 and w[1] > w[8] + 1, w  # [0, 7) days over before-release and >= 5 years


def test_the_release_times_and_bias_travel_in_the_checkpoint():
    m = model(n_users=2, n_items=3).eval()
    with torch.no_grad():
        m.age.bias.weight.normal_()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    again = build_model("hybrid", m.hparams)  # as load_model rebuilds it: no release times given
    assert torch.isnan(again.age.released).all()
    again.load_state_dict(state)
    again.eval()
    feats = {"user_emb": np.random.rand(2, 3).astype(np.float32), "item_emb": np.random.rand(3, 3).astype(np.float32),
             "user_idx": np.array([0, -1]), "item_idx": np.array([0, 1, -1]),
             "query_day": np.array([50.0, 2000.0])}
    q = Queries(history=None, user_rows=np.array([0, -1]), features=feats)
    torch.testing.assert_close(again.score_queries(q), m.score_queries(q))


def test_training_rows_carry_their_time_in_days():
    from llmrec_ray.train_data import to_training_batch

    batch = pa.table({"row_id": [0, 1], "item_idx": [0, 1],
                      "event_timestamp": pa.array([day(1970, 1, 3), day(1970, 1, 1)], TIMESTAMP),
                      "user_history_embedding__embedding": [[1.0, 0.0], [0.0, 1.0]],
                      "item_text_embedding__embedding": [[1.0, 0.0], [0.0, 1.0]]})
    assert to_training_batch(batch)["query_day"].tolist() == [2.0, 0.0]


def test_item_age_auto_follows_the_data_and_true_needs_dates():
    from llmrec_ray.config import TrainConfig
    from llmrec_ray.train import item_age_on

    dated = pa.table({"item_id": ["a"], "released": pa.array([day(1995, 1, 1)], TIMESTAMP)})
    undated = pa.table({"item_id": ["a"]})
    assert not item_age_on(TrainConfig(model="hybrid"), dated, ["a"])  # off by default
    assert item_age_on(TrainConfig(model="hybrid", item_age="auto"), dated, ["a"])
    assert not item_age_on(TrainConfig(model="hybrid", item_age="auto"), undated, ["a"])
    assert not item_age_on(TrainConfig(model="hybrid", item_age=False), dated, ["a"])
    assert not item_age_on(TrainConfig(model="llm_graph", item_age="auto"), dated, ["a"])
    with pytest.raises(ValueError, match="no item has a release date"):
        item_age_on(TrainConfig(model="two_tower", item_age=True), undated, ["a"])
    with pytest.raises(ValueError, match="not llm_graph"):
        item_age_on(TrainConfig(model="llm_graph", item_age=True), dated, ["a"])


def test_hybrid_rows_meet_items_first_seen_later_with_the_unknown_id_and_its_bias():
    """Row r at time t scores column j with j's ID only if j's first fit interaction is before t;
    otherwise with the unknown ID and the unknown-ID bias table (eval mode: no ID dropout)."""
    torch.manual_seed(0)
    m = TwoTower(user_dim=3, item_dim=3, hidden_dim=8, out_dim=4, n_users=3, n_items=3, item_age=True,
                 n_age_items=3, released=[0.0, 0.0, 0.0], first_seen=[1.0, 10.0, math.nan]).eval()
    with torch.no_grad():
        m.age.bias.weight.copy_(torch.randn(2 * N_BUCKETS, 1))
    batch = {"user_emb": torch.randn(3, 3), "item_emb": torch.randn(3, 3), "item_idx": torch.tensor([0, 1, 2]),
             "user_idx": torch.tensor([0, 1, 2]), "query_day": torch.tensor([5.0, 10.0, 20.0], dtype=torch.float64)}
    u = m.user_vectors(batch["user_emb"], None, batch["user_idx"])
    known = m.item_vectors(batch["item_emb"], batch["item_idx"])
    unknown = m.item_vectors(batch["item_emb"], torch.full((3,), -1))
    # day 5: item 0 known (first seen day 1), item 1 not yet (day 10), item 2 never; day 10: item 1
    # still unknown (its first interaction is this row); day 20: items 0 and 1 known
    is_unknown = torch.tensor([[False, True, True], [False, True, True], [False, False, True]])
    sims = torch.where(is_unknown, u @ unknown.T, u @ known.T) / m.temperature
    age_bucket = buckets(batch["query_day"].unsqueeze(1) - torch.zeros(3, dtype=torch.float64))
    bias = m.age.bias.weight.squeeze(1)[age_bucket + N_BUCKETS * is_unknown.long()]
    want = torch.nn.functional.cross_entropy(sims + bias, torch.arange(3))
    torch.testing.assert_close(m.loss(batch), want)
    # scoring: an item is known when the fit saw it (item_idx >= 0)
    s = m.score(batch["user_emb"], batch["item_emb"], None, batch["user_idx"], torch.tensor([0, 1, -1]),
                query_day=torch.tensor([20.0, 20.0, 20.0], dtype=torch.float64))
    plain = u @ m.item_vectors(batch["item_emb"], torch.tensor([0, 1, -1])).T / m.temperature
    b = m.age.bias.weight.squeeze(1)
    # 20 days old: bucket [7, 30), in the known table for items 0 and 1, the unknown one for item 2
    torch.testing.assert_close(s - plain, torch.stack([b[2], b[2], b[2 + N_BUCKETS]]).expand(3, 3))


def test_first_seen_days_is_each_items_first_fit_interaction():
    from llmrec_ray.train import first_seen_days

    inter = pa.table({"item_id": ["b", "a", "b"],
                      "event_timestamp": pa.array([day(1970, 1, 5), day(1970, 1, 2), day(1970, 1, 3)], TIMESTAMP)})
    got = first_seen_days(inter, ["a", "b", "c"])
    assert got[:2].tolist() == [1.0, 2.0] and np.isnan(got[2])
