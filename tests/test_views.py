"""The views' files: their schemas agree with the Feast declarations, a write killed at any step
leaves the old rows or the new ones, and what a killed write left is cleared on the next open."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_storage import each_kill

from llmrec_ray.schemas import EMBEDDING, TIMESTAMP
from llmrec_ray.views import ITEM_METADATA_VIEW, ITEM_STATS_VIEW, ITEM_TEXT_VIEW, VIEWS, ViewFiles

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_the_feast_declarations_match_the_view_specs(repo_dir):
    """feature_repo/features.py declares every view of `views.VIEWS` (the tower views too, once
    sources.json names them) with the same entity key, the same features in the same order, each
    of the Feast type of its Arrow type, and event_timestamp as the time column."""
    from feast import Entity, FeatureView
    from feast.types import Array, Bool, Float32, Int64, String
    from feast.value_type import ValueType

    from llmrec_ray.featurestore import FeatureRepo

    feast_type = {pa.string(): String, pa.int64(): Int64, pa.float32(): Float32, pa.bool_(): Bool,
                  EMBEDDING: Array(Float32)}
    (repo_dir / "data").mkdir()
    (repo_dir / "data" / "sources.json").write_text(json.dumps(
        {view: {"path": f"data/{view}", "tags": {}} for view in VIEWS}))
    objects = FeatureRepo(repo_dir).declarations()
    declared = {o.name: o for o in objects if isinstance(o, FeatureView)}
    entities = {o.name: o for o in objects if isinstance(o, Entity)}
    assert sorted(declared) == sorted(VIEWS)
    for name, spec in VIEWS.items():
        fv = declared[name]
        keys = [(entities[e].join_key, entities[e].value_type) for e in fv.entities]
        assert keys == [(spec.key, ValueType.STRING)], name
        assert [f.name for f in fv.features] == list(spec.columns), name
        for field in fv.features:
            assert field.dtype == feast_type[spec.columns[field.name]], (name, field.name)
        assert fv.batch_source.timestamp_field == "event_timestamp", name


# ---- a write killed at each step ----------------------------------------------------------------

def metadata(ids, days):
    return pa.table({"item_id": ids, "event_timestamp": pa.array(
        [T0 + timedelta(days=d) for d in days], TIMESTAMP), "title": [f"t-{i}" for i in ids],
        "genres": ["g"] * len(ids)})


def text_vectors(ids, value):
    return pa.table({"item_id": ids, "event_timestamp": pa.array([T0] * len(ids), TIMESTAMP),
                     "embedding": pa.array([[value, 1.0]] * len(ids), EMBEDDING),
                     "n_tokens": pa.array([2] * len(ids), pa.int64()), "truncated": [False] * len(ids)})


def rows(table: pa.Table) -> list:
    return sorted(tuple(r.values()) for r in table.to_pylist())


@pytest.mark.parametrize("view, old, new, old_key, new_key", [
    # the same directory rewritten, rows over other months
    (ITEM_METADATA_VIEW, metadata(["i1", "i2"], [0, 40]), metadata(["i1", "i3", "i4"], [0, 70, 90]),
     None, None),
    # another encoder: a new directory, and sources.json flips to it
    (ITEM_TEXT_VIEW, text_vectors(["i1", "i2"], 0.0), text_vectors(["i1"], 5.0), "enc-A", "enc-B"),
])
def test_a_view_write_killed_at_each_step_leaves_old_or_new_rows(tmp_path, view, old, new, old_key, new_key):
    def setup(step):
        repo = tmp_path / f"k{step}"
        ViewFiles(repo).write_view(view, old, encoder_key=old_key)
        return repo

    def check(repo, finished):
        files = ViewFiles(repo)  # what a reader opening the repo now finds
        got = rows(files.read_view(view))
        assert got == rows(new) if finished else got in (rows(old), rows(new))
        tags = files.sources()[view]["tags"]
        assert tags.get("encoder_key", "unspecified") in (old_key or "unspecified", new_key or "unspecified")

    assert each_kill(setup, lambda repo: ViewFiles(repo).write_view(view, new, encoder_key=new_key),
                     check) >= 10


def stats_rows() -> pa.Table:
    spec = VIEWS[ITEM_STATS_VIEW]
    return pa.table({"item_id": ["i1"], "event_timestamp": pa.array([T0], TIMESTAMP),
                     **{c: pa.array([1], t) for c, t in spec.columns.items()}})


def test_what_a_killed_write_left_is_cleared_on_open(tmp_path):
    files = ViewFiles(tmp_path)
    path = files.write_view(ITEM_METADATA_VIEW, metadata(["i1"], [0]))
    current = path.resolve().name
    # long ago: a version written but never linked, a temp link to it, a temp sources.json
    orphan = path.parent / f".{path.name}.v-0123abcd"
    (orphan / "month=2024-01").mkdir(parents=True)
    link = path.parent / f".{path.name}.tmp-4567cdef"
    os.symlink(orphan.name, link)
    temp = files.data_dir / ".sources.json.tmp-89abcdef.json"
    temp.write_text("{")
    for leftover in (orphan, link, temp):
        os.utime(leftover, (0, 0), follow_symlinks=False)
    young = path.parent / f".{path.name}.v-feedf00d"  # just now: a write in flight elsewhere
    young.mkdir()
    # an older build's plain directory, renamed away by the two-rename fallback, its name free
    legacy = files.data_dir / f".{ITEM_STATS_VIEW}.old-deadbeef"
    legacy.mkdir()
    pq.write_table(stats_rows(), legacy / "part-0.parquet")
    files = ViewFiles(tmp_path)
    assert sorted(p.name for p in files.data_dir.iterdir()) == sorted(
        [young.name, current, ITEM_METADATA_VIEW, ITEM_STATS_VIEW, "sources.json"])
    assert rows(files.read_view(ITEM_STATS_VIEW)) == rows(stats_rows())
    assert rows(files.read_view(ITEM_METADATA_VIEW)) == rows(metadata(["i1"], [0]))
