"""Backend ``triton`` (:class:`TritonBackend`): the analytic settling step and Hebbian update of
:mod:`.torch_backend` as fused kernels.

Same schedule and same terms as :mod:`.torch_backend` (compare the two line by line); per step and
layer:

    bottom-up  u_l = P_{l-1}(W_{l-1} * s_{l-1} + b_{l-1})   eqkern::forward_pool_triton (indices too)
    top-down   d_l = conv_transpose(unpool(s_{l+1}, idx_l), W_l)  ┐ eqkern::feedback_settle_triton:
               (B_l and its own idx_l with separate feedback)      │
    nudge      n_l = energy.layer_nudge (torch: soft-max read-out)  │ gather through idx_l, implicit
    s_l  ←  ρ(α_l u_l + γ_l d_l + n_l)                              ┘ GEMM, epilogue, store in place

Two launches per layer and step, none for the unpooled map or ``d_l`` (never in memory). Layers are
updated in place in the order 1…N: layer ``l``'s forward conv (giving ``u_{l+1}`` and ``idx_l``) runs
before the launch that overwrites ``s_l``, and ``s_{l+1}`` is still the old one when ``d_l`` is read,
which equals the synchronous update; ``schedule="alternating"`` runs the same launches in
:func:`.update_order.alternating_inputs`'s order (even layers, then odd ones). A fully connected
connection runs through the same kernels as a 1×1 convolution on a 1×1 map (its input flattened
to ``(B, F, 1, 1)``). The Hebbian update (:func:`hebbian_gradients`) is one
``eqkern::hebbian_triton`` launch per layer, and :meth:`TritonBackend.connection_gradients` (the
rules FRE, VF, KP-VF) runs the same kernel on one phase.

Dtypes: fp32, fp16 and bf16 storage with fp32 arithmetic inside the kernels; fp64 storage runs the
same kernels with fp64 loads, dots and epilogue (the interpreter and the GPU both support fp64
``tl.dot``), so the fp64 tests hold it to 1e-12 like the other backends.

On CPU the kernels run in Triton's interpreter, which needs ``TRITON_INTERPRET=1`` before
``eqkern.kernels.triton`` is first imported (this module imports it lazily, on first use): that is a test
and debugging path, not a fast one.
"""

from __future__ import annotations

import torch

from eqkern.model import energy
from eqkern.model.activations import ACTIVATION_CODES
from eqkern.model.crnn import CRNN, Conv
from eqkern.backends import shared_terms
from eqkern.backends.base import Backend, ParamGrads, Phase, PhaseInputs, nudged
from eqkern.backends.update_order import alternating_inputs, schedule_groups


def _kernels():
    """The custom ops, imported on first use (decorating the kernels reads TRITON_INTERPRET)."""
    from eqkern.kernels.triton import feedback_settle_triton, forward_pool_triton, hebbian_triton

    return forward_pool_triton, feedback_settle_triton, hebbian_triton


def _conn(model: CRNN, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int, bool]:
    """``(weight (CO, C, k, k), bias, k, padding, pool)`` of connection ``i`` (FC: 1×1, no padding)."""
    spec, conn = model.specs[i], model.connections[i]
    if isinstance(spec, Conv):
        return conn.weight, conn.bias, spec.kernel_size, spec.padding, spec.pool
    return conn.weight.view(*conn.weight.shape, 1, 1), conn.bias, 1, 0, False


def _as_input(model: CRNN, i: int, t: torch.Tensor) -> torch.Tensor:
    """``t`` (the input of connection ``i``) as the 4-D map that connection reads.

    A view of a contiguous ``t`` (the kernels store through it: :func:`settle` keeps the state
    contiguous), a copy otherwise."""
    return t if isinstance(model.specs[i], Conv) else t.reshape(t.shape[0], -1, 1, 1)


def _as_map(t: torch.Tensor) -> torch.Tensor:
    """A state layer as a 4-D map: conv layers as they are, FC layers ``(B, F, 1, 1)``."""
    return t if t.dim() == 4 else t.reshape(t.shape[0], -1, 1, 1)


def drive(model: CRNN, i: int, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(u, idx)`` of connection ``i`` (as ``energy.drive``, in one launch); ``u`` is 4-D."""
    forward_pool, _, _ = _kernels()
    weight, bias, _, padding, pool = _conn(model, i)
    u, idx = forward_pool(_as_input(model, i, s_in), weight, bias, padding, pool)
    return u, (idx if pool else None)


def _feedback_pool_indices(model: CRNN, i: int, s_in: torch.Tensor) -> torch.Tensor:
    """The arg-max of ``P(B_i * s_in)`` (no bias), by the forward launch (separate feedback)."""
    forward_pool, _, _ = _kernels()
    weight, _, _, padding, _ = _conn(model, i)
    back = model.feedback_weight(i).view(weight.shape)
    return forward_pool(_as_input(model, i, s_in), back, back.new_zeros(back.shape[0]), padding, True)[1]


def _feedback(
    model: CRNN, i: int, s_in: torch.Tensor, idx: torch.Tensor | None
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """``(weight, padding, idx)`` of connection ``i``'s top-down term, ``idx`` from :func:`drive`.

    Symmetric: ``W_i`` and ``idx``. Separate feedback: ``B_i`` and the indices of
    ``energy.feedback_indices``, computed by this backend's forward launch."""
    weight, _, _, padding, _ = _conn(model, i)
    if model.separate_feedback:
        weight = model.feedback_weight(i).view(weight.shape)
    idx = energy.feedback_indices(model, i, s_in, idx,
                                  pool_indices=lambda j, s: _feedback_pool_indices(model, j, s))
    return weight, padding, idx


def _settle_layer(
    model: CRNN,
    state: list[torch.Tensor],
    i: int,
    u: torch.Tensor,
    idx: torch.Tensor | None,
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    skip_up: dict[int, torch.Tensor] | None = None,
) -> None:
    """``state[i] ← ρ(α u + γ d + n)`` in one launch, ``d`` gathered from ``state[i+1]`` through
    ``idx`` (the pool indices of connection ``i+1`` at the old ``state[i]``; with separate
    feedback, those of ``B_{i+1}``, computed here from the old ``state[i]``). Skip links
    (``skip_up``: :func:`energy.skip_drives` of the pre-step state): ``R s`` joins ``u`` (scaled by
    α in the kernel) and ``γ·Rᵀ s_j`` joins the nudge (the kernel scales only ``d`` by γ)."""
    _, feedback_settle, _ = _kernels()
    s, spec = state[i], model.specs[i]
    nudge = energy.layer_nudge(model, i, s, y, beta) if nudged(beta) else None  # reads the old s_i
    if skip_up is not None:
        if i in skip_up:
            u = u + skip_up[i].view(u.shape)
        down = energy.skip_feedback(model, i, state)  # the layers above are still old here
        if down is not None:
            nudge = down * spec.gamma if nudge is None else nudge + down * spec.gamma
    if i + 1 < len(state):
        weight, padding, idx = _feedback(model, i + 1, s, idx)
        target = _as_input(model, i + 1, s)
        s_up = _as_map(state[i + 1])
    else:
        weight = s_up = None
        padding, target = 0, _as_map(s)
    feedback_settle(target, u.view(target.shape),
                    None if nudge is None else nudge.reshape(target.shape), s_up, idx, weight,
                    padding, spec.alpha, spec.gamma, ACTIVATION_CODES[spec.activation])


@torch.no_grad()
def step_(
    model: CRNN,
    input_drive: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    schedule: str = "synchronous",
    indices: dict[int, torch.Tensor | None] | None = None,
) -> None:
    """One step of ``schedule``, in place on ``state`` (two launches per layer).

    Alternating: the order and the pool indices of :func:`.update_order.alternating_inputs`, with
    this backend's forward launch as the drive (``indices``: see there)."""
    schedule_groups(len(state), schedule)  # rejects an unknown schedule
    if schedule == "alternating":
        inputs = alternating_inputs(model, lambda j, s_in: drive(model, j, s_in),
                                             input_drive, state, {} if indices is None else indices)
        for i, u, idx in inputs:
            _settle_layer(model, state, i, u, idx, beta, y)
        return
    u = input_drive
    skip_up = energy.skip_drives(model, state) if model.skips else None  # they read layers overwritten below
    for i in range(len(state)):
        # Layer i's forward conv (u_{i+1} and the pool indices) reads the old s_i: it runs before
        # the launch that overwrites it.
        u_next = idx = None
        if i + 1 < len(state):
            u_next, idx = drive(model, i + 1, state[i])
        _settle_layer(model, state, i, u, idx, beta, y, skip_up)
        u = u_next


def _contiguous_state(state: list[torch.Tensor]) -> list[torch.Tensor]:
    """The kernels store through views of the state layers, so they must be contiguous."""
    return [s if s.is_contiguous() else s.contiguous() for s in state]


@torch.no_grad()
def run_steps(model: CRNN, phase: PhaseInputs) -> None:
    """Run ``steps`` steps of ``schedule`` in place; the input drive ``u_0`` is computed once for
    the phase (and, alternating, the pool indices carried from step to step)."""
    x, state, beta, steps, y, schedule = (phase.x, phase.state, phase.beta, phase.steps,
                                          phase.targets, phase.schedule)
    work = _contiguous_state(state)
    input_drive = drive(model, 0, x)[0]
    indices: dict[int, torch.Tensor | None] = {}
    for _ in range(steps):
        step_(model, input_drive, work, beta, y, schedule, indices)
    for s, w in zip(state, work):
        if s is not w:  # a non-contiguous layer was updated in a copy
            s.copy_(w)


@torch.no_grad()
def hebbian_gradients(model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
    """The contrastive Hebbian update of every parameter of ``model.ep_parameters()``, one launch
    per layer.

    ``g_θ = −[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)``. Per layer one
    ``eqkern::hebbian_triton`` launch over both phases (weight and bias), after one
    ``forward_pool`` launch for the pool indices of each phase's own equilibrium (one for layer 0,
    whose input ``x`` both phases share); the read-out, the LE/KDW maps and the skip links get the
    torch GEMMs of :mod:`.shared_terms`.
    """
    _, _, hebbian = _kernels()
    scale = shared_terms.hebbian_scale(x, a, b)
    in_a = in_b = x
    grads: ParamGrads = {}
    for i, conn in enumerate(model.connections):
        _, _, kernel_size, padding, pool = _conn(model, i)
        ia, ib = _as_input(model, i, in_a), _as_input(model, i, in_b)
        idx_a = idx_b = None
        if pool:
            if i == 0:
                idx_a = idx_b = drive(model, i, ia)[1]
            else:
                idx = drive(model, i, torch.cat([ia, ib]))[1]
                idx_a, idx_b = idx[: x.shape[0]], idx[x.shape[0]:]
        # Layer 0: both phases see the same clamped x; the kernel subtracts before the GEMM.
        gw, gb = hebbian(ia, ib, _as_map(a.state[i]), _as_map(b.state[i]), idx_a, idx_b,
                         kernel_size, padding, scale, i == 0)
        grads[conn.weight], grads[conn.bias] = gw.view_as(conn.weight), gb
        in_a, in_b = a.state[i], b.state[i]
    grads.update(shared_terms.small_terms(model, x, y, a, b))
    return grads


def _reason(device: torch.device) -> str | None:
    """Why the kernels cannot run on ``device``: triton must import; on cpu they must be
    interpreted, which ``TRITON_INTERPRET=1`` decides when ``eqkern.kernels.triton`` is imported."""
    import os
    import sys

    from eqkern.kernels import native

    version, error = native.triton_status()
    if version is None:
        return f"{error} (install triton>=3.6)"
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"the triton backend runs on cuda (and on cpu in the interpreter), not {device.type}"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on cpu only in interpreter mode: set TRITON_INTERPRET=1 before importing eqkern"
    loaded = sys.modules.get("eqkern.kernels.triton._common")
    if loaded is not None and not loaded.INTERPRET:
        return ("eqkern.kernels.triton was imported before TRITON_INTERPRET=1 was set, so its kernels are "
                "compiled for a GPU: set it before the first import")
    return None


class TritonBackend(Backend):
    """Fused Triton kernels: two launches per layer and step, one per layer and update.

    ``connection_gradients`` (FRE, VF, KP-VF) runs the Hebbian kernel too (``eqkern::hebbian_triton``
    with a zero second phase in its same-input mode). Skip links run on the synchronous schedule
    only: the alternating step has no skip terms.
    """

    name = "triton"
    alternating_skips = False

    def unavailable_reason(self, device: torch.device) -> str | None:
        return _reason(device)

    def settle(self, model: CRNN, phase: PhaseInputs) -> None:
        run_steps(model, phase)

    def hebbian_gradients(self, model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
        return hebbian_gradients(model, x, y, a, b)

    @torch.no_grad()
    def connection_gradients(self, model: CRNN, i: int, inputs: torch.Tensor, out: torch.Tensor,
                             indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The base method's product by the Hebbian kernel (see the class docstring)."""
        _, _, hebbian = _kernels()
        _, _, kernel_size, padding, pool = _conn(model, i)
        if pool and indices is None:
            indices = drive(model, i, inputs)[1]  # W_i's own pool indices at inputs
        idx = indices if pool else None
        s_in, s_out = _as_input(model, i, inputs), _as_map(out)
        # ⟨out, ·⟩ is the a-phase of the kernel against a zero b-phase; same_input skips the
        # second im2col (the "difference" out − 0 is formed before the one dot).
        gw, gb = hebbian(s_in, s_in, s_out, torch.zeros_like(s_out), idx, idx, kernel_size, padding,
                         1.0, True)
        return gw.view_as(model.connections[i].weight), gb


BACKEND = TritonBackend()
