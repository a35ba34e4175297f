"""Token pooling (llmrec_ray.pooling) on literal tensors."""

from __future__ import annotations

import pytest
import torch

from llmrec_ray.pooling import l2_normalize, mean_pool, pool

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
    with pytest.raises(ValueError, match="'cls'") as err:
        pool("cls", HIDDEN, MASK, normalize=True)
    assert "mean" in str(err.value)  # the known poolings are listed
