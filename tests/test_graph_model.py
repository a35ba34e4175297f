"""The LLM graph model (AlphaRec-style): propagation against a hand-computed example, the fold-in
of query users, cold items scored from their text, and a checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

from llmrec_ray.models.graph import LLMGraph
from llmrec_ray.recommender import Queries, TrainedModel


def identity_graph(layers=1):
    """2 users, 3 items; u0 -> i0, i1; u1 -> i1; i2 has no edge (a cold item). The MLP is the
    identity on positive inputs (identity weights, LeakyReLU passes positives)."""
    m = LLMGraph(item_dim=2, n_users=2, n_items=3, hidden_dim=2, out_dim=2, layers=layers,
                 edge_users=[0, 0, 1], edge_items=[0, 1, 1])
    with torch.no_grad():
        for lin in (m.mlp[0], m.mlp[2]):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    m.set_item_vectors(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    return m


def test_one_layer_propagation_by_hand():
    m = identity_graph(layers=1)
    users, items, layers = m.propagate()
    z = m.item_emb.numpy()
    # layer 0: users = mean of their items' vectors; items = their vectors
    u0 = np.array([[0.5, 0.5], [0.0, 1.0]])
    # degrees: u0 2, u1 1; i0 1, i1 2, i2 0. Layer 1 with weights 1 / sqrt(d_u d_i):
    u1 = np.array([z[0] / np.sqrt(2 * 1) + z[1] / np.sqrt(2 * 2), z[1] / np.sqrt(1 * 2)])
    i1 = np.array([u0[0] / np.sqrt(2 * 1), u0[0] / np.sqrt(2 * 2) + u0[1] / np.sqrt(1 * 2), [0.0, 0.0]])
    np.testing.assert_allclose(users.detach().numpy(), (u0 + u1) / 2, rtol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), (z + i1) / 2, rtol=1e-6)
    np.testing.assert_allclose(layers[0].detach().numpy(), z)
    # the cold item i2 has no edge: its vector is its own text vector (halved by the layer mean)
    np.testing.assert_allclose(items[2].detach().numpy(), z[2] / 2)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fold_in_of_a_training_history_equals_propagation(layers):
    m = identity_graph(layers)
    users, items, item_layers = m.propagate()
    history = csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    folded = m.user_vectors(history, item_layers, m.item_emb)
    np.testing.assert_allclose(folded.detach().numpy(), users.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_scores_are_cosines_and_cold_items_and_new_users_are_served():
    m = identity_graph(layers=1).eval()
    rec = TrainedModel(m)
    assert rec.name == "llm_graph"
    # a new user (not in the graph) who saw i0: scored from the history; i2 (cold) gets a score
    q = Queries(csr_matrix(np.array([[1, 0, 0]], dtype=np.float32)), np.array([-1]), {})
    s = rec.score(q)
    assert s.shape == (1, 3) and np.isfinite(s).all()
    assert np.all(np.abs(s * m.temperature) <= 1 + 1e-6)  # cosines / temperature
    # an empty history with a user text vector starts from that vector: close to i2 = (1, 1)
    q = Queries(csr_matrix((1, 3), dtype=np.float32), np.array([-1]), {"user_emb": np.array([[1.0, 1.0]], np.float32)})
    s = rec.score(q)[0]
    assert s[2] == pytest.approx(s.max())


def test_training_lowers_the_loss_and_the_checkpoint_round_trips():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 12
    eu = np.repeat(np.arange(n_users), 3)
    ei = np.concatenate([rng.choice(np.arange(6) + 6 * (u % 2), 3, replace=False) for u in range(n_users)])
    m = LLMGraph(item_dim=8, n_users=n_users, n_items=n_items, hidden_dim=16, out_dim=8, layers=2,
                 negatives=8, edge_users=eu.tolist(), edge_items=ei.tolist())
    m.set_item_vectors(torch.randn(n_items, 8))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    batch = {"user_idx": torch.from_numpy(eu), "item_idx": torch.from_numpy(ei)}
    first = float(m(batch).detach())
    for _ in range(100):
        loss = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(m(batch).detach()) < first - 0.3
    # the graph and item vectors travel inside the state dict: a model built from the
    # hyperparameters alone scores the same after loading it
    fresh = LLMGraph(**m.hparams)
    fresh.load_state_dict(m.state_dict())
    fresh.vocab = m.vocab = {"users": [], "items": [], "trained_items": []}
    q = Queries(csr_matrix(np.eye(2, n_items, dtype=np.float32)), np.array([0, 1]), {})
    np.testing.assert_allclose(TrainedModel(fresh).score(q), TrainedModel(m).score(q), rtol=1e-5)


def test_query_blocks_keep_the_item_features_whole():
    """More queries than one block: per-query features are sliced, per-item ones are not."""
    from llmrec_ray.recommender import QUERY_CHUNK

    n = QUERY_CHUNK + 3
    q = Queries(csr_matrix((n, 4), dtype=np.float32), np.arange(n),
                {"user_emb": np.zeros((n, 2)), "user_idx": np.arange(n),
                 "item_emb": np.zeros((4, 2)), "item_idx": np.arange(4)})
    part = q.take(slice(QUERY_CHUNK, None))
    assert len(part) == 3 and part.features["user_idx"].tolist() == [n - 3, n - 2, n - 1]
    assert part.features["item_idx"].tolist() == [0, 1, 2, 3] and part.features["item_emb"].shape == (4, 2)
