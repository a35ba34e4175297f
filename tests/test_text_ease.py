"""text_ease (`models/text_ease.py`): EASE with the item text as pseudo-users, on toy data with a
known answer: no text weight is EASE exactly; a cold item is reached through its text twin; the
text graph keeps only the top neighbours; the fitted arrays round-trip for serving."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from llmrec_ray.artifacts import MODEL_FILE, load_blend, save_blend
from llmrec_ray.baselines import EASE
from llmrec_ray.models.text_ease import TextEASE, text_graph
from llmrec_ray.recommender import FitData, Queries

# users 0-3 consume items {0, 1}, users 4-7 items {2, 3}; item 4 has no interaction (cold)
X = csr_matrix(np.array([[1, 1, 0, 0, 0]] * 4 + [[0, 0, 1, 1, 0]] * 4, dtype=np.float32))
USERS = [f"u{u}" for u in range(8)]
ITEMS = ["i0", "i1", "i2", "i3", "cold"]
# text: the cold item is a near twin of item 0; items 2 and 3 are about something else
TEXT = np.array([[1, 0, 0], [0.7, 0.7, 0], [0, 0, 1], [0, 0.2, 1], [0.99, 0.05, 0]], np.float32)


def data():
    return FitData(X, USERS, ITEMS, item_text=TEXT)


def queries(histories):
    rows = [[ITEMS.index(i) for i in h] for h in histories]
    m = np.zeros((len(rows), len(ITEMS)), np.float32)
    for q, r in enumerate(rows):
        m[q, r] = 1
    return Queries(csr_matrix(m), np.full(len(rows), -1), {})


def test_without_text_it_is_ease():
    q = queries([["i0"], ["i2", "i3"]])
    np.testing.assert_allclose(TextEASE(l2=5.0, text_weight=0.0).fit(data()).score(q),
                               EASE(l2=5.0).fit(data()).score(q), atol=1e-6)


def test_a_cold_item_is_reached_through_its_text_twin():
    """A user of item 0: EASE gives the cold item 0, text_ease ranks it above the other
    community's items, through its text twin, more the larger the text weight; item 1, which
    co-occurs with item 0, stays first."""
    q = queries([["i0"]])
    ease = EASE(l2=5.0).fit(data()).score(q)[0]
    assert ease[4] == 0.0
    cold = []
    for w in (0.1, 0.5, 1.0):
        s = TextEASE(l2=5.0, text_weight=w, neighbors=1).fit(data()).score(q)[0]
        assert s[1] > s[4] > max(s[2], s[3])
        cold.append(s[4])
    assert cold == sorted(cold)


def test_text_graph_keeps_the_top_neighbours_only():
    g = text_graph(TEXT, neighbors=1)  # T'T of pseudo-users: self 1 + one neighbour each
    t = np.zeros((5, 5))
    v = TEXT - TEXT.mean(0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    for j in range(5):
        t[j, j] = 1.0
        nb = int(np.argmax(sim[j]))
        if sim[j, nb] > 0:
            t[j, nb] = sim[j, nb]
    np.testing.assert_allclose(g, t.T @ t, atol=1e-5)
    assert g[4, 0] > 0 and g[4, 2] == 0  # the twin tied, the other topic not


def test_needs_text_vectors():
    with pytest.raises(ValueError, match="text vectors"):
        TextEASE().fit(FitData(X, USERS, ITEMS))


def test_served_alone_round_trips(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / MODEL_FILE).write_bytes(b"weights")
    rec = TextEASE(l2=5.0, text_weight=0.5, neighbors=2).fit(data())
    save_blend(tmp_path, rec, ITEMS)
    back = load_blend(tmp_path, object(), ITEMS)
    assert isinstance(back, TextEASE) and back.params == rec.params
    q = queries([["i1"], ["i2"]])
    np.testing.assert_allclose(back.score(q), rec.score(q), atol=0)
