"""Op ``eqkern::hebbian_triton``: the contrastive Hebbian update of one conv layer, both phases, one launch.

The Hebbian product for the connection ``s_in → s_out`` (conv k×k, padding p, optional 2×2 pool),

    gW[n, c, kh, kw] = scale · Σ_{b,oh,ow} ( Ua[b,n,oh,ow] · in_a[b, c, oh+kh−p, ow+kw−p]
                                           − Ub[b,n,oh,ow] · in_b[b, c, oh+kh−p, ow+kw−p] )
    gb[n]            = scale · Σ_{b,oh,ow} ( Ua[b,n,oh,ow] − Ub[b,n,oh,ow] )
    U = unpool(s_out, idx) (gathered through the arg-max indices, as in feedback_settle)

with ``scale = −1/((β_a − β_b)·batch)`` from the backend. Shapes: ``in_a, in_b: (B, C, H, W)``,
``out_a, out_b: (B, CO, HP, WP)``, ``idx_a, idx_b``: like ``out`` (int64) or None;
returns ``gW: (CO, C, k, k)`` and ``gb: (CO,)`` in the input dtype.

Implicit GEMM: output tile ``[BLOCK_N (n) × BLOCK_K (flattened c, kh, kw)]``, reduction over the
rows ``M = B·HO·WO`` of the pre-pool plane in chunks of BLOCK_M: the ``Uᵀ`` tile is gathered from the
pooled state and its indices, the ``X`` tile is the im2col tile of the input. Both phases run in
the same loop. With ``same_input`` (layer 0: both phases see the same clamped ``x``) the kernel
subtracts ``Ua − Ub`` before the one dot: half the FLOPs and no cancellation between two large,
nearly equal fp32 terms (as the analytic backend does). The bias gradient is the row sum of the
same ``U`` tiles, kept by the programs of the first column block: no second launch. On a GPU the
reduction may be split over a third grid axis whose partial sums meet with ``tl.atomic_add`` in an
fp32 (fp64) buffer; the summation order then varies from run to run (not bitwise deterministic).

A fully connected connection is the 1×1 case on a 1×1 map (one GEMM over the batch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqkern.errors import ArgumentError
from eqkern.model.specs import conv_output_size
from eqkern.kernels.triton._common import (INDEX, INTERPRET, NUM_WARPS, acc_dtype, block, check_dtype, check_int32,
                      dot_dtype, dot_precision, split_scalar)


@triton.jit
def _gather_unpooled_t(OUT_ptr, IDX_ptr, out_base, offs_n, n_mask, m_mask, oh, ow, HO, WO, HP, WP,
                       POOL: tl.constexpr, ACC: tl.constexpr):
    """``Uᵀ[n, m]`` (BLOCK_N × BLOCK_M): the unpooled state at pre-pool position ``(oh, ow)``."""
    if POOL:
        ph = oh // 2
        pw = ow // 2
        valid = m_mask & (ph < HP) & (pw < WP)
        pos = ph * WP + pw
    else:
        valid = m_mask
        pos = oh * WO + ow
    offs = offs_n[:, None] * (HP * WP) + (out_base + pos)[None, :]
    mask = n_mask[:, None] & valid[None, :]
    v = tl.load(OUT_ptr + offs, mask=mask, other=0.0).to(ACC)
    if POOL:
        j = tl.load(IDX_ptr + offs, mask=mask, other=-1)
        v = tl.where(j == (oh * WO + ow).to(tl.int64)[None, :], v, 0.0)
    return v


@triton.jit
def _im2col(IN_ptr, in_base, c_off, kh, kw, k_mask, m_mask, oh, ow, H, W,
            PAD: tl.constexpr, ACC: tl.constexpr):
    """``X[m, k] = in[b, c, oh + kh − p, ow + kw − p]`` (BLOCK_M × BLOCK_K), zero outside the map."""
    ih = oh[:, None] + (kh[None, :] - PAD)
    iw = ow[:, None] + (kw[None, :] - PAD)
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & m_mask[:, None] & k_mask[None, :]
    return tl.load(IN_ptr + in_base[:, None] + c_off[None, :] + ih * W + iw, mask=inside,
                   other=0.0).to(ACC)


@triton.jit
def _hebbian_kernel(
    GW_ptr, GB_ptr, INA_ptr, INB_ptr, OA_ptr, OB_ptr, IA_ptr, IB_ptr,
    M, C, H, W, CO, HO, WO, HP, WP, scale_hi, scale_lo, CHUNKS_PER_SPLIT,
    PAD: tl.constexpr, KS: tl.constexpr, POOL: tl.constexpr, SAME_INPUT: tl.constexpr,
    ATOMIC: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, IDX: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    K = C * KS * KS
    offs_n = pid_n.to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)
    offs_k = pid_k.to(IDX) * BLOCK_K + tl.arange(0, BLOCK_K).to(IDX)
    n_mask = offs_n < CO
    k_mask = offs_k < K
    c_off = (offs_k // (KS * KS)) * (H * W)
    kh = (offs_k // KS) % KS
    kw = offs_k % KS

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    bacc = tl.zeros((BLOCK_N,), dtype=ACC)
    m_start = pid_s.to(IDX) * CHUNKS_PER_SPLIT * BLOCK_M
    m_stop = tl.minimum(M, m_start + CHUNKS_PER_SPLIT * BLOCK_M)
    for m0 in range(m_start, m_stop, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(IDX)  # (b, oh, ow) of the pre-pool plane
        m_mask = offs_m < m_stop
        ow = offs_m % WO
        oh = (offs_m // WO) % HO
        b = offs_m // (WO * HO)
        out_base = b * (CO * HP * WP)
        in_base = b * (C * H * W)
        ua = _gather_unpooled_t(OA_ptr, IA_ptr, out_base, offs_n, n_mask, m_mask, oh, ow,
                                HO, WO, HP, WP, POOL, ACC)
        ub = _gather_unpooled_t(OB_ptr, IB_ptr, out_base, offs_n, n_mask, m_mask, oh, ow,
                                HO, WO, HP, WP, POOL, ACC)
        xa = _im2col(INA_ptr, in_base, c_off, kh, kw, k_mask, m_mask, oh, ow, H, W, PAD, ACC)
        if SAME_INPUT:
            acc = tl.dot((ua - ub).to(DOT), xa.to(DOT), acc, input_precision=PRECISION)
        else:
            xb = _im2col(INB_ptr, in_base, c_off, kh, kw, k_mask, m_mask, oh, ow, H, W, PAD, ACC)
            acc = tl.dot(ua.to(DOT), xa.to(DOT), acc, input_precision=PRECISION)
            acc = tl.dot((-ub).to(DOT), xb.to(DOT), acc, input_precision=PRECISION)
        bacc += tl.sum(ua - ub, axis=1)

    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    gw_offs = offs_n[:, None] * K + offs_k[None, :]  # gW viewed as (CO, K) is contiguous
    gw_mask = n_mask[:, None] & k_mask[None, :]
    gb_mask = n_mask & (pid_k == 0)
    if ATOMIC:
        tl.atomic_add(GW_ptr + gw_offs, acc * scale, mask=gw_mask)
        tl.atomic_add(GB_ptr + offs_n, bacc * scale, mask=gb_mask)
    else:
        tl.store(GW_ptr + gw_offs, acc * scale, mask=gw_mask)
        tl.store(GB_ptr + offs_n, bacc * scale, mask=gb_mask)


@torch.library.custom_op("eqkern::hebbian_triton", mutates_args=())
def hebbian_triton(
    in_a: torch.Tensor,
    in_b: torch.Tensor,
    out_a: torch.Tensor,
    out_b: torch.Tensor,
    idx_a: torch.Tensor | None,
    idx_b: torch.Tensor | None,
    kernel_size: int,
    padding: int,
    scale: float,
    same_input: bool,
    split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gW, gb)`` of one conv connection over both phases, by one launch of
    :func:`_hebbian_kernel` (see the module docstring).

    ``split``: programs along the reduction (atomics when > 1); default 1 in the interpreter, and
    on a GPU enough to give about 264 programs. The tests force it to cover the atomic path.
    """
    check_dtype("in_a", in_a)
    pool = idx_a is not None
    if (idx_b is not None) != pool:
        raise ArgumentError("hebbian: give both pool indices or neither")
    if in_a.dim() != 4 or in_a.shape != in_b.shape or out_a.shape != out_b.shape or out_a.dim() != 4:
        raise ArgumentError(f"hebbian: inputs {tuple(in_a.shape)}/{tuple(in_b.shape)} and outputs "
                         f"{tuple(out_a.shape)}/{tuple(out_b.shape)} must be 4-D pairs of equal shape")
    if len({in_a.dtype, in_b.dtype, out_a.dtype, out_b.dtype}) != 1:
        raise ArgumentError("hebbian: inputs and outputs must share one dtype")
    bsz, c, h, w = in_a.shape
    co, hp, wp = out_a.shape[1:]
    ho, wo = conv_output_size(h, w, kernel_size, padding)
    expect = (bsz, co, ho // 2, wo // 2) if pool else (bsz, co, ho, wo)
    if tuple(out_a.shape) != expect or (pool and (idx_a.shape != out_a.shape or idx_b.shape != out_a.shape)):
        raise ArgumentError(f"hebbian: outputs {tuple(out_a.shape)} expected {expect} (and idx alike)")
    in_a, in_b, out_a, out_b = (t.contiguous() for t in (in_a, in_b, out_a, out_b))
    if pool:
        idx_a, idx_b = idx_a.contiguous(), idx_b.contiguous()
    check_int32(in_a, out_a)
    k = c * kernel_size * kernel_size
    m = bsz * ho * wo
    if INTERPRET:
        bm, bn, bk = block(m, hi=1024), block(co, hi=128), block(k, hi=128)
    else:
        # 32 reduction rows: the two gathered tiles and two im2col tiles fit in registers.
        bm, bn, bk = block(m, hi=32), block(co, hi=64), block(k, hi=64)
    tiles = triton.cdiv(co, bn) * triton.cdiv(k, bk)
    chunks = triton.cdiv(m, bm)
    # Split the reduction over M until the grid fills a large GPU (about 2 programs per SM).
    if split is None:
        split = 1 if INTERPRET else triton.cdiv(264, tiles)
    split = max(1, min(chunks, split))
    per_split = triton.cdiv(chunks, split)
    split = triton.cdiv(chunks, per_split)
    acc_t = torch.float64 if in_a.dtype == torch.float64 else torch.float32
    make = torch.zeros if split > 1 else torch.empty
    gw = make((co, c, kernel_size, kernel_size), dtype=acc_t, device=in_a.device)
    gb = make((co,), dtype=acc_t, device=in_a.device)
    _hebbian_kernel[(triton.cdiv(co, bn), triton.cdiv(k, bk), split)](
        gw, gb, in_a, in_b, out_a, out_b, idx_a if pool else out_a, idx_b if pool else out_b,
        m, c, h, w, co, ho, wo, hp, wp, *split_scalar(scale), per_split,
        PAD=padding, KS=kernel_size, POOL=pool, SAME_INPUT=same_input, ATOMIC=split > 1,
        ACC=acc_dtype(in_a.dtype), DOT=dot_dtype(in_a.dtype), IDX=INDEX,
        PRECISION=dot_precision(in_a.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=NUM_WARPS,
    )
    return gw.to(in_a.dtype), gb.to(in_a.dtype)


@hebbian_triton.register_fake
def _(in_a, in_b, out_a, out_b, idx_a, idx_b, kernel_size, padding, scale, same_input, split=None):
    torch._check(in_a.dim() == 4 and out_a.dim() == 4, lambda: "hebbian: 4-D inputs and outputs")
    co, c = out_a.shape[1], in_a.shape[1]
    return in_a.new_empty((co, c, kernel_size, kernel_size)), in_a.new_empty((co,))


def hebbian_ref(in_a, in_b, out_a, out_b, idx_a, idx_b, kernel_size, padding, scale, same_input=False):
    """The same in ATen: one weight-gradient convolution over the concatenated phases."""
    ho, wo = conv_output_size(in_a.shape[2], in_a.shape[3], kernel_size, padding)
    ua, ub = out_a, out_b
    if idx_a is not None:
        ua = torch.nn.functional.max_unpool2d(out_a, idx_a, 2, 2, output_size=(ho, wo))
        ub = torch.nn.functional.max_unpool2d(out_b, idx_b, 2, 2, output_size=(ho, wo))
    weight = in_a.new_empty((ua.shape[1], in_a.shape[1], kernel_size, kernel_size))
    _, gw, gb = torch.ops.aten.convolution_backward(
        torch.cat([ua, -ub]), torch.cat([in_a, in_b]), weight, [weight.shape[0]], [1, 1],
        [padding] * 2, [1, 1], False, [0, 0], 1, [False, True, True])
    return gw * scale, gb * scale
