"""Persistent embedding cache: vector rows keyed by `text_hash`, in parquet part files.

`text_hash` covers the text and everything that changes its vector (model, pooling, layers,
max_length, normalisation, EOS, dtype, prompt: `text_model.encoder_key`), so one cache directory serves
every encoder safely. A re-run
on the same data encodes nothing; new texts are encoded and appended as a new part
(`storage.atomic_file`: written beside, then renamed, so a crash never leaves a half-written part).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from llmrec_ray.schemas import VECTOR_ROWS
from llmrec_ray.storage import atomic_file

logger = logging.getLogger(__name__)


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.exists() else []

    def lookup(self, hashes: pa.Array) -> pa.Table:
        """The cached vector rows for `hashes` (each hash at most once)."""
        parts = self.parts()
        if not parts or len(hashes) == 0:
            return VECTOR_ROWS.empty_table()
        ds = pads.dataset([str(p) for p in parts], schema=VECTOR_ROWS, format="parquet")
        hits = ds.to_table(filter=pc.field("text_hash").isin(hashes))
        if hits.num_rows:  # the same text may sit in two parts (two builds raced): keep one
            first = pc.index_in(pc.unique(hits.column("text_hash")), hits.column("text_hash"))
            hits = hits.take(first)
        return hits.select(VECTOR_ROWS.names).cast(VECTOR_ROWS)

    def add(self, vectors: pa.Table) -> Path | None:
        """Append vector rows as a new part."""
        if vectors.num_rows == 0:
            return None
        part = self.path / f"part-{uuid.uuid4().hex}.parquet"
        with atomic_file(part) as tmp:
            pq.write_table(vectors.select(VECTOR_ROWS.names).cast(VECTOR_ROWS), tmp)
        logger.info("cache: %d vectors added to %s", vectors.num_rows, self.path)
        return part

    def __len__(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts())
