"""An accelerated fixed-point solver of one phase: safeguarded Anderson mixing.

A phase looks for the fixed point ``s* = F(s*)`` of one step ``F`` of the backend
(``s ← ρ(∂Φ_β/∂s)``, synchronous or alternating). The plain iteration ``s ← F(s)`` is
:func:`eqkern.dynamics.convergence.run_phase`'s own loop. The solvers here still evaluate ``F`` once
per step, through the same backend call, in the chunks of the same loop (one chunk per
convergence check), but ``"anderson"`` chooses the next point from more than
the last image: type-II Anderson mixing (Walker & Ni 2011) per sample, over the last
:data:`ANDERSON_MEMORY` steps, ``s ← F(s) − (ΔS + ΔG)·γ`` with ``γ`` the least-squares combination
of the past residual changes ``ΔG`` that best cancels the residual ``g = F(s) − s``.

It respects the activation's range (the fixed point lies in it): the mixed point is clamped to
``[lo, hi]`` of each layer's ρ (``[0, 1]`` for the hard sigmoids, ``[−1, 1]`` for tanh), which
lets it work on a hard-sigmoid network, whose ``F`` is only piecewise affine. And it is
safeguarded per sample: a sample whose residual grew (``‖g_k‖ > ‖g_{k−1}‖``) takes the plain step
``F(s)`` and forgets its history, so it never loses the plain iteration's convergence for long.

What it does and does not buy (``bench/steps_study.py``): on the test networks it reaches the
plain iteration's fixed point in about 2/3 of the steps; from a free equilibrium the nudged
phases converge several times faster. But a max-pooled network has many nearby equilibria (a
pool's argmax can settle on either of two close inputs), and from the zero state Anderson's
free phase lands on another one than the plain iteration's, where the EP update agrees less
well with BPTT. Hence ``"plain"`` stays the default. Over-relaxation (``s + ω·g``, ω > 1) was
tried and dropped: the synchronous step of a layered network has eigenvalues in ± pairs, which
ω > 1 amplifies (it diverged on VGG-5).

Everything is batched on the device: the per-sample ``m × m`` systems are solved by
``torch.linalg.solve_ex`` (no error check, hence no host synchronisation); the only host read is
the convergence check's, once per check, as for the plain iteration. The state returned is the
last image ``F(s_k)``, so with ``tol`` the stop means what it means for the plain iteration: one
step from the returned state's predecessor moved no element by ``tol`` or more.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from eqkern.backends.base import Backend, PhaseInputs
from eqkern.model.activations import ACTIVATION_RANGES
from eqkern.model.crnn import CRNN
from eqkern.validate import as_choice

SOLVERS = ("plain", "anderson")
ANDERSON_MEMORY = 5  # past steps mixed (m); 3-5 is the usual range, more adds memory, not speed
# Tikhonov term of the m × m normal equations, relative to their mean diagonal: keeps a system
# whose residual changes are (nearly) collinear, or zeroed by a restart, solvable.
ANDERSON_REGULARISATION = {torch.float64: 1e-12, torch.float32: 1e-6}


def check_solver(solver: str) -> str:
    """``solver`` if it is a known one, else an ArgumentError listing them."""
    return as_choice("solver", solver, SOLVERS)


class FlatState:
    """The phase's state as one ``(batch, D)`` matrix (every layer flattened side by side), the
    view the solvers mix in, and the per-element bounds of the activation range."""

    def __init__(self, model: CRNN, state: list[torch.Tensor]):
        self.state = state
        self.sizes = [s[0].numel() for s in state]
        like = state[0]
        lo, hi = [], []
        for spec, n in zip(model.specs, self.sizes):
            a, b = ACTIVATION_RANGES[spec.activation]
            lo.append(like.new_full((n,), -torch.inf if a is None else a))
            hi.append(like.new_full((n,), torch.inf if b is None else b))
        self.lo, self.hi = torch.cat(lo), torch.cat(hi)

    def read(self) -> torch.Tensor:
        """``(batch, D)``: a copy of the state."""
        return torch.cat([s.reshape(s.shape[0], -1) for s in self.state], dim=1)

    def write(self, flat: torch.Tensor) -> torch.Tensor:
        """Copy ``flat`` (``(batch, D)``), clamped to the activation ranges, into the state;
        returns the clamped matrix (what :meth:`read` would give now, without the copy)."""
        flat = torch.maximum(torch.minimum(flat, self.hi), self.lo)
        for s, part in zip(self.state, flat.split(self.sizes, dim=1)):
            s.copy_(part.view_as(s))
        return flat


class Anderson:
    """Type-II Anderson mixing, per sample, with a restart where the residual grew.

    The history is kept as ``(batch, m, D)`` so every product is one batched matmul, and the
    Gram matrix ``ΔGᵀΔG`` is updated by one column per step; a restart does not touch the
    history, it marks the sample's columns invalid (masked out of the normal equations)."""

    def __init__(self, memory: int = ANDERSON_MEMORY):
        self.memory = memory
        self.d_s: torch.Tensor | None = None  # (batch, m, D): s_{k+1} − s_k of the last m steps
        self.d_g: torch.Tensor | None = None  # (batch, m, D): g_{k+1} − g_k
        self.gram: torch.Tensor | None = None  # (batch, m, m): ΔGᵀΔG
        self.valid: torch.Tensor | None = None  # (batch, m): 1 where a column is in the history
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # s_{k−1}, g_{k−1}
        self.prev_norm: torch.Tensor | None = None  # (batch,): ‖g_{k−1}‖
        self.k = 0

    def next_point(self, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``s: (batch, D)`` the point ``F`` was evaluated at, ``g = F(s) − s``; returns the next
        point (before the clamp)."""
        norm = torch.linalg.vector_norm(g, dim=1)
        m = self.memory
        if self.prev is None:
            batch, dim = s.shape
            self.d_s = s.new_zeros((batch, m, dim))
            self.d_g = torch.zeros_like(self.d_s)
            self.gram = s.new_zeros((batch, m, m))
            self.valid = s.new_zeros((batch, m))
        else:
            slot = self.k % m
            self.k += 1
            self.d_s[:, slot] = s - self.prev[0]
            self.d_g[:, slot] = g - self.prev[1]
            column = torch.bmm(self.d_g, self.d_g[:, slot, :, None]).squeeze(-1)  # (batch, m)
            self.gram[:, slot, :] = column
            self.gram[:, :, slot] = column
            self.valid[:, slot] = 1.0
            # Restart the samples whose residual grew: their history is dropped, γ = 0 for them.
            self.valid.mul_((norm <= self.prev_norm).to(s.dtype)[:, None])
        self.prev, self.prev_norm = (s, g), norm
        # γ = argmin ‖g − ΔG γ‖² over the valid columns, per sample: (ΔGᵀΔG + λI) γ = ΔGᵀ g.
        mask = self.valid[:, :, None] * self.valid[:, None, :]
        gram = self.gram * mask
        rhs = torch.bmm(self.d_g, g[:, :, None]) * self.valid[:, :, None]
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1)
        scale = torch.where(scale > 0, scale, 1.0)  # no history yet, or just restarted: γ = 0
        reg = ANDERSON_REGULARISATION.get(s.dtype, 1e-6)
        gram.diagonal(dim1=1, dim2=2).add_((reg * scale)[:, None])
        gamma = torch.linalg.solve_ex(gram, rhs, check_errors=False)[0].transpose(1, 2)
        mixed = torch.bmm(gamma, self.d_s).squeeze(1)
        mixed += torch.bmm(gamma, self.d_g).squeeze(1)
        return (s + g).sub_(mixed)


def anderson_runner(be: Backend, model: CRNN, phase: PhaseInputs,
                    track: bool) -> Callable[[PhaseInputs], torch.Tensor | None]:
    """How :func:`eqkern.dynamics.convergence.run_phase` runs a chunk of ``phase`` by Anderson
    mixing: ``ph.steps`` evaluations of ``F``, the state left at the last image ``F(s)`` (so that
    a stop after the chunk is the plain iteration's stop); the next chunk first moves to the
    mixed point. ``track``: the chunk returns ``max |F(s) − s|`` of its last step as a 0-d
    device tensor, not read."""
    flat = FlatState(model, phase.state)
    mixer = Anderson()
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (s, g) of the last F, not mixed yet

    def run(ph: PhaseInputs) -> torch.Tensor | None:
        one, g = replace(ph, steps=1), None
        for _ in range(ph.steps):
            s = flat.write(mixer.next_point(*pending.pop())) if pending else flat.read()
            be.settle(model, one)  # state ← F(s)
            g = flat.read().sub_(s)
            pending.append((s, g))
        return g.abs().amax() if track and g is not None else None

    return run
