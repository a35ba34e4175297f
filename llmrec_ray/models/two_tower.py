"""Two-tower recommender over LLM features, trained with in-batch negatives.

User tower: MLP over the user-history embedding; item tower: MLP over the item-text embedding.
Score = cosine(user, item) / temperature. Loss: softmax over the items of the batch (InfoNCE),
where another row's copy of the same item is not counted as a negative.

Interface (shared by every model): `loss(batch)`, `user_vectors`, `item_vectors`, `score`.
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
                 dropout: float = 0.1, temperature: float = 0.05):
        super().__init__()
        self.hparams = dict(user_dim=user_dim, item_dim=item_dim, hidden_dim=hidden_dim,
                            out_dim=out_dim, dropout=dropout, temperature=temperature)
        self.user_tower = mlp(user_dim, hidden_dim, out_dim, dropout)
        self.item_tower = mlp(item_dim, hidden_dim, out_dim, dropout)
        self.temperature = temperature

    def user_vectors(self, user_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.user_tower(user_emb), dim=-1)  # (B, D)

    def item_vectors(self, item_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_tower(item_emb), dim=-1)  # (B, D)

    def score(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(U, Hu), (I, Hi) -> (U, I) scores."""
        return self.user_vectors(user_emb) @ self.item_vectors(item_emb).T / self.temperature

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.user_vectors(batch["user_emb"])  # (B, D)
        v = self.item_vectors(batch["item_emb"])  # (B, D)
        logits = u @ v.T / self.temperature  # (B, B)
        idx = batch["item_idx"]
        same = idx.unsqueeze(0) == idx.unsqueeze(1)  # (B, B): duplicates of the positive item
        eye = torch.eye(len(idx), dtype=torch.bool, device=idx.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(idx), device=idx.device))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: DDP synchronises gradients only through `forward`."""
        return self.loss(batch)
