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
from eqkern.kernels.triton._common import (
    INTERPRET,
    OpVariants,
    autotuned,
    check_dtype,
    check_int32,
    device_guard,
    dtype_constexprs,
    gpu_tiles,
    launch,
    launch_tiles,
    split_scalar,
)
from eqkern.model.specs import conv_output_size

# Every constexpr flag the launcher can pass (the shape constexprs KS and PAD aside).
VARIANTS = OpVariants("hebbian", {"POOL": (True, False), "SAME_INPUT": (True, False),
                                  "ATOMIC": (True, False)})

# Programs a GPU launch aims at along the three grid axes together (about 2 per SM of an H100).
_TARGET_PROGRAMS = 264

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
    M, C, H, W, CO, HO, WO, HP, WP, scale_hi, scale_lo, ROWS_PER_SPLIT,
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
    # Rows, not chunks: the split is fixed before autotuning picks BLOCK_M.
    m_start = pid_s.to(IDX) * ROWS_PER_SPLIT
    m_stop = tl.minimum(M, m_start + ROWS_PER_SPLIT)
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


# On a GPU: autotuned over the tiles of the storage dtype. Tuning runs the kernel several times:
# the atomic variant accumulates, so gW and gb are zeroed before each run.
_hebbian_tuned = autotuned(_hebbian_kernel, "hebbian", key=("M", "C", "CO", "KS", "POOL"),
                           dtype_arg="INA_ptr", reset_to_zero=("GW_ptr", "GB_ptr"))


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
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gW, gb)`` of one conv connection over both phases, by one launch of
    :func:`_hebbian_kernel` (see the module docstring).

    ``split``: programs along the reduction (atomics when > 1); default 1 in the interpreter, and
    on a GPU enough to give about 264 programs (:func:`split_rows`). The tests force it to cover
    the atomic path. ``precision``: ``input_precision`` of fp32 dots (``ieee``, ``tf32``,
    ``tf32x3``); None: the policy.
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
    rows = split_rows(m, co, k, in_a.dtype, pool, split)
    n_split = triton.cdiv(m, rows)
    # Interpreted, a forced split also sizes the one tile, so that the split (atomic) path runs.
    tiles = launch_tiles("hebbian", in_a.dtype, pool, min(m, rows), co, k)
    acc_t = torch.float64 if in_a.dtype == torch.float64 else torch.float32
    make = torch.zeros if n_split > 1 else torch.empty
    gw = make((co, c, kernel_size, kernel_size), dtype=acc_t, device=in_a.device)
    gb = make((co,), dtype=acc_t, device=in_a.device)
    with device_guard(in_a):
        launch(_hebbian_kernel, _hebbian_tuned,
               lambda meta: (triton.cdiv(co, meta["BLOCK_N"]), triton.cdiv(k, meta["BLOCK_K"]),
                             n_split),
               tiles,
               (gw, gb, in_a, in_b, out_a, out_b, idx_a if pool else out_a,
                idx_b if pool else out_b,
                m, c, h, w, co, ho, wo, hp, wp, *split_scalar(scale), rows),
               dict(PAD=padding, KS=kernel_size,
                    **VARIANTS.flags(POOL=pool, SAME_INPUT=same_input, ATOMIC=n_split > 1),
                    **dtype_constexprs(in_a.dtype, precision)))
    return gw.to(in_a.dtype), gb.to(in_a.dtype)


def split_rows(m: int, co: int, k: int, dtype: torch.dtype, pool: bool, split: int | None,
               interpret: bool = INTERPRET) -> int:
    """Rows of the reduction (of ``m``) per program along the split axis: a multiple of every
    candidate ``BLOCK_M`` (autotuning picks one after the split is fixed). ``split`` None: 1 in
    the interpreter, on a GPU enough to give about ``_TARGET_PROGRAMS`` programs with the default
    tile. Interpreted, a forced split cuts ``m`` into ``split`` parts (the tile follows them)."""
    if interpret:
        return triton.cdiv(m, max(1, split or 1))
    tiles = gpu_tiles("hebbian", dtype, pool)
    unit = max(t.block_m for t in tiles)  # powers of two: the largest is a multiple of the rest
    if split is None:
        first = tiles[0]
        split = triton.cdiv(_TARGET_PROGRAMS,
                            triton.cdiv(co, first.block_n) * triton.cdiv(k, first.block_k))
    chunks = triton.cdiv(m, unit)
    split = max(1, min(chunks, split))
    return triton.cdiv(chunks, split) * unit


@hebbian_triton.register_fake
def _(in_a, in_b, out_a, out_b, idx_a, idx_b, kernel_size, padding, scale, same_input, split=None,
      precision=None):
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
