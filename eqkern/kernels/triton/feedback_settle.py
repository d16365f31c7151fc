"""Op ``eqkern::feedback_settle_triton``: the layer update ``s ← ρ(α·u + γ·d + n)``, in place.

One launch per layer and step. ``d`` is the top-down term of the layer above, a
transposed convolution of the *unpooled* upper state, computed without the unpooled tensor:

    s: (B, C, H, W) (overwritten), u: like s (bottom-up drive), n: like s or None (nudge)
    s_up: (B, CO, HP, WP), idx: like s_up (int64 arg-max in the HO×WO pre-pool plane) or None,
    weight: (CO, C, k, k), the conv from s to s_up (padding p, stride 1)
    d[b, c, ih, iw] = Σ_{n,kh,kw} U[b, n, ih − kh + p, iw − kw + p] · W[n, c, kh, kw]
    U[b, n, oh, ow] = s_up[b, n, oh//2, ow//2] if idx[b, n, oh//2, ow//2] == oh·WO + ow else 0

Implicit GEMM: rows M = B·H·W positions of ``s``, columns N = C, reduction over K = CO·k·k, the
flattened ``(n, kh, kw)``. The ``A`` tile is gathered: for each row and ``(n, kh, kw)`` the kernel
loads ``s_up`` and ``idx`` at the pooled position ``(oh//2, ow//2)`` and keeps the value only where the
stored arg-max is this very pre-pool position ``(oh, ow)`` (rows ``oh ≥ 2·HP`` of an odd pre-pool map
were dropped by the pool and read as zero). Without a pool ``U = s_up``. The epilogue adds ``α·u``
and ``n``, applies ρ by its integer code and stores over ``s``: ``s`` itself is never read, so the
in-place store is safe, and no other program reads ``s``.

A fully connected connection is the 1×1 case on a 1×1 map (``d = s_up @ W``); with ``s_up=None``
(the top layer) only the epilogue runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eqkern.errors import ArgumentError
from eqkern.kernels.triton._common import (
    OpVariants,
    activate,
    autotuned,
    check_dtype,
    check_int32,
    device_guard,
    dtype_constexprs,
    launch,
    launch_tiles,
    split_scalar,
)
from eqkern.model.activations import ACTIVATION_CODES
from eqkern.model.specs import conv_output_size

# Every constexpr flag the launcher can pass (the shape constexprs KS and PAD aside). Without a
# layer above (the top layer, HAS_D False) only the epilogue runs, as KS=1 with no pool.
VARIANTS = OpVariants(
    "feedback_settle",
    {"POOL": (True, False), "HAS_D": (True, False), "HAS_N": (True, False),
     "ACT": tuple(sorted(ACTIVATION_CODES.values()))},
    valid=lambda v: v["HAS_D"] or (not v["POOL"] and v["KS"] == 1 and v["PAD"] == 0))

@triton.jit
def _feedback_settle_kernel(
    S_ptr, U_ptr, N_ptr, SUP_ptr, IDX_ptr, W_ptr,
    M, C, H, W, CO, HO, WO, HP, WP, alpha_hi, alpha_lo, gamma_hi, gamma_lo,
    PAD: tl.constexpr, KS: tl.constexpr, POOL: tl.constexpr,
    HAS_D: tl.constexpr, HAS_N: tl.constexpr, ACT: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, IDX: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)  # (b, ih, iw) flattened
    offs_n = pid_n.to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)  # channel c of s
    m_mask = offs_m < M
    n_mask = offs_n < C
    iw = offs_m % W
    ih = (offs_m // W) % H
    b = offs_m // (W * H)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    if HAS_D:
        K = CO * KS * KS
        sup_base = b * (CO * HP * WP)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K).to(IDX)
            k_mask = offs_k < K
            n_up = offs_k // (KS * KS)
            kh = (offs_k // KS) % KS
            kw = offs_k % KS
            oh = ih[:, None] - kh[None, :] + PAD  # position in the pre-pool plane of s_up
            ow = iw[:, None] - kw[None, :] + PAD
            valid = (oh >= 0) & (oh < HO) & (ow >= 0) & (ow < WO)
            if POOL:
                ph = oh // 2  # oh ≥ 0 where valid, so // is the floor
                pw = ow // 2
                valid = valid & (ph < HP) & (pw < WP)
                pos = ph * WP + pw
            else:
                pos = oh * WO + ow
            valid = valid & m_mask[:, None] & k_mask[None, :]
            offs = sup_base[:, None] + n_up[None, :] * (HP * WP) + pos
            a = tl.load(SUP_ptr + offs, mask=valid, other=0.0).to(ACC)
            if POOL:  # unpool by gather: keep the value only at its arg-max position
                j = tl.load(IDX_ptr + offs, mask=valid, other=-1)
                a = tl.where(j == (oh * WO + ow).to(tl.int64), a, 0.0)
            # W[n, c, kh, kw] at n·C·k² + c·k² + kh·k + kw
            w_offs = (n_up * (C * KS * KS) + (offs_k % (KS * KS)))[:, None] + offs_n[None, :] * (KS * KS)
            w_tile = tl.load(W_ptr + w_offs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            acc = tl.dot(a.to(DOT), w_tile.to(ACC).to(DOT), acc, input_precision=PRECISION)

    # Epilogue: α·u + γ·d + n, ρ, store in place.
    alpha = tl.cast(alpha_hi, ACC) + tl.cast(alpha_lo, ACC)
    gamma = tl.cast(gamma_hi, ACC) + tl.cast(gamma_lo, ACC)
    offs = (b * (C * H * W) + ih * W + iw)[:, None] + offs_n[None, :] * (H * W)
    mask = m_mask[:, None] & n_mask[None, :]
    v = tl.load(U_ptr + offs, mask=mask, other=0.0).to(ACC) * alpha
    if HAS_D:
        v = v + acc * gamma
    if HAS_N:
        v = v + tl.load(N_ptr + offs, mask=mask, other=0.0).to(ACC)
    v = activate(v, ACT)
    tl.store(S_ptr + offs, v.to(S_ptr.dtype.element_ty), mask=mask)


# On a GPU: autotuned over the tiles of the storage dtype. Tuning runs the kernel several times:
# ``state`` is restored between runs in case it aliases ``u`` or the nudge.
_feedback_settle_tuned = autotuned(_feedback_settle_kernel, "feedback_settle",
                                   key=("M", "C", "CO", "KS", "POOL", "HAS_D"), dtype_arg="S_ptr",
                                   restore_value=("S_ptr",))


@torch.library.custom_op("eqkern::feedback_settle_triton", mutates_args=("state",))
def feedback_settle_triton(
    state: torch.Tensor,
    u: torch.Tensor,
    nudge: torch.Tensor | None,
    s_up: torch.Tensor | None,
    idx: torch.Tensor | None,
    weight: torch.Tensor | None,
    padding: int,
    alpha: float,
    gamma: float,
    activation: int,
    precision: str | None = None,
) -> None:
    """``state ← ρ(α·u + γ·conv_transpose(unpool(s_up, idx), W) + nudge)`` in place, by one launch
    of :func:`_feedback_settle_kernel` (``state``: 4-D, contiguous; see the module docstring).

    ``precision``: ``input_precision`` of fp32 dots (``ieee``, ``tf32``, ``tf32x3``); None: the
    policy. ``activation``: a code of ``ACTIVATION_CODES``."""
    check_dtype("state", state)
    if state.dim() != 4 or not state.is_contiguous():
        raise ArgumentError(f"feedback_settle: state must be a contiguous 4-D tensor, got "
                         f"{tuple(state.shape)} (contiguous={state.is_contiguous()})")
    for name, t in (("u", u), ("nudge", nudge)):
        if t is not None and (t.shape != state.shape or t.dtype != state.dtype):
            raise ArgumentError(f"feedback_settle: {name} {tuple(t.shape)} {t.dtype} does not match "
                             f"state {tuple(state.shape)} {state.dtype}")
    bsz, c, h, w = state.shape
    has_d = s_up is not None
    pool = idx is not None
    if has_d:
        if weight is None or weight.dim() != 4 or weight.shape[1] != c or s_up.dim() != 4:
            raise ArgumentError("feedback_settle: s_up needs a (CO, C, k, k) weight and 4-D s_up")
        co, ks = weight.shape[0], weight.shape[2]
        ho, wo = conv_output_size(h, w, ks, padding)
        hp, wp = s_up.shape[2], s_up.shape[3]
        expect = (bsz, co, ho // 2, wo // 2) if pool else (bsz, co, ho, wo)
        if tuple(s_up.shape) != expect or (pool and idx.shape != s_up.shape):
            raise ArgumentError(f"feedback_settle: s_up {tuple(s_up.shape)} (idx "
                             f"{None if idx is None else tuple(idx.shape)}) expected {expect}")
        s_up, weight = s_up.contiguous(), weight.contiguous()
        idx = idx.contiguous() if pool else None
    else:
        co = ks = 1
        ho = hp = h
        wo = wp = w
    u = u.contiguous()
    nudge = nudge.contiguous() if nudge is not None else None
    check_int32(state, s_up)
    m = bsz * h * w
    tiles = launch_tiles("feedback_settle", state.dtype, pool, m, c, co * ks * ks)
    with device_guard(state):
        launch(_feedback_settle_kernel, _feedback_settle_tuned,
               lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_N"])),
               tiles,
               (state, u, nudge if nudge is not None else u, s_up if has_d else u,
                idx if pool else state, weight if has_d else u,
                m, c, h, w, co, ho, wo, hp, wp, *split_scalar(alpha), *split_scalar(gamma)),
               dict(PAD=padding if has_d else 0, KS=ks,  # PAD is unused without d: one variant
                    **VARIANTS.flags(POOL=pool, HAS_D=has_d, HAS_N=nudge is not None,
                                     ACT=activation),
                    **dtype_constexprs(state.dtype, precision)))


# A custom op that returns None and only mutates its arguments gets a trivial fake impl.


def feedback_settle_ref(state, u, nudge, s_up, idx, weight, padding, alpha, gamma, activation_name):
    """The same in ATen, out of place (what ``energy.feedback`` + the torch epilogue compute)."""
    from eqkern.model.activations import activate as act

    total = u * alpha
    if s_up is not None:
        if idx is not None:
            ks = weight.shape[2]
            pre_hw = conv_output_size(state.shape[2], state.shape[3], ks, padding)
            s_up = torch.nn.functional.max_unpool2d(s_up, idx, 2, 2, output_size=pre_hw)
        total = total + gamma * torch.nn.functional.conv_transpose2d(s_up, weight, padding=padding)
    if nudge is not None:
        total = total + nudge
    return act(activation_name, total)
