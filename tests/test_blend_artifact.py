"""The served blend (`artifacts.save_blend` / `load_blend`): the peer's fitted arrays round-trip
exactly (EASE, item-KNN), a blend is tied to the checkpoint it was tuned with and to the item order,
and peers without state are not kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from llmrec_ray.artifacts import BLEND_FILE, MODEL_FILE, load_blend, save_blend
from llmrec_ray.baselines import EASE, FitData, ImplicitALS, ItemKNN
from llmrec_ray.recommender import Blend, Queries, Recommender

ITEMS = ["a", "b", "c", "d", "e"]
X = csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0]],
                        dtype=np.float32))  # item e: no training interaction


class Fixed(Recommender):
    """The "trained model": fixed scores."""
    name = "fixed"

    def score(self, queries):
        return np.tile(np.array([0.1, 0.5, 0.2, 0.9, 0.4], np.float32), (len(queries), 1))


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / MODEL_FILE).write_bytes(b"weights v1")
    return tmp_path


def queries():
    return Queries(csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 1, 1, 0]], np.float32)),
                   np.array([0, 2]), {})


@pytest.mark.parametrize("peer", [EASE(l2=1.0), ItemKNN(neighbors=2)])
def test_blend_round_trips_exactly(run_dir, peer):
    data = FitData(X, ["u0", "u1", "u2", "u3"], ITEMS)
    blend = Blend(Fixed(), peer.fit(data), 0.25, data.trained_items, cold_boost=0.5)
    assert save_blend(run_dir, blend, ITEMS) == run_dir / "model" / BLEND_FILE
    back = load_blend(run_dir, Fixed(), ITEMS)
    assert back.name == f"fixed+{peer.name}" and back.weight == 0.25 and back.b.params == peer.params
    assert back.cold_boost == 0.5
    np.testing.assert_array_equal(back.b_items, [True, True, True, True, False])
    np.testing.assert_allclose(back.score(queries()), blend.score(queries()), rtol=0, atol=1e-6)


def test_blend_of_another_checkpoint_or_item_order_is_an_error(run_dir):
    data = FitData(X, ["u0", "u1", "u2", "u3"], ITEMS)
    save_blend(run_dir, Blend(Fixed(), ItemKNN(neighbors=2).fit(data), 0.5), ITEMS)
    with pytest.raises(ValueError, match="items differ"):
        load_blend(run_dir, Fixed(), ITEMS[::-1])
    (run_dir / "model" / MODEL_FILE).write_bytes(b"weights v2")
    with pytest.raises(ValueError, match="another checkpoint"):
        load_blend(run_dir, Fixed(), ITEMS)


def test_no_blend_file_and_stateless_peers_serve_the_model(run_dir):
    assert load_blend(run_dir, Fixed(), ITEMS) is None
    assert save_blend(run_dir, Blend(Fixed(), ImplicitALS(), 0.5), ITEMS) is None
    assert not (run_dir / "model" / BLEND_FILE).exists()


def test_a_new_checkpoint_removes_the_old_blend(tmp_path):
    from llmrec_ray.artifacts import save_model

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / BLEND_FILE).write_bytes(b"old")
    save_model({"state_dict": {}, "hparams": {}}, "two_tower", {"users": [], "items": []}, tmp_path)
    assert not (tmp_path / "model" / BLEND_FILE).exists()
