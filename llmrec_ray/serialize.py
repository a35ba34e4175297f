"""Serialize entities to text: items from their text fields, users from their history.

Pure functions over Arrow tables and Python values; no Ray, no I/O.

Point-in-time rule (docs/design.md): a user snapshot at time `s` summarises only interactions with
timestamp `< s`. Snapshots are taken at a cadence (a boundary of `snapshot_every` after which the
history changed) and as soon as `snapshot_max_new` new interactions accumulated, so fast raters get
fresh features too; never when nothing changed.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.schemas import ITEM_TEXT_FIELDS, TIMESTAMP

_UNITS_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000,
             "w": 7 * 86_400_000_000}


def parse_duration_us(text: str) -> int:
    """'1d' -> microseconds. Units: s, m, h, d, w."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"bad duration {text!r}: expected a positive number and a unit, like 6h or 1d")
    return int(m.group(1)) * _UNITS_US[m.group(2)]


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _groups(template: str) -> list[str]:
    """The template's words, a label word (ending with ':', no field of its own) joined to the
    next word: "{title}. Genres: {genres}." -> ["{title}.", "Genres: {genres}."]."""
    groups: list[str] = []
    for word in template.split():
        if groups and groups[-1].endswith(":") and not template_fields(groups[-1]):
            groups[-1] += " " + word
        else:
            groups.append(word)
    return groups


def render(template: str, values: dict, what: str) -> str:
    """Fill `template` from `values`. A missing value (None, NaN, blank) renders as nothing, with
    the text around it: each word of the template (a label like "Genres:" joined to the word
    after it) whose fields all lack a value is left out, so "{title} ({genres}) {rating}/5"
    renders "Heat 4/5" without genres and "Heat (Crime)" without a rating, and "{title}. Genres:
    {genres}. {description}" renders "Heat. A heist film." without genres. Whitespace collapses
    to single spaces. A field the values lack (not a column) is an error that names it."""
    missing = [f for f in template_fields(template) if f.split(".")[0].split("[")[0] not in values]
    if missing:
        raise ValueError(f"{what}: template field {{{missing[0]}}} is not a column "
                       f"(available: {sorted(values)})")
    clean = {k: ("" if _blank(v) else v) for k, v in values.items()}
    kept = []
    for group in _groups(template):
        names = [f.split(".")[0].split("[")[0] for f in template_fields(group)]
        if names and all(_blank(values[n]) for n in names):
            continue
        kept.append(group.format(**clean))
    return re.sub(r"\s+", " ", " ".join(kept)).strip()


def item_text(item: dict, template: str) -> str:
    """One item -> its text."""
    return render(template, item, f"item {item.get('item_id')!r}")


def item_text_rows(items: pa.Table, template: str, valid_from: int) -> pa.Table:
    """Items -> text rows (`entity`, `entity_id`, `event_timestamp`, `text`).

    An item's text is valid from its `available_from`, or from `valid_from` (µs since the epoch,
    the dataset start) when it has none.
    """
    rows = items.to_pylist()
    texts = [item_text(r, template) for r in rows]
    avail = items.column("available_from").cast(pa.int64()).to_numpy(zero_copy_only=False) \
        if "available_from" in items.column_names else np.full(len(rows), np.nan)
    ts = [valid_from if (a is None or np.isnan(a)) else int(a) for a in avail]
    return pa.table({
        "entity": pa.array(["item"] * len(rows), pa.string()),
        "entity_id": items.column("item_id"),
        "event_timestamp": pa.array(ts, pa.int64()).cast(TIMESTAMP),
        "text": pa.array(texts, pa.string()),
    })


def snapshot_times(timestamps: Sequence[int], every_us: int, max_new: int) -> list[int]:
    """Snapshot times (µs) for one user whose interactions happened at sorted `timestamps`.

    A snapshot at `s` covers the interactions with timestamp `< s`. One is taken at the first
    cadence boundary after pending (not yet covered) interactions, and right after the interaction
    that brings the pending count to `max_new` (at `t + 1µs`, so that `t` itself is covered).
    Interactions that share a timestamp are always covered together. The first snapshot is at the
    user's first interaction and covers nothing: the cold user, so every interaction has features.
    """
    out: list[int] = [int(timestamps[0])] if len(timestamps) else []
    pending, last_t = 0, None
    i, n = 0, len(timestamps)
    while i < n:
        t = int(timestamps[i])
        j = i
        while j < n and int(timestamps[j]) == t:
            j += 1
        if pending:
            boundary = (last_t // every_us + 1) * every_us
            if boundary <= t:
                out.append(boundary)
                pending = 0
        pending += j - i
        last_t = t
        if pending >= max_new:
            out.append(t + 1)
            pending = 0
        i = j
    if pending:
        out.append((last_t // every_us + 1) * every_us)
    return out


def _format_rating(r: float | None) -> str | None:
    return None if r is None or r != r else f"{r:g}"


def user_snapshots(interactions: pa.Table, every: str, max_new: int) -> tuple[pa.Table, pa.Table]:
    """Interactions -> (the interactions sorted by user, time, item; one row per user snapshot).

    Snapshot rows: `user_id`, `event_timestamp` (the snapshot time `s`, see `snapshot_times`),
    `n_history` (the user's interactions with timestamp `< s`) and `history_start` (the row of the
    user's first interaction in the sorted table), users in order, each user's snapshots in time
    order. The same snapshots serve every `serialize.user_vectors` mode. One Python pass per user
    (`snapshot_times`), in the driver.
    """
    every_us = parse_duration_us(every)
    order = pc.sort_indices(interactions, [("user_id", "ascending"), ("event_timestamp", "ascending"),
                                           ("item_id", "ascending")])
    inter = interactions.take(order)
    ts = inter.column("event_timestamp").cast(pa.int64()).to_numpy()
    codes = pc.dictionary_encode(inter.column("user_id").combine_chunks()).indices.to_numpy()
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]]).astype(np.int64)
    times, covered, starts = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        user_ts = ts[a:b]
        s = np.asarray(snapshot_times(user_ts, every_us, max_new), dtype=np.int64)
        times.append(s)
        covered.append(np.searchsorted(user_ts, s, side="left"))  # interactions with t < s
        starts.append(np.full(len(s), a, dtype=np.int64))
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))
    start = cat(starts, np.int64)
    snaps = pa.table({
        "user_id": inter.column("user_id").take(pa.array(start)),
        "event_timestamp": pa.array(cat(times, np.int64)).cast(TIMESTAMP),
        "n_history": pa.array(cat(covered, np.int64)),
        "history_start": pa.array(start),
    })
    return inter, snaps


def user_snapshot_rows(interactions: pa.Table, items: pa.Table, history_item_template: str,
                       user_template: str, separator: str, history_length: int, every: str,
                       max_new: int, empty_history: str = "nothing yet") -> pa.Table:
    """Interactions -> user text rows, one per snapshot, with `n_history` (interactions covered).

    Text = `user_template` with `{history}` = the last `history_length` interactions before the
    snapshot, newest first, each rendered with `history_item_template` over the item's fields plus
    `rating` and `date`; `{history}` is `empty_history` for the first snapshot.
    """
    item_rows = {r["item_id"]: r for r in items.to_pylist()}
    inter, snaps = user_snapshots(interactions, every, max_new)
    users = inter.column("user_id").to_pylist()
    item_ids = inter.column("item_id").to_pylist()
    ratings = inter.column("rating").to_pylist()
    dates = pc.strftime(inter.column("event_timestamp"), format="%Y-%m-%d").to_pylist()

    rendered: list[str] = []
    for k, item_id in enumerate(item_ids):
        values = dict(item_rows[item_id])
        values.update(rating=_format_rating(ratings[k]), date=dates[k])
        rendered.append(render(history_item_template, values, f"interaction of {users[k]!r}"))

    out_text = []
    for start, covered in zip(snaps.column("history_start").to_pylist(), snaps.column("n_history").to_pylist()):
        lo = max(0, covered - history_length)
        # an item without text renders as nothing and is left out of the list
        history = separator.join(r for r in reversed(rendered[start + lo:start + covered]) if r) \
            or empty_history
        out_text.append(render(user_template, {"history": history, "user_id": users[start]},
                               f"user {users[start]!r}"))
    return pa.table({
        "entity": pa.array(["user"] * snaps.num_rows, pa.string()),
        "entity_id": snaps.column("user_id").cast(pa.string()),
        "event_timestamp": snaps.column("event_timestamp"),
        "text": pa.array(out_text, pa.string()),
        "n_history": snaps.column("n_history"),
    })


def check_item_template(template: str, items: pa.Table) -> None:
    """Fail before any work when the template names a field the items lack."""
    for f in template_fields(template):
        if f not in items.column_names:
            raise ValueError(f"serialize.item_template: field {{{f}}} is not an item column "
                           f"(available: {items.column_names}; text fields: {list(ITEM_TEXT_FIELDS)})")


def serialize_dataset(items: pa.Table, interactions: pa.Table, cfg, valid_from: int) -> tuple[pa.Table, pa.Table]:
    """Items and interactions -> (item text rows, user snapshot rows), as `cfg` (a
    SerializeConfig) describes. `valid_from`: µs since the epoch, see `item_text_rows`. Under
    `user_vectors` items_mean / items_recency the user rows carry no `text` (nothing of the user
    is encoded): `entity`, `entity_id`, `event_timestamp`, `n_history` of the same snapshots."""
    check_item_template(cfg.item_template, items)
    item_rows = item_text_rows(items, cfg.item_template, valid_from)
    if getattr(cfg, "user_vectors", "text") != "text":
        # user vectors pooled from item vectors (llmrec_ray/user_vectors.py): snapshots, no text
        _, snaps = user_snapshots(interactions, cfg.snapshot_every, cfg.snapshot_max_new)
        return item_rows, pa.table({
            "entity": pa.array(["user"] * snaps.num_rows, pa.string()),
            "entity_id": snaps.column("user_id").cast(pa.string()),
            "event_timestamp": snaps.column("event_timestamp"),
            "n_history": snaps.column("n_history"),
        })
    user_rows = user_snapshot_rows(
        interactions, items, cfg.history_item_template, cfg.user_template, cfg.history_separator,
        cfg.history_length, cfg.snapshot_every, cfg.snapshot_max_new, cfg.empty_history)
    return item_rows, user_rows
