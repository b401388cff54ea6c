"""Fused masked mean-pool + optional projection + L2 normalise (Triton).

    out[b] = normalize(W^T * mean_{s: mask[b,s] != 0} hidden[b,s,:] + bias)

One program per row b. It counts the row's tokens, then walks H in BLOCK_H chunks and,
inside each chunk, S in BLOCK_S tiles, summing only unmasked tokens in fp32 (masked-out
loads fetch nothing, so the kernel reads B*S_real*H*itemsize bytes of hidden states
once). With a projection, each pooled chunk is multiplied into W[chunk, :] straight
away, so the pooled vector never leaves registers; without one, the chunk is written
to ``out`` and rescaled in a second sweep over the (B, H) output once the norm is known.

The torch reference is ``postemb_rt.ops.reference.masked_mean_pool_l2_ref``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK_D = 4096  # the projected row is held in registers: D up to 4096


@triton.jit
def _masked_column_sum(h_base, m_base, h, h_ok, offs_s, S, stride_hs, stride_hh, stride_ms,
                       BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr):
    """Sum over the row's unmasked tokens of hidden[s, h] for one chunk h (BLOCK_H,), in fp32;
    masked-out tokens are never loaded."""
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + offs_s
        tok = (tl.load(m_base + s * stride_ms, mask=s < S, other=0) != 0) & (s < S)
        x = tl.load(h_base + s[:, None] * stride_hs + h[None, :] * stride_hh,
                    mask=tok[:, None] & h_ok[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    return acc


@triton.jit
def _masked_mean_pool_l2_kernel(
    hidden_ptr,  # (B, S, H) fp32 / fp16 / bf16, any strides
    mask_ptr,  # (B, S) bool or integer, nonzero = token
    weight_ptr,  # (H, D) projection (unused when not HAS_WEIGHT)
    bias_ptr,  # (D,) (unused when not HAS_BIAS)
    out_ptr,  # (B, D) fp32, row stride stride_ob, unit stride along D
    stride_hb, stride_hs, stride_hh,  # hidden strides (elements)
    stride_mb, stride_ms,  # mask strides
    stride_wh, stride_wd,  # weight strides
    stride_bias,  # bias stride
    stride_ob,  # out row stride
    S, H, D,  # sequence length, hidden size, output size (D == H without weight)
    HAS_WEIGHT: tl.constexpr,  # project with weight
    HAS_BIAS: tl.constexpr,  # add bias
    NORMALIZE: tl.constexpr,  # unit L2 rows
    BLOCK_S: tl.constexpr,  # tokens per tile
    BLOCK_H: tl.constexpr,  # hidden features per chunk
    BLOCK_D: tl.constexpr,  # >= D when HAS_WEIGHT (whole projected row in registers)
):
    row = tl.program_id(0).to(tl.int64)  # int64: B*S*H may exceed 2**31 elements
    h_base = hidden_ptr + row * stride_hb
    m_base = mask_ptr + row * stride_mb
    offs_s = tl.arange(0, BLOCK_S)
    offs_h = tl.arange(0, BLOCK_H)

    # Token count (reads the (S,) mask row once more; S * itemsize bytes).
    cnt = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + offs_s
        m = tl.load(m_base + s * stride_ms, mask=s < S, other=0)
        cnt += (m != 0).to(tl.float32)
    n = tl.sum(cnt, axis=0)
    inv = tl.where(n > 0, 1.0 / tl.maximum(n, 1.0), 0.0)  # empty row: mean 0, never NaN

    if HAS_WEIGHT:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        proj = tl.zeros([BLOCK_D], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + offs_h
            h_ok = h < H
            acc = _masked_column_sum(h_base, m_base, h, h_ok, offs_s, S, stride_hs, stride_hh, stride_ms,
                                     BLOCK_S, BLOCK_H)
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
            acc = _masked_column_sum(h_base, m_base, h, h_ok, offs_s, S, stride_hs, stride_hh, stride_ms,
                                     BLOCK_S, BLOCK_H)
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
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, S):
        raise ValueError(f"`mask` must be a tensor of shape (B, S) = {(B, S)}. Given: "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}.")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"`mask` must be bool or integer. Given: {mask.dtype}.")
    D = H
    if weight is not None:
        if weight.dim() != 2 or weight.shape[0] != H:
            raise ValueError(f"`weight` must have shape (H, D) with H = {H}. Given: {tuple(weight.shape)}.")
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
    B, S, H, D = _check(hidden, mask, weight, bias)
    out = torch.empty((B, D), dtype=torch.float32, device=hidden.device)
    if B == 0:
        return out
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # same bytes; a plain integer load everywhere
    # Under TRITON_INTERPRET=1 (CPU tests) every loop iteration costs Python time, so the
    # tiles are larger there; the kernel and its masking are the same.
    scale = 8 if os.environ.get("TRITON_INTERPRET") == "1" else 1
    block_s = min(16 * scale, triton.next_power_of_2(max(S, 1)))
    if weight is not None:
        block_d = triton.next_power_of_2(D)
        block_h = max(16, min(triton.next_power_of_2(H), 8192 * scale // block_d))  # W tile <= 8192 values
    else:
        block_d = 1
        block_h = min(triton.next_power_of_2(H), 256 * scale)
    dummy = out  # never read: HAS_WEIGHT / HAS_BIAS are constexpr False
    _masked_mean_pool_l2_kernel[(B,)](
        hidden, mask, weight if weight is not None else dummy, bias if bias is not None else dummy, out,
        hidden.stride(0), hidden.stride(1), hidden.stride(2),
        mask.stride(0), mask.stride(1),
        weight.stride(0) if weight is not None else 0, weight.stride(1) if weight is not None else 0,
        bias.stride(0) if bias is not None else 0,
        out.stride(0),
        S, H, D,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, NORMALIZE=bool(normalize),
        BLOCK_S=block_s, BLOCK_H=block_h, BLOCK_D=block_d,
    )
    return out
