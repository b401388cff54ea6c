"""Fused masked mean-pool + optional projection + L2 normalise (Triton).

    out[b] = normalize(W^T * mean_{s: mask[b,s] != 0} hidden[b,s,:] + bias)

Two launches. ``_partial_sums_kernel`` runs a (B, H/BLOCK_H, splits) grid: each program
sums the unmasked tokens of one row, one column block and one slice of S in fp32
(masked-out loads fetch nothing, so the hidden states are read once: B*S_real*H*itemsize
bytes). Long rows are split along S so that a launch has about 4 programs per SM however
small B is; one program per row would leave most of a GPU's memory pipeline idle. The
tile is accumulated element-wise and reduced over S once at the end, so the loop is loads
and adds only. The partial sums go to a (B, splits, H) fp32 workspace (a few % of the bytes
read). Measured by GPU time on an H200: at most 68-69% of copy bandwidth (fp32), 46% (fp16);
benchmarks/RESULTS.md, "GPU".
``_finish_rows_kernel`` then runs one program per row: the token count, the mean, the
projection by W and bias, and the L2 normalisation (without a projection the row is
written and rescaled once its norm is known).

The torch reference is ``postemb_rt.ops.reference.masked_mean_pool_l2_ref``.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK_D = 4096  # the projected row is held in registers: D up to 4096


@triton.jit
def _partial_sums_kernel(
    hidden_ptr,  # (B, S, H) fp32 / fp16 / bf16, any strides
    mask_ptr,  # (B, S) integer (bool viewed as uint8), nonzero = token
    ws_ptr,  # (B, SPLITS, H) fp32 workspace, contiguous
    stride_hb, stride_hs, stride_hh,  # hidden strides (elements)
    stride_mb, stride_ms,  # mask strides
    S, H, S_PER_SPLIT,  # sequence length, hidden size, tokens per split (a multiple of BLOCK_S)
    BLOCK_S: tl.constexpr,  # tokens per tile
    BLOCK_H: tl.constexpr,  # hidden features per program
):
    """Program (b, j, k): the fp32 sum over the unmasked tokens of split k of row b, for hidden
    columns [j*BLOCK_H, (j+1)*BLOCK_H), written to ws[b, k, columns]. Masked-out tokens are never loaded."""
    row = tl.program_id(0).to(tl.int64)  # int64: B*S*H may exceed 2**31 elements
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(2)
    h_ok = h < H
    h_base = hidden_ptr + row * stride_hb
    m_base = mask_ptr + row * stride_mb
    h_off = h.to(tl.int64) * stride_hh  # int64 within a row too: a strided view's s * stride_hs
    offs_s = tl.arange(0, BLOCK_S)      # (e.g. seq-major buffers, stride_hs = B*H) may pass 2**31
    acc = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)  # reduced over S once, after the loop
    s_lo = split * S_PER_SPLIT
    for s0 in range(0, S_PER_SPLIT, BLOCK_S):
        s = s_lo + s0 + offs_s
        tok = (tl.load(m_base + s * stride_ms, mask=s < S, other=0) != 0) & (s < S)
        x = tl.load(h_base + s.to(tl.int64)[:, None] * stride_hs + h_off[None, :],
                    mask=tok[:, None] & h_ok[None, :], other=0.0)
        acc += x.to(tl.float32)
    tl.store(ws_ptr + (row * tl.num_programs(2) + split) * H + h, tl.sum(acc, axis=0), mask=h_ok)


@triton.jit
def _sum_splits(w_base, h, h_ok, H, SPLITS, BLOCK_H: tl.constexpr):
    """One row's partial sums for columns h (BLOCK_H,), added over its SPLITS slices of S."""
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k in range(0, SPLITS):
        acc += tl.load(w_base + k * H + h, mask=h_ok, other=0.0)
    return acc


@triton.jit
def _finish_rows_kernel(
    ws_ptr,  # (B, SPLITS, H) fp32 partial sums from _partial_sums_kernel
    mask_ptr,  # (B, S) integer, nonzero = token
    weight_ptr,  # (H, D) projection (unused when not HAS_WEIGHT)
    bias_ptr,  # (D,) (unused when not HAS_BIAS)
    out_ptr,  # (B, D) fp32, row stride stride_ob, unit stride along D
    stride_mb, stride_ms,  # mask strides
    stride_wh, stride_wd,  # weight strides
    stride_bias,  # bias stride
    stride_ob,  # out row stride
    S, H, D, SPLITS,  # sequence length, hidden size, output size (D == H without weight), splits
    HAS_WEIGHT: tl.constexpr,  # project with weight
    HAS_BIAS: tl.constexpr,  # add bias
    NORMALIZE: tl.constexpr,  # unit L2 rows
    BLOCK_S: tl.constexpr,  # mask tokens per tile
    BLOCK_H: tl.constexpr,  # hidden features per chunk
    BLOCK_D: tl.constexpr,  # >= D when HAS_WEIGHT (whole projected row in registers)
):
    """Program b: mean = (sum of row b's partial sums) / (its token count), then the projection,
    bias and L2 normalisation of that one row."""
    row = tl.program_id(0).to(tl.int64)
    m_base = mask_ptr + row * stride_mb
    w_base = ws_ptr + row * SPLITS * H
    offs_s = tl.arange(0, BLOCK_S)
    offs_h = tl.arange(0, BLOCK_H)

    cnt = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + offs_s
        cnt += (tl.load(m_base + s * stride_ms, mask=s < S, other=0) != 0).to(tl.float32)
    n = tl.sum(cnt, axis=0)
    inv = tl.where(n > 0, 1.0 / tl.maximum(n, 1.0), 0.0)  # empty row: mean 0, never NaN

    if HAS_WEIGHT:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        proj = tl.zeros([BLOCK_D], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + offs_h
            h_ok = h < H
            acc = _sum_splits(w_base, h, h_ok, H, SPLITS, BLOCK_H)
            w = tl.load(weight_ptr + h[:, None] * stride_wh + offs_d[None, :] * stride_wd,
                        mask=h_ok[:, None] & d_ok[None, :], other=0.0)
            proj += tl.sum((acc * inv)[:, None] * w.to(tl.float32), axis=0)
        if HAS_BIAS:
            proj += tl.load(bias_ptr + offs_d * stride_bias, mask=d_ok, other=0.0).to(tl.float32)
        if NORMALIZE:
            norm = tl.sqrt(tl.sum(proj * proj, axis=0))
            proj = proj / tl.maximum(norm, 1e-12)
        tl.store(out_ptr + row * stride_ob + offs_d, proj, mask=d_ok)
    else:
        o_base = out_ptr + row * stride_ob
        ssq = tl.zeros([BLOCK_H], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + offs_h
            h_ok = h < H
            acc = _sum_splits(w_base, h, h_ok, H, SPLITS, BLOCK_H)
            v = acc * inv
            if HAS_BIAS:
                v += tl.load(bias_ptr + h * stride_bias, mask=h_ok, other=0.0).to(tl.float32)
            ssq += v * v
            tl.store(o_base + h, v, mask=h_ok)
        if NORMALIZE:
            scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(ssq, axis=0)), 1e-12)
            tl.debug_barrier()  # the rescale below reads what this program just stored
            for h0 in range(0, H, BLOCK_H):
                h = h0 + offs_h
                h_ok = h < H
                v = tl.load(o_base + h, mask=h_ok, other=0.0)
                tl.store(o_base + h, v * scale, mask=h_ok)


def _check(hidden, mask, weight, bias) -> tuple[int, int, int, int]:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"`hidden` must be a 3-d torch tensor (B, S, H). Given: "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}.")
    if hidden.dtype not in _HIDDEN_DTYPES:
        raise ValueError(f"`hidden` must be float32, float16 or bfloat16. Given: {hidden.dtype}.")
    B, S, H = hidden.shape
    if H < 1:  # the launcher's tile arithmetic divides by it
        raise ValueError(f"`hidden` must have H >= 1 features. Given: shape {tuple(hidden.shape)}.")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, S):
        raise ValueError(f"`mask` must be a tensor of shape (B, S) = {(B, S)}. Given: "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}.")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"`mask` must be bool or integer. Given: {mask.dtype}.")
    D = H
    if weight is not None:
        if weight.dim() != 2 or weight.shape[0] != H:
            raise ValueError(f"`weight` must have shape (H, D) with H = {H}. Given: {tuple(weight.shape)}.")
        if weight.shape[1] < 1:
            raise ValueError(f"`weight` must have shape (H, D) with D >= 1. Given: {tuple(weight.shape)}.")
        D = weight.shape[1]
        if D > _MAX_BLOCK_D:
            raise ValueError(f"`weight` output size D must be <= {_MAX_BLOCK_D}. Given: {D}.")
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"`bias` must have shape (D,) = ({D},). Given: {tuple(bias.shape)}.")
    for name, t in (("mask", mask), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"`{name}` must be on {hidden.device} like `hidden`. Given: {t.device}.")
    return B, S, H, D


def masked_mean_pool_l2(hidden, mask, weight=None, bias=None, normalize: bool = True):
    """normalize(W^T * mean_{s: mask[b,s] != 0} hidden[b,s,:] + bias) for every row b.

    hidden: (B, S, H) float32/float16/bfloat16, any strides (never copied).
    mask: (B, S) bool or integer; nonzero marks a token.
    weight: (H, D) or None (then D = H); bias: (D,) or None.
    normalize: unit L2 rows (default), else the raw projected mean.
    Returns float32 (B, D) on hidden's device. A row without tokens pools to zeros (+ bias),
    never NaN. Reads B*S_real*H*itemsize bytes of hidden states once.
    """
    return _launch(hidden, mask, weight, bias, normalize)


# Tiles of 64 tokens x 64 features, 4 warps, 4 programs per SM: the best or near it for fp16 and
# fp32 alike in a sweep on an H100, and first overall by GPU time in the sweep on an H200
# (benchmarks/sweep_pool_tiles.py; numbers in RESULTS.md).
TILE_DEFAULTS = {"block_s": 64, "block_h": 64, "num_warps": 4, "programs_per_sm": 4}


def _launch(hidden, mask, weight, bias, normalize, block_s=None, block_h=None, num_warps=None,
            programs_per_sm=None):
    """masked_mean_pool_l2 with the tile parameters open (for the sweep; None = TILE_DEFAULTS)."""
    B, S, H, D = _check(hidden, mask, weight, bias)
    out = torch.empty((B, D), dtype=torch.float32, device=hidden.device)
    if B == 0:
        return out
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # same bytes; a plain integer load everywhere
    # Under TRITON_INTERPRET=1 (CPU tests) every loop iteration costs Python time, so the
    # tiles are larger there; the kernels and their masking are the same.
    scale = 8 if os.environ.get("TRITON_INTERPRET") == "1" else 1
    block_s = min((block_s or TILE_DEFAULTS["block_s"]) * scale, triton.next_power_of_2(max(S, 1)))
    block_h = min((block_h or TILE_DEFAULTS["block_h"]) * scale, triton.next_power_of_2(H))
    n_h = triton.cdiv(H, block_h)
    # Enough programs to keep every SM's memory pipeline full: split long rows along S.
    tiles = triton.cdiv(max(S, 1), block_s)
    target = _sm_count(hidden.device) * (programs_per_sm or TILE_DEFAULTS["programs_per_sm"])
    splits = max(1, min(tiles, triton.cdiv(target, B * n_h)))
    s_per_split = triton.cdiv(tiles, splits) * block_s
    splits = triton.cdiv(max(S, 1), s_per_split)
    ws = torch.empty((B, splits, H), dtype=torch.float32, device=hidden.device)
    _partial_sums_kernel[(B, n_h, splits)](
        hidden, mask, ws,
        hidden.stride(0), hidden.stride(1), hidden.stride(2),
        mask.stride(0), mask.stride(1),
        S, H, s_per_split,
        BLOCK_S=block_s, BLOCK_H=block_h, num_warps=num_warps or TILE_DEFAULTS["num_warps"],
    )
    if weight is not None:
        block_d = triton.next_power_of_2(D)
        block_h2 = max(16, min(triton.next_power_of_2(H), 8192 * scale // block_d))  # W tile <= 8192 values
    else:
        block_d = 1
        block_h2 = min(triton.next_power_of_2(H), 256 * scale)
    dummy = out  # never read: HAS_WEIGHT / HAS_BIAS are constexpr False
    _finish_rows_kernel[(B,)](
        ws, mask, weight if weight is not None else dummy, bias if bias is not None else dummy, out,
        mask.stride(0), mask.stride(1),
        weight.stride(0) if weight is not None else 0, weight.stride(1) if weight is not None else 0,
        bias.stride(0) if bias is not None else 0,
        out.stride(0),
        S, H, D, splits,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, NORMALIZE=bool(normalize),
        BLOCK_S=min(1024, triton.next_power_of_2(max(S, 1))), BLOCK_H=block_h2, BLOCK_D=block_d,
    )
    return out


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (CPU/interpreter: 1, so rows are not split)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
