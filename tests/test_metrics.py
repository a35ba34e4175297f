"""Top-K ranking and ranking metrics (llmrec_ray.metrics), checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmrec_ray.metrics import METRICS, ranking_metrics, top_k

L3 = 1.0 / math.log2(3)  # discount of rank 2 = 0.6309...
L4 = 1.0 / math.log2(4)  # discount of rank 3 = 0.5

# Three users, four items.
SCORES = np.array([
    [0.9, 0.1, 0.8, 0.3],  # u0: ranking 0, 2, 3, 1
    [0.5, 0.5, 0.2, 0.5],  # u1: items 0, 1, 3 tie -> lower index first: 0, 1, 3, 2
    [0.0, 1.0, 2.0, 3.0],  # u2: no test item, skipped
])
TRUTH = [{0, 3}, {1}, set()]


# --- top_k -------------------------------------------------------------------------------------

def test_top_k_orders_by_score_and_breaks_ties_by_lower_index():
    got = top_k(SCORES, None, 4)
    assert got.shape == (3, 4)
    assert got.tolist() == [[0, 2, 3, 1], [0, 1, 3, 2], [3, 2, 1, 0]]


def test_top_k_all_tied_keeps_index_order():
    got = top_k(np.zeros((1, 5)), None, 3)
    assert got.tolist() == [[0, 1, 2]]


def test_top_k_masked_items_never_appear_even_with_top_score():
    mask = np.array([
        [True, False, False, False],  # u0: best item 0 masked -> 2, 3, 1
        [False, True, False, True],   # u1: 1 and 3 masked -> 0, 2
        [False, False, False, False],
    ])
    got = top_k(SCORES, mask, 3)
    assert got.tolist() == [[2, 3, 1], [0, 2, -1], [3, 2, 1]]
    for u in range(3):
        assert not (set(got[u].tolist()) & set(np.flatnonzero(mask[u]).tolist()))


def test_top_k_pads_with_minus_one_when_fewer_than_k_items_remain():
    scores = np.array([[3.0, 2.0, 1.0]])
    mask = np.array([[True, False, True]])
    # only item 1 is left: [1, -1, -1]
    assert top_k(scores, mask, 3).tolist() == [[1, -1, -1]]
    # k larger than the catalogue: padded to k columns
    got = top_k(scores, mask, 5)
    assert got.shape == (1, 5)
    assert got.tolist() == [[1, -1, -1, -1, -1]]
    # no mask, k > I: every item once, then padding
    assert top_k(scores, None, 5).tolist() == [[0, 1, 2, -1, -1]]


def test_top_k_does_not_modify_scores():
    scores = SCORES.copy()
    mask = np.ones_like(scores, dtype=bool)
    top_k(scores, mask, 2)
    np.testing.assert_array_equal(scores, SCORES)


# --- ranking_metrics ---------------------------------------------------------------------------

# u0 (truth {0, 3}) ranks [0, 2, 3]: rel = [1, 0, 1]
# u1 (truth {1})    ranks [0, 1, 3]: rel = [0, 1, 0]
# u2 (truth {})     skipped -> users = 2, each metric is the mean over u0 and u1.
#
# k=1
#   u0: hits 1; recall 1/2; precision 1; hr 1; DCG = 1/log2(2) = 1, IDCG (min(1,2)=1 term) = 1 -> ndcg 1
#       f1 = 2*1*0.5/1.5 = 2/3; mrr = 1/1
#   u1: hits 0 -> every metric 0
#   mean: recall .25, precision .5, hr .5, ndcg .5, f1 1/3, mrr .5
# k=2
#   u0: hits 1; recall .5; precision .5; hr 1; DCG = 1; IDCG = 1 + 1/log2(3) -> ndcg 1/(1+L3)
#       f1 = 2*.5*.5/1 = .5; mrr 1
#   u1: hits 1 (rank 2); recall 1; precision .5; hr 1; DCG = 1/log2(3); IDCG (min(2,1)=1 term) = 1
#       -> ndcg L3; f1 = 2*.5*1/1.5 = 2/3; mrr 1/2
#   mean: recall .75, precision .5, hr 1, ndcg (1/(1+L3) + L3)/2, f1 7/12, mrr .75
# k=3
#   u0: hits 2; recall 1; precision 2/3; hr 1; DCG = 1/log2(2) + 1/log2(4) = 1.5;
#       IDCG uses min(3, 2) = 2 terms: 1 + 1/log2(3) -> ndcg 1.5/(1+L3); f1 = 2*(2/3)*1/(5/3) = .8; mrr 1
#   u1: hits 1; recall 1; precision 1/3; hr 1; DCG = 1/log2(3); IDCG = 1 -> ndcg L3;
#       f1 = 2*(1/3)*1/(4/3) = .5; mrr 1/2
#   mean: recall 1, precision .5, hr 1, ndcg (1.5/(1+L3) + L3)/2, f1 .65, mrr .75
EXPECTED = {
    "recall@1": 0.25, "precision@1": 0.5, "hr@1": 0.5, "ndcg@1": 0.5, "f1@1": 1 / 3, "mrr@1": 0.5,
    "recall@2": 0.75, "precision@2": 0.5, "hr@2": 1.0, "ndcg@2": (1 / (1 + L3) + L3) / 2,
    "f1@2": 7 / 12, "mrr@2": 0.75,
    "recall@3": 1.0, "precision@3": 0.5, "hr@3": 1.0, "ndcg@3": (1.5 / (1 + L3) + L3) / 2,
    "f1@3": 0.65, "mrr@3": 0.75,
    "users": 2,
}


def test_ranking_metrics_hand_computed():
    got = ranking_metrics(top_k(SCORES, None, 3), TRUTH, [1, 2, 3])
    assert set(got) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_ndcg_numbers_spelled_out():
    # sanity of the reference itself: ndcg@2 = (0.61315 + 0.63093)/2, ndcg@3 = (0.91972 + 0.63093)/2
    assert EXPECTED["ndcg@2"] == pytest.approx((0.613147 + 0.630930) / 2, abs=1e-6)
    assert EXPECTED["ndcg@3"] == pytest.approx((0.919721 + 0.630930) / 2, abs=1e-6)


def test_skipped_user_does_not_change_the_means():
    topk = top_k(SCORES, None, 3)
    with_empty = ranking_metrics(topk, TRUTH, [1, 2, 3])
    without = ranking_metrics(topk[:2], TRUTH[:2], [1, 2, 3])
    assert with_empty == without
    # u2 first: still skipped
    reordered = ranking_metrics(topk[[2, 0, 1]], [TRUTH[2], TRUTH[0], TRUTH[1]], [1, 2, 3])
    assert reordered == with_empty


def test_ideal_dcg_uses_min_of_k_and_truth_size():
    # one user, truth {0, 1, 2} (3 items), k = 2, ranks [0, 1]: a perfect list at k=2.
    # DCG = 1 + 1/log2(3); IDCG uses min(2, 3) = 2 terms = 1 + 1/log2(3) -> ndcg = 1
    # (an IDCG over all 3 truth items would give (1+L3)/(1+L3+L4) = 0.7654 instead)
    got = ranking_metrics(np.array([[0, 1, 5]]), [{0, 1, 2}], [2])
    assert got["ndcg@2"] == pytest.approx(1.0)
    assert got["recall@2"] == pytest.approx(2 / 3)
    assert got["precision@2"] == pytest.approx(1.0)


def test_padding_is_never_a_hit_and_precision_divides_by_k():
    # only item 1 remains after the mask; it is the user's test item.
    topk = top_k(np.array([[3.0, 2.0, 1.0]]), np.array([[True, False, True]]), 3)
    assert topk.tolist() == [[1, -1, -1]]
    got = ranking_metrics(topk, [{1}], [3])
    # hits 1 -> precision 1/3, recall 1, f1 = 2*(1/3)*1/(4/3) = .5; DCG = IDCG = 1 -> ndcg 1
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["recall@3"] == pytest.approx(1.0)
    assert got["f1@3"] == pytest.approx(0.5)
    assert got["ndcg@3"] == pytest.approx(1.0)
    assert got["mrr@3"] == pytest.approx(1.0)
    # a user whose only test item is masked out (item 0) scores 0 on every metric
    miss = ranking_metrics(topk, [{0}], [3])
    assert all(miss[f"{m}@3"] == 0.0 for m in METRICS)


def test_no_evaluated_user_gives_zeros_and_zero_users():
    got = ranking_metrics(np.array([[0, 1], [1, 0]]), [set(), set()], [1, 2])
    assert got["users"] == 0
    assert all(got[f"{m}@{k}"] == 0.0 for m in METRICS for k in (1, 2))
