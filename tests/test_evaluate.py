"""Evaluation helpers: masks, truth sets, the table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from llmrec_ray.evaluate import format_table
from llmrec_ray.model_inputs import masks, truth_sets
from llmrec_ray.schemas import TIMESTAMP


def test_masks_seen_and_not_yet_available():
    items = pa.table({"item_id": ["a", "b", "c"],
                      "available_from": pa.array([None, 0, 100], pa.int64()).cast(TIMESTAMP)})
    # query 1 saw a; c comes out at 100 > 50. query 2 saw b; c is out by 150. query 3 (the same
    # user as query 1, later) saw a and b.
    m = masks(["a", "b", "c"], [["a"], ["b"], ["a", "b"]], items, np.array([50, 150, 200]))
    assert m.tolist() == [[True, False, True], [False, True, False], [True, True, False]]


def test_masks_without_availability():
    items = pa.table({"item_id": ["a", "b"], "available_from": pa.nulls(2, TIMESTAMP)})
    m = masks(["a", "b"], [["b"], []], items, np.array([0, 0]))
    assert m.tolist() == [[False, True], [False, False]]


def test_truth_sets():
    assert truth_sets([["a"], ["b", "a"], []], ["a", "b"]) == [{0}, {0, 1}, set()]


def test_format_table():
    m = {f"{n}@{k}": 0.5 for n in ("recall", "ndcg", "hr", "precision", "f1", "mrr") for k in (10, 20)}
    m["users"] = 7
    text = format_table({"all": {"two_tower": m, "popularity": m}, "cold_items": {"two_tower": m}}, [10, 20])
    lines = text.splitlines()
    assert lines[0] == "**all** (7 users)"
    assert lines[2].startswith("| model | recall@10 | ndcg@10")
    assert lines[4] == "| two_tower | " + " | ".join(["0.5000"] * 12) + " |"
    assert lines[7] == "**cold_items** (7 users)" and len(lines) == 12


def test_write_results_json_markdown_and_charts(tmp_path):
    import json

    from llmrec_ray.evaluate import write_results

    m = {f"{n}@{k}": 0.25 for n in ("recall", "ndcg", "hr", "precision", "f1", "mrr") for k in (10, 20)}
    m["users"] = 3
    results = {"all": {"hybrid": m, "popularity": m}, "cold_items": {"hybrid": m, "popularity": m}}
    files = write_results(results, tmp_path / "metrics.json")
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    assert "**cold_items** (3 users)" in (tmp_path / "metrics.md").read_text()
    pngs = [f for f in files if f.suffix == ".png"]
    assert [p.name for p in pngs] == ["metrics-all.png", "metrics-cold_items.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
