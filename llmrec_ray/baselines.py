"""The peers every model is compared with in the same run, fitted on the same training rows and
scored the same way (full ranking), each one a `Recommender`:

- `popularity`: training interaction counts.
- `ease`: EASE (Steck, WWW 2019), the closed-form item-item linear autoencoder; `l2` is its lambda.
- `item_knn`: item-based kNN, cosine between item columns, each item's `neighbors` most similar
  items kept.
- `implicit_als`: the `implicit` library's ALS on the binary matrix (confidence `alpha`); a query's
  user factors are recomputed from its history (implicit's `recalculate_user`, the fold-in a
  serving system does), so users who arrived after the fit are served too.
- `bpr`: the `implicit` library's BPR matrix factorisation (one sampled negative per positive);
  users the fit never saw score 0.
- `zero_shot_cosine`: no training, cosine between the LLM user and item vectors.

EASE, item-KNN and ALS score a query from the items the user interacted with before it, so they
see what the feature models see. Items without a training interaction (cold items) get nothing
from the interaction models: EASE and kNN give them 0, the factor models a zero vector.

Every baseline's few hyperparameters are chosen on the validation queries from a small grid
(`evaluate.grids`, `tune`), exactly as the feature models' epochs are.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.recommender import FitData, ItemItem, Queries, Recommender

logger = logging.getLogger(__name__)


def interaction_matrix(train: pa.Table, users: list[str], item_ids: list[str]):
    """Binary CSR matrix (U, I) of the training interactions (repeats count once; rows of users
    outside `users` are left out)."""
    from scipy.sparse import csr_matrix

    rows = pc.index_in(train.column("user_id"), value_set=pa.array(users, pa.string()))
    cols = pc.index_in(train.column("item_id"), value_set=pa.array(item_ids, pa.string()))
    if cols.null_count:
        raise ValueError(f"{cols.null_count} training rows name items outside the item table")
    keep = pc.is_valid(rows)
    r = pc.filter(rows, keep).to_numpy(zero_copy_only=False).astype(np.int64)
    c = pc.filter(cols, keep).to_numpy(zero_copy_only=False).astype(np.int64)
    m = csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(users), len(item_ids)))
    m.sum_duplicates()
    m.data[:] = 1.0  # duplicates summed by the constructor: binarise
    return m


def history_matrix(histories: list[list[str]], item_ids: list[str]):
    """Binary CSR (Q, I): each query's items before it."""
    from scipy.sparse import csr_matrix

    index = {i: k for k, i in enumerate(item_ids)}
    cols = [sorted({index[i] for i in h}) for h in histories]
    indptr = np.r_[0, np.cumsum([len(c) for c in cols])].astype(np.int64)
    indices = np.fromiter(itertools.chain.from_iterable(cols), np.int32, int(indptr[-1]))
    return csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                      shape=(len(histories), len(item_ids)))


class Popularity(Recommender):
    name = "popularity"

    def fit(self, data: FitData) -> "Popularity":
        self.counts = np.asarray(data.matrix.sum(axis=0)).ravel().astype(np.float32)
        return self

    def score(self, queries: Queries) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(queries), len(self.counts)))


class EASE(ItemItem):
    """B = argmin ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0: P = (X'X + l2 I)^-1,
    B = -P / diag(P), diag(B) = 0. Memory is items^2; `max_items` guards against a matrix that
    would not fit."""

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 50_000):
        super().__init__(l2=l2)
        self.max_items = max_items

    def fit(self, data: FitData) -> "EASE":
        self.check_size(data)
        # (eigenvalues, eigenvectors) of X'X: one decomposition for every l2 of a grid
        w, v = data.cached("ease_eigh", lambda: np.linalg.eigh(
            (data.matrix.T @ data.matrix).toarray().astype(np.float64)))
        p = (v / (w + self.params["l2"])) @ v.T  # (X'X + l2 I)^-1 from one eigendecomposition
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        self.b = b.astype(np.float32)
        return self



class ItemKNN(Recommender):
    """score(q, j) = sum over the query's history items i of sim(i, j), where sim is the cosine
    between item columns of the training matrix and each item j keeps its `neighbors` most
    similar items (`shrink` damps similarities of rarely co-consumed items)."""

    name = "item_knn"

    def __init__(self, neighbors: int = 100, shrink: float = 0.0):
        super().__init__(neighbors=neighbors, shrink=shrink)

    def fit(self, data: FitData) -> "ItemKNN":
        from scipy.sparse import csc_matrix

        def cosine():
            x = data.matrix.tocsc()
            co = (x.T @ x).toarray().astype(np.float32)
            norms = np.sqrt(np.diag(co))
            sim = co / (np.outer(norms, norms) + self.params["shrink"] + 1e-12)
            np.fill_diagonal(sim, 0.0)
            return sim

        sim = data.cached(f"item_knn_cosine_shrink={self.params['shrink']}", cosine)
        k = min(self.params["neighbors"], sim.shape[0] - 1)
        # keep, for every target item j (column), its k most similar items
        top = np.argpartition(-sim, k - 1, axis=0)[:k] if k > 0 else np.zeros((0, sim.shape[1]), int)
        cols = np.broadcast_to(np.arange(sim.shape[1]), top.shape)
        self.sim = csc_matrix((sim[top, cols].ravel(), (top.ravel(), cols.ravel())), shape=sim.shape).tocsr()
        return self

    def score(self, queries: Queries) -> np.ndarray:
        return np.asarray((queries.history @ self.sim).todense())

    def state(self) -> dict[str, np.ndarray]:
        """The fitted arrays a server keeps (`artifacts.save_blend`); `restore` inverts it."""
        return {"data": self.sim.data, "indices": self.sim.indices, "indptr": self.sim.indptr,
                "shape": np.asarray(self.sim.shape, dtype=np.int64)}

    @classmethod
    def restore(cls, params: dict, arrays: dict) -> "ItemKNN":
        from scipy.sparse import csr_matrix

        rec = cls(**params)
        rec.sim = csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                             shape=tuple(int(n) for n in arrays["shape"]))
        return rec


def _implicit():
    try:
        import implicit  # noqa: F401
    except ImportError as e:
        raise ImportError("the implicit_als and bpr baselines need the `implicit` package: "
                          "pip install 'llmrec-ray[als]'") from e
    from threadpoolctl import threadpool_limits

    return threadpool_limits


class ImplicitALS(Recommender):
    name = "implicit_als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 15,
                 alpha: float = 1.0):
        super().__init__(factors=factors, regularization=regularization, iterations=iterations,
                         alpha=alpha)

    def fit(self, data: FitData) -> "ImplicitALS":
        limits = _implicit()
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        with limits(1, "blas"):  # implicit's advice: its own threads, single-threaded BLAS
            self.model = AlternatingLeastSquares(factors=p["factors"], regularization=p["regularization"],
                                                 iterations=p["iterations"], random_state=data.seed,
                                                 calculate_training_loss=False)
            self.model.fit((data.matrix * p["alpha"]).tocsr(), show_progress=False)
        return self

    def user_factors(self, queries: Queries) -> np.ndarray:
        limits = _implicit()
        with limits(1, "blas"):
            return np.asarray(self.model.recalculate_user(
                np.arange(len(queries)), (queries.history * self.params["alpha"]).tocsr()))

    def score(self, queries: Queries) -> np.ndarray:
        return self.user_factors(queries) @ np.asarray(self.model.item_factors).T

    def export(self) -> dict[str, np.ndarray]:
        return {"item_vectors": np.asarray(self.model.item_factors)}


class BPR(Recommender):
    name = "bpr"

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100):
        super().__init__(factors=factors, learning_rate=learning_rate, regularization=regularization,
                         iterations=iterations)

    def fit(self, data: FitData) -> "BPR":
        limits = _implicit()
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        p = self.params
        with limits(1, "blas"):
            self.model = BayesianPersonalizedRanking(
                factors=p["factors"], learning_rate=p["learning_rate"],
                regularization=p["regularization"], iterations=p["iterations"],
                random_state=data.seed)
            self.model.fit(data.matrix.tocsr(), show_progress=False)
        items = np.asarray(self.model.item_factors).copy()
        items[~data.trained_items] = 0.0  # never trained: no signal
        self.items = items
        self.users = np.asarray(self.model.user_factors)
        return self

    def score(self, queries: Queries) -> np.ndarray:
        rows = queries.user_rows
        users = np.zeros((len(rows), self.users.shape[1]), np.float32)
        users[rows >= 0] = self.users[rows[rows >= 0]]
        return users @ self.items.T

    def export(self) -> dict[str, np.ndarray]:
        return {"item_vectors": self.items}


class ZeroShotCosine(Recommender):
    """Cosine between LLM user and item vectors: what the features give before any training."""

    name = "zero_shot_cosine"
    uses_text = True

    def fit(self, data: FitData) -> "ZeroShotCosine":
        return self

    def score(self, queries: Queries) -> np.ndarray:
        u, v = queries.features["user_emb"], queries.features["item_emb"]
        u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return u @ v.T


from llmrec_ray.models.text_ease import TextEASE  # noqa: E402  (fitted and tuned like the peers)

BASELINES: dict[str, type[Recommender]] = {c.name: c for c in (
    Popularity, EASE, ItemKNN, ImplicitALS, BPR, ZeroShotCosine, TextEASE)}
NEEDS_IMPLICIT = ("implicit_als", "bpr")

# The grids tuned on the validation queries by default: a few values each, wide enough for
# datasets of other sizes (EASE's lambda grows with the interaction counts).
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "ease": {"l2": [10.0, 50.0, 200.0, 500.0, 1000.0, 3000.0]},
    "item_knn": {"neighbors": [20, 50, 100, 200, 500]},
    "implicit_als": {"factors": [32, 64, 128], "regularization": [0.01, 0.1, 1.0]},
    "bpr": {"factors": [64], "learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01]},
    "text_ease": {"l2": [50.0, 200.0, 500.0, 1000.0], "text_weight": [0.1, 0.3, 1.0, 3.0],
                  "neighbors": [50, 200]},
}


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of a grid ({} -> one point with the defaults)."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def tune(name: str, grid: dict[str, list], data: FitData, score_fn,
         on_point=None) -> tuple[Recommender, list[dict]]:
    """Fit `name` at every point of `grid` on `data`; keep the point with the best
    `score_fn(recommender)` (the validation metric; ties go to the earlier point). Returns the
    fitted best and the trials [{params..., "value": v}], the chosen one marked `"chosen": True`.
    Without a validation score (`score_fn` None) the first point is used. `on_point(i, n)` is
    called before each point is fitted (progress)."""
    cls = BASELINES[name]
    points = grid_points(grid)
    best, best_value, trials, chosen = None, -np.inf, [], 0
    for i, point in enumerate(points):  # EASE and kNN share their O(I^2) statistics (`data.cached`)
        if on_point is not None:
            on_point(i, len(points))
        rec = cls(**point).fit(data)
        value = score_fn(rec) if score_fn is not None and len(points) > 1 else None
        trials.append({**point, "value": value})
        if value is None:
            best = rec
            break
        if value > best_value + 1e-12:
            best, best_value, chosen = rec, value, len(trials) - 1
    trials[chosen]["chosen"] = True
    if len(trials) > 1:
        logger.info("%s tuned on validation: %s", name,
                    ", ".join(f"{t}" for t in trials))
    return best, trials
