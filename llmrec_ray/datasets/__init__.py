"""Loaders: every source becomes the canonical tables of `llmrec_ray.schemas`.

`load_dataset(config.data)` picks the loader; each returns a `Dataset` whose rejects ledger
accounts for every input row that was not accepted.

One loader core serves every file-based source: `reader` (the one delimited-file reader and its
bad-row handler), `columns` (typed fields and the rejects of those that fail) and `validate`
(the rules every dataset satisfies, `finish_dataset`). `generic` maps a user's columns onto it;
`movielens` declares each release as its files, a ratings column mapping and its quirks, with
the releases' side files in `movielens_files`. `synthetic` needs no files.
"""

from __future__ import annotations

from llmrec_ray.datasets.base import Dataset

__all__ = ["Dataset", "load_dataset"]


def load_dataset(cfg, given_split: bool = False, unsplit: bool = False) -> Dataset:
    """Load the dataset described by a `DataConfig`. `given_split` (evaluate.protocol given): the
    interactions carry a `split` column (train / valid / test) from the data; `unsplit`
    (evaluate.protocol random): every row is `train` (the split is carved later), timestamps
    optional as under given; generic source only."""
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

        return load_generic(cfg, given_split or unsplit, unsplit=unsplit)
    raise ValueError(f"data.source: unknown source {cfg.source!r}")
