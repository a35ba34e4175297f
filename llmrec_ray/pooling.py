"""Pool token embeddings into one vector per text. Pure torch functions, no model, no I/O.

hidden: (B, T, H) token states; mask: (B, T) attention mask (1 = real token, 0 = padding).
"""

from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' states. A text with no real token pools to zeros."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * m).sum(dim=1)  # (B, H)
    count = m.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return summed / count


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit-length rows; a zero row stays zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


POOLINGS = {"mean": mean_pool}


def pool(name: str, hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Pool with the named method; optionally L2-normalise. Returns (B, H) float32."""
    try:
        fn = POOLINGS[name]
    except KeyError:
        raise ValueError(f"encode.pooling: unknown pooling {name!r} (known: {sorted(POOLINGS)})") from None
    out = fn(hidden.float(), mask)
    return l2_normalize(out) if normalize else out
