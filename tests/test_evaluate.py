"""Evaluation helpers: masks, truth sets, the guard; and the report: the tables and files."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llmrec_ray.metrics import METRICS
from llmrec_ray.model_inputs import QueryMask, query_mask, truth_sets
from llmrec_ray.report import format_table
from llmrec_ray.schemas import TIMESTAMP


def dense_masks_reference(item_ids, seen, items, query_times):
    """The whole (Q, I) mask built at once: the reference the per-block QueryMask must equal."""
    index = {item: i for i, item in enumerate(item_ids)}
    mask = np.zeros((len(seen), len(item_ids)), dtype=bool)
    for q, items_seen in enumerate(seen):
        mask[q, [index[i] for i in items_seen]] = True
    avail = items.column("available_from")
    if avail.null_count < items.num_rows:
        order = pc.index_in(pa.array(item_ids), value_set=items.column("item_id").combine_chunks())
        a = avail.combine_chunks().take(order).cast(pa.int64()).to_numpy(zero_copy_only=False)
        a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=-np.inf)
        mask |= a[None, :] > np.asarray(query_times, dtype=np.float64)[:, None]
    return mask


def test_masks_seen_and_not_yet_available():
    items = pa.table({"item_id": ["a", "b", "c"],
                      "available_from": pa.array([None, 0, 100], pa.int64()).cast(TIMESTAMP)})
    # query 1 saw a; c comes out at 100 > 50. query 2 saw b; c is out by 150. query 3 (the same
    # user as query 1, later) saw a and b.
    m = query_mask(["a", "b", "c"], [["a"], ["b"], ["a", "b"]], items, np.array([50, 150, 200]))[:]
    assert m.tolist() == [[True, False, True], [False, True, False], [True, True, False]]


def test_masks_without_availability():
    items = pa.table({"item_id": ["a", "b"], "available_from": pa.nulls(2, TIMESTAMP)})
    m = query_mask(["a", "b"], [["b"], []], items, np.array([0, 0]))[:]
    assert m.tolist() == [[False, True], [False, False]]


@pytest.mark.parametrize("with_availability", [True, False])
def test_query_mask_blocks_equal_the_dense_mask(with_availability):
    """Random seen lists (empty ones and repeats included) and release times (some unknown, an
    item missing from the items table): every block the ranking asks for (slices past the end,
    empty, stepped; index arrays; one row) equals the same rows of the dense reference."""
    rng = np.random.default_rng(7)
    item_ids = [f"i{k}" for k in range(40)]
    seen = [list(rng.choice(item_ids, rng.integers(0, 6))) for _ in range(57)]
    seen[3] = ["i5", "i5", "i0"]
    times = rng.integers(0, 1000, 57)
    release = rng.integers(0, 1000, 39).astype(object)
    release[::4] = None
    items = pa.table({"item_id": item_ids[:39],  # i39: not in the items table, always available
                      "available_from": (pa.array(list(release), pa.int64()) if with_availability
                                         else pa.nulls(39, pa.int64())).cast(TIMESTAMP)})
    want = dense_masks_reference(item_ids, seen, items, times)
    got = query_mask(item_ids, seen, items, times)
    assert isinstance(got, QueryMask) and got.shape == want.shape == (57, 40) and len(got) == 57
    assert (got.available_from is None) != with_availability
    assert want.any() and not want.all()
    for rows in (slice(0, 24), slice(48, 72), slice(24, 48), slice(57, 80), slice(None), slice(1, 50, 3),
                 np.array([5, 3, 3, 56]), np.array([], dtype=np.int64), 3, -1):
        np.testing.assert_array_equal(got[rows], want[rows])
    np.testing.assert_array_equal(query_mask(item_ids, seen, items, times)[:], want)


def test_query_mask_pickles_small():
    """What the Ray Train workers get: the seen items and the times, not a (Q, I) matrix."""
    n_queries, n_items = 2000, 5000
    item_ids = [f"i{k}" for k in range(n_items)]
    rng = np.random.default_rng(0)
    seen = [list(rng.choice(item_ids, 20)) for _ in range(n_queries)]
    items = pa.table({"item_id": item_ids,
                      "available_from": pa.array(rng.integers(0, 100, n_items), pa.int64()).cast(TIMESTAMP)})
    m = query_mask(item_ids, seen, items, rng.integers(0, 100, n_queries))
    size = len(pickle.dumps(m))
    assert size < 300_000 < n_queries * n_items  # seen + times: ~230 kB; dense: 10 MB
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m))[100:200], m[100:200])


def test_truth_sets():
    assert truth_sets([["a"], ["b", "a"], []], ["a", "b"]) == [{0}, {0, 1}, set()]


def test_format_table():
    m = {f"{n}@{k}": 0.5 for n in METRICS for k in (10, 20)}
    m["users"] = 7
    text = format_table({"all": {"two_tower": m, "popularity": m}, "cold_items": {"two_tower": m}}, [10, 20])
    lines = text.splitlines()
    assert lines[0] == "**all** (7 users)"
    assert lines[2].startswith("| model | recall@10 | ndcg@10")
    assert lines[2] == "| model | " + " | ".join(f"{n}@{k}" for k in (10, 20) for n in METRICS) + " |"
    assert lines[4] == "| two_tower | " + " | ".join(["0.5000"] * 12) + " |"
    assert lines[7] == "**cold_items** (7 users)" and len(lines) == 12


def test_write_results_json_markdown_and_charts(tmp_path):
    import json

    from llmrec_ray.report import write_results

    m = {f"{n}@{k}": 0.25 for n in METRICS for k in (10, 20)}
    m["users"] = 3
    results = {"all": {"hybrid": m, "popularity": m}, "cold_items": {"hybrid": m, "popularity": m}}
    files = write_results(results, tmp_path / "metrics.json")
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    assert "**cold_items** (3 users)" in (tmp_path / "metrics.md").read_text()
    pngs = [f for f in files if f.suffix == ".png"]
    assert [p.name for p in pngs] == ["metrics-all.png", "metrics-cold_items.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # with the tuning: its JSON beside, its lines (the value of the trial marked chosen) in the .md
    tuning = {"ease": {"chosen": {"l2": 10.0}, "trials": [{"l2": 1.0, "value": 0.125},
                                                          {"l2": 10.0, "value": 0.25, "chosen": True}],
                       "metric": "valid ndcg@20"},
              "served": {"served": "hybrid", "values": {}, "flagged": [], "reason": "r"}}
    files = write_results(results, tmp_path / "m.json", tuning)
    assert [f.name for f in files[:3]] == ["m.json", "m.md", "m-tuning.json"]
    assert json.loads((tmp_path / "m-tuning.json").read_text()) == tuning
    assert "- ease: l2=10.0 (of 2 tried on valid ndcg@20: 0.2500)" in (tmp_path / "m.md").read_text()


# ---- the guard: a model below popularity is flagged and not served ------------------------------

def test_a_model_below_popularity_is_flagged_and_the_best_validated_scorer_served():
    """The trained model is forced below popularity (it ranks the least popular items first):
    flagged in the record, the table and the text, and recommend serves the LLM-feature scorer
    best on validation instead (here a closed-form one); when every LLM-feature scorer is below
    popularity, the scorer best on validation of all."""
    from scipy.sparse import csr_matrix

    from llmrec_ray.baselines import EASE, Popularity
    from llmrec_ray.evaluate import Tuned, choose_served, validation_values
    from llmrec_ray.report import format_guard, format_summary
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
    peers = {"popularity": pop, "ease": ease, "text_ease": text}
    # single-point grids: no value recorded by the tuning, each measured on validation
    tuned = {n: Tuned(r, [{"value": None, "chosen": True}]) for n, r in peers.items()}
    values = validation_values(Backwards(), tuned, valid, "recall@1")
    served, record = choose_served(Backwards(), peers, None, values, "recall@1")
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
    two = {"popularity": tuned["popularity"], "ease": tuned["ease"]}
    served, record = choose_served(Backwards(), {"popularity": pop, "ease": ease}, None,
                                   validation_values(Backwards(), two, valid, "recall@1"), "recall@1")
    assert record["flagged"] == ["hybrid"] and record["served"] == "ease" and served is ease
    assert "at or below popularity" in record["reason"]
    # a value the tuning recorded is taken as recorded, not measured again
    recorded = {**tuned, "ease": Tuned(ease, [{"value": 0.5, "chosen": True}], 0.5)}
    assert validation_values(Backwards(), recorded, valid, "recall@1")["ease"] == 0.5
    # no validation queries: no values, the blend as tuned (here none: the model alone)
    served, record = choose_served(Backwards(), peers, None, None, "recall@1")
    assert served is None and record["served"] == "hybrid" and record["values"] == {}
