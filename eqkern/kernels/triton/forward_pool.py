"""Op ``eqkern::forward_pool_triton``: k×k stride-1 convolution + bias + optional 2×2 max-pool.

The bottom-up drive of a conv layer, ``u = P(W * s + b)``, in one launch:

    x: (B, C, H, W), weight: (CO, C, k, k), bias: (CO,)  →  y: (B, CO, HP, WP), idx: (B, CO, HP, WP)
    pre[b, n, oh, ow] = b[n] + Σ_{c,kh,kw} W[n, c, kh, kw] · x[b, c, oh + kh − p, ow + kw − p]
    HO = H + 2p − k + 1, WO likewise; pooled: HP = HO // 2 (the last odd row/column is dropped)

Implicit GEMM: rows M = B·HP·WP output positions (pooled positions when pooling), columns
N = CO, reduction over K = C·k·k, the flattened ``(c, kh, kw)`` (chunks of BLOCK_K; the im2col
tile is gathered from ``x`` on the fly, the weight tile is a plain tile of ``W`` viewed as
(CO, K)). With the pool epilogue a program keeps four accumulators, one per position of the 2×2
window, sharing each weight tile; it adds the bias, takes the max in row-major window order with a
strict ``>`` (the first maximum wins, as ``torch.max_pool2d_with_indices`` on CPU and CUDA) and
writes the arg-max as an int64 flat index ``oh·WO + ow`` in the pre-pool plane: the indices that
``F.max_unpool2d`` and the other backends take. (NaN is not propagated as torch's pool does.)
Without a pool ``idx`` is an empty int64 tensor.

A fully connected layer is the 1×1 case on a 1×1 map: ``x.view(B, F, 1, 1)``, ``W.view(O, F, 1, 1)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqkern.errors import ArgumentError
from eqkern.kernels.triton._common import (
    OpVariants,
    autotuned,
    check_dtype,
    check_int32,
    device_guard,
    dtype_constexprs,
    launch,
    launch_tiles,
)
from eqkern.model.specs import conv_output_size

# Every constexpr flag the launcher can pass (the shape constexprs KS and PAD aside).
VARIANTS = OpVariants("forward_pool", {"POOL": (True, False)})

@triton.jit
def _conv_tile(acc, X_ptr, x_base, c_off, kh, kw, k_mask, m_mask, oh, ow, H, W, w_tile,
               PAD: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """``acc += A @ w_tile`` with the im2col tile ``A[m, k] = x[b, c, oh + kh − p, ow + kw − p]``
    gathered on the fly (zero outside the map), ``k`` = flattened ``(c, kh, kw)``."""
    ih = oh[:, None] + (kh[None, :] - PAD)
    iw = ow[:, None] + (kw[None, :] - PAD)
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & m_mask[:, None] & k_mask[None, :]
    a = tl.load(X_ptr + x_base[:, None] + c_off[None, :] + ih * W + iw, mask=inside, other=0.0)
    return tl.dot(a.to(ACC).to(DOT), w_tile, acc, input_precision=PRECISION)


@triton.jit
def _forward_pool_kernel(
    Y_ptr, IDX_ptr, X_ptr, W_ptr, B_ptr,
    M, C, H, W, CO, HO, WO, HP, WP,
    PAD: tl.constexpr, KS: tl.constexpr, POOL: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, IDX: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)  # (b, ph, pw) flattened
    offs_n = pid_n.to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)  # output channel
    m_mask = offs_m < M
    n_mask = offs_n < CO
    pw = offs_m % WP
    ph = (offs_m // WP) % HP
    b = offs_m // (WP * HP)
    if POOL:
        oh0 = ph * 2
        ow0 = pw * 2
    else:
        oh0 = ph
        ow0 = pw
    x_base = b * (C * H * W)

    K = C * KS * KS  # reduction over (c, kh, kw); W viewed as (CO, K) is contiguous
    acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(IDX)
        k_mask = offs_k < K
        c_off = (offs_k // (KS * KS)) * (H * W)
        kh = (offs_k // KS) % KS
        kw = offs_k % KS
        w_tile = tl.load(W_ptr + offs_n[None, :] * K + offs_k[:, None],
                         mask=k_mask[:, None] & n_mask[None, :], other=0.0).to(ACC).to(DOT)
        acc00 = _conv_tile(acc00, X_ptr, x_base, c_off, kh, kw, k_mask, m_mask, oh0, ow0, H, W,
                           w_tile, PAD, ACC, DOT, PRECISION)
        if POOL:  # the other three positions of the 2×2 window share the weight tile
            acc01 = _conv_tile(acc01, X_ptr, x_base, c_off, kh, kw, k_mask, m_mask, oh0, ow0 + 1,
                               H, W, w_tile, PAD, ACC, DOT, PRECISION)
            acc10 = _conv_tile(acc10, X_ptr, x_base, c_off, kh, kw, k_mask, m_mask, oh0 + 1, ow0,
                               H, W, w_tile, PAD, ACC, DOT, PRECISION)
            acc11 = _conv_tile(acc11, X_ptr, x_base, c_off, kh, kw, k_mask, m_mask, oh0 + 1,
                               ow0 + 1, H, W, w_tile, PAD, ACC, DOT, PRECISION)

    # Epilogue: bias inside the pool (the arg-max ties are those of torch's conv-then-pool).
    bias = tl.load(B_ptr + offs_n, mask=n_mask, other=0.0).to(ACC)[None, :]
    out = acc00 + bias
    y_offs = b[:, None] * (CO * HP * WP) + offs_n[None, :] * (HP * WP) + (ph * WP + pw)[:, None]
    mask = m_mask[:, None] & n_mask[None, :]
    if POOL:
        arg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int64) + (oh0 * WO + ow0).to(tl.int64)[:, None]
        v = acc01 + bias
        better = v > out
        out = tl.where(better, v, out)
        arg = tl.where(better, arg + 1, arg)
        v = acc10 + bias
        better = v > out
        out = tl.where(better, v, out)
        arg = tl.where(better, (oh0 * WO + ow0 + WO).to(tl.int64)[:, None], arg)
        v = acc11 + bias
        better = v > out
        out = tl.where(better, v, out)
        arg = tl.where(better, (oh0 * WO + ow0 + WO + 1).to(tl.int64)[:, None], arg)
        tl.store(IDX_ptr + y_offs, arg, mask=mask)
    tl.store(Y_ptr + y_offs, out.to(Y_ptr.dtype.element_ty), mask=mask)


# On a GPU: autotuned over the tiles of the storage dtype (keyed on the GEMM sizes and the pool).
_forward_pool_tuned = autotuned(_forward_pool_kernel, "forward_pool",
                                key=("M", "C", "CO", "KS", "POOL"), dtype_arg="X_ptr")


def out_shape(x_shape, w_shape, padding: int, pool: bool) -> tuple[int, int, int, int, int, int]:
    """``(HO, WO, HP, WP)`` plus ``(B, CO)``: pre-pool and output spatial sizes."""
    bsz, _, h, w = x_shape
    co, _, ks, _ = w_shape
    ho, wo = conv_output_size(h, w, ks, padding)
    hp, wp = (ho // 2, wo // 2) if pool else (ho, wo)
    return bsz, co, ho, wo, hp, wp


@torch.library.custom_op("eqkern::forward_pool_triton", mutates_args=())
def forward_pool_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int, pool: bool,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P(W * x + b), arg-max indices)`` (``idx`` empty without pool), by one launch of
    :func:`_forward_pool_kernel`; see the module docstring for shapes.

    ``precision``: ``input_precision`` of fp32 dots (``ieee``, ``tf32``, ``tf32x3``); None: the
    policy (:data:`eqkern.kernels.precision.TRITON_FP32_DOT`). One program per ``BLOCK_M ×
    BLOCK_N`` output tile (:func:`launch_tiles`: autotuned on a GPU, with half the rows when
    pooling, four accumulators).
    """
    check_dtype("x", x)
    if (x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]
            or weight.shape[2] != weight.shape[3]):
        raise ArgumentError(f"forward_pool: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not "
                         "form a (B, C, H, W) * (CO, C, k, k) convolution")
    if weight.dtype != x.dtype or bias.dtype != x.dtype or bias.shape != (weight.shape[0],):
        raise ArgumentError(f"forward_pool: weight {weight.dtype} and bias {bias.dtype} "
                            f"{tuple(bias.shape)} must match x's dtype {x.dtype}, bias of shape (CO,)")
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    bsz, co, ho, wo, hp, wp = out_shape(x.shape, weight.shape, padding, pool)
    if hp < 1 or wp < 1:
        raise ArgumentError(f"forward_pool: empty output map for x {tuple(x.shape)}, padding {padding}")
    y = torch.empty((bsz, co, hp, wp), dtype=x.dtype, device=x.device)
    idx = torch.empty((bsz, co, hp, wp) if pool else (0,), dtype=torch.int64, device=x.device)
    check_int32(x, y)
    m = bsz * hp * wp
    tiles = launch_tiles("forward_pool", x.dtype, pool, m, co, weight[0].numel())
    with device_guard(x):
        launch(_forward_pool_kernel, _forward_pool_tuned,
               lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(co, meta["BLOCK_N"])),
               tiles,
               (y, idx if pool else y, x, weight, bias,
                m, x.shape[1], x.shape[2], x.shape[3], co, ho, wo, hp, wp),
               dict(PAD=padding, KS=weight.shape[2], **VARIANTS.flags(POOL=pool),
                    **dtype_constexprs(x.dtype, precision)))
    return y, idx


@forward_pool_triton.register_fake
def _(x, weight, bias, padding, pool, precision=None):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "forward_pool: 4-D x and weight")
    bsz, co, _, _, hp, wp = out_shape(x.shape, weight.shape, padding, pool)
    y = x.new_empty((bsz, co, hp, wp))
    idx = x.new_empty((bsz, co, hp, wp) if pool else (0,), dtype=torch.int64)
    return y, idx


def forward_pool_ref(x, weight, bias, padding: int, pool: bool):
    """The same in ATen (what ``energy.drive`` computes): the reference the tests compare against."""
    pre = torch.nn.functional.conv2d(x, weight, bias, padding=padding)
    if pool:
        return torch.nn.functional.max_pool2d_with_indices(pre, 2, 2)
    return pre, torch.empty(0, dtype=torch.int64, device=x.device)
