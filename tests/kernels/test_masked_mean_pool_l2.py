"""Triton masked_mean_pool_l2 against the float64 reference. Without CUDA it runs under
TRITON_INTERPRET=1 on CPU tensors (see conftest.py), so the cases stay small; with CUDA the
same table runs compiled, plus the GPU-only cases at the end."""
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'postemb_rt[gpu]')")

from postemb_rt.kernels.masked_mean_pool_l2 import masked_mean_pool_l2  # noqa: E402
from postemb_rt.ops.reference import masked_mean_pool_l2_ref  # noqa: E402

from .cases import HIDDEN_DTYPES, MASK_DTYPES, SMALL_TABLE, make_inputs  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# fp32 accumulation; the reference sees the same (rounded) fp16/bf16 inputs in float64.
TOL = {torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}


def run(hidden, mask, weight, bias, normalize=True):
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    out = masked_mean_pool_l2(dev(hidden), dev(mask), dev(weight), dev(bias), normalize=normalize)
    ref = masked_mean_pool_l2_ref(hidden, mask, weight, bias, normalize=normalize, dtype=torch.float64)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    return out.cpu().double(), ref


@pytest.mark.parametrize("B,S,H,D", SMALL_TABLE)
def test_matches_reference_on_awkward_shapes(B, S, H, D):
    out, ref = run(*make_inputs(B, S, H, D))
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=0)


@pytest.mark.parametrize("dtype", HIDDEN_DTYPES, ids=str)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES + (torch.int8,), ids=str)
def test_every_input_dtype_within_its_tolerance(dtype, mask_dtype):
    out, ref = run(*make_inputs(3, 33, 384, 50, dtype=dtype, mask_dtype=mask_dtype))
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=0)


def test_all_padding_row_is_zero_not_nan_and_single_token_row_is_that_token():
    hidden, mask, _, _ = make_inputs(3, 7, 768, None)
    out, ref = run(hidden, mask, None, None)
    assert not torch.isnan(out).any()
    assert torch.equal(out[1], torch.zeros(768, dtype=torch.float64))  # row 1: no tokens
    token = hidden[0, 0].double()
    torch.testing.assert_close(out[0], token / token.norm(), atol=1e-6, rtol=0)
    raw, _ = run(hidden, mask, None, None, normalize=False)
    torch.testing.assert_close(raw[0], token, atol=1e-6, rtol=0)


def test_all_padding_row_with_bias_is_the_unit_bias():
    hidden, mask, weight, bias = make_inputs(3, 7, 384, 50)
    out, ref = run(hidden, mask, weight, bias)
    torch.testing.assert_close(out[1], (bias / bias.norm()).double(), atol=1e-6, rtol=0)


def test_unnormalised_output_matches_reference():
    out, ref = run(*make_inputs(3, 129, 1023, 50), normalize=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_non_contiguous_inputs_are_read_in_place():
    hidden, mask, weight, bias = make_inputs(5, 40, 2 * 384, 50)
    hidden_t = hidden.transpose(0, 1).contiguous().transpose(0, 1)  # (B, S, H) with batch stride H
    hidden_s = hidden_t[:, :, ::2]  # H stride 2
    mask_s = torch.cat([mask, mask], dim=1)[:, ::2]  # S stride 2
    weight_t = weight[::2].t().contiguous().t()  # (H, D) column-major
    assert not hidden_s.is_contiguous() and not mask_s.is_contiguous() and not weight_t.is_contiguous()
    out, ref = run(hidden_s, mask_s, weight_t, bias)
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=0)


def test_token_offsets_past_2_to_the_32_are_not_wrapped_to_int32():
    """A token stride below 2**31 whose multiples pass 2**32 (a seq-major buffer viewed as
    (B, S, H)): token 3 sits at element 3 * 3 * 2**29; an int32 offset wraps to 2**29 and
    silently reads other memory. The storage is ~9.7 GB of address space, but only the touched
    pages are ever backed (torch.empty does not write it; the kernel reads unmasked tokens only)."""
    H, stride_s = 16, 3 * 2**29
    storage = torch.empty(3 * stride_s + H, dtype=torch.float16, device=DEVICE)
    hidden = storage.as_strided((1, 4, H), (0, stride_s, 1))
    hidden[0, 0] = 1.0
    hidden[0, 3] = torch.arange(H, dtype=torch.float16, device=DEVICE)
    storage[2**29:2**29 + H] = -7.0  # where a wrapped offset would land
    mask = torch.tensor([[1, 0, 0, 1]], device=DEVICE)  # tokens 1, 2 (offsets in [2**31, 2**32)) unread
    out = masked_mean_pool_l2(hidden, mask, normalize=False).cpu()
    torch.testing.assert_close(out[0], (1.0 + torch.arange(H, dtype=torch.float32)) / 2, atol=0, rtol=0)


def test_long_sequence_loops_over_many_tiles():
    out, ref = run(*make_inputs(2, 8192, 384, None, dtype=torch.bfloat16))
    torch.testing.assert_close(out, ref, atol=TOL[torch.bfloat16], rtol=0)


@pytest.mark.parametrize("B,S,H,D", [(2, 300, 384, 50), (3, 600, 200, None), (1, 1000, 96, 7)])
def test_rows_split_along_s_sum_to_the_same_mean(B, S, H, D, monkeypatch):
    """Many programs per row (as on a large GPU with few rows): the partial sums over slices
    of S (some ending past S, some only padding) add up to the reference mean."""
    from postemb_rt.kernels import masked_mean_pool_l2 as mod

    monkeypatch.setattr(mod, "_sm_count", lambda device: 10_000)
    hidden, mask, weight, bias = make_inputs(B, S, H, D)
    mask[-1] = 1  # a full row beside make_inputs' one-token and all-padding rows
    out, ref = run(hidden, mask, weight, bias)
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=0)
    out, ref = run(hidden, mask, weight, bias, normalize=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-6)


def test_empty_batch_and_bad_arguments():
    hidden, mask, weight, _ = make_inputs(2, 3, 384, 50)
    assert masked_mean_pool_l2(hidden[:0].to(DEVICE), mask[:0].to(DEVICE)).shape == (0, 384)
    with pytest.raises(ValueError, match="`mask` must be a tensor of shape"):
        masked_mean_pool_l2(hidden, mask[:, :2])
    with pytest.raises(ValueError, match="`hidden` must be float32, float16 or bfloat16"):
        masked_mean_pool_l2(hidden.double(), mask)
    with pytest.raises(ValueError, match="`weight` must have shape"):
        masked_mean_pool_l2(hidden, mask, weight[:100])
    with pytest.raises(ValueError, match="`mask` must be bool or integer"):
        masked_mean_pool_l2(hidden, mask.float())
    # an empty feature axis is named, as by the C++ kernel (it was a ZeroDivisionError in the launcher)
    with pytest.raises(ValueError, match=r"`hidden` must have H >= 1 features. Given: shape \(2, 3, 0\)"):
        masked_mean_pool_l2(hidden[:, :, :0], mask)
    with pytest.raises(ValueError, match=r"`weight` must have shape \(H, D\) with D >= 1. Given: \(384, 0\)"):
        masked_mean_pool_l2(hidden, mask, weight[:, :0])


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the compiled Triton kernel runs only on a GPU")
@pytest.mark.parametrize("dtype", HIDDEN_DTYPES, ids=str)
def test_gpu_large_shapes_match_reference(dtype):
    hidden, mask, weight, bias = make_inputs(17, 2048, 4096, 384, dtype=dtype)
    out, ref = run(hidden, mask, weight, bias)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
