"""Loaders: every source becomes the canonical tables of `llmrec_ray.schemas`.

`load_dataset(config.data)` picks the loader; each returns a `Dataset` whose rejects ledger
accounts for every input row that was not accepted.
"""

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


def load_dataset(cfg, given_split: bool = False) -> Dataset:
    """Load the dataset described by a `DataConfig`. `given_split` (evaluate.protocol given): the
    interactions carry a `split` column (train / valid / test) from the data; generic source only."""
    if given_split and cfg.source != "generic":
        raise ValueError(f"evaluate.protocol given: data.source {cfg.source} has no split of its "
                         "own; use data.source generic with a split column or split files")
    if cfg.source == "synthetic":
        from llmrec_ray.datasets.synthetic import load_synthetic

        return load_synthetic(cfg)
    if cfg.source.startswith("movielens"):
        from llmrec_ray.datasets.movielens import load_movielens

        return load_movielens(cfg)
    if cfg.source == "generic":
        from llmrec_ray.datasets.generic import load_generic

        return load_generic(cfg, given_split)
    raise ValueError(f"data.source: unknown source {cfg.source!r}")
