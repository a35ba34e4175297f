"""Two-tower model (llmrec_ray.models.two_tower): scores from fixed weights, the in-batch loss
against hand-computed values, learning on a toy problem, the hybrid ID rows, the checkpoint."""

from __future__ import annotations

import io
import math

import pytest
import torch

from llmrec_ray.models.two_tower import TwoTower

# internal helpers (they move between modules while the library is refactored: repoint here)
from llmrec_ray.artifacts import build_model
from llmrec_ray.models.vocab import item_id_index, user_id_index


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
    # a cosine over a temperature of 0.1: |score| <= 10
    assert scores.abs().max() <= 10 + 1e-5


def test_scores_of_known_pairs_from_fixed_weights():
    """Both towers set by hand (Linear -> GELU -> Linear, 2-d): the score of a user and three
    items worked out on paper."""
    model = TwoTower(user_dim=2, item_dim=2, hidden_dim=2, out_dim=2, dropout=0.0,
                     temperature=0.5).eval()
    eye, swap, zero = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.zeros(2)
    with torch.no_grad():
        for tower, second in ((model.user_tower, eye), (model.item_tower, swap)):
            tower[0].weight.copy_(eye)
            tower[0].bias.copy_(zero)
            tower[3].weight.copy_(second)
            tower[3].bias.copy_(zero)
    # GELU(x) = x * Phi(x): GELU(1) = 0.841345, GELU(-1) = -0.158655, GELU(0) = 0.
    # user (0, 1): GELU -> (0, 0.841345), identity -> normalized (0, 1).
    # item (1, -1): GELU -> (0.841345, -0.158655), swapped -> (-0.158655, 0.841345);
    #   norm sqrt(0.025171 + 0.707861) = 0.856173 -> (-0.185307, 0.982681); cosine 0.982681
    #   -> score 0.982681 / 0.5 = 1.965361
    # item (1, 1): GELU -> (0.841345, 0.841345) -> normalized (0.707107, 0.707107) -> 1.414214
    # item (-1, 0): GELU -> (-0.158655, 0), swapped -> (0, -0.158655) -> (0, -1) -> -1 / 0.5 = -2
    user = torch.tensor([[0.0, 1.0]])
    items = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 0.0]])
    with torch.no_grad():
        got = model.score(user, items)
    assert got.tolist()[0] == pytest.approx([1.965361, 1.414214, -2.0], abs=1e-5)


# Unit vectors; temperature 0.5.
U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
# logits = U @ V.T / 0.5:
#   row 0: [1, 0, 0.8]    / 0.5 = [2.0, 0.0, 1.6]
#   row 1: [0, 1, 0.6]    / 0.5 = [0.0, 2.0, 1.2]
#   row 2: [0.6, 0.8, 0.96] / 0.5 = [1.2, 1.6, 1.92]
# cross-entropy with label i for row i: loss_i = -logit_ii + log(sum_j exp(logit_ij))


def lse(*xs: float) -> float:
    """log-sum-exp (the logq test's reference)."""
    return math.log(sum(math.exp(x) for x in xs))


def test_loss_hand_computed_distinct_items():
    model = model_with_identity_towers(0.5)
    loss = model.loss({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])})
    # row 0: -2.0  + log(e^2.0 + e^0.0 + e^1.6)  = -2.0  + log(7.389056 + 1 + 4.953032)  = 0.590924
    # row 1: -2.0  + log(e^0.0 + e^2.0 + e^1.2)  = -2.0  + log(1 + 7.389056 + 3.320117)  = 0.460373
    # row 2: -1.92 + log(e^1.2 + e^1.6 + e^1.92) = -1.92 + log(3.320117 + 4.953032 + 6.820958)
    #                                            = 0.794304
    # mean: (0.590924 + 0.460373 + 0.794304) / 3 = 0.615200
    assert loss.item() == pytest.approx(0.615200, abs=1e-5)
    # forward is the loss
    assert model({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([0, 1, 2])}).item() == \
        pytest.approx(0.615200, abs=1e-5)


def test_loss_masks_other_copies_of_the_same_item():
    model = model_with_identity_towers(0.5)
    # rows 0 and 2 share item 7: row 0's logit at column 2 and row 2's at column 0 become -inf
    loss = model.loss({"user_emb": U, "item_emb": V, "item_idx": torch.tensor([7, 3, 7])})
    # row 0: [2.0, 0.0, -inf]:   -2.0  + log(7.389056 + 1)        = 0.126928
    # row 1: unchanged:                                            0.460373
    # row 2: [-inf, 1.6, 1.92]:  -1.92 + log(4.953032 + 6.820958) = 0.545893
    # mean: (0.126928 + 0.460373 + 0.545893) / 3 = 0.377731
    assert loss.item() == pytest.approx(0.377731, abs=1e-5)
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
    # id_dropout=0: the opposite, the batch's own ID rows learn and the unknown rows get nothing
    torch.manual_seed(0)
    kept = TwoTower(user_dim=4, item_dim=4, hidden_dim=8, out_dim=3, dropout=0.0, temperature=0.1,
                    user_extra_dim=2, n_users=3, n_items=5, id_dim=2, id_dropout=0.0).train()
    kept.loss(batch).backward()
    item_grad = kept.item_ids.weight.grad.abs().sum(dim=1)
    assert (item_grad[:4] > 0).all() and item_grad[4] == 0 and item_grad[5] == 0  # item 4: not in the batch
    user_grad = kept.user_ids.weight.grad.abs().sum(dim=1)
    assert (user_grad[:3] > 0).all() and user_grad[3] == 0
    # eval never drops IDs: with id_dropout=1 two known items still get their own vectors
    model.eval()
    assert not torch.allclose(*model.item_vectors(torch.zeros(2, 4), torch.tensor([0, 1])))
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
    vocab = {"users": ["u1", "u2"], "items": ["a", "b", "c"], "trained_items": ["a", "c"]}
    assert user_id_index(vocab, ["u2", "new", "u1"]).tolist() == [1, -1, 0]
    assert item_id_index(vocab, ["c", "b", "zzz", "a"]).tolist() == [2, -1, -1, 0]


def test_checkpoint_round_trip_scores_the_same():
    """The served checkpoint (hyperparameters + weights, saved and loaded weights-only) rebuilds
    a hybrid model that scores exactly like the trained one; logQ is a training-only correction
    and does not travel."""
    torch.manual_seed(0)
    model = TwoTower(user_dim=4, item_dim=4, hidden_dim=8, out_dim=3, dropout=0.0, temperature=0.1,
                     user_extra_dim=2, n_users=3, n_items=5, id_dim=2, id_dropout=0.5,
                     logq=[math.log(0.2)] * 5)
    batch = {"user_emb": torch.randn(4, 4), "user_extra": torch.randn(4, 2),
             "user_idx": torch.tensor([0, 1, 2, -1]), "item_emb": torch.randn(4, 4),
             "item_idx": torch.tensor([0, 1, 2, 3])}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):  # move the weights away from their initialisation
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "hparams": model.hparams}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    torch.manual_seed(1)  # a different initialisation: everything must come from the checkpoint
    loaded = build_model("two_tower", saved["hparams"])
    loaded.load_state_dict(saved["state_dict"])
    model.eval(), loaded.eval()
    args = (batch["user_emb"], batch["item_emb"], batch["user_extra"], batch["user_idx"], batch["item_idx"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(*args), model.score(*args), rtol=0, atol=0)
    assert loaded.hybrid and loaded.logq.numel() == 0


def test_text_vectors_are_the_item_path_with_the_unknown_id():
    """What text_ease reads as the item text when the trained model offers it: the item tower on
    the text alone (unknown ID), unit vectors; a model without the method gives None."""
    import numpy as np

    from llmrec_ray.recommender import TrainedModel

    torch.manual_seed(0)
    m = TwoTower(user_dim=6, item_dim=6, hidden_dim=8, out_dim=4, n_users=3, n_items=5)
    emb = torch.randn(5, 6)
    got = TrainedModel(m).text_vectors(emb.numpy())
    m.eval()
    want = m.item_vectors(emb, torch.full((5,), -1, dtype=torch.long)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # not the warm path: a known ID changes the vector
    assert not np.allclose(got, m.item_vectors(emb, torch.arange(5)).detach().numpy())

    class NoText(torch.nn.Module):
        hparams, kind = {}, "no_text"

    assert TrainedModel(NoText()).text_vectors(emb.numpy()) is None
