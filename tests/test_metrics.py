"""Top-K ranking and ranking metrics (llmrec_ray.metrics), checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec_ray.metrics import METRICS, ranking_metrics, top_k

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
# Discount of rank r: 1/log2(r+1): rank 1 -> 1, rank 2 -> 1/log2(3) = 0.630930, rank 3 -> 0.5.
# Every expected value below is a literal worked out by hand from these lists (none is computed
# with the metric's own formula), so a wrong discount, ideal DCG, denominator or mean fails.


def test_ranking_metrics_at_1_hand_computed():
    got = ranking_metrics(top_k(SCORES, None, 3), TRUTH, [1])
    assert set(got) == {"recall@1", "precision@1", "hr@1", "ndcg@1", "f1@1", "mrr@1", "users"}
    assert got["users"] == 2
    # u0: 1 hit of 2 -> recall .5, precision 1, hr 1, DCG 1 / IDCG 1 -> ndcg 1,
    #     f1 = 2*1*.5/1.5 = .666667, mrr 1/1.   u1: no hit -> all 0.   Means:
    assert got["recall@1"] == pytest.approx(0.25, abs=1e-9)
    assert got["precision@1"] == pytest.approx(0.5, abs=1e-9)
    assert got["hr@1"] == pytest.approx(0.5, abs=1e-9)
    assert got["ndcg@1"] == pytest.approx(0.5, abs=1e-9)
    assert got["f1@1"] == pytest.approx(0.333333, abs=1e-6)
    assert got["mrr@1"] == pytest.approx(0.5, abs=1e-9)


def test_ranking_metrics_at_2_hand_computed():
    got = ranking_metrics(top_k(SCORES, None, 3), TRUTH, [2])
    # u0: rel [1, 0]: recall 1/2, precision 1/2, hr 1, mrr 1, f1 = 2*.5*.5/1 = .5;
    #     DCG = 1; IDCG over min(2, |truth|=2) = 2 ranks = 1 + 0.630930 = 1.630930 -> ndcg 0.613147
    # u1: rel [0, 1]: recall 1, precision 1/2, hr 1, mrr 1/2, f1 = 2*.5*1/1.5 = .666667;
    #     DCG = 0.630930; IDCG over min(2, 1) = 1 rank = 1 -> ndcg 0.630930
    assert got["recall@2"] == pytest.approx(0.75, abs=1e-9)
    assert got["precision@2"] == pytest.approx(0.5, abs=1e-9)
    assert got["hr@2"] == pytest.approx(1.0, abs=1e-9)
    assert got["ndcg@2"] == pytest.approx((0.613147 + 0.630930) / 2, abs=1e-6)  # 0.622038
    assert got["f1@2"] == pytest.approx((0.5 + 0.666667) / 2, abs=1e-6)  # 0.583333
    assert got["mrr@2"] == pytest.approx(0.75, abs=1e-9)


def test_ranking_metrics_at_3_hand_computed():
    got = ranking_metrics(top_k(SCORES, None, 3), TRUTH, [3])
    # u0: rel [1, 0, 1]: recall 2/2 = 1, precision 2/3, hr 1, mrr 1, f1 = 2*(2/3)*1/(5/3) = .8;
    #     DCG = 1 + 0.5 = 1.5 (hits at ranks 1 and 3); IDCG over min(3, 2) = 2 ranks = 1.630930
    #     -> ndcg 1.5 / 1.630930 = 0.919721
    # u1: rel [0, 1, 0]: recall 1, precision 1/3, hr 1, mrr 1/2, f1 = 2*(1/3)*1/(4/3) = .5;
    #     DCG = 0.630930; IDCG = 1 -> ndcg 0.630930
    assert got["recall@3"] == pytest.approx(1.0, abs=1e-9)
    assert got["precision@3"] == pytest.approx(0.5, abs=1e-9)
    assert got["hr@3"] == pytest.approx(1.0, abs=1e-9)
    assert got["ndcg@3"] == pytest.approx((0.919721 + 0.630930) / 2, abs=1e-6)  # 0.775325
    assert got["f1@3"] == pytest.approx(0.65, abs=1e-9)
    assert got["mrr@3"] == pytest.approx(0.75, abs=1e-9)


def test_several_ks_at_once_equal_each_k_alone():
    topk = top_k(SCORES, None, 3)
    together = ranking_metrics(topk, TRUTH, [1, 2, 3])
    for k in (1, 2, 3):
        alone = ranking_metrics(topk, TRUTH, [k])
        assert {key: v for key, v in together.items() if key.endswith(f"@{k}") or key == "users"} == alone


def test_ndcg_rewards_a_hit_higher_in_the_list():
    # one user, truth {7}, the hit at rank 1, 2, 3: ndcg@3 = 1, 1/log2(3) = 0.630930, 1/log2(4) = 0.5
    # (a 1/rank discount would give 1, .5, .333; no discount 1, 1, 1)
    lists = [[7, 1, 2], [1, 7, 2], [1, 2, 7]]
    got = [ranking_metrics(np.array([ranks]), [{7}], [3])["ndcg@3"] for ranks in lists]
    assert got == pytest.approx([1.0, 0.630930, 0.5], abs=1e-6)
    # mrr: 1, 1/2, 1/3; recall and hr do not depend on the position
    mrr = [ranking_metrics(np.array([ranks]), [{7}], [3])["mrr@3"] for ranks in lists]
    assert mrr == pytest.approx([1.0, 0.5, 1 / 3], abs=1e-9)


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
    # (an IDCG over all 3 truth items would give 1.630930/(1.630930+0.5) = 0.765361 instead)
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


# --- the vectorized top-K and metrics equal the former per-row / per-user loops ----------------

def top_k_reference(scores, mask, k):
    """The former `top_k`: one row at a time (the reference)."""
    s = np.asarray(scores).astype(np.float64, copy=True)
    if mask is not None:
        s[mask] = -np.inf
    rows, n_items = s.shape
    k_eff = min(k, n_items)
    out = np.full((rows, k), -1, dtype=np.int64)
    if k_eff == 0 or rows == 0:
        return out
    kth = -np.partition(-s, k_eff - 1, axis=1)[:, k_eff - 1]
    for r in range(rows):
        cand = np.flatnonzero(s[r] >= kth[r])
        order = cand[np.argsort(-s[r, cand], kind="stable")][:k_eff]
        order = order[~np.isneginf(s[r, order])]
        out[r, :len(order)] = order
    return out


def ranking_metrics_reference(topk, truth, ks):
    """The former `ranking_metrics`: one user at a time, summed in user order (the reference)."""
    out = {}
    evaluated = [u for u, t in enumerate(truth) if t]
    for k in ks:
        sums = dict.fromkeys(METRICS, 0.0)
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        for u in evaluated:
            rel = np.array([i in truth[u] for i in topk[u, :k]], dtype=np.float64)
            hits = rel.sum()
            recall = hits / len(truth[u])
            precision = hits / k
            idcg = discounts[:min(k, len(truth[u]))].sum()
            sums["recall"] += recall
            sums["precision"] += precision
            sums["hr"] += float(hits > 0)
            sums["ndcg"] += float((rel * discounts).sum() / idcg)
            sums["f1"] += 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
            first = np.flatnonzero(rel)
            sums["mrr"] += 0.0 if first.size == 0 else 1.0 / (first[0] + 1)
        n = max(len(evaluated), 1)
        for m in METRICS:
            out[f"{m}@{k}"] = sums[m] / n
    out["users"] = len(evaluated)
    return out


def random_case(rng, trial):
    """Scores with many ties (small integers) or none (normals), NaN and -inf scores, masks
    light to full (row 0 fully masked), k below and above the catalogue."""
    n_rows, n_items, k = int(rng.integers(0, 40)), int(rng.integers(0, 70)), int(rng.integers(1, 90))
    if trial % 2:
        scores = rng.integers(0, 4, (n_rows, n_items)).astype(np.float64)
    else:
        scores = rng.normal(size=(n_rows, n_items)).astype(np.float32 if trial % 4 else np.float64)
    if trial % 5 == 0:
        scores = scores.astype(np.float64)
        scores[rng.random(scores.shape) < 0.1] = np.nan
    if trial % 7 == 0:
        scores = scores.astype(np.float64)
        scores[rng.random(scores.shape) < 0.1] = -np.inf
    mask = None if trial % 3 == 0 else rng.random(scores.shape) < rng.random()
    if mask is not None and n_rows:
        mask[0] = True
    return scores, mask, k


def test_top_k_equals_the_per_row_reference_on_random_scores():
    rng = np.random.default_rng(0)
    for trial in range(300):
        scores, mask, k = random_case(rng, trial)
        np.testing.assert_array_equal(top_k(scores, mask, k), top_k_reference(scores, mask, k))


def test_top_k_equals_the_reference_across_chunks(monkeypatch):
    """Rows ranked in several chunks (a small CHUNK_CELLS), with tied rows among untied ones."""
    from llmrec_ray import metrics

    monkeypatch.setattr(metrics, "CHUNK_CELLS", 200)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(120, 30))
    scores[::5] = np.round(scores[::5])  # ties across the k-th place
    mask = rng.random(scores.shape) < 0.3
    mask[7] = True
    np.testing.assert_array_equal(top_k(scores, mask, 8), top_k_reference(scores, mask, 8))


def test_ranking_metrics_equal_the_per_user_reference_exactly():
    """The same values to the last bit, as plain Python numbers, over ties, -1 padding, empty and
    duplicate-free truths."""
    rng = np.random.default_rng(2)
    for trial in range(300):
        scores, mask, k = random_case(rng, trial)
        n_rows, n_items = scores.shape
        topk = top_k(scores, mask, k)
        truth = [set(rng.choice(max(n_items, 1), int(rng.integers(1, 6))).tolist())
                 if rng.random() < 0.8 else set() for _ in range(n_rows)]
        ks = sorted(set(rng.integers(1, k + 1, 3).tolist()))
        got, want = ranking_metrics(topk, truth, ks), ranking_metrics_reference(topk, truth, ks)
        assert list(got) == list(want)
        assert list(got.values()) == list(want.values())
        assert all(type(v) in (float, int) for v in got.values())  # plain numbers: JSON and logs


def test_ranking_metrics_equal_the_reference_on_many_users():
    """Thousands of users at K up to 100: the means summed in user order, as the loop did."""
    rng = np.random.default_rng(3)
    topk = np.stack([rng.permutation(500)[:100] for _ in range(3000)])
    topk[::9, 60:] = -1
    truth = [set(rng.choice(500, int(rng.integers(0, 40))).tolist()) for _ in range(3000)]
    ks = [5, 10, 20, 50, 100]
    assert ranking_metrics(topk, truth, ks) == ranking_metrics_reference(topk, truth, ks)
