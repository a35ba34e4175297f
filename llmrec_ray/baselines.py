"""Baselines fitted on the same training rows as the models, scored the same way (full ranking).

- `popularity`: training interaction counts.
- `bpr_mf`: ID-only matrix factorisation trained with BPR (one sampled negative per positive).
- `implicit_als`: the `implicit` library's ALS on the binary user x item matrix (what most users
  pick for implicit-feedback CF); optional, `pip install "llmrec-ray[als]"`.
- `zero_shot_cosine`: no training at all, cosine between the LLM user and item vectors.

Each returns a (U, I) score matrix for `users` x `item_ids`; an ID model gives items without
training interactions (cold-start items) a score of 0 factors, as those libraries do.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)


def interaction_matrix(train: pa.Table, users: list[str], item_ids: list[str]):
    """Binary CSR matrix (U, I) of the training interactions (repeats count once)."""
    from scipy.sparse import csr_matrix

    u_index = {u: k for k, u in enumerate(users)}
    i_index = {i: k for k, i in enumerate(item_ids)}
    rows = np.array([u_index.get(u, -1) for u in train.column("user_id").to_pylist()])
    cols = np.array([i_index[i] for i in train.column("item_id").to_pylist()])
    keep = rows >= 0
    m = csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])),
                   shape=(len(users), len(item_ids)))
    m.data[:] = 1.0  # duplicates summed by the constructor: binarise
    return m


def popularity(train: pa.Table, users: list[str], item_ids: list[str]) -> np.ndarray:
    counts = pc.value_counts(train.column("item_id"))
    pop = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    scores = np.array([pop.get(i, 0) for i in item_ids], dtype=np.float32)
    return np.broadcast_to(scores, (len(users), len(item_ids)))


def bpr_mf(train: pa.Table, users: list[str], item_ids: list[str], factors: int = 64,
           epochs: int = 40, lr: float = 0.01, reg: float = 1e-4, batch_size: int = 1024,
           seed: int = 0) -> np.ndarray:
    """ID-only MF with the BPR loss; negatives drawn uniformly from the items the user has not seen."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = interaction_matrix(train, users, item_ids)
    u_idx, i_idx = m.nonzero()
    n_items = m.shape[1]
    positives = np.sort(u_idx.astype(np.int64) * n_items + i_idx)
    U = torch.nn.Embedding(m.shape[0], factors)
    V = torch.nn.Embedding(m.shape[1], factors)
    torch.nn.init.normal_(U.weight, std=0.1)
    torch.nn.init.normal_(V.weight, std=0.1)
    opt = torch.optim.Adam(list(U.parameters()) + list(V.parameters()), lr=lr)
    n = len(u_idx)
    for epoch in range(epochs):
        order = rng.permutation(n)
        neg = rng.integers(0, n_items, n)
        clash = np.isin(u_idx * n_items + neg, positives, assume_unique=False)
        while clash.any():  # resample negatives that are positives of the user
            neg[clash] = rng.integers(0, n_items, int(clash.sum()))
            clash = np.isin(u_idx * n_items + neg, positives)
        total = 0.0
        for start in range(0, n, batch_size):
            b = order[start:start + batch_size]
            u = U(torch.from_numpy(u_idx[b]))
            p = V(torch.from_numpy(i_idx[b]))
            q = V(torch.from_numpy(neg[b]))
            x = (u * (p - q)).sum(-1)
            loss = -torch.nn.functional.logsigmoid(x).mean() + reg * (u.pow(2).sum() + p.pow(2).sum()
                                                                      + q.pow(2).sum()) / len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        if epoch == 0 or (epoch + 1) % 10 == 0:
            logger.info("bpr_mf epoch %d: loss %.4f", epoch + 1, total / n)
    with torch.no_grad():
        item_w = V.weight.clone()
        cold = np.asarray(m.sum(axis=0)).ravel() == 0
        item_w[torch.from_numpy(cold)] = 0.0  # never trained: no signal
        return (U.weight @ item_w.T).numpy()


def rows_for(scores: np.ndarray, fitted_users: list[str], users: list[str]) -> np.ndarray:
    """Score rows of `users` (repeats allowed) from a model fitted on `fitted_users`; a user the
    model never saw gets all-zero scores (an ID model has nothing for them)."""
    index = {u: k for k, u in enumerate(fitted_users)}
    out = np.zeros((len(users), scores.shape[1]), dtype=scores.dtype)
    known = np.array([index.get(u, -1) for u in users], dtype=np.int64)
    out[known >= 0] = scores[known[known >= 0]]
    return out


def implicit_als(train: pa.Table, users: list[str], item_ids: list[str], factors: int = 64,
                 regularization: float = 0.05, iterations: int = 15, alpha: float = 1.0,
                 seed: int = 0, histories: list[list[str]] | None = None) -> np.ndarray:
    """The `implicit` library's ALS (CPU) on the binary interaction matrix.

    Without `histories`: the (U, I) scores of the fitted `users`. With `histories` (one list of
    item ids per query): each query's user factors are recomputed from that history with the
    fitted item factors (implicit's `recalculate_user`, the fold-in a serving system does), so
    ALS, like the feature models, sees everything the user did before the query, and users who
    arrived after the fit are served too. Returns (Q, I)."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as e:
        raise ImportError("the implicit ALS baseline needs the `implicit` package: "
                          "pip install 'llmrec-ray[als]'") from e
    from threadpoolctl import threadpool_limits

    m = interaction_matrix(train, users, item_ids) * alpha
    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, single-threaded BLAS
        model = AlternatingLeastSquares(factors=factors, regularization=regularization,
                                        iterations=iterations, random_state=seed,
                                        calculate_training_loss=False)
        model.fit(m.tocsr(), show_progress=False)
        if histories is None:
            return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T
        from scipy.sparse import csr_matrix

        i_index = {i: k for k, i in enumerate(item_ids)}
        cols = [sorted({i_index[i] for i in h}) for h in histories]
        indptr = np.r_[0, np.cumsum([len(c) for c in cols])]
        data = np.full(indptr[-1], alpha, np.float32)
        hist = csr_matrix((data, np.concatenate(cols).astype(np.int32) if cols else np.array([], np.int32),
                           indptr), shape=(len(histories), len(item_ids)))
        user_factors = model.recalculate_user(np.arange(len(histories)), hist)
    return np.asarray(user_factors) @ np.asarray(model.item_factors).T


def zero_shot_cosine(user_emb: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
    """Cosine between LLM user and item vectors: what the features give before any training."""
    u = user_emb / np.maximum(np.linalg.norm(user_emb, axis=1, keepdims=True), 1e-12)
    v = item_emb / np.maximum(np.linalg.norm(item_emb, axis=1, keepdims=True), 1e-12)
    return u @ v.T
