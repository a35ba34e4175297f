"""LLM-embedding graph recommender of the AlphaRec kind (Sheng et al., "Language Representations
Can be What Recommenders Need", ICLR 2025).

- Layer 0: every item is its frozen LLM text vector z_i through a 2-layer MLP; every user is the
  mean of the LLM vectors of the items in their history, through the same MLP.
- Light graph propagation (LightGCN, He et al. 2020) over the user-item training graph with the
  symmetric normalisation 1 / sqrt(d_u d_i), `layers` times; a node's vector is the mean of its
  layer vectors.
- Score = cosine(user, item) / temperature; loss = InfoNCE of each training interaction against
  `negatives` items drawn uniformly (shared by the batch).

No ID embedding: an item without training interactions (a cold item) has no edge, so its vector
is its own MLP(z_i) (the later layers are 0) and it is scored from its text like any other item.
A query user is folded in from their history as of the query (`user_vectors`): layer 0 is the
MLP of their items' mean vector, layer l the normalised sum of their items' layer l-1 vectors in
the training graph, exactly what propagation gives a training user with that history. Users who
arrived after the fit are served the same way.

The graph (edges as user and item rows) and the item vectors are buffers: they travel inside the
checkpoint, with the weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    """A query feature as a tensor; a read-only array (e.g. object-store memory) is copied first,
    since torch tensors are writable."""
    return torch.as_tensor(np.require(a, requirements="W"), device=device)


def _sparse(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape) -> torch.Tensor:
    idx = torch.from_numpy(np.vstack([rows, cols]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(values.astype(np.float32)), shape,
                                   check_invariants=True).coalesce()


class LLMGraph(nn.Module):
    kind = "llm_graph"
    hybrid = False

    def __init__(self, item_dim: int, n_users: int, n_items: int, hidden_dim: int = 512,
                 out_dim: int = 64, layers: int = 2, temperature: float = 0.15, negatives: int = 256,
                 edge_users: list[int] | None = None, edge_items: list[int] | None = None):
        super().__init__()
        self.hparams = dict(item_dim=item_dim, n_users=n_users, n_items=n_items, hidden_dim=hidden_dim,
                            out_dim=out_dim, layers=layers, temperature=temperature, negatives=negatives)
        self.mlp = nn.Sequential(nn.Linear(item_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, out_dim))
        self.layers, self.temperature, self.negatives = layers, temperature, negatives
        self.n_users, self.n_items = n_users, n_items
        eu = np.asarray(edge_users if edge_users is not None else [], dtype=np.int64)
        ei = np.asarray(edge_items if edge_items is not None else [], dtype=np.int64)
        self.register_buffer("edge_users", torch.from_numpy(eu))
        self.register_buffer("edge_items", torch.from_numpy(ei))
        self.register_buffer("item_emb", torch.zeros(n_items, item_dim))  # frozen LLM vectors
        self._graph = None

    # -- the training graph -------------------------------------------------------------------
    def set_item_vectors(self, item_emb: torch.Tensor) -> None:
        """The frozen LLM vector of every item row (I, D): the features, as of the end of the fit."""
        self.item_emb.copy_(torch.as_tensor(item_emb, dtype=torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("edge_users", "edge_items"):  # the graph's size is the checkpoint's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._graph = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def graph(self):
        """(A (U, I) normalised adjacency, A^T, history mean (U, I), item degrees (I,)), cached."""
        if self._graph is None or self._graph[0].device != self.item_emb.device:
            u, i = self.edge_users.cpu().numpy(), self.edge_items.cpu().numpy()
            du = np.maximum(np.bincount(u, minlength=self.n_users), 1).astype(np.float64)
            di = np.bincount(i, minlength=self.n_items).astype(np.float64)
            w = 1.0 / np.sqrt(du[u] * np.maximum(di[i], 1))
            shape = (self.n_users, self.n_items)
            a = _sparse(u, i, w, shape)
            mean = _sparse(u, i, 1.0 / du[u], shape)
            dev = self.item_emb.device
            self._graph = (a.to(dev), a.t().coalesce().to(dev), mean.to(dev),
                           torch.from_numpy(di.astype(np.float32)).to(dev))
        return self._graph

    def propagate(self, item_emb: torch.Tensor | None = None):
        """(user vectors (U, d), item vectors (I, d), item layer vectors [layer 0..L-1]) of the
        training graph, before normalisation."""
        a, at, mean, _ = self.graph()
        z = self.item_emb if item_emb is None else item_emb
        eu, ei = self.mlp(torch.sparse.mm(mean, z)), self.mlp(z)
        users, items = [eu], [ei]
        for _ in range(self.layers):
            eu, ei = torch.sparse.mm(a, ei), torch.sparse.mm(at, eu)
            users.append(eu)
            items.append(ei)
        return torch.stack(users).mean(0), torch.stack(items).mean(0), items[:-1]

    # -- the Recommender interface -----------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items, _ = self.propagate()
        u = F.normalize(users[batch["user_idx"]], dim=-1)
        p = F.normalize(items[batch["item_idx"]], dim=-1)
        neg = torch.randint(0, self.n_items, (self.negatives,), device=u.device)
        n = F.normalize(items[neg], dim=-1)
        pos = (u * p).sum(-1, keepdim=True) / self.temperature
        logits = torch.cat([pos, u @ n.T / self.temperature], dim=1)
        return -(pos.squeeze(-1) - torch.logsumexp(logits, dim=1)).mean()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: DDP synchronises gradients only through `forward`."""
        return self.loss(batch)

    def user_vectors(self, history, item_layers: list[torch.Tensor], item_emb: torch.Tensor,
                     user_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Fold-in: (Q, d) vectors of query users from their histories (CSR (Q, I)). A query
        with an empty history and a `user_emb` (its user text vector, the same encoder as the
        items: e.g. a new user described in words) starts from that vector instead."""
        *_, deg = self.graph()
        h = history.tocoo()
        q = history.shape[0]
        dq = np.maximum(np.bincount(h.row, minlength=q), 1).astype(np.float64)
        dev = item_emb.device
        mean = _sparse(h.row, h.col, 1.0 / dq[h.row], (q, self.n_items)).to(dev)
        norm = _sparse(h.row, h.col, 1.0 / np.sqrt(dq[h.row] * np.maximum(deg.cpu().numpy()[h.col], 1)),
                       (q, self.n_items)).to(dev)
        base = torch.sparse.mm(mean, item_emb)
        if user_emb is not None:
            empty = torch.from_numpy(np.bincount(h.row, minlength=q) == 0).to(dev)
            base = torch.where(empty[:, None], user_emb.to(base.dtype), base)
        reps = [self.mlp(base)]
        reps += [torch.sparse.mm(norm, layer) for layer in item_layers]
        return torch.stack(reps).mean(0)

    def score_queries(self, queries) -> torch.Tensor:
        """(Q, I) cosine / temperature of `Queries` (history; optional `item_emb` features: the
        item vectors as of the queries, else the fitted ones)."""
        z = queries.features.get("item_emb")
        z = self.item_emb if z is None else _tensor(z, self.item_emb.device)
        _, items, layers = self.propagate(z)
        user_emb = queries.features.get("user_emb")
        user_emb = None if user_emb is None else _tensor(user_emb, z.device)
        u = F.normalize(self.user_vectors(queries.history, layers, z, user_emb), dim=-1)
        return u @ F.normalize(items, dim=-1).T / self.temperature

    def item_vectors(self, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(I, d) normalised item vectors (export)."""
        _, items, _ = self.propagate(item_emb)
        return F.normalize(items, dim=-1)

    def export_vectors(self, items, users, stats_frame) -> dict:
        """{"items": (rows, d)}: each item-text row gets its item's vector (propagated over the
        training graph from the item's own text vector). No per-snapshot user vectors: users
        are folded in from their history at request time (`user_vectors`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from llmrec_ray.views import embedding_matrix

        z = self.item_emb.clone()
        rows = pc.index_in(items.column("item_id"), value_set=pa.array(self.vocab["items"])).to_numpy(
            zero_copy_only=False)
        z[torch.from_numpy(rows.astype(np.int64))] = torch.from_numpy(embedding_matrix(items.column("embedding")))
        return {"items": self.item_vectors(z)[torch.from_numpy(rows.astype(np.int64))].numpy()}
