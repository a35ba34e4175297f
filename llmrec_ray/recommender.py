"""One interface for every recommender the project fits, evaluates, serves and exports.

The shape is RecBole's: `fit` on the training interactions, `loss` on a batch (models trained by
gradient descent), `score` a block of queries against every item, `export` the vectors a serving
system keeps. Evaluation, validation, recommendation and export call only these, so they never
branch on a model's internals.

A query is a user at a moment. `Queries` carries everything any recommender may use to score it:
the items the user interacted with before the query (`history`, a CSR matrix over the item
vocabulary: what a history-based model such as EASE or item-KNN scores from, what ALS folds in),
the user's row in the fitted vocabulary (-1 for a user the fit rows never saw), and the LLM
features as of the query time from Feast (`features`: `user_emb` (Q, D), `user_extra`, and the
item side `item_emb` (I, D)). `score(queries, rows)` returns the (len(rows), I) scores of a block
of queries; callers rank blocks of `QUERY_CHUNK` queries, never a (Q, I) matrix at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QUERY_CHUNK = 1024  # queries scored at a time: (chunk, I) scores, never (Q, I)
ITEM_FEATURES = ("item_emb", "item_idx")  # per item, not per query: kept whole in a block


@dataclass
class FitData:
    """The training interactions: `matrix` a binary CSR (users x items) over `users` x `items`,
    `trained_items` the items with at least one training interaction; `item_text` (I, D) the
    items' LLM text vectors from Feast, for the models that read them (`uses_text`)."""

    matrix: object
    users: list[str]
    items: list[str]
    seed: int = 0
    item_text: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def cached(self, key: str, compute):
        """`compute()` once per key: statistics of the matrix that every point of a
        hyperparameter grid shares (EASE's eigendecomposition, item-KNN's similarities)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def trained_items(self) -> np.ndarray:
        return np.asarray(self.matrix.sum(axis=0)).ravel() > 0


@dataclass
class Queries:
    """What a block of ranking queries carries (see the module docstring). `history` is a binary
    CSR (Q x I); `user_rows` (Q,) int64 rows of the fitted users, -1 for unknown; `features`
    numpy arrays: per query `user_emb`, `user_extra`, `user_idx`; per item (`ITEM_FEATURES`)
    `item_emb`, `item_idx`."""

    history: object
    user_rows: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.history.shape[0]

    def take(self, rows: slice) -> "Queries":
        part = {k: (v if k in ITEM_FEATURES else v[rows]) for k, v in self.features.items()}
        return Queries(self.history[rows], self.user_rows[rows], part)


class Recommender:
    """Base class. Subclasses set `name`, take their hyperparameters as keyword arguments (stored
    in `params`, reported with the results), and implement `fit` and `score`."""

    name = "recommender"
    uses_text = False  # True: an LLM-feature model (reads the text vectors), not an interaction-only peer

    def __init__(self, **params):
        self.params = params

    def fit(self, data: FitData) -> "Recommender":
        raise NotImplementedError

    def loss(self, batch: dict):
        """The training loss on one batch (models trained by gradient descent)."""
        raise NotImplementedError(f"{self.name} is not trained by batches")

    def score(self, queries: Queries) -> np.ndarray:
        """(len(queries), I) scores, higher is better."""
        raise NotImplementedError

    def export(self) -> dict[str, np.ndarray]:
        """The item vectors (and whatever else) a serving system keeps; empty when the model has
        no vectors (popularity, EASE, item-KNN score from the history directly)."""
        return {}

    def top_k(self, queries: Queries, mask, k: int) -> np.ndarray:
        """(Q, k) best items of every query, masked items excluded, scored QUERY_CHUNK at a time.
        `mask[rows]` is the (rows, I) bool block (True = excluded) of a slice of queries: a dense
        array, or `model_inputs.QueryMask`, which builds each block when asked."""
        from llmrec_ray.metrics import top_k

        out = np.full((len(queries), k), -1, dtype=np.int64)
        for lo in range(0, len(queries), QUERY_CHUNK):
            rows = slice(lo, lo + QUERY_CHUNK)
            out[rows] = top_k(self.score(queries.take(rows)), mask[rows], k)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


class ItemItem(Recommender):
    """A model that scores by one (I, I) item-item matrix `b`: score = history @ b (EASE and its
    kin). The matrix is what a server keeps (`state`, `restore`: `artifacts.save_blend`)."""

    b: np.ndarray
    max_items = 50_000  # a dense (I, I) matrix beyond this would not fit

    def check_size(self, data: FitData) -> None:
        n_items = data.matrix.shape[1]
        if n_items > self.max_items:
            raise ValueError(f"{self.name}: {n_items} items needs a dense {n_items}^2 matrix; "
                             f"above max_items={self.max_items}, leave {self.name} out of "
                             "evaluate.baselines")

    def score(self, queries: Queries) -> np.ndarray:
        return np.asarray(queries.history @ self.b)

    def state(self) -> dict[str, np.ndarray]:
        return {"b": self.b}

    @classmethod
    def restore(cls, params: dict, arrays: dict) -> "ItemItem":
        rec = cls(**params)
        rec.b = np.asarray(arrays["b"], dtype=np.float32)
        return rec


class TrainedModel(Recommender):
    """A trained torch model (two-tower, hybrid, graph) as a `Recommender`: the model scores
    `Queries` itself (`score_queries`), on its own device, without gradients."""

    def __init__(self, model):
        super().__init__(**{k: v for k, v in model.hparams.items()
                            if not isinstance(v, (list, tuple)) and v is not None})
        self.model = model
        self.name = model.kind
        self.uses_text = True

    def fit(self, data: FitData) -> "TrainedModel":
        raise NotImplementedError("trained models are fitted with Ray Train: `llmrec train`")

    def loss(self, batch: dict):
        return self.model.loss(batch)

    def score(self, queries: Queries) -> np.ndarray:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return self.model.score_queries(queries).float().cpu().numpy()
        finally:
            self.model.train(was_training)

    def export(self) -> dict[str, np.ndarray]:
        return {}

    def text_vectors(self, item_emb: np.ndarray) -> np.ndarray | None:
        """(I, D) the model's learned projection of the item text vectors (its text-only item
        path), or None for a model without one."""
        import torch

        if not hasattr(self.model, "text_vectors"):
            return None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                dev = next(self.model.parameters()).device
                out = self.model.text_vectors(torch.as_tensor(np.array(item_emb), device=dev)).float().cpu().numpy()
                out[~has_text(item_emb)] = 0.0  # no text in, no text vector out (not the tower's bias)
                return out
        finally:
            self.model.train(was_training)


def has_text(item_emb: np.ndarray) -> np.ndarray:
    """(I,) bool: the item has a text vector; an item with no text at all carries the zero vector
    (build.feature_tables), which no model may read as one shared text."""
    return np.any(np.asarray(item_emb) != 0, axis=1)


def standardize(scores: np.ndarray) -> np.ndarray:
    """Each row to mean 0, standard deviation 1 (a constant row to 0): scores of different
    models on one scale."""
    s = np.asarray(scores, dtype=np.float32)
    mean = s.mean(axis=1, keepdims=True)
    std = s.std(axis=1, keepdims=True)
    return (s - mean) / np.where(std > 0, std, 1.0)


class Blend(Recommender):
    """`(1 - weight) * z(a) + weight * z(b)`, z standardizing each query's scores over all
    items: e.g. the trained LLM-feature model with the best collaborative-filtering peer. The
    weight is chosen on the validation queries like any hyperparameter (`evaluate.blend_weights`).
    Items outside `b_items` (a boolean mask: e.g. items without training interactions, of which
    an interaction model knows nothing) are scored by `z(a)` alone, so cold items keep the
    standing the feature model gives them, plus `cold_boost` (in standard deviations of the
    query's scores): how much exposure new items get, chosen on validation within an accuracy
    budget (`evaluate.tune_blend`)."""

    def __init__(self, a: Recommender, b: Recommender, weight: float = 0.5,
                 b_items: np.ndarray | None = None, cold_boost: float = 0.0):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"blend weight {weight} is outside [0, 1]")
        if cold_boost and b_items is None:
            raise ValueError("a cold_boost needs the items the peer scores (b_items)")
        extra = {"cold_boost": cold_boost} if cold_boost else {}
        super().__init__(weight=weight, **extra, **{f"{b.name}.{k}": v for k, v in b.params.items()})
        self.a, self.b, self.weight, self.cold_boost = a, b, weight, cold_boost
        self.b_items = None if b_items is None else np.asarray(b_items, dtype=bool)
        self.name = f"{a.name}+{b.name}"

    def fit(self, data: FitData) -> "Blend":
        return self  # both parts come fitted

    def score(self, queries: Queries) -> np.ndarray:
        w = self.weight
        za = standardize(self.a.score(queries))
        out = (1.0 - w) * za + w * standardize(self.b.score(queries))
        if self.b_items is not None:
            out[:, ~self.b_items] = za[:, ~self.b_items] + self.cold_boost
        return out


def metric_on(rec: Recommender, valid: dict, metric: str) -> float:
    """`metric` (e.g. "ndcg@20") of `rec` on prepared validation queries ({queries, mask,
    truth}: `model_inputs.validation_data`)."""
    from llmrec_ray.metrics import ranking_metrics

    k = int(metric.split("@")[1])
    return ranking_metrics(rec.top_k(valid["queries"], valid["mask"], k), valid["truth"], [k])[metric]
