"""Backend ``torch``: the analytic settling step and Hebbian update in plain ATen calls.

No autograd and nothing kept alive across steps. Per step and layer (SPEC §1):

    bottom-up  u_l = P_{l-1}(W_{l-1} * s_{l-1} + b_{l-1})        conv + bias + max-pool (indices)
    top-down   d_l = conv_transpose(unpool(s_{l+1}, idx_l), W_l)  (W_lᵀ s_{l+1} for FC)
               (separate feedback: B_l, and idx_l of P(B_l * s_l), see energy.feedback_indices)
    nudge      n_N = −β ∂L/∂s_N                                   read-out layer only
    s_l  ←  ρ(α_l u_l + γ_l d_l + n_l)

Layers are updated in place in the order 1…N, which equals the synchronous update because layer
``l``'s own forward conv (giving ``u_{l+1}`` and ``idx_l``) is computed before ``s_l`` is
overwritten and ``s_{l+1}`` is still the old one when ``d_l`` is read. :func:`layer_drives` yields
the terms lazily in exactly that order; :func:`step_` (in place) and :func:`step` (out of place,
differentiable, for BPTT) consume it.

The alternating schedule (``schedule="alternating"``, SPEC §1) updates the even layers (0, 2, …)
from the current state, then the odd layers from the new even ones: :func:`alternating_inputs`
yields the layers in that order and :func:`alternating_drives` adds their top-down and nudge terms.
``beta`` is a float or a per-sample ``(batch,)`` tensor everywhere (the ±β phases as one batch).
"""

from __future__ import annotations

from typing import Callable, Iterator, MutableSequence, Sequence

import torch
import torch.nn.functional as F

from eqkern.model import energy
from eqkern.model.activations import activate, activate_
from eqkern.model.auxiliary import aux_error, aux_weight_grad, labels_of
from eqkern.model.crnn import CRNN, Conv
from eqkern.backends.base import Phase, accumulate_grads, nudged, schedule_groups

# epilogue(state, u, d, n, alpha, gamma, activation): state ← ρ(α·u + γ·d + n), in place
Epilogue = Callable[
    [torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", float, float, str],
    None,
]

LayerTerms = tuple[int, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]
# drive(i, s_in) -> (u_i, pool indices of connection i or None): energy.drive or a backend's own
Drive = Callable[[int, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def layer_drives(
    model: CRNN,
    input_drive: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
) -> Iterator[LayerTerms]:
    """Yield ``(i, u_i, d_i, n_i)`` for ``i = 0…N-1`` reading only pre-step values of ``state``.

    The consumer may overwrite ``state[i]`` as soon as item ``i`` is yielded: everything that needs
    the old ``state[i]`` (its forward conv and pool indices) has been computed by then.
    ``input_drive``: ``u_0 = P_0(W_0 * x + b_0)``, constant over a phase.
    """
    n_layers = len(state)
    # Skip links (FRE-RNN): a bottom-up term into layer j reads the OLD s_i, i < j, which is
    # overwritten before j's turn, so all of them are computed first, from the pre-step state.
    # The top-down term of layer i reads s_j, j > i, still old at i's turn: computed lazily.
    skip_up = energy.skip_drives(model, state) if model.skips else None
    u = input_drive
    for i in range(n_layers):
        s = state[i]
        u_next = d = None
        if i + 1 < n_layers:
            u_next, idx = energy.drive(model, i + 1, s)
            idx = energy.feedback_indices(model, i + 1, s, idx)
            d = energy.feedback(model, i + 1, state[i + 1], idx, s.shape)
        if skip_up is not None:
            u, d = _add_skips(model, i, state, u, d, skip_up)
        nudge = energy.layer_nudge(model, i, s, y, beta) if nudged(beta) else None
        yield i, u, d, nudge
        u = u_next


def _add_skips(model: CRNN, i: int, state: Sequence[torch.Tensor], u: torch.Tensor,
               d: torch.Tensor | None, skip_up: dict[int, torch.Tensor]):
    """``u_i + Σ R_ki s_k`` and ``d_i + Σ R_ijᵀ s_j`` out of place (``u_0`` is reused each step)."""
    if i in skip_up:
        u = u + skip_up[i]
    down = energy.skip_feedback(model, i, state)
    if down is not None:  # a source layer always has a layer above it, so d exists
        d = d + down
    return u, d


def _pooled(model: CRNN, i: int) -> bool:
    spec = model.specs[i]
    return isinstance(spec, Conv) and spec.pool


def alternating_inputs(
    model: CRNN,
    drive: Drive,
    input_drive: torch.Tensor,
    state: MutableSequence[torch.Tensor],
    indices: dict[int, torch.Tensor | None],
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(i, u_i, idx_i)`` for the even layers, then the odd layers, of one alternating step.

    ``u_i``: the bottom-up drive of layer ``i`` from the current ``state[i-1]`` (``input_drive``
    for layer 0); ``idx_i``: the pool indices of connection ``i+1`` at the current ``state[i]``,
    through which the top-down term of layer ``i`` is unpooled (None at the top or without a pool).
    The consumer writes layer ``i``'s new value into ``state[i]`` (in place, or by replacing the
    list entry) before asking for the next item, so the odd layers read the new even ones.

    ``indices`` keeps the pool indices that a drive yields as a by-product for the layer that
    needs them next (``indices[i]`` belongs to ``state[i]`` as it is now, and is used up when
    layer ``i`` is updated). Passing one dict to all the steps of a phase, with nothing else
    writing the state in between, leaves a forward conv per even layer only in the first step.
    """
    n_layers = len(state)
    for i in [*range(0, n_layers, 2), *range(1, n_layers, 2)]:
        if i == 0:
            u = input_drive
        else:
            u, indices[i - 1] = drive(i, state[i - 1])
        idx = None
        if i + 1 < n_layers and _pooled(model, i + 1):
            idx = indices.pop(i) if i in indices else drive(i + 1, state[i])[1]
        indices.pop(i, None)  # state[i] is about to change
        yield i, u, idx


def alternating_drives(
    model: CRNN,
    input_drive: torch.Tensor,
    state: MutableSequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    indices: dict[int, torch.Tensor | None] | None = None,
) -> Iterator[LayerTerms]:
    """Yield ``(i, u_i, d_i, n_i)`` in the alternating order (:func:`alternating_inputs`, whose
    contract the consumer keeps): even layers from the current state, odd ones from the new even."""
    n_layers = len(state)
    for i, u, idx in alternating_inputs(model, lambda j, s_in: energy.drive(model, j, s_in), input_drive, state,
                                        {} if indices is None else indices):
        s, d = state[i], None
        if i + 1 < n_layers:
            idx = energy.feedback_indices(model, i + 1, s, idx)
            d = energy.feedback(model, i + 1, state[i + 1], idx, s.shape)
        nudge = energy.layer_nudge(model, i, s, y, beta) if nudged(beta) else None
        yield i, u, d, nudge


def schedule_drives(
    model: CRNN,
    input_drive: torch.Tensor,
    state: MutableSequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    schedule: str = "synchronous",
    indices: dict[int, torch.Tensor | None] | None = None,
) -> Iterator[LayerTerms]:
    """The terms of one step of ``schedule`` (:func:`layer_drives` or :func:`alternating_drives`)."""
    schedule_groups(len(state), schedule)  # rejects an unknown schedule
    if schedule == "synchronous":
        return layer_drives(model, input_drive, state, beta, y)
    return alternating_drives(model, input_drive, state, beta, y, indices)


def combine(
    u: torch.Tensor, d: torch.Tensor | None, n: torch.Tensor | None, alpha: float, gamma: float
) -> torch.Tensor:
    """``α·u + γ·d + n`` out of place (a missing term counts as zero)."""
    total = u * alpha if alpha != 1.0 else u
    if d is not None:
        total = total + d * gamma if gamma != 1.0 else total + d
    if n is not None:
        total = total + n
    return total


def torch_epilogue_(
    state: torch.Tensor,
    u: torch.Tensor,
    d: torch.Tensor | None,
    n: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: str,
) -> None:
    """``state ← ρ(α·u + γ·d + n)`` with in-place ATen ops (no temporary the size of the layer)."""
    torch.mul(u, alpha, out=state)
    if d is not None:
        state.add_(d, alpha=gamma)
    if n is not None:
        state.add_(n)
    activate_(activation, state)


@torch.no_grad()
def step_(
    model: CRNN,
    input_drive: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    epilogue: Epilogue = torch_epilogue_,
    schedule: str = "synchronous",
    indices: dict[int, torch.Tensor | None] | None = None,
) -> None:
    """One step of ``schedule``, in place on ``state`` (``indices``: see :func:`alternating_inputs`)."""
    for i, u, d, n in schedule_drives(model, input_drive, state, beta, y, schedule, indices):
        spec = model.specs[i]
        epilogue(state[i], u, d, n, spec.alpha, spec.gamma, spec.activation)


def step(
    model: CRNN,
    input_drive: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    schedule: str = "synchronous",
) -> list[torch.Tensor]:
    """One step of ``schedule``, out of place and differentiable (BPTT builds its graph with this)."""
    if schedule == "synchronous":
        return [
            activate(model.specs[i].activation, combine(u, d, n, model.specs[i].alpha, model.specs[i].gamma))
            for i, u, d, n in layer_drives(model, input_drive, state, beta, y)
        ]
    new = list(state)  # the generator reads the new even layers from here
    for i, u, d, n in schedule_drives(model, input_drive, new, beta, y, schedule):
        new[i] = activate(model.specs[i].activation,
                          combine(u, d, n, model.specs[i].alpha, model.specs[i].gamma))
    return new


@torch.no_grad()
def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    steps: int,
    y: torch.Tensor | None,
    epilogue: Epilogue = torch_epilogue_,
    schedule: str = "synchronous",
) -> list[torch.Tensor]:
    """Run ``steps`` steps of ``schedule`` in place; the input drive ``u_0`` is computed once for
    the phase (and, alternating, the pool indices carried from step to step)."""
    input_drive = energy.drive(model, 0, x)[0]
    indices: dict[int, torch.Tensor | None] = {}
    for _ in range(steps):
        step_(model, input_drive, state, beta, y, epilogue, schedule, indices)
    return state


@torch.no_grad()
def hebbian_update(model: CRNN, x: torch.Tensor, y: torch.Tensor, a: Phase, b: Phase) -> None:
    """The contrastive Hebbian update, added to every ``.grad`` (SPEC §2).

    ``g_θ = −[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)``. Per conv layer it is one
    weight-gradient convolution over the concatenated batch ``[s_l^a, s_l^b]`` against
    ``[unpool(s_{l+1}^a), −unpool(s_{l+1}^b)]``; per FC layer one GEMM; the read-out gets
    ``(β_a ∂L/∂θ(s_a) − β_b ∂L/∂θ(s_b)) / (β_a − β_b)``.
    """
    scale = -1.0 / ((a.beta - b.beta) * x.shape[0])
    inputs = torch.cat([x, x])
    grads: list[torch.Tensor] = []
    for i, spec in enumerate(model.specs):
        signed_out = torch.cat([a.state[i], -b.state[i]])
        if isinstance(spec, Conv) and i == 0:
            # Both phases see the same clamped x (and so the same pool indices): subtract the two
            # halves before the GEMM. Half the FLOPs, and no fp32 cancellation between two large,
            # nearly equal terms.
            inputs, signed_out = x, a.state[0] - b.state[0]
        gw, _ = connection_grads(model, i, inputs, signed_out)
        # The bias term is Σ s_a − Σ s_b (unpooling moves values, it does not change their sum):
        # subtract first, so that fp32 does not cancel two large, nearly equal sums.
        diff = a.state[i] - b.state[i]
        gb = diff.sum(0) if diff.dim() == 2 else diff.sum((0, 2, 3))
        grads += [gw * scale, gb * scale]
        inputs = torch.cat([a.state[i], b.state[i]])
    if model.out is not None:
        grads += _readout_grads(model, y, a, b)
    grads += _aux_grads(model, y, a, b)
    grads += _skip_grads(model, a, b, scale)
    params = model.ep_parameters()  # separate feedback weights: eqkern.learning.separate_feedback
    accumulate_grads(*zip(*[(p, g) for p, g in zip(params, grads) if p.requires_grad]))


def connection_grads(
    model: CRNN, i: int, inputs: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂/∂W_i, ∂/∂b_i)`` of ``Σ_batch ⟨out, drive(i, inputs)⟩``, the Hebbian product of one
    connection: one weight-gradient convolution (after unpooling ``out`` with the pool indices of
    ``inputs``' own forward pass) or one GEMM. ``inputs: (batch, *in_shape)``,
    ``out: (batch, *state_shapes[i])``.
    """
    spec, conn = model.specs[i], model.connections[i]
    if isinstance(spec, Conv):
        if spec.pool:
            idx = energy.drive(model, i, inputs)[1]  # pool indices of each phase's own equilibrium
            out = energy.unpool(model, i, out, idx, inputs.shape)
        _, gw, gb = torch.ops.aten.convolution_backward(
            out, inputs, conn.weight, [conn.weight.shape[0]], [1, 1],
            [spec.padding] * 2, [1, 1], False, [0, 0], 1, [False, True, True],
        )
        return gw, gb
    return out.t() @ inputs.flatten(1), out.sum(0)


def _skip_grads(model: CRNN, a: Phase, b: Phase, scale: float) -> list[torch.Tensor]:
    """The skip links' maps ``R_ij``: ``scale · (a_j a_iᵀ − b_j b_iᵀ)`` summed over the batch."""
    grads = []
    for (i, j), link in zip(model.skips, model.skip_links):
        # a_j a_iᵀ − b_j b_iᵀ = [(a_j − b_j)(a_i + b_i)ᵀ + (a_j + b_j)(a_i − b_i)ᵀ] / 2: the two
        # phases' differences are taken before the products, so fp32 does not cancel two large,
        # nearly equal sums (the same FLOPs as one product over the concatenated batch).
        aj, bj, ai, bi = a.state[j], b.state[j], a.state[i], b.state[i]
        g = link.weight_grad(aj - bj, ai + bi) + link.weight_grad(aj + bj, ai - bi)
        grads.append(g * (0.5 * scale))
    return grads


def _readout_grads(model: CRNN, y, a: Phase, b: Phase) -> list[torch.Tensor]:
    """``(β_a ∂L/∂W_out(s_a) − β_b ∂L/∂W_out(s_b)) / ((β_a − β_b)·batch)`` for CE, and the bias."""
    onehot = F.one_hot(labels_of(y).long(), model.num_classes)
    errs, feats = [], []
    for phase, sign in ((a, 1.0), (b, -1.0)):
        feat = phase.state[-1].flatten(1)
        errs.append((torch.softmax(model.out(feat), dim=1) - onehot) * (sign * phase.beta))
        feats.append(feat)
    err, feat = torch.cat(errs), torch.cat(feats)
    norm = 1.0 / ((a.beta - b.beta) * len(onehot))
    return [err.t() @ feat * norm, err.sum(0) * norm]


def _aux_grads(model: CRNN, y, a: Phase, b: Phase) -> list[torch.Tensor]:
    """The LE projections / KDW maps: ``κ (β_a ∂L_aug/∂θ(s_a) − β_b ∂L_aug/∂θ(s_b)) / (β_a − β_b)``
    per batch sample (Lin eq. 20, symmetric average for ±β)."""
    grads = []
    for j, i in enumerate(model.augment.layers if len(model.aux) else ()):
        mod, total = model.aux_module(j), None
        for phase, sign in ((a, 1.0), (b, -1.0)):
            s = phase.state[i]
            g = aux_weight_grad(model.augment, mod, aux_error(model.augment, mod, j, s, y), s)
            g = g * (sign * phase.beta)
            total = g if total is None else total + g
        grads.append(total * (model.kappa / ((a.beta - b.beta) * len(labels_of(y)))))
    return grads
