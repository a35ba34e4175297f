"""Pool token embeddings into one vector per text. Pure torch functions, no model, no I/O.

hidden: (B, T, H) token states; mask: (B, T) attention mask (1 = real token, 0 = padding).
Padding may be on either side: `last` finds each row's last real token from the mask, so it works
for right-padded encoders and left-padded decoders alike.

- mean: average of the real tokens (sentence-transformers' default).
- max: element-wise max over the real tokens.
- cls: the first real token (BERT's [CLS]).
- last: the last real token (decoder LLMs; append EOS so it sees the whole text).
- weighted_mean: position-weighted mean, weight of the i-th real token proportional to i
  (SGPT, Muennighoff 2022): later tokens of a causal model have seen more of the text.
"""

from __future__ import annotations

import torch


def _mask(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' states. A text with no real token pools to zeros."""
    m = _mask(hidden, mask)
    summed = (hidden * m).sum(dim=1)  # (B, H)
    count = m.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return summed / count


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the real tokens. A text with no real token pools to zeros."""
    filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))  # (B, T, H)
    out = filled.max(dim=1).values  # (B, H)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def _first_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token (0 for an empty row)."""
    return mask.long().argmax(dim=1)  # (B,)


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (0 for an empty row)."""
    t = mask.shape[1]
    flipped = mask.long().flip(dims=[1]).argmax(dim=1)  # distance from the end
    return torch.where(mask.bool().any(dim=1), t - 1 - flipped, torch.zeros_like(flipped))


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first real token's state."""
    idx = _first_real(mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token's state."""
    idx = _last_real(mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)


def weighted_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean weighted by position among the real tokens: weights 1, 2, ..., n (normalised)."""
    m = mask.to(hidden.dtype)  # (B, T)
    positions = m.cumsum(dim=1) * m  # (B, T): 1..n on real tokens, 0 on padding
    weights = positions / positions.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, T)
    return (hidden * weights.unsqueeze(-1)).sum(dim=1)  # (B, H)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit-length rows; a zero row stays zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


POOLINGS = {"mean": mean_pool, "max": max_pool, "cls": cls_pool, "last": last_pool,
            "weighted_mean": weighted_mean_pool}


def select_layers(hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor], last_k: int) -> torch.Tensor:
    """Hidden states of every layer (embeddings first, as HF returns them) -> the mean of the
    last `last_k` layers, (B, T, H). last_k=1 is the final layer."""
    n_layers = len(hidden_states) - 1  # hidden_states[0] is the embedding output
    if not 1 <= last_k <= n_layers:
        raise ValueError(f"encode.layers: {last_k} is not in [1, {n_layers}] for this model")
    return torch.stack(list(hidden_states[-last_k:]), dim=0).float().mean(dim=0)


def pool(name: str, hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Pool with the named method; optionally L2-normalise. Returns (B, H) float32."""
    try:
        fn = POOLINGS[name]
    except KeyError:
        raise ValueError(f"encode.pooling: unknown pooling {name!r} (known: {sorted(POOLINGS)})") from None
    out = fn(hidden.float(), mask)
    return l2_normalize(out) if normalize else out
