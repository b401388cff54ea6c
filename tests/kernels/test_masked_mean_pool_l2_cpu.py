"""The C++ twin, postemb_rt._C.masked_mean_pool_l2, against the float64 reference: every
shape of the table, every ISA path this CPU has (the generic one always, so a machine
without AVX-512 is covered), dtypes, strides, large rows, argument errors."""
import numpy as np
import pytest
import torch

from postemb_rt import _C
from postemb_rt.ops.reference import masked_mean_pool_l2_ref

from .cases import FULL_TABLE, HIDDEN_DTYPES, MASK_DTYPES, make_inputs, to_numpy


def _supported(isa):
    try:
        return _C.cpu_isa(isa) == isa
    except ValueError:
        return False


ISAS = [isa for isa in ("generic", "avx2", "avx512") if _supported(isa)]
TOL = 1e-6  # double accumulation: well inside 1e-6 of the float64 reference on unit rows


def run(hidden, mask, weight, bias, normalize=True, isa="auto", num_threads=0):
    out = _C.masked_mean_pool_l2(to_numpy(hidden), to_numpy(mask), to_numpy(weight), to_numpy(bias),
                                 normalize=normalize, isa=isa, num_threads=num_threads)
    ref = masked_mean_pool_l2_ref(hidden, mask, weight, bias, normalize=normalize, dtype=torch.float64)
    assert out.dtype == np.float32 and out.shape == tuple(ref.shape)
    return torch.from_numpy(out).double(), ref


@pytest.mark.parametrize("B,S,H,D", FULL_TABLE)
def test_matches_reference_on_every_awkward_shape(B, S, H, D):
    out, ref = run(*make_inputs(B, S, H, D))
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("B,S,H,D", [(17, 129, 1023, 50), (3, 7, 384, None), (1, 512, 768, 384)])
@pytest.mark.parametrize("dtype", HIDDEN_DTYPES, ids=str)
def test_every_isa_path_and_dtype_matches_reference(isa, B, S, H, D, dtype):
    out, ref = run(*make_inputs(B, S, H, D, dtype=dtype), isa=isa)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES + (torch.int8, torch.int16), ids=str)
def test_every_mask_dtype(mask_dtype):
    out, ref = run(*make_inputs(3, 33, 384, 50, mask_dtype=mask_dtype))
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_generic_path_is_forced_by_environment(monkeypatch):
    monkeypatch.setenv("POSTEMB_CPU_ISA", "generic")
    assert _C.cpu_isa() == "generic"
    inputs = make_inputs(17, 129, 768, 50)
    out, ref = run(*inputs)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    monkeypatch.setenv("POSTEMB_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="POSTEMB_CPU_ISA must be one of .* Given: 'sse9'"):
        run(*inputs)


def test_all_padding_row_is_zero_not_nan_and_single_token_row_is_that_token():
    hidden, mask, _, _ = make_inputs(3, 7, 768, None)
    out, _ = run(hidden, mask, None, None)
    assert not torch.isnan(out).any()
    assert torch.equal(out[1], torch.zeros(768, dtype=torch.float64))
    token = hidden[0, 0].double()
    torch.testing.assert_close(out[0], token / token.norm(), atol=TOL, rtol=0)
    raw, _ = run(hidden, mask, None, None, normalize=False)
    torch.testing.assert_close(raw[0], token, atol=TOL, rtol=0)
    empty, _ = run(*make_inputs(2, 0, 384, None))  # S == 0: every row is padding
    assert torch.equal(empty, torch.zeros(2, 384, dtype=torch.float64))


def test_all_padding_row_with_bias_is_the_unit_bias():
    hidden, mask, weight, bias = make_inputs(3, 7, 384, 50)
    out, _ = run(hidden, mask, weight, bias)
    torch.testing.assert_close(out[1], (bias / bias.norm()).double(), atol=TOL, rtol=0)


def test_unnormalised_output_is_within_1e6_relative():
    out, ref = run(*make_inputs(17, 129, 1023, 50), normalize=False)
    assert ((out - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-6


@pytest.mark.parametrize("isa", ISAS)
def test_non_contiguous_inputs_are_read_in_place(isa):
    hidden, mask, weight, bias = make_inputs(5, 40, 2 * 384, 50)
    hidden_s = hidden.transpose(0, 1).contiguous().transpose(0, 1)[:, :, ::2]  # batch stride H, H stride 2
    mask_s = torch.cat([mask, mask], dim=1)[:, ::2]
    weight_t = weight[::2].t().contiguous().t()  # (H, D) column-major
    assert not to_numpy(hidden_s).flags.c_contiguous and not to_numpy(weight_t).flags.c_contiguous
    out, ref = run(hidden_s, mask_s, weight_t, bias, isa=isa)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    # negative strides (a reversed numpy view; torch cannot hold one)
    h = hidden[:, :, :384]
    out = _C.masked_mean_pool_l2(h.numpy()[:, ::-1, ::-1], mask.numpy()[:, ::-1], isa=isa)
    ref = masked_mean_pool_l2_ref(h.flip(1, 2), mask.flip(1), dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(out).double(), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_large_rows(dtype):
    out, ref = run(*make_inputs(3, 8192, 1024, 384, dtype=dtype))
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    out, ref = run(*make_inputs(2, 64, 4096, None, dtype=dtype))
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("num_threads", [1, 2, 5])
def test_thread_counts_give_identical_rows(num_threads):
    inputs = make_inputs(17, 129, 384, 50)
    one, _ = run(*inputs, num_threads=1)
    many, _ = run(*inputs, num_threads=num_threads)
    assert torch.equal(one, many)


def test_arguments_are_validated_with_names_and_values():
    hidden, mask, weight, bias = (to_numpy(t) for t in make_inputs(2, 3, 384, 50))
    with pytest.raises(ValueError, match=r"`hidden` must be float32, float16 or bfloat16 .* Given: float64"):
        _C.masked_mean_pool_l2(hidden.astype(np.float64), mask)
    with pytest.raises(ValueError, match=r"`mask` must have shape \(B, S\) = \(2, 3\) .* Given: \(2, 2\)"):
        _C.masked_mean_pool_l2(hidden, mask[:, :2])
    with pytest.raises(ValueError, match="`mask` must be a native-endian bool or integer array. Given: float32"):
        _C.masked_mean_pool_l2(hidden, mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"`weight` must have shape \(H, D\) with H = 384. Given: \(100, 50\)"):
        _C.masked_mean_pool_l2(hidden, mask, weight[:100])
    with pytest.raises(ValueError, match=r"`weight` must have shape \(H, D\) with D >= 1. Given: \(384, 0\)"):
        _C.masked_mean_pool_l2(hidden, mask, weight[:, :0])
    with pytest.raises(ValueError, match="`weight` must be float32. Given: float64"):
        _C.masked_mean_pool_l2(hidden, mask, weight.astype(np.float64))
    with pytest.raises(ValueError, match=r"`bias` must have shape \(D,\) = \(50,\). Given: \(49,\)"):
        _C.masked_mean_pool_l2(hidden, mask, weight, bias[:49])
    with pytest.raises(ValueError, match="`hidden` must be 3-d"):
        _C.masked_mean_pool_l2(hidden[0], mask)
    with pytest.raises(ValueError, match="`isa` must be one of"):
        _C.masked_mean_pool_l2(hidden, mask, isa="neon")
    with pytest.raises(TypeError):  # noconvert: a list is not silently copied into an array
        _C.masked_mean_pool_l2(hidden.tolist(), mask)
