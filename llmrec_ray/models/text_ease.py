"""EASE whose item-item Gram matrix also sees the items' LLM text: a closed-form model with side
information (Jeunen, Van Balen and Goethals, "Closed-Form Models for Collaborative Filtering with
Side-Information", RecSys 2020, collective EASE).

The text enters as weighted pseudo-users, one per item: pseudo-user j "consumed" item j and its
`neighbors` nearest items by cosine of the centred text vectors, each with that similarity
(negative similarities dropped). With X the (U, I) interactions and T the (I, I) pseudo-users,

    B = argmin ||X - XB||^2 + w ||T - TB||^2 + l2 ||B||^2,  diag(B) = 0
    P = (X'X + w T'T + l2 I)^-1,  B = -P / diag(P)

`text_weight` is w relative to the interactions: T'T is scaled to X'X's trace, so 1 gives the text
graph as much weight as every interaction together, whatever the data's size. Only the top
neighbours are kept: raw sentence vectors are similar to everything a little, and that dense
noise would swamp the co-occurrences. An item without training interactions (a cold item) is
tied to its text neighbours, so it gets scores from a user's history through them.

The text vectors (`FitData.item_text`) come from the item features in Feast that every model
reads; `evaluate` passes them through the trained model's learned projection of the text (its
text-only item path, `TrainedModel.text_vectors`: trained on the interactions, so neighbours in it
are items the same users take) when the model has one, and raw otherwise.
"""

from __future__ import annotations

import numpy as np

from llmrec_ray.recommender import FitData, ItemItem, has_text


def text_graph(item_text: np.ndarray, neighbors: int) -> np.ndarray:
    """(I, I) T'T of the text pseudo-users: T[j] = 1 at j, cos(j, i) at j's `neighbors` most
    similar items i (centred, L2-normalised text vectors; negatives dropped). An item without
    text (a zero row) has no neighbours and is nobody's neighbour."""
    from scipy.sparse import csr_matrix

    v = np.asarray(item_text, dtype=np.float32)
    text = has_text(v)
    if text.any():
        v = v - v[text].mean(axis=0, keepdims=True)
    v[~text] = 0.0
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    n = len(v)
    k = min(neighbors, n - 1)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.ones(n, np.float32)]
    for lo in range(0, n, 2048):  # (block, I) similarities at a time
        sim = v[lo:lo + 2048] @ v.T  # (b, I)
        b = len(sim)
        sim[np.arange(b), lo + np.arange(b)] = -np.inf  # not its own neighbour
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((b, 0), int)
        s = np.take_along_axis(sim, top, axis=1)
        keep = s > 0
        rows.append(np.repeat(lo + np.arange(b), k)[keep.ravel()])
        cols.append(top.ravel()[keep.ravel()])
        vals.append(s.ravel()[keep.ravel()])
    t = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return (t.T @ t).toarray().astype(np.float64)


class TextEASE(ItemItem):
    """EASE with the LLM item text as weighted pseudo-users (module docstring). Hyperparameters:
    `l2` (EASE's lambda), `text_weight` (the text graph's weight against the interactions),
    `neighbors` (text neighbours kept per item); chosen on the validation queries."""

    name = "text_ease"
    uses_text = True  # an LLM-feature model, not an interaction-only peer

    def __init__(self, l2: float = 500.0, text_weight: float = 0.3, neighbors: int = 20,
                 max_items: int = 50_000):
        super().__init__(l2=l2, text_weight=text_weight, neighbors=neighbors)
        self.max_items = max_items

    def fit(self, data: FitData) -> "TextEASE":
        self.check_size(data)
        if data.item_text is None:
            raise ValueError("text_ease needs the items' text vectors (FitData.item_text)")
        p = self.params
        gram = data.cached("ease_gram", lambda: (data.matrix.T @ data.matrix).toarray().astype(np.float64))
        g = gram.copy()
        if p["text_weight"] > 0:
            tt = data.cached(f"text_graph_{p['neighbors']}", lambda: text_graph(data.item_text, p["neighbors"]))
            g += p["text_weight"] * (np.trace(gram) / np.trace(tt)) * tt
        g[np.diag_indices_from(g)] += p["l2"]
        inv = np.linalg.inv(g)  # (I, I)
        b = -inv / np.diag(inv)
        np.fill_diagonal(b, 0.0)
        self.b = b.astype(np.float32)
        return self
