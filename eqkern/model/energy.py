"""The terms of the primitive function Φ_β of a CRNN, each written once (Lin eq. 1, 10).

``Φ = Σ_l ⟨s_{l+1}, P_l(W_l * s_l + b_l)⟩ + Σ_{(i,j)} ⟨s_j, R_ij s_i⟩`` and
``Φ_β = Φ − β L(ŷ, y) − βκ Σ_{i∈Υ} L_aug,i(s_i)``. Every backend builds its step from these
pieces (or from kernels that compute the same ones); the reference backend differentiates Φ_β
itself. ``state[i]`` is ``s_{i+1}``: one ``(batch, *model.state_shapes[i])`` tensor per layer.

* :func:`drive`: the bottom-up drive of a layer and its max-pool indices;
* :func:`feedback_indices`, :func:`feedback_drive`: the pool indices and the drive of the
  top-down map (``W_i``, or ``B_i`` with separate feedback);
* :func:`feedback`, :func:`unpool`: the top-down term a layer sends to its input;
* :func:`loss`, :func:`output_nudge`, :func:`augmented_loss`, :func:`layer_nudge`: the cost
  terms of Φ_β and their (negative) state gradients, the nudges;
* :func:`skip_drives`, :func:`skip_feedback`: the FRE-RNN skip-link terms.

``beta`` is a float or a per-sample ``(batch,)`` tensor everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from eqkern.model.auxiliary import (aux_error, aux_loss, aux_readout_transpose, labels_of,
                                    per_sample)
from eqkern.model.specs import Conv, conv_output_size

if TYPE_CHECKING:
    from eqkern.model.crnn import CRNN

# drive(i, s_in) -> (u_i, pool indices or None): :func:`drive` or a backend's own kernel
Drive = Callable[[int, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def drive(model: CRNN, i: int, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bottom-up drive of state layer ``i`` from its input ``s_in`` (``x`` or ``state[i-1]``).

    Returns ``(u, idx)``: ``u: (batch, *state_shapes[i])`` and the max-pool arg-max indices
    (``None`` without a pool).
    """
    spec, conn = model.specs[i], model.connections[i]
    if isinstance(spec, Conv):
        pre = F.conv2d(s_in, conn.weight, conn.bias, padding=spec.padding)
        if spec.pool:
            return F.max_pool2d_with_indices(pre, 2, 2)
        return pre, None
    return F.linear(s_in.flatten(1), conn.weight, conn.bias), None


def feedback_drive(model: CRNN, i: int, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The drive whose ``s_in``-derivative is connection ``i``'s top-down term, with its pool
    indices: :func:`drive` (symmetric), or ``P_i(B_i * s_in)`` / ``B_i · flat(s_in)`` with
    separate feedback (Laborieux App. D.3, eq. 46: the backward map has no bias and pools by its
    own arg-max)."""
    if not model.separate_feedback:
        return drive(model, i, s_in)
    spec, weight = model.specs[i], model.feedback_weight(i)
    if isinstance(spec, Conv):
        pre = F.conv2d(s_in, weight, None, padding=spec.padding)
        if spec.pool:
            return F.max_pool2d_with_indices(pre, 2, 2)
        return pre, None
    return F.linear(s_in.flatten(1), weight), None


def feedback_indices(
    model: CRNN, i: int, s_in: torch.Tensor, idx: torch.Tensor | None,
    pool_indices: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Pool indices of connection ``i``'s top-down term, given ``idx`` from :func:`drive`.

    Symmetric, or no pool: ``idx`` itself. Separate: the arg-max of ``P(B_i * s_in)`` (no bias),
    :func:`feedback_drive`'s, or ``pool_indices(i, s_in)`` when a backend computes it with its
    own kernel.
    """
    spec = model.specs[i]
    if not model.separate_feedback or not isinstance(spec, Conv) or not spec.pool:
        return idx
    if pool_indices is not None:
        return pool_indices(i, s_in)
    return feedback_drive(model, i, s_in)[1]


def unpool(model: CRNN, i: int, s_out: torch.Tensor, idx: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """Scatter pooled ``s_out`` back to the pre-pool map of conv ``i`` (input shape ``in_shape``).

    The output size is given explicitly: with an odd pre-pool size the last row/column was
    dropped by the pool and must come back as zeros.
    """
    spec = model.specs[i]
    pre_hw = conv_output_size(in_shape[-2], in_shape[-1], spec.kernel_size, spec.padding)
    return F.max_unpool2d(s_out, idx, 2, 2, output_size=pre_hw)


def unpooled(model: CRNN, i: int, s_out: torch.Tensor, idx: torch.Tensor | None,
             in_shape: torch.Size) -> torch.Tensor:
    """``s_out`` through :func:`unpool` when connection ``i`` pools (``idx`` given), else as is."""
    return s_out if idx is None else unpool(model, i, s_out, idx, in_shape)


def feedback(
    model: CRNN, i: int, s_out: torch.Tensor, idx: torch.Tensor | None, in_shape: torch.Size
) -> torch.Tensor:
    """Top-down term that state layer ``i`` (above) sends to its input through connection ``i``.

    ``s_out: (batch, *state_shapes[i])``; returns a tensor of ``in_shape`` (the shape of the
    input of connection ``i``): ``conv_transpose(unpool(s_out, idx), W_i)`` or ``W_iᵀ s_out``,
    with ``B_i`` for ``W_i`` when the feedback is separate (``idx`` from :func:`feedback_indices`).
    """
    spec, weight = model.specs[i], model.feedback_weight(i)
    if isinstance(spec, Conv):
        s_out = unpooled(model, i, s_out, idx if spec.pool else None, in_shape)
        return F.conv_transpose2d(s_out, weight, padding=spec.padding)
    return (s_out @ weight).view(in_shape)


# -- the cost terms of Φ_β and the nudges ---------------------------------------------------

def loss(model: CRNN, s_last: torch.Tensor, y, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss summed over the batch: CE of the read-out, or ½‖s_N − onehot(y)‖².

    ``weight: (batch,)``: a weighted sum ``Σ_b w_b L_b`` instead (per-sample β)."""
    y = labels_of(y)
    if model.out is not None:
        per = F.cross_entropy(model.logits(s_last), y.long(), reduction="none" if weight is not None else "sum")
        return per if weight is None else (per * weight).sum()
    onehot = F.one_hot(y.long(), model.num_classes).to(s_last.dtype)
    if weight is None:
        return 0.5 * (s_last - onehot).pow(2).sum()
    return 0.5 * ((s_last - onehot).pow(2).flatten(1).sum(1) * weight).sum()


def output_nudge(model: CRNN, s_last: torch.Tensor, y, beta: float | torch.Tensor) -> torch.Tensor:
    """``−β ∂L/∂s_N``: ``β W_outᵀ(onehot(y) − ŷ)`` (CE) or ``−β (s_N − onehot(y))`` (MSE)."""
    y = labels_of(y)
    onehot = F.one_hot(y.long(), model.num_classes).to(s_last.dtype)
    if model.out is not None:
        err = onehot - torch.softmax(model.logits(s_last), dim=1)
        return (per_sample(beta, err) * (err @ model.out.weight)).view_as(s_last)
    return per_sample(beta, s_last) * (onehot - s_last)


def augmented_loss(
    model: CRNN, state: Sequence[torch.Tensor], y, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``κ Σ_{i∈Υ} L_aug,i(s_i)`` summed over the batch (0 without augmentation); with
    ``weight: (batch,)`` each sample's term is weighted (per-sample β)."""
    if model.augment is None:
        return state[-1].new_zeros(())
    return model.kappa * sum(aux_loss(model.augment, model.aux_module(j), j, state[i], y, weight)
                             for j, i in enumerate(model.augment.layers))


def total_loss(model: CRNN, state: Sequence[torch.Tensor], y) -> torch.Tensor:
    """``L_EP + κ Σ L_aug``: what EP's estimate (Lin eq. 12) and BPTT descend."""
    return loss(model, state[-1], y) + augmented_loss(model, state, y)


def layer_nudge(model: CRNN, i: int, s: torch.Tensor, y, beta: float | torch.Tensor) -> torch.Tensor | None:
    """All nudge terms of state layer ``i`` (``−β ∂L_EP/∂s_i − βκ ∂L_aug/∂s_i``), or None."""
    nudge = output_nudge(model, s, y, beta) if i == model.num_layers - 1 else None
    if model.augment is not None and i in model.augment.layers:
        j = model.augment.layers.index(i)
        mod = model.aux_module(j)
        err = aux_error(model.augment, mod, j, s, y)
        aux = aux_readout_transpose(model.augment, mod, err, s) * (-per_sample(beta, s) * model.kappa)
        nudge = aux if nudge is None else nudge + aux
    return nudge


# -- skip links (FRE-RNN residual connections) ----------------------------------------------

def skip_drives(model: CRNN, state: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Bottom-up skip terms ``Σ_i R_ij s_i`` of every target layer ``j``, from ``state``."""
    out: dict[int, torch.Tensor] = {}
    for (i, j), link in zip(model.skips, model.skip_links):
        r = link(state[i])
        out[j] = r if j not in out else out[j] + r
    return out


def skip_feedback(model: CRNN, i: int, state: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Top-down skip term ``Σ_j R_ijᵀ s_j`` of source layer ``i`` (None if it has no link)."""
    total = None
    for (src, j), link in zip(model.skips, model.skip_links):
        if src == i:
            r = link.transpose(state[j])
            total = r if total is None else total + r
    return total
