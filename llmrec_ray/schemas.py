"""The data contracts: the Arrow schemas that the stages share, and the rejects ledger.

Every stage reads and writes these tables and nothing else (see docs/design.md, "Data contracts").
A row that cannot be accepted is never dropped silently: it goes to a `Rejects` ledger with the
file, the line or row, the column and the reason, so that for every table
rows in = rows accepted + rows rejected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
        pa.field("rating", pa.float32()),
    ]
)

# Items: `item_id` plus whatever text fields the dataset has; these are the ones the loaders fill.
ITEM_TEXT_FIELDS = ("title", "genres", "description")
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("genres", pa.string()),
        pa.field("description", pa.string()),
        pa.field("available_from", TIMESTAMP),
        # when the item came out (a film's release date), if the data says; the item-age term
        # (train.item_age) reads it, or available_from where it is null. Unlike available_from it
        # does not restrict anything: MovieLens has ratings before a film's listed release date.
        pa.field("released", TIMESTAMP),
    ]
)

USERS = pa.schema([pa.field("user_id", pa.string(), nullable=False)])

# Feast maps only list<float>: not fixed-size lists, not tensor extension columns.
EMBEDDING = pa.list_(pa.float32())
VECTOR_ROWS = pa.schema(
    [
        pa.field("text_hash", pa.string(), nullable=False),
        pa.field("embedding", EMBEDDING, nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("table", pa.string()),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("column", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("value", pa.string()),
    ]
)


@dataclass
class Rejects:
    """Ledger of rejected input rows. `row` is the 1-based line of a text file, or the 0-based row
    of a table; `source` names the file (or the upstream table)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, table: str, source: str, row: int | None, column: str | None, reason: str,
            value: object = None) -> None:
        text = None if value is None else str(value)
        if text is not None and len(text) > 200:
            text = text[:200] + "..."
        self.rows.append(
            {"table": table, "source": source, "row": row, "column": column, "reason": reason,
             "value": text}
        )

    def count(self, table: str) -> int:
        return sum(1 for r in self.rows if r["table"] == table)

    def reasons(self, table: str) -> Counter:
        return Counter(r["reason"] for r in self.rows if r["table"] == table)

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=REJECTS)

    def __len__(self) -> int:
        return len(self.rows)


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select and cast `table` to `schema`, adding missing nullable columns as nulls. Extra
    columns are kept after the schema's own. Raises a ValueError naming a missing required column."""
    columns, fields = [], []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if not col.type.equals(f.type):
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise ValueError(f"{name}: column {f.name!r} has type {col.type}, "
                                     f"expected {f.type}: {e}") from e
        elif f.nullable:
            col = pa.nulls(table.num_rows, f.type)
        else:
            raise ValueError(f"{name}: required column {f.name!r} is missing "
                             f"(columns: {table.column_names})")
        columns.append(col)
        fields.append(f)
    for extra in table.column_names:
        if extra not in schema.names:
            columns.append(table.column(extra))
            fields.append(table.schema.field(extra))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
