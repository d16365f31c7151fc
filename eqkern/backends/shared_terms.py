"""Gradient terms every analytic backend computes the same way, in ATen, keyed by parameter.

The big terms of the Hebbian update (one weight gradient per connection) are where the backends
differ; these are the small ones they share: the read-out, the LE projections / KDW maps, the
skip links, and :func:`aten_connection_gradients`, the default per-connection product of
:meth:`eqkern.backends.base.Backend.connection_gradients`. ``a`` and ``b`` are the two phases
(:class:`eqkern.backends.base.Phase`) of the contrastive estimate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from eqkern.model import energy
from eqkern.model.auxiliary import aux_error, aux_weight_grad, labels_of
from eqkern.model.crnn import CRNN
from eqkern.model.specs import Conv

if TYPE_CHECKING:
    from eqkern.backends.base import Phase

# A gradient per parameter, keyed by the parameter object itself (not by position in
# model.parameters(), whose order would otherwise be part of every backend's contract).
ParamGrads = dict[nn.Parameter, torch.Tensor]


def aten_connection_gradients(
    model: CRNN,
    i: int,
    inputs: torch.Tensor,
    out: torch.Tensor,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂/∂W_i, ∂/∂b_i)`` of ``Σ_batch ⟨out, P_i(W_i * inputs + b_i)⟩`` in ATen: one
    weight-gradient convolution (after unpooling ``out`` through ``indices``, by default those of
    ``inputs``' own forward pass) or one GEMM. ``inputs: (batch, *in_shape)``,
    ``out: (batch, *state_shapes[i])``; the results have ``W_i``'s and ``b_i``'s shapes.
    """
    spec, weight = model.specs[i], model.connections[i].weight
    if isinstance(spec, Conv):
        if spec.pool:
            if indices is None:
                indices = energy.drive(model, i, inputs)[1]  # the pool indices of inputs' own pass
            out = energy.unpool(model, i, out, indices, inputs.shape)
        _, gw, gb = torch.ops.aten.convolution_backward(
            out, inputs, weight, [weight.shape[0]], [1, 1],
            [spec.padding] * 2, [1, 1], False, [0, 0], 1, [False, True, True],
        )
        return gw, gb
    return out.t() @ inputs.flatten(1), out.sum(0)


def bias_gradient(diff: torch.Tensor) -> torch.Tensor:
    """``Σ_batch,space diff``: the bias term of a connection from ``s_a − s_b`` (unpooling moves
    values, it does not change their sum, so no indices are needed). ``diff: (batch, C[, H, W])``."""
    return diff.sum(0) if diff.dim() == 2 else diff.sum((0, 2, 3))


def hebbian_scale(x: torch.Tensor, a: Phase, b: Phase) -> float:
    """``−1 / ((β_a − β_b)·batch)``: the factor of every Hebbian product."""
    return -1.0 / ((a.beta - b.beta) * x.shape[0])


def readout_gradients(model: CRNN, y, a: Phase, b: Phase) -> ParamGrads:
    """``(β_a ∂L/∂W_out(s_a) − β_b ∂L/∂W_out(s_b)) / ((β_a − β_b)·batch)`` for CE, and the bias;
    ``{}`` without a read-out (MSE)."""
    if model.out is None:
        return {}
    onehot = F.one_hot(labels_of(y).long(), model.num_classes)
    errs, feats = [], []
    for phase, sign in ((a, 1.0), (b, -1.0)):
        feat = phase.state[-1].flatten(1)
        errs.append((torch.softmax(model.out(feat), dim=1) - onehot) * (sign * phase.beta))
        feats.append(feat)
    err, feat = torch.cat(errs), torch.cat(feats)
    norm = 1.0 / ((a.beta - b.beta) * len(onehot))
    return {model.out.weight: err.t() @ feat * norm, model.out.bias: err.sum(0) * norm}


def aux_gradients(model: CRNN, y, a: Phase, b: Phase) -> ParamGrads:
    """The LE projections / KDW maps: ``κ (β_a ∂L_aug/∂θ(s_a) − β_b ∂L_aug/∂θ(s_b)) / (β_a − β_b)``
    per batch sample (Lin eq. 20, symmetric average for ±β). Frozen maps are left out."""
    grads: ParamGrads = {}
    for j, i in enumerate(model.augment.layers if len(model.aux) else ()):
        mod = model.aux_module(j)
        if not mod.weight.requires_grad:
            continue
        total = None
        for phase, sign in ((a, 1.0), (b, -1.0)):
            s = phase.state[i]
            g = aux_weight_grad(model.augment, mod, aux_error(model.augment, mod, j, s, y), s)
            g = g * (sign * phase.beta)
            total = g if total is None else total + g
        grads[mod.weight] = total * (model.kappa / ((a.beta - b.beta) * len(labels_of(y))))
    return grads


def skip_gradients(model: CRNN, a: Phase, b: Phase, scale: float) -> ParamGrads:
    """The skip links' maps ``R_ij``: ``scale · (a_j a_iᵀ − b_j b_iᵀ)`` summed over the batch."""
    grads: ParamGrads = {}
    for (i, j), link in zip(model.skips, model.skip_links):
        # a_j a_iᵀ − b_j b_iᵀ = [(a_j − b_j)(a_i + b_i)ᵀ + (a_j + b_j)(a_i − b_i)ᵀ] / 2: the two
        # phases' differences are taken before the products, so fp32 does not cancel two large,
        # nearly equal sums (the same FLOPs as one product over the concatenated batch).
        aj, bj, ai, bi = a.state[j], b.state[j], a.state[i], b.state[i]
        g = link.weight_grad(aj - bj, ai + bi) + link.weight_grad(aj + bj, ai - bi)
        grads[link.weight] = g * (0.5 * scale)
    return grads


def small_terms(model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
    """Everything but the connections: read-out, LE/KDW maps and skip links, in one dict."""
    return {**readout_gradients(model, y, a, b), **aux_gradients(model, y, a, b),
            **skip_gradients(model, a, b, hebbian_scale(x, a, b))}
