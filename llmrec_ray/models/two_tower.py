"""Two-tower recommender over LLM features, trained with in-batch negatives.

User tower: MLP over the user-history embedding (plus user statistics); item tower: MLP over the
item-text embedding. Score = cosine(user, item) / temperature. Loss: softmax over the items of the
batch (InfoNCE), where another row's copy of the same item is not counted as a negative.

Hybrid (`n_users`, `n_items` > 0): learned ID embeddings join each tower's input (`id_mode`
concat), or are added to each tower's output (residual; the unknown ID adds exactly 0). IDs help
warm items; text carries cold ones: during training an item's ID is replaced by a shared "unknown"
ID with probability `id_dropout` (a user's with `user_id_dropout`, default the same), and users and
items never seen in training are scored with that ID, so the towers learn to rank from features
alone; `text_aux` > 0 adds the same loss with every item scored as unseen. `logq` (log of each
item's share of the training rows) corrects in-batch negatives for popularity: popular items are
over-sampled as negatives, so their logit is lowered by log q during training (Yi et al., 2019),
not at scoring. `item_age` adds a learned bias by the item's age at the query time
(`models.age.ItemAge`) to every logit, in training and at scoring; the exported vectors do not
carry it.

Interface (shared by every model, `llmrec_ray.recommender`): `loss(batch)`, `score_queries`,
`user_vectors`, `item_vectors`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))


class TwoTower(nn.Module):
    def __init__(self, user_dim: int, item_dim: int, hidden_dim: int = 256, out_dim: int = 64,
                 dropout: float = 0.1, temperature: float = 0.05, user_extra_dim: int = 0,
                 n_users: int = 0, n_items: int = 0, id_dim: int = 32, id_dropout: float = 0.2,
                 logq: list[float] | None = None, id_mode: str = "concat",
                 user_id_dropout: float | None = None, text_aux: float = 0.0,
                 item_age: bool = False, n_age_items: int = 0, released: list[float] | None = None,
                 first_seen: list[float] | None = None):
        super().__init__()
        self.hparams = dict(user_dim=user_dim, item_dim=item_dim, hidden_dim=hidden_dim,
                            out_dim=out_dim, dropout=dropout, temperature=temperature,
                            user_extra_dim=user_extra_dim, n_users=n_users, n_items=n_items,
                            id_dim=id_dim, id_dropout=id_dropout, logq=None, id_mode=id_mode,
                            user_id_dropout=user_id_dropout, text_aux=text_aux,
                            item_age=item_age, n_age_items=n_age_items)
        self.hybrid = n_users > 0 and n_items > 0
        # "residual": vector = normalize(tower(features) + E[id]), E zero-initialised and the unknown
        # ID contributing exactly 0, so an unseen user/item is its feature vector, in the same space
        self.residual = self.hybrid and id_mode == "residual"
        ids = id_dim if self.hybrid and not self.residual else 0
        self.user_tower = mlp(user_dim + user_extra_dim + ids, hidden_dim, out_dim, dropout)
        self.item_tower = mlp(item_dim + ids, hidden_dim, out_dim, dropout)
        if self.residual:
            self.user_ids = nn.Embedding(n_users + 1, out_dim, padding_idx=n_users)  # unknown row: 0
            self.item_ids = nn.Embedding(n_items + 1, out_dim, padding_idx=n_items)
            nn.init.zeros_(self.user_ids.weight)
            nn.init.zeros_(self.item_ids.weight)
        elif self.hybrid:
            self.user_ids = nn.Embedding(n_users + 1, id_dim)  # the last row: the unknown user
            self.item_ids = nn.Embedding(n_items + 1, id_dim)  # the last row: the unknown item
            nn.init.normal_(self.user_ids.weight, std=0.05)
            nn.init.normal_(self.item_ids.weight, std=0.05)
        self.n_users, self.n_items, self.id_dropout = n_users, n_items, id_dropout
        self.user_id_dropout = id_dropout if user_id_dropout is None else user_id_dropout
        self.text_aux = text_aux
        self.temperature = temperature
        # logQ of each item index (training only); an empty buffer = no correction
        # the item-age term: release times of the n_age_items rows of the vocabulary (a buffer,
        # in the checkpoint; `released` given at training, loaded with the weights otherwise)
        self.age = None
        if item_age:
            from llmrec_ray.models.age import ItemAge

            # the hybrid: one bias table for items whose ID is known at the query, one for unknown
            self.age = ItemAge(n_age_items, tables=2 if self.hybrid else 1)
            if released is not None:
                self.age.set_released(released)
        # hybrid + item_age, training only: each item's first fit interaction (days; NaN: none).
        # A row at time t scores an item first seen at or after t with the unknown ID, as the
        # model would have met it then: the cold items of every moment of the fit train the
        # unknown-ID path and its age bias, not only the ID-dropout rows.
        self.register_buffer("first_seen", torch.tensor(first_seen if first_seen is not None else [],
                                                        dtype=torch.float64), persistent=False)
        self.register_buffer("logq", torch.tensor(logq if logq is not None else [], dtype=torch.float32),
                             persistent=False)

    def user_vectors(self, user_emb: torch.Tensor, user_extra: torch.Tensor | None = None,
                     user_idx: torch.Tensor | None = None) -> torch.Tensor:
        parts = [user_emb]
        if self.hparams["user_extra_dim"]:
            parts.append(user_extra)
        if self.hybrid:
            if user_idx is None:  # a brand-new user: the unknown ID
                user_idx = torch.full((len(user_emb),), -1, dtype=torch.long, device=user_emb.device)
            idx = torch.where((user_idx < 0) | (user_idx >= self.n_users),
                              torch.full_like(user_idx, self.n_users), user_idx)
            if self.residual:
                return F.normalize(self.user_tower(torch.cat(parts, dim=-1)) + self.user_ids(idx), dim=-1)
            parts.append(self.user_ids(idx))
        return F.normalize(self.user_tower(torch.cat(parts, dim=-1)), dim=-1)  # (B, D)

    def item_vectors(self, item_emb: torch.Tensor, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """`item_idx` < 0 (or >= n_items) means an item never seen in training: the unknown ID."""
        parts = [item_emb]
        if self.hybrid:
            idx = torch.where((item_idx < 0) | (item_idx >= self.n_items),
                              torch.full_like(item_idx, self.n_items), item_idx)
            if self.residual:
                return F.normalize(self.item_tower(item_emb) + self.item_ids(idx), dim=-1)
            parts.append(self.item_ids(idx))
        return F.normalize(self.item_tower(torch.cat(parts, dim=-1)), dim=-1)  # (B, D)

    def text_vectors(self, item_emb: torch.Tensor) -> torch.Tensor:
        """(I, D) the item tower's vectors from the text alone (the unknown ID): a learned
        projection of the LLM text vectors, as cold items are scored."""
        return self.item_vectors(item_emb, torch.full((len(item_emb),), -1, dtype=torch.long,
                                                      device=item_emb.device))

    def score(self, user_emb: torch.Tensor, item_emb: torch.Tensor, user_extra: torch.Tensor | None = None,
              user_idx: torch.Tensor | None = None, item_idx: torch.Tensor | None = None,
              query_day: torch.Tensor | None = None) -> torch.Tensor:
        """(U, Hu), (I, Hi) -> (U, I) scores; with the item-age term, `query_day` (U,) is each
        query's time in days since the epoch and the I items are the vocabulary's, in order."""
        scores = self.user_vectors(user_emb, user_extra, user_idx) @ \
            self.item_vectors(item_emb, item_idx).T / self.temperature
        if self.age is not None:
            if query_day is None:
                raise ValueError("this model scores by item age (train.item_age): the queries need "
                                 "their times (query_day)")
            if len(item_emb) != len(self.age.released):
                raise ValueError(f"item_age: {len(item_emb)} items scored, the model knows the release "
                                 f"times of {len(self.age.released)} (its vocabulary, in order)")
            unknown = ((item_idx < 0) | (item_idx >= self.n_items)) if self.hybrid else None
            scores = scores + self.age(query_day, None, unknown)
        return scores

    @property
    def kind(self) -> str:
        return "hybrid" if self.hybrid else "two_tower"

    def score_queries(self, queries) -> torch.Tensor:
        """(Q, I) scores of `Queries` from their features as of the query time (user_emb,
        user_extra, item_emb and, hybrid, the ID rows user_idx / item_idx)."""
        dev = next(self.parameters()).device
        # read-only arrays (zero-copy from Arrow or the object store) are copied, never written
        f = {k: torch.as_tensor(v if getattr(v, "flags", None) is None or v.flags.writeable else v.copy(),
                                device=dev) for k, v in queries.features.items()}
        extra = f.get("user_extra") if self.hparams.get("user_extra_dim", 0) else None
        return self.score(f["user_emb"], f["item_emb"], extra,
                          f.get("user_idx") if self.hybrid else None,
                          f.get("item_idx") if self.hybrid else None, f.get("query_day"))

    def export_vectors(self, items, users, user_extra) -> dict:
        """Vectors of every item-text row and every user snapshot (Arrow tables of the views,
        `user_extra` (snapshots, 4) the snapshots' statistics as `model_inputs.user_extra_features`
        computes them): {"items": (rows, d), "users": (rows, d)}."""
        from llmrec_ray.views import embedding_matrix
        from llmrec_ray.models.vocab import item_id_index, user_id_index

        user_idx = item_idx = None
        if self.hybrid:
            user_idx = user_id_index(self.vocab, users.column("user_id").to_pylist())
            item_idx = item_id_index(self.vocab, items.column("item_id").to_pylist())
        v_items = self.item_vectors(torch.from_numpy(embedding_matrix(items.column("embedding"))), item_idx)
        v_users = self.user_vectors(torch.from_numpy(embedding_matrix(users.column("embedding"))),
                                    torch.as_tensor(user_extra, dtype=torch.float32), user_idx)
        return {"items": v_items.numpy(), "users": v_users.numpy()}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        idx = batch["item_idx"]
        item_ids, user_ids = idx, batch.get("user_idx")
        # an item without text (zero vector): its ID is all that tells it apart, never dropped
        text = batch["item_emb"].abs().amax(dim=-1) > 0
        if self.hybrid and self.training:
            # IDs dropped to the unknown ID: the towers also learn to work from features alone
            drop = (torch.rand(idx.shape, device=idx.device) < self.id_dropout) & text
            item_ids = torch.where(drop, torch.full_like(idx, -1), idx)
            drop = torch.rand(user_ids.shape, device=idx.device) < self.user_id_dropout
            user_ids = torch.where(drop, torch.full_like(user_ids, -1), user_ids)
        u = self.user_vectors(batch["user_emb"], batch.get("user_extra"), user_ids)  # (B, D)
        v = self.item_vectors(batch["item_emb"], item_ids if self.hybrid else None)  # (B, D)
        # every in-batch item scored as unseen (unknown ID): the text path, computed once
        v_unseen = None
        if self.hybrid and (self.age is not None or self.text_aux > 0):
            v_unseen = self.item_vectors(batch["item_emb"], torch.full_like(idx, -1))
        logits = u @ v.T / self.temperature
        if self.age is not None and not self.hybrid:
            logits = logits + self.age(batch["query_day"], idx)
        elif self.age is not None:
            # (B, B): is column j's ID unknown at row r's time (dropped, or first seen later)?
            t = batch["query_day"]
            unknown = (item_ids < 0).unsqueeze(0).expand(len(idx), -1)
            if self.first_seen.numel():
                unknown = unknown | ~(self.first_seen[idx].unsqueeze(0) < t.unsqueeze(1))
            logits = torch.where(unknown, u @ v_unseen.T / self.temperature, logits)
            # row r's time against every in-batch item's release, column j = item idx[j]
            logits = logits + self.age(t, idx, unknown)
        loss = self._infonce(logits, idx)
        if self.hybrid and self.text_aux > 0:  # the same loss with every item as if unseen (text only)
            logits = u @ v_unseen.T / self.temperature
            if self.age is not None:
                logits = logits + self.age(batch["query_day"], idx, torch.ones_like(logits, dtype=torch.bool))
            if bool(text.any()):  # over the items with text: without, they are one vector here
                loss = loss + self.text_aux * self._infonce(logits[text][:, text], idx[text])
        return loss

    def _infonce(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """In-batch softmax over (B, B) logits (row r's positive: column r)."""
        if self.logq.numel():
            logits = logits - self.logq[idx].unsqueeze(0)  # column j: the sampling bias of item j
        same = idx.unsqueeze(0) == idx.unsqueeze(1)  # (B, B): duplicates of the positive item
        eye = torch.eye(len(idx), dtype=torch.bool, device=idx.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(idx), device=idx.device))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: DDP synchronises gradients only through `forward`."""
        return self.loss(batch)
