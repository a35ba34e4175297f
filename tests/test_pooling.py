"""Token pooling (llmrec_ray.pooling) on literal tensors."""

from __future__ import annotations

import pytest
import torch

from llmrec_ray.pooling import (cls_pool, l2_normalize, last_pool, max_pool, mean_pool, pool,
                                 select_layers, weighted_mean_pool)

# (B=2, T=3, H=2)
HIDDEN = torch.tensor([
    [[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],  # text 0: two real tokens, one pad
    [[2.0, 0.0], [4.0, 6.0], [6.0, 3.0]],        # text 1: three real tokens
])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_mean_pool_excludes_padding():
    got = mean_pool(HIDDEN, MASK)
    assert got.shape == (2, 2)
    # text 0: ([1,2] + [3,4]) / 2 = [2, 3]          (the pad [100, -100] is ignored)
    # text 1: ([2,0] + [4,6] + [6,3]) / 3 = [4, 3]
    torch.testing.assert_close(got, torch.tensor([[2.0, 3.0], [4.0, 3.0]]))


def test_mean_pool_bool_mask_same_as_int_mask():
    torch.testing.assert_close(mean_pool(HIDDEN, MASK.bool()), mean_pool(HIDDEN, MASK))


def test_all_padding_row_pools_to_zeros():
    mask = torch.tensor([[0, 0, 0], [1, 0, 0]])
    got = mean_pool(HIDDEN, mask)
    # text 0: no real token -> zeros (count clamped to 1, sum 0); text 1: only [2, 0]
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    assert torch.isfinite(got).all()


def test_l2_normalize_unit_norm_and_zero_row_stays_zero():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    got = l2_normalize(x)
    # [3,4]/5 = [0.6, 0.8]; zero row stays zero; [-2,0]/2 = [-1, 0]
    torch.testing.assert_close(got, torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]))
    torch.testing.assert_close(got[[0, 2]].norm(dim=-1), torch.ones(2))


def test_pool_normalize_flag_and_dtype():
    raw = pool("mean", HIDDEN, MASK, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[2.0, 3.0], [4.0, 3.0]]))
    unit = pool("mean", HIDDEN.to(torch.bfloat16), MASK, normalize=True)
    assert unit.dtype == torch.float32
    # [2,3]/sqrt(13), [4,3]/5
    expected = torch.tensor([[2 / 13 ** 0.5, 3 / 13 ** 0.5], [0.8, 0.6]])
    torch.testing.assert_close(unit, expected)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))


def test_pool_unknown_name_raises_naming_it():
    with pytest.raises(ValueError, match="'attention'") as err:
        pool("attention", HIDDEN, MASK, normalize=True)
    assert "mean" in str(err.value) and "last" in str(err.value)  # the known poolings are listed


# Left-padded (as decoders are for last-token pooling), (B=2, T=4, H=2)
LEFT_HIDDEN = torch.tensor([
    [[9.0, 9.0], [1.0, 0.0], [3.0, 2.0], [5.0, -4.0]],  # text 0: pad, then 3 real tokens
    [[2.0, 1.0], [0.0, 4.0], [6.0, 1.0], [-2.0, 3.0]],  # text 1: 4 real tokens
])
LEFT_MASK = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])


def test_max_pool_ignores_padding():
    # text 0: max(1,3)=3, max(2,4)=4 (the pad's 100 is ignored); text 1: max(2,4,6)=6, max(0,6,3)=6
    assert torch.equal(max_pool(HIDDEN, MASK), torch.tensor([[3.0, 4.0], [6.0, 6.0]]))
    # left padding: text 0 over [1,0],[3,2],[5,-4] -> [5, 2]
    assert torch.equal(max_pool(LEFT_HIDDEN, LEFT_MASK)[0], torch.tensor([5.0, 2.0]))
    assert torch.equal(max_pool(HIDDEN, torch.zeros_like(MASK)), torch.zeros(2, 2))


def test_cls_and_last_pool_find_real_tokens_on_either_side():
    assert torch.equal(cls_pool(HIDDEN, MASK), torch.tensor([[1.0, 2.0], [2.0, 0.0]]))
    # right padding: last real token of text 0 is position 1, not the pad at 2
    assert torch.equal(last_pool(HIDDEN, MASK), torch.tensor([[3.0, 4.0], [6.0, 3.0]]))
    # left padding: first real token of text 0 is position 1; last is position 3
    assert torch.equal(cls_pool(LEFT_HIDDEN, LEFT_MASK), torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
    assert torch.equal(last_pool(LEFT_HIDDEN, LEFT_MASK), torch.tensor([[5.0, -4.0], [-2.0, 3.0]]))


def test_weighted_mean_pool_sgpt_weights():
    # text 0 (right-padded): weights 1/3, 2/3 -> (1*[1,2] + 2*[3,4]) / 3 = [7/3, 10/3]
    # text 1: weights 1/6, 2/6, 3/6 -> ([2,0] + 2*[4,6] + 3*[6,3]) / 6 = [28/6, 21/6]
    expected = torch.tensor([[7 / 3, 10 / 3], [28 / 6, 21 / 6]])
    torch.testing.assert_close(weighted_mean_pool(HIDDEN, MASK), expected)
    # left padding: text 0 weights 1/6, 2/6, 3/6 over positions 1..3 -> ([1,0]+2[3,2]+3[5,-4])/6
    torch.testing.assert_close(weighted_mean_pool(LEFT_HIDDEN, LEFT_MASK)[0],
                               torch.tensor([22 / 6, -8 / 6]))


def test_select_layers_mean_of_last_k():
    states = tuple(torch.full((1, 2, 2), float(v)) for v in (0, 1, 2, 3))  # embeddings + 3 layers
    assert torch.equal(select_layers(states, 1), torch.full((1, 2, 2), 3.0))
    assert torch.equal(select_layers(states, 2), torch.full((1, 2, 2), 2.5))  # (2 + 3) / 2
    assert torch.equal(select_layers(states, 3), torch.full((1, 2, 2), 2.0))  # (1 + 2 + 3) / 3
    with pytest.raises(ValueError, match="encode.layers"):
        select_layers(states, 4)  # the embedding output is not a layer
