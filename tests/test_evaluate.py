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


# ---- the guard: a model below popularity is flagged and not served ------------------------------

def test_a_model_below_popularity_is_flagged_and_the_best_validated_scorer_served():
    """The trained model is forced below popularity (it ranks the least popular items first):
    flagged in the record, the table and the text, and recommend serves the LLM-feature scorer
    best on validation instead (here a closed-form one); when every LLM-feature scorer is below
    popularity, the scorer best on validation of all."""
    from scipy.sparse import csr_matrix

    from llmrec_ray.baselines import EASE, Popularity
    from llmrec_ray.evaluate import choose_served, format_guard, format_summary
    from llmrec_ray.models.text_ease import TextEASE
    from llmrec_ray.recommender import FitData, Queries, Recommender

    x = csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]],
                            np.float32))  # counts 3, 2, 2, 2
    fit = FitData(x, ["a", "b", "c", "d", "e"], ["i0", "i1", "i2", "i3"],
                  item_text=np.eye(4, dtype=np.float32))
    pop = Popularity().fit(fit)

    class Backwards(Recommender):  # learned nothing: the least popular first
        name = "hybrid"
        uses_text = True

        def score(self, queries):
            return -pop.score(queries)

    # a user of item 2 whose held-out item is 3: popularity answers item 0, the models item 3
    valid = {"queries": Queries(csr_matrix(np.array([[0, 0, 1, 0]], np.float32)), np.array([3]), {}),
             "mask": np.array([[False, False, True, False]]), "truth": [{3}]}
    ease, text = EASE(l2=1.0).fit(fit), TextEASE(l2=1.0, text_weight=0.1, neighbors=1).fit(fit)
    tuning = {n: {"chosen": {}, "trials": [{"value": None}]} for n in ("popularity", "ease", "text_ease")}
    peers = {"popularity": pop, "ease": ease, "text_ease": text}
    served, record = choose_served(Backwards(), peers, None, tuning, valid, "recall@1")
    assert record["values"] == {"hybrid": 0.0, "popularity": 0.0, "ease": 1.0, "text_ease": 1.0}
    assert record["flagged"] == ["hybrid"]
    assert record["served"] == "text_ease" and served is text
    text_lines = format_guard({**record, "metric": "valid recall@1"})
    assert "FAILED: hybrid learned nothing useful: it is not above popularity" in text_lines
    assert "recommend serves text_ease" in text_lines
    table = format_summary({"all": {"hybrid": {"users": 1, "recall@1": 0.0, "ndcg@1": 0.0},
                                    "popularity": {"users": 1, "recall@1": 1.0, "ndcg@1": 1.0}}},
                           1, record["flagged"])
    assert "hybrid (!)" in table and "popularity (!)" not in table and "learned nothing" in table
    # every LLM-feature scorer below popularity: the best validated scorer of all
    served, record = choose_served(Backwards(), {"popularity": pop, "ease": ease}, None,
                                   tuning, valid, "recall@1")
    assert record["flagged"] == ["hybrid"] and record["served"] == "ease" and served is ease
    assert "at or below popularity" in record["reason"]
