"""Learning rules for separate feedback weights (Laborieux §2.4, §3.3, App. D.3 and F).

A ``CRNN(feedback="separate")`` has, for every connection ``l ≥ 1``, a forward weight ``W_l`` (the
bottom-up drive ``P(W_l * s_{l-1} + b_l)``) and a feedback weight ``B_l`` of the same shape, no
bias (the top-down term ``conv_transpose(unpool(s_l, idx_B), B_l)``, ``idx_B`` the arg-max of
``P(B_l * s_{l-1})``). The dynamics are then a vector field ``F`` (eq. 40), not ``∂Φ/∂s``.

Two rules, both written to ``.grad`` as descent directions (per-sample mean), for the phases
``a`` (``β_a``) and ``b`` (``β_b``) and the free equilibrium ``s*``; ``Δβ = β_a − β_b``
(``2β`` for the symmetric estimator of Laborieux's three phases):

* ``"vf"`` (eq. 41-42, "∂F/∂θ(s*)ᵀ·(s^a − s^b) / Δβ"): with ``δ_l = s_l^a − s_l^b``,
  ``g_W_l = −unpool(δ_l; idx_W(s*_{l-1})) ⋆ s*_{l-1} / Δβ`` and
  ``g_B_l = −unpool(s*_l; idx_B(s*_{l-1})) ⋆ δ_{l-1} / Δβ``: forward and backward weights get
  different updates, so they do not align (Laborieux Table 2: 75 % test error on CIFAR-10).
* ``"kp-vf"`` (eq. 43-45, Kolen-Pollack): ``∇_W_l`` and ``∇_B_l`` are the contrastive Hebbian
  terms of each phase's own states, ``−[unpool(s_l^a; idx(s_{l-1}^a)) ⋆ s_{l-1}^a −
  unpool(s_l^b; idx(s_{l-1}^b)) ⋆ s_{l-1}^b] / Δβ`` with the pool indices of ``W_l`` resp.
  ``B_l`` (equal for FC layers and convs without pool); both weights get their mean
  ``(∇_W + ∇_B)/2``. With an equal leakage ``λ`` the difference ``W − B`` shrinks by ``(1 − ηλ)`` per
  SGD step, so the angle between them goes to 0 (App. D.3).

Everything else (``W_0``, which reads the clamped input and has no ``B_0``, the biases, the
read-out and the LE/KDW maps) gets the backend's ordinary EP update, which is eq. 42/45's for them.

The leakage ``λ`` (``ep_gradients(..., leakage=λ)``) adds ``λ·W_l`` and ``λ·B_l`` to the two
gradients: exactly the ``weight_decay=λ`` of ``torch.optim.SGD`` on those tensors, which is how
Laborieux's code applies it (Table 3: 3e-4, shared by forward and backward weights; ``train_vgg``
puts ``B_l`` in ``W_l``'s optimizer group, so the preset's weight decay already is a leakage).
Use one or the other, not both, unless you mean ``λ`` to be their sum.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from eqkern.model import energy
from eqkern.backends.base import Phase, accumulate_grads
from eqkern.model.crnn import CRNN, Conv

# "ep": the contrastive Hebbian update (B_l fixed for a separate model); "fre": FRE-RNN's
# ΔW_i = ds_{i+1} s_iᵀ (eqkern.fre, symmetric models); "vf", "kp-vf": separate feedback (below).
RULES = ("ep", "fre", "vf", "kp-vf")


def resolve_rule(model: CRNN, rule: str | None, leakage: float) -> str:
    """The learning rule for ``model`` (``None``: ``"ep"`` if symmetric, ``"kp-vf"`` if separate),
    after checking ``rule`` and ``leakage`` (ValueError naming the argument)."""
    if rule is None:
        rule = "kp-vf" if model.separate_feedback else "ep"
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {RULES}")
    if rule in ("vf", "kp-vf") and not model.separate_feedback:
        raise ValueError(f"rule={rule!r} trains separate feedback weights: build the model with "
                         f"CRNN(..., feedback='separate')")
    if rule == "fre" and (model.separate_feedback or model.augment is not None):
        raise ValueError("rule='fre' is for symmetric models without LE/KD augmentation (the paper "
                         "has neither); use rule='ep'")
    leakage = float(leakage)
    if not math.isfinite(leakage) or leakage < 0.0:
        raise ValueError(f"leakage must be a finite number >= 0, got {leakage}")
    if leakage != 0.0 and not model.separate_feedback:
        raise ValueError("leakage acts on the pairs (W_l, B_l) of feedback='separate'; for a "
                         "symmetric model use the optimizer's weight_decay")
    return rule


@torch.no_grad()
def weight_angles(model: CRNN) -> list[float]:
    """Angle in degrees between ``flat(W_l)`` and ``flat(B_l)`` for each connection ``l ≥ 1``
    (Laborieux eq. 52, Fig. 7); ``[]`` for a symmetric model (all angles would be 0)."""
    if not model.separate_feedback:
        return []
    angles = []
    for i in range(1, model.num_layers):
        w = model.connections[i].weight.detach().double().flatten()
        b = model.feedback_weight(i).detach().double().flatten()
        cos = (w @ b) / (w.norm() * b.norm())
        angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cos.item())))))
    return angles


def _weight_grad(model: CRNN, i: int, s_in: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    """``∂⟨g_out, W * s_in⟩/∂W`` for connection ``i`` (``g_out`` already unpooled): one conv
    weight-gradient, or one GEMM for FC. ``s_in: (batch, *input of i)``."""
    spec, weight = model.specs[i], model.connections[i].weight
    if isinstance(spec, Conv):
        return torch.ops.aten.convolution_backward(
            g_out, s_in, weight, None, [1, 1], [spec.padding] * 2, [1, 1], False, [0, 0], 1,
            [False, True, False])[1]
    return g_out.t() @ s_in.flatten(1)


def _unpooled(model: CRNN, i: int, s_out: torch.Tensor, idx: torch.Tensor | None,
              in_shape: torch.Size) -> torch.Tensor:
    """``s_out`` scattered back through pool indices ``idx`` (as it is without a pool)."""
    return s_out if idx is None else energy.unpool(model, i, s_out, idx, in_shape)


def _indices(model: CRNN, i: int, s_in: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Pool indices of connection ``i`` at input ``s_in``: of ``W_i`` (with its bias) and of ``B_i``."""
    idx_w = energy.drive(model, i, s_in)[1]
    return idx_w, energy.feedback_indices(model, i, s_in, idx_w)


def rule_gradients(
    model: CRNN, a: Phase, b: Phase, free: Sequence[torch.Tensor], rule: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(g_W_l, g_B_l)`` for ``l = 1 … N-1`` by ``rule`` (``"vf"`` or ``"kp-vf"``, see the module),
    descent directions averaged over the batch. ``free``: the free equilibrium ``s*``."""
    batch = free[0].shape[0]
    scale = -1.0 / ((a.beta - b.beta) * batch)
    grads = []
    for i in range(1, model.num_layers):
        if rule == "kp-vf":
            # Both phases in one weight-gradient: inputs [s^a_{l-1}, s^b_{l-1}], outputs ±s_l.
            s_in = torch.cat([a.state[i - 1], b.state[i - 1]])
            signed = torch.cat([a.state[i], -b.state[i]])
            idx_w, idx_b = _indices(model, i, s_in)
            g_w = _weight_grad(model, i, s_in, _unpooled(model, i, signed, idx_w, s_in.shape))
            g_b = g_w if idx_b is idx_w else _weight_grad(
                model, i, s_in, _unpooled(model, i, signed, idx_b, s_in.shape))
            common = (g_w + g_b) * (0.5 * scale)
            grads.append((common, common.clone()))
        elif rule == "vf":
            s_in = free[i - 1]
            idx_w, idx_b = _indices(model, i, s_in)
            delta_out = a.state[i] - b.state[i]
            delta_in = a.state[i - 1] - b.state[i - 1]
            g_w = _weight_grad(model, i, s_in, _unpooled(model, i, delta_out, idx_w, s_in.shape))
            g_b = _weight_grad(model, i, delta_in, _unpooled(model, i, free[i], idx_b, s_in.shape))
            grads.append((g_w * scale, g_b * scale))
        else:
            raise ValueError(f"rule_gradients computes 'vf' or 'kp-vf', got rule={rule!r}")
    return grads


@torch.no_grad()
def feedback_update(
    model: CRNN,
    x: torch.Tensor,
    y,
    a: Phase,
    b: Phase,
    free: Sequence[torch.Tensor],
    *,
    rule: str,
    leakage: float,
    hebbian,
) -> None:
    """Add the gradient of every parameter of a separate-feedback ``model`` to its ``.grad``.

    ``hebbian``: the backend's ``hebbian_update`` (``W_0``, biases, read-out, LE/KDW maps). Rule
    ``"ep"``: ``W_l`` keeps its EP update (plus ``λ·W_l``), ``B_l`` is fixed (no gradient).
    ``"vf"``/``"kp-vf"``: ``W_l`` and ``B_l`` get :func:`rule_gradients` (the backend's ``W_l``
    term, computed along, is discarded: one weight-gradient per layer, small next to the settling).
    """
    n = model.num_layers
    weights = [model.connections[i].weight for i in range(1, n)]
    backs = [model.feedback_weight(i) for i in range(1, n)]
    kept = [None if w.grad is None else w.grad.clone() for w in weights]
    hebbian(model, x, y, a, b)
    if rule != "ep":
        for w, g0, (g_w, g_b), bw in zip(weights, kept, rule_gradients(model, a, b, free, rule), backs):
            w.grad = g_w if g0 is None else g0.add_(g_w)
            accumulate_grads([bw], [g_b])
    if leakage:
        for w, bw in zip(weights, backs):
            w.grad.add_(w.detach(), alpha=leakage)
            if rule != "ep":  # "ep" keeps B_l fixed: no update at all, leakage included
                bw.grad.add_(bw.detach(), alpha=leakage)
