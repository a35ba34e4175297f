"""Two-tower model (llmrec_ray.models.two_tower): shapes, cosine scores, the in-batch loss."""

from __future__ import annotations

import math

import pytest
import torch

from llmrec_ray.models.two_tower import TwoTower


def model_with_identity_towers(temperature: float) -> TwoTower:
    model = TwoTower(user_dim=2, item_dim=2, hidden_dim=4, out_dim=2, dropout=0.0,
                     temperature=temperature)
    model.user_tower = torch.nn.Identity()
    model.item_tower = torch.nn.Identity()
    return model


def test_shapes_and_unit_vectors():
    torch.manual_seed(0)
    model = TwoTower(user_dim=6, item_dim=4, hidden_dim=8, out_dim=3, dropout=0.1, temperature=0.1)
    model.eval()
    users, items = torch.randn(5, 6), torch.randn(7, 4)
    u, v = model.user_vectors(users), model.item_vectors(items)
    assert u.shape == (5, 3) and v.shape == (7, 3)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(7))
    scores = model.score(users, items)
    assert scores.shape == (5, 7)
    # score = cosine / temperature, so |score| <= 1 / 0.1 = 10
    torch.testing.assert_close(scores, u @ v.T / 0.1)
    assert scores.abs().max() <= 10 + 1e-5
    assert model.hparams == dict(user_dim=6, item_dim=4, hidden_dim=8, out_dim=3, dropout=0.1,
                                 temperature=0.1, user_extra_dim=0, n_users=0, n_items=0, id_dim=32,
                                 id_dropout=0.2, logq=None, id_mode="concat",
                                 user_id_dropout=None, text_aux=0.0)
    assert not model.hybrid


# Unit vectors; temperature 0.5.
U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
# logits = U @ V.T / 0.5:
#   row 0: [1, 0, 0.8]    / 0.5 = [2.0, 0.0, 1.6]
#   row 1: [0, 1, 0.6]    / 0.5 = [0.0, 2.0, 1.2]
#   row 2: [0.6, 0.8, 0.96] / 0.5 = [1.2, 1.6, 1.92]
# cross-entropy with label i for row i: loss_i = -logit_ii + log(sum_j exp(logit_ij))


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_loss_hand_computed_distinct_items():
    model = model_with_identity_towers(0.5)
    loss = model.loss({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])})
    expected = (
        (-2.0 + lse(2.0, 0.0, 1.6))      # row 0: 0.5909
        + (-2.0 + lse(0.0, 2.0, 1.2))    # row 1: 0.4604
        + (-1.92 + lse(1.2, 1.6, 1.92))  # row 2: 0.7943
    ) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.6152, abs=1e-4)
    # forward is the loss
    assert model({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])}).item() == \
        pytest.approx(expected, rel=1e-5)


def test_loss_masks_other_copies_of_the_same_item():
    model = model_with_identity_towers(0.5)
    # rows 0 and 2 share item 7: row 0's logit at column 2 and row 2's at column 0 become -inf
    loss = model.loss({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([7, 3, 7])})
    expected = (
        (-2.0 + lse(2.0, 0.0))           # row 0: [2.0, 0.0, -inf] -> 0.1269
        + (-2.0 + lse(0.0, 2.0, 1.2))    # row 1: unchanged -> 0.4604
        + (-1.92 + lse(1.6, 1.92))       # row 2: [-inf, 1.6, 1.92] -> 0.5459
    ) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.3777, abs=1e-4)
    assert torch.isfinite(loss)
    # and the masking matters: without it the loss is the distinct-items one, which is larger
    distinct = model.loss({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])})
    assert loss.item() < distinct.item()


def test_loss_all_same_item_is_zero():
    model = model_with_identity_towers(0.5)
    # every off-diagonal logit is masked: each row's softmax is over its own positive only
    loss = model.loss({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([4, 4, 4])})
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_loss_uses_cosine_not_dot_product():
    model = model_with_identity_towers(0.5)
    batch = {"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])}
    scaled = {"user_emb": U * torch.tensor([[3.0], [0.5], [10.0]]), "item_emb": V * 7.0,
              "item_idx": torch.tensor([0, 1, 2])}
    assert model.loss(scaled).item() == pytest.approx(model.loss(batch).item(), rel=1e-5)


def test_a_few_adamw_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = TwoTower(user_dim=4, item_dim=4, hidden_dim=16, out_dim=4, dropout=0.0, temperature=0.1)
    # separable: user k and item k are the same one-hot direction, plus a little noise
    eye = torch.eye(4)
    batch = {"user_emb": eye + 0.05 * torch.randn(4, 4), "item_emb": eye + 0.05 * torch.randn(4, 4),
             "item_idx": torch.arange(4)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.loss(batch).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    after = model.loss(batch).item()
    assert after < 0.5 * before
    # the learned scores rank each user's own item first
    with torch.no_grad():
        assert model.score(batch["user_emb"], batch["item_emb"]).argmax(dim=1).tolist() == [0, 1, 2, 3]


def test_logq_lowers_each_column_by_its_items_log_share():
    """logits_ij - log q_j: the hand-computed loss of row 0 with q = (0.5, 0.25, 0.25)."""
    model = model_with_identity_towers(0.5)
    q = [math.log(0.5), math.log(0.25), math.log(0.25)]
    model.logq = torch.tensor(q)
    batch = {"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])}
    row0 = [2.0 - q[0], 0.0 - q[1], 1.6 - q[2]]
    row1 = [0.0 - q[0], 2.0 - q[1], 1.2 - q[2]]
    row2 = [1.2 - q[0], 1.6 - q[1], 1.92 - q[2]]
    want = sum(lse(*r) - r[i] for i, r in enumerate([row0, row1, row2])) / 3
    assert model.loss(batch).item() == pytest.approx(want, rel=1e-5)


def test_hybrid_ids_unknown_item_and_id_dropout():
    torch.manual_seed(0)
    model = TwoTower(user_dim=4, item_dim=4, hidden_dim=8, out_dim=3, dropout=0.0, temperature=0.1,
                     user_extra_dim=2, n_users=3, n_items=5, id_dim=2, id_dropout=1.0)
    assert model.hybrid
    model.eval()
    emb = torch.randn(2, 4)
    # an item never seen in training (-1 or out of range) is scored with the unknown ID
    unknown = model.item_vectors(emb, torch.tensor([-1, 99]))
    also_unknown = model.item_vectors(emb, torch.tensor([5, 5]))
    torch.testing.assert_close(unknown, also_unknown)
    assert not torch.allclose(model.item_vectors(emb, torch.tensor([0, 1])), unknown)
    batch = {"user_emb": torch.randn(4, 4), "user_extra": torch.randn(4, 2),
             "user_idx": torch.tensor([0, 1, 2, 0]), "item_emb": torch.randn(4, 4),
             "item_idx": torch.tensor([0, 1, 2, 3])}
    # id_dropout=1: in training every item is its unknown ID, so item ID rows get no gradient
    model.train()
    model.loss(batch).backward()
    assert model.item_ids.weight.grad[:5].abs().sum() == 0
    assert model.item_ids.weight.grad[5].abs().sum() > 0
    assert model.user_ids.weight.grad[:3].abs().sum() == 0 and model.user_ids.weight.grad[3].abs().sum() > 0
    # a brand-new user (no index) is scored with the unknown user ID
    model.eval()
    new = model.user_vectors(batch["user_emb"][:1], batch["user_extra"][:1])
    torch.testing.assert_close(new, model.user_vectors(batch["user_emb"][:1], batch["user_extra"][:1],
                                                       torch.tensor([-1])))
    scores = model.eval().score(batch["user_emb"], batch["item_emb"], batch["user_extra"],
                                batch["user_idx"], batch["item_idx"])
    assert scores.shape == (4, 4)


def test_residual_ids_leave_unseen_items_their_text_vector_and_text_aux_adds_a_loss():
    torch.manual_seed(0)
    kw = dict(user_dim=4, item_dim=4, hidden_dim=8, out_dim=3, dropout=0.0, temperature=0.1,
              n_users=3, n_items=5, id_dropout=0.0, id_mode="residual")
    model = TwoTower(**kw).eval()
    emb = torch.randn(2, 4)
    text_only = torch.nn.functional.normalize(model.item_tower(emb), dim=-1)
    # an unseen item (the unknown ID) is exactly its text vector; so is a known one at init (E = 0)
    torch.testing.assert_close(model.item_vectors(emb, torch.tensor([-1, -1])), text_only)
    with torch.no_grad():
        model.item_ids.weight[0] += 1.0
    assert not torch.allclose(model.item_vectors(emb, torch.tensor([0, 0])), text_only)
    assert model.item_ids.weight[5].abs().sum() == 0  # the unknown row stays zero
    batch = {"user_emb": torch.randn(4, 4), "user_idx": torch.tensor([0, 1, 2, 0]),
             "item_emb": torch.randn(4, 4), "item_idx": torch.tensor([0, 1, 2, 3])}
    torch.manual_seed(1)
    plain = TwoTower(**kw).train()
    torch.manual_seed(1)
    aux = TwoTower(**{**kw, "text_aux": 0.5}).train()
    # at init the ID rows are 0: the text-only loss equals the main one, so aux = 1.5 x plain
    torch.testing.assert_close(aux.loss(batch), 1.5 * plain.loss(batch))


def test_id_indices_give_unknown_to_what_training_never_saw():
    from llmrec_ray.model_inputs import item_id_index, user_id_index

    vocab = {"users": ["u1", "u2"], "items": ["a", "b", "c"], "trained_items": ["a", "c"]}
    assert user_id_index(vocab, ["u2", "new", "u1"]).tolist() == [1, -1, 0]
    assert item_id_index(vocab, ["c", "b", "zzz", "a"]).tolist() == [2, -1, -1, 0]
