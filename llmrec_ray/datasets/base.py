"""`Dataset`: what every loader returns (the canonical tables and the rejects ledger)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from llmrec_ray.schemas import Rejects


@dataclass
class Dataset:
    """Accepted rows of the three canonical tables, plus the ledger of rejected ones."""

    name: str
    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    rejects: Rejects = field(default_factory=Rejects)
    rows_in: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, int]]:
        """rows in = accepted + rejected, per table."""
        accepted = {"interactions": self.interactions.num_rows, "items": self.items.num_rows,
                    "users": self.users.num_rows}
        out = {}
        for table, n in accepted.items():
            rejected = self.rejects.count(table)
            out[table] = {"in": self.rows_in.get(table, n + rejected), "accepted": n,
                          "rejected": rejected}
        return out
