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
Both rules run on the selected backend: :func:`feedback_gradients` edits the dict of
``Backend.hebbian_gradients`` with products of ``Backend.connection_gradients``, and
:func:`eqkern.learning.ep.ep_gradients` writes the result into ``.grad`` once.

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

from eqkern.errors import ArgumentError
from eqkern.model import energy
from eqkern.backends.base import Backend, ParamGrads, Phase
from eqkern.model.crnn import CRNN
from eqkern.validate import as_float

# "ep": the contrastive Hebbian update (B_l fixed for a separate model); "fre": FRE-RNN's
# ΔW_i = ds_{i+1} s_iᵀ (eqkern.fre, symmetric models); "vf", "kp-vf": separate feedback (below).
RULES = ("ep", "fre", "vf", "kp-vf")


def resolve_rule(model: CRNN, rule: str | None, leakage: float) -> str:
    """The learning rule for ``model`` (``None``: ``"ep"`` if symmetric, ``"kp-vf"`` if separate),
    after checking ``rule`` and ``leakage`` (ValueError naming the argument)."""
    if rule is None:
        rule = "kp-vf" if model.separate_feedback else "ep"
    if rule not in RULES:
        raise ArgumentError(f"unknown rule {rule!r}; known: {RULES}")
    if rule in ("vf", "kp-vf") and not model.separate_feedback:
        raise ArgumentError(f"rule={rule!r} trains separate feedback weights: build the model with "
                         f"CRNN(..., feedback='separate')")
    if rule == "fre" and (model.separate_feedback or model.augment is not None):
        raise ArgumentError("rule='fre' is for symmetric models without LE/KD augmentation (the paper "
                         "has neither); use rule='ep'")
    leakage = as_float("leakage", leakage, minimum=0.0)
    if leakage != 0.0 and not model.separate_feedback:
        raise ArgumentError("leakage acts on the pairs (W_l, B_l) of feedback='separate'; for a "
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


def rule_gradients(
    backend: Backend, model: CRNN, a: Phase, b: Phase, free: Sequence[torch.Tensor], rule: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(g_W_l, g_B_l)`` for ``l = 1 … N-1`` by ``rule`` (``"vf"`` or ``"kp-vf"``, see the module),
    descent directions averaged over the batch. ``free``: the free equilibrium ``s*``. Each
    weight-gradient product is ``backend.connection_gradients``, unpooled through ``W_l``'s own
    pool indices (its default) or ``B_l``'s (``energy.feedback_indices``)."""
    batch = free[0].shape[0]
    scale = -1.0 / ((a.beta - b.beta) * batch)

    def weight_grad(i, inputs, out, indices=None):
        return backend.connection_gradients(model, i, inputs, out, indices)[0]

    grads = []
    for i in range(1, model.num_layers):
        if rule == "kp-vf":
            # Both phases in one weight-gradient: inputs [s^a_{l-1}, s^b_{l-1}], outputs ±s_l.
            s_in = torch.cat([a.state[i - 1], b.state[i - 1]])
            signed = torch.cat([a.state[i], -b.state[i]])
            idx_b = energy.feedback_indices(model, i, s_in, None)  # None without a pool: g_B = g_W
            g_w = weight_grad(i, s_in, signed)
            g_b = g_w if idx_b is None else weight_grad(i, s_in, signed, idx_b)
            common = (g_w + g_b) * (0.5 * scale)
            grads.append((common, common.clone()))
        elif rule == "vf":
            s_in = free[i - 1]
            idx_b = energy.feedback_indices(model, i, s_in, None)
            delta_out = a.state[i] - b.state[i]
            delta_in = a.state[i - 1] - b.state[i - 1]
            g_w = weight_grad(i, s_in, delta_out)
            g_b = weight_grad(i, delta_in, free[i], idx_b)
            grads.append((g_w * scale, g_b * scale))
        else:
            raise ArgumentError(f"rule_gradients computes 'vf' or 'kp-vf', got rule={rule!r}")
    return grads


@torch.no_grad()
def feedback_gradients(
    backend: Backend,
    model: CRNN,
    grads: ParamGrads,
    a: Phase,
    b: Phase,
    free: Sequence[torch.Tensor],
    *,
    rule: str,
    leakage: float,
) -> None:
    """Turn the backend's Hebbian ``grads`` of a separate-feedback ``model`` into ``rule``'s, in place.

    ``grads``: ``backend.hebbian_gradients`` (``W_0``, biases, read-out, LE/KDW maps keep theirs).
    Rule ``"ep"``: ``W_l`` keeps its EP update (plus ``λ·W_l``), ``B_l`` is fixed (no entry).
    ``"vf"``/``"kp-vf"``: the entries of ``W_l`` are replaced by :func:`rule_gradients` and those
    of ``B_l`` added (the backend's ``W_l`` term, computed along, is discarded: one weight-gradient
    per layer, small next to the settling).
    """
    n = model.num_layers
    weights = [model.connections[i].weight for i in range(1, n)]
    backs = [model.feedback_weight(i) for i in range(1, n)]
    if rule != "ep":
        for w, bw, (g_w, g_b) in zip(weights, backs, rule_gradients(backend, model, a, b, free, rule)):
            grads[w], grads[bw] = g_w, g_b
    if leakage:
        for w, bw in zip(weights, backs):
            if w in grads:  # a frozen W_l may have no entry
                grads[w] = grads[w] + leakage * w.detach()
            if rule != "ep":  # "ep" keeps B_l fixed: no update at all, leakage included
                grads[bw] = grads[bw] + leakage * bw.detach()
