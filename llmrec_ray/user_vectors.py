"""User vectors pooled from item vectors (`serialize.user_vectors`: items_mean, items_recency).

AlphaRec's user input: instead of encoding a text of the user's history, a user snapshot at time
`s` is the pooled LLM vectors of the items of the interactions with timestamp `< s` (the point-in-
time rule of serialize.py; the snapshots are the text mode's). Nothing of the user is encoded.

- `items_mean`: the mean of the item vectors of those interactions (a re-watched item counts each
  time), over the whole history as of `s` or its last `user_pool_length` interactions.
- `items_recency`: the weighted mean with weight 0.5 ** (k / user_half_life) for the k-th newest
  interaction (k = 0 for the newest before `s`): by position, not by time; interactions that share
  a timestamp are ordered by item_id, as in the user text.

The result is L2-normalised when `encode.normalize`; a snapshot that covers nothing (the user's
first) is the zero vector. Both are prefix sums over each user's time-sorted interactions, so a
snapshot costs O(d) however long its history: window [A, B) of rows = E[B] - c^(B-A) E[A], with
E the exclusive prefix of the rows' (decayed, c = 0.5 ** (1 / half_life); c = 1 for the mean) sums.
Runs in the driver, vectorised numpy over chunks of whole users (about 8 MiB of float64
rows at a time), so memory is one chunk plus the output (snapshots x d float32).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.schemas import EMBEDDING

MODES = ("items_mean", "items_recency")
CHUNK_MB = 8  # float64 rows per chunk (cache-sized: faster than bigger chunks here)


def user_vectors_key(encoder_key: str, scfg) -> str:
    """Identity of the user-history vectors: the encoder's key in text mode (the vectors are the
    encoder's), else the encoder's key plus how the item vectors were pooled."""
    mode = getattr(scfg, "user_vectors", "text")
    if mode == "text":
        return encoder_key
    key = f"{encoder_key}|users={mode}|pool_length={scfg.user_pool_length or 'all'}"
    if mode == "items_recency":
        key += f"|half_life={scfg.user_half_life:g}"
    return key


def user_vectors_tags(scfg) -> dict:
    """Tags of the user_history_embedding view saying how its vectors were built."""
    mode = getattr(scfg, "user_vectors", "text")
    if mode == "text":
        return {"user_vectors": "text", "history_length": scfg.history_length}
    tags = {"user_vectors": mode, "user_pool_length": scfg.user_pool_length or "all"}
    if mode == "items_recency":
        tags["user_half_life"] = f"{scfg.user_half_life:g}"
    return tags


def snapshot_windows(interactions: pa.Table, snapshots: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(interactions sorted by user, time, item; per snapshot the row of the user's first
    interaction and B, one past the last row with timestamp < the snapshot's), vectorised.

    Users of `snapshots` without interactions get start = B = 0 (an empty window).
    """
    order = pc.sort_indices(interactions, [("user_id", "ascending"), ("event_timestamp", "ascending"),
                                           ("item_id", "ascending")])
    inter = interactions.take(order)
    n = inter.num_rows
    if n == 0 or snapshots.num_rows == 0:
        z = np.zeros(snapshots.num_rows, np.int64)
        return inter, z, z
    users = inter.column("user_id").combine_chunks()
    codes = pc.dictionary_encode(users).indices.to_numpy().astype(np.int64)  # rising: sorted users
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1]).astype(np.int64)
    snap_code = pc.index_in(snapshots.column("user_id"), value_set=users.take(pa.array(starts)))
    known = ~snap_code.is_null().to_numpy(zero_copy_only=False)
    snap_code = snap_code.fill_null(0).to_numpy().astype(np.int64)
    # (user, time) -> one int64 key: user code x (distinct times + 1) + the time's rank
    t_inter = inter.column("event_timestamp").cast(pa.int64()).to_numpy()
    t_snap = snapshots.column("event_timestamp").cast(pa.int64()).to_numpy()
    times, rank = np.unique(np.concatenate([t_inter, t_snap]), return_inverse=True)
    span = len(times) + 1
    if len(starts) * span >= 2**62:
        raise ValueError("too many users x distinct timestamps for one int64 key")
    key_inter = codes * span + rank[:n]
    key_snap = snap_code * span + rank[n:]
    end = np.searchsorted(key_inter, key_snap, side="left")  # rows before (user, s)
    start = starts[snap_code]
    return inter, np.where(known, start, 0), np.where(known, end, 0)


def decayed_prefix(x: np.ndarray, decay: float, block: int = 128) -> np.ndarray:
    """y[k] = sum over j <= k of decay^(k - j) x[j] along axis 0 (decay 1: the cumulative sum),
    in place when x's rows are a multiple of `block`. Blocked: `block` vector steps inside every
    block at once, then one carry step per block (numpy's cumsum along axis 0 of a C-order matrix
    runs ~5x slower on this machine)."""
    n, d = x.shape
    nb = -(-n // block)
    if nb * block != n:
        x = np.concatenate([x, np.zeros((nb * block - n, d), x.dtype)])
    y = x.reshape(nb, block, d)
    for i in range(1, block):
        if decay == 1.0:
            y[:, i] += y[:, i - 1]
        else:
            y[:, i] += decay * y[:, i - 1]
    powers = None if decay == 1.0 else (decay ** np.arange(1, block + 1))[:, None]
    for b in range(1, nb):
        y[b] += y[b - 1, -1] if powers is None else powers * y[b - 1, -1]
    return y.reshape(nb * block, d)[:n]


def pool_item_vectors(interactions: pa.Table, snapshots: pa.Table, item_ids, item_vectors: np.ndarray,
                      mode: str, pool_length: int | None = None, half_life: float = 10.0,
                      normalize: bool = True, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pooled vector of every snapshot (rows of `snapshots`: user_id, event_timestamp).

    `item_ids` (I,) and `item_vectors` (I, d) are the item vectors; every interaction's item must
    be among them. Returns ((S, d) float32 in the snapshots' row order, (S,) n_history: the
    interactions before each snapshot, all of them, not only the pooled window). `chunk_rows`:
    interaction rows per chunk (whole users; None = about CHUNK_MB MiB of float64 rows).
    """
    if mode not in MODES:
        raise ValueError(f"serialize.user_vectors: {mode!r} is not one of {MODES}")
    item_vectors = np.asarray(item_vectors, np.float32)  # (a float64 copy per chunk only)
    d = item_vectors.shape[1]
    inter, start, end = snapshot_windows(interactions, snapshots)
    lo = start if pool_length is None else np.maximum(start, end - pool_length)
    out = np.zeros((snapshots.num_rows, d), np.float32)
    if inter.num_rows == 0 or snapshots.num_rows == 0:
        return out, end - start
    idx = pc.index_in(inter.column("item_id"), value_set=pa.array(item_ids).cast(inter.column("item_id").type))
    if idx.null_count:
        missing = inter.column("item_id").filter(idx.is_null()).to_pylist()[0]
        raise KeyError(f"interaction item {missing!r} has no item vector")
    idx = idx.to_numpy().astype(np.int64)
    decay = 1.0 if mode == "items_mean" else 0.5 ** (1.0 / half_life)

    # chunks of whole users: [r0, r1) rows; each snapshot's window lies in its user's rows
    user_starts = np.unique(start[end > start])
    snap_order = np.argsort(start, kind="stable")
    sorted_start = start[snap_order]
    rows_per_chunk = chunk_rows or max(1, (CHUNK_MB << 20) // (8 * d))  # ~CHUNK_MB MiB of float64 rows
    r0 = 0
    n = inter.num_rows
    while r0 < n:
        j = np.searchsorted(user_starts, r0 + rows_per_chunk, side="right")
        r1 = int(user_starts[j]) if j < len(user_starts) else n
        if r1 <= r0:
            r1 = n
        a, b = np.searchsorted(sorted_start, [r0, r1], side="left")
        sel = snap_order[a:b]
        sel = sel[end[sel] > lo[sel]]
        if len(sel):
            # y[k] = sum over rows r0..r0+k of decay^(r0+k - row) x_row (decay 1: cumulative sum)
            y = decayed_prefix(item_vectors[idx[r0:r1]].astype(np.float64), decay)  # (rows, d), sums in float64
            e, s = end[sel] - r0, lo[sel] - r0  # window [s, e) in chunk rows, e > s >= 0
            width = (e - s).astype(np.float64)
            fade = decay ** width  # the weight of row s - 1 at the window's newest row e - 1
            sums = y[e - 1]  # minus the (decayed) rows before the window
            cut = np.flatnonzero(s > 0)
            sums[cut] -= y[s[cut] - 1] if decay == 1.0 else fade[cut, None] * y[s[cut] - 1]
            if not normalize:  # (normalised, the weight sum does not matter)
                sums /= (width if decay == 1.0 else (1.0 - fade) / (1.0 - decay))[:, None]
            out[sel] = sums
        r0 = r1
    if normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
        out = np.divide(out, norms, out=out, where=norms > 0)
    return out, end - start


def pooled_user_view(interactions: pa.Table, user_rows: pa.Table, item_view: pa.Table, scfg,
                     normalize: bool) -> pa.Table:
    """The user_history_embedding table of `user_rows` (the snapshots: entity_id, event_timestamp,
    n_history) with vectors pooled from `item_view` (item_id, embedding); n_tokens 0, truncated
    False (nothing was encoded)."""
    from llmrec_ray.views import embedding_matrix

    snaps = pa.table({"user_id": user_rows.column("entity_id"),
                      "event_timestamp": user_rows.column("event_timestamp")})
    vecs, n_history = pool_item_vectors(
        interactions, snaps, item_view.column("item_id"), embedding_matrix(item_view.column("embedding")),
        scfg.user_vectors, scfg.user_pool_length, scfg.user_half_life, normalize)
    if not np.array_equal(n_history, user_rows.column("n_history").to_numpy()):
        raise RuntimeError("pooled user vectors: the interactions before a snapshot differ from "
                           "the snapshot's n_history")
    flat = pa.array(vecs.reshape(-1), pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]).cast(EMBEDDING)
    return pa.table({"user_id": snaps.column("user_id"), "event_timestamp": snaps.column("event_timestamp"),
                     "embedding": emb, "n_tokens": pa.array(np.zeros(len(vecs), np.int64)),
                     "truncated": pa.array(np.zeros(len(vecs), bool)),
                     "n_history": user_rows.column("n_history")})
