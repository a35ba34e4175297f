"""Validation shared by every loader: ids, duplicates, timestamps, ratings, referential integrity.

Loaders parse their files into canonical tables (see `llmrec_ray.schemas`) and record parse errors
in a `Rejects` ledger; `validate` then applies the rules every dataset must satisfy and moves each
failing row to the ledger with its reason. Nothing is dropped silently.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.datasets.base import Dataset
from llmrec_ray.datasets.columns import blank
from llmrec_ray.schemas import (INTERACTIONS, ITEM_TEXT_FIELDS, ITEMS, TIMESTAMP, USERS, Rejects,
                                conform)

if TYPE_CHECKING:
    from llmrec_ray.config import DataConfig


def _row_index(table: pa.Table) -> np.ndarray:
    if "_row" in table.column_names:
        return np.asarray(table.column("_row").to_numpy(zero_copy_only=False))
    return np.arange(table.num_rows)


def _reject(table: pa.Table, bad: np.ndarray, rejects: Rejects, name: str, source: str,
            column: str | None, reason: str) -> pa.Table:
    """Move rows where `bad` is True to `rejects`; return the rest. A `_source` column, when
    present, names each row's file (a table read from several files) instead of `source`."""
    if not bad.any():
        return table
    rows = _row_index(table)
    idx = np.flatnonzero(bad)
    values = table.column(column).take(pa.array(idx)).to_pylist() if column else [None] * len(idx)
    files = table.column("_source").take(pa.array(idx)).to_pylist() \
        if "_source" in table.column_names else [source] * len(idx)
    for i, value, file in zip(idx, values, files):
        rejects.add(name, file, int(rows[i]), column, reason, value)
    return table.filter(pa.array(~bad))


def _duplicates(table: pa.Table, columns: list[str]) -> np.ndarray:
    """True for every row whose key (`columns`) equals the key of an earlier row.

    Vectorised (a hash group-by keeping each key's first row) so that 25M interactions take
    seconds, not a Python loop over tuples.
    """
    out = np.ones(table.num_rows, dtype=bool)
    if table.num_rows == 0:
        return out
    keys = table.select(columns).append_column("_i", pa.array(np.arange(table.num_rows)))
    first = keys.group_by(columns).aggregate([("_i", "min")]).column("_i_min")
    out[np.asarray(first.to_numpy(zero_copy_only=False))] = False
    return out


def _first_of_key(table: pa.Table, column: str) -> np.ndarray:
    """For every row, the index of the first row with the same `column` value."""
    keys = table.select([column]).append_column("_i", pa.array(np.arange(table.num_rows)))
    first = keys.group_by([column]).aggregate([("_i", "min")])
    lookup = pc.index_in(table.column(column), value_set=first.column(column).combine_chunks())
    first_rows = first.column("_i_min").combine_chunks().take(lookup)
    return np.asarray(first_rows.to_numpy(zero_copy_only=False))


def reject_conflicting_items(items: pa.Table, rejects: Rejects, source: str) -> pa.Table:
    """Reject an item whose item_id repeats an earlier row's with a different text field (title,
    genres or description; null and "" count as equal), naming the first field that differs.
    Exact duplicates are left to `validate` ("duplicate item_id"), blank ids to its id rule."""
    fields = [f for f in ITEM_TEXT_FIELDS if f in items.column_names]
    if items.num_rows < 2 or "item_id" not in items.column_names or not fields:
        return items
    ids = items.column("item_id").cast(pa.string())
    first = _first_of_key(pa.table({"item_id": ids}), "item_id")
    later = (first != np.arange(items.num_rows)) & ~blank(ids)
    if not later.any():
        return items
    field = np.full(items.num_rows, -1)  # index in `fields` of the first differing field
    for j, f in enumerate(fields):
        text = pc.fill_null(items.column(f).cast(pa.string()), "")
        same = np.asarray(pc.equal(text, text.take(pa.array(first))), dtype=bool)
        field[later & (field < 0) & ~same] = j
    for j, f in enumerate(fields):
        items = _reject(items, field == j, rejects, "items", source, f,
                        f"duplicate item_id with different {f}")
        field = field[field != j]
    return items


def validate(interactions: pa.Table, items: pa.Table, users: pa.Table | None, rejects: Rejects,
             sources: dict[str, str], rating_range: tuple[float, float]) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Apply the dataset rules; return (interactions, items, users) holding only accepted rows.

    `sources` names the file behind each table ("interactions", "items", "users") for messages.
    A `_row` column, when present, carries each row's line number in its file and is removed here,
    as is `_source` (each row's file). A `split` column of the interactions (evaluate.protocol
    given) is kept after the schema's columns.
    When `users` is None the users are the distinct user ids of the accepted interactions.
    """
    items = _valid_entities(conform(items, ITEMS, sources["items"]), "items", "item_id", rejects,
                            sources["items"])
    # No text field is required: an item whose title, genres and description are all blank is
    # kept with its interactions (it gets no text vector, build.feature_tables), and counted.
    if users is not None:
        users = _valid_entities(conform(users, USERS, sources["users"]), "users", "user_id",
                                rejects, sources["users"])
    src = sources["interactions"]
    inter = _valid_events(conform(interactions, INTERACTIONS, src), rejects, src, rating_range)
    inter = _known_keys(inter, items, users, rejects, src)
    inter = _reject(inter, _duplicates(inter, ["user_id", "item_id", "event_timestamp"]), rejects,
                    "interactions", src, None, "duplicate (user_id, item_id, event_timestamp)")
    if users is None:
        users = pa.table({"user_id": pc.unique(inter.column("user_id").combine_chunks())})
        users = conform(users, USERS, "users")
    return _without_bookkeeping(inter, items, users, src)


def _valid_entities(table: pa.Table, name: str, key: str, rejects: Rejects, src: str) -> pa.Table:
    """Items or users: reject a blank key, then a key repeating an earlier row's."""
    table = _reject(table, blank(table.column(key)), rejects, name, src, key,
                    f"null or empty {key}")
    return _reject(table, _duplicates(table, [key]), rejects, name, src, key, f"duplicate {key}")


def _valid_events(inter: pa.Table, rejects: Rejects, src: str,
                  rating_range: tuple[float, float]) -> pa.Table:
    """Interactions on their own: ids present, a timestamp not in the future, a rating in range."""
    for col in ("user_id", "item_id"):
        inter = _reject(inter, blank(inter.column(col)), rejects, "interactions", src, col,
                        f"null or empty {col}")
    inter = _reject(inter, np.asarray(pc.is_null(inter.column("event_timestamp"))), rejects,
                    "interactions", src, "event_timestamp", "null or unparseable event_timestamp")
    # A feature store must not hold events from the future (a wrong unit or a clock error).
    now = pa.scalar(datetime.now(timezone.utc), TIMESTAMP)
    future = pc.fill_null(pc.greater(inter.column("event_timestamp"), now), False)
    inter = _reject(inter, np.asarray(future), rejects, "interactions", src, "event_timestamp",
                    "event_timestamp in the future")
    rating = inter.column("rating")
    lo, hi = rating_range
    out_of_range = pc.fill_null(pc.or_(pc.less(rating, lo), pc.greater(rating, hi)), False)
    out_of_range = pc.or_(out_of_range, pc.fill_null(pc.is_nan(rating), False))
    return _reject(inter, np.asarray(out_of_range), rejects, "interactions", src, "rating",
                   f"rating outside [{lo:g}, {hi:g}]")


def _known_keys(inter: pa.Table, items: pa.Table, users: pa.Table | None, rejects: Rejects,
                src: str) -> pa.Table:
    """Interactions against the accepted items (and users): a known item, available by then, a
    known user."""
    known_items = items.column("item_id").combine_chunks()
    unknown = ~np.asarray(pc.is_in(inter.column("item_id"), value_set=known_items))
    inter = _reject(inter, unknown, rejects, "interactions", src, "item_id",
                    "unknown item_id (not in the accepted items)")
    # An item's text features start at its available_from: an interaction before it cannot be joined.
    avail = items.column("available_from")
    if avail.null_count < len(avail):
        lookup = pc.index_in(inter.column("item_id"), value_set=known_items)
        item_avail = avail.combine_chunks().take(lookup)
        early = pc.fill_null(pc.less(inter.column("event_timestamp"), item_avail), False)
        inter = _reject(inter, np.asarray(early), rejects, "interactions", src, "event_timestamp",
                        "interaction before the item's available_from")
    if users is not None:
        unknown = ~np.asarray(pc.is_in(inter.column("user_id"),
                                       value_set=users.column("user_id").combine_chunks()))
        inter = _reject(inter, unknown, rejects, "interactions", src, "user_id",
                        "unknown user_id (not in the accepted users)")
    return inter


def _without_bookkeeping(inter: pa.Table, items: pa.Table, users: pa.Table,
                         src: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Drop `_row` and `_source`; the interactions in the schema's columns (then `split`)."""
    drop = [c for c in ("_row", "_source") if c in inter.column_names]
    keep = INTERACTIONS.names + (["split"] if "split" in inter.column_names else [])
    inter = conform(inter.drop_columns(drop), INTERACTIONS, src).select(keep)
    items = items.drop_columns([c for c in ("_row",) if c in items.column_names])
    users = users.drop_columns([c for c in ("_row",) if c in users.column_names])
    return inter, items, users


def check_reject_fraction(counts: dict[str, dict[str, int]], rejects: Rejects, max_fraction: float,
                          sources: dict[str, str]) -> None:
    """Raise when a table lost more than `max_fraction` of its rows, naming the top reasons."""
    for table, c in counts.items():
        if c["in"] and c["rejected"] / c["in"] > max_fraction:
            top = ", ".join(f"{r} ({n})" for r, n in rejects.reasons(table).most_common(3))
            example = next(r for r in rejects.rows if r["table"] == table)
            raise ValueError(
                f"{sources.get(table, table)}: {c['rejected']} of {c['in']} {table} rows rejected "
                f"(more than data.max_reject_fraction={max_fraction:g}); reasons: {top}; first: "
                f"row {example['row']}, column {example['column']}: {example['reason']}")


def finish_dataset(cfg: DataConfig, inter: pa.Table, items: pa.Table, users: pa.Table | None,
                   rejects: Rejects, sources: dict[str, str], rows_in: dict[str, int]) -> Dataset:
    """Every loader's last step: validate, check the reject fraction (`cfg.max_reject_fraction`)
    and the rows in = accepted + rejected invariant; the dataset is named `cfg.source`.

    `rows_in` counts each table's input rows; an extra "tags" entry (side table of tags) counts
    toward the reject fraction only. When `users` is None the users come from the interactions.
    Items repeating an item_id with different text are rejected first (`reject_conflicting_items`);
    no accepted interaction at all is a ValueError (there is nothing to build features from).
    """
    items = reject_conflicting_items(items, rejects, sources["items"])
    inter, items, users_out = validate(inter, items, users, rejects, sources,
                                       tuple(cfg.rating_range))
    accepted = {"interactions": inter.num_rows, "items": items.num_rows, "users": users_out.num_rows}
    if users is None:
        rows_in["users"] = users_out.num_rows
    counts = {t: {"in": rows_in[t], "rejected": rejects.count(t)} for t in accepted}
    if "tags" in rows_in:
        counts["tags"] = {"in": rows_in.pop("tags"), "rejected": rejects.count("tags")}
    check_reject_fraction(counts, rejects, cfg.max_reject_fraction, sources)
    if inter.num_rows == 0:
        top = ", ".join(f"{r} ({n})" for r, n in rejects.reasons("interactions").most_common(3))
        raise ValueError(f"{sources['interactions']}: no interactions accepted out of "
                         f"{rows_in['interactions']}" + (f"; reasons: {top}" if top else ""))
    for table, n in accepted.items():
        if rows_in[table] != n + rejects.count(table):
            raise RuntimeError(f"{sources.get(table, table)}: {rows_in[table]} {table} rows in but "
                               f"{n} accepted + {rejects.count(table)} rejected")
    return Dataset(name=cfg.source, interactions=inter, items=items, users=users_out, rejects=rejects,
                   rows_in=rows_in)
