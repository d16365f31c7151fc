"""The GDU check (Ernoult et al. 2019; Laborieux ``check_gdu``): EP's update vs BPTT's gradient.

From the free equilibrium ``s*``, EP nudged for ``K`` steps estimates the gradient that BPTT
computes through the last ``K`` steps of the free phase; with a converged free phase and a small
β the two agree per parameter (symmetric estimate: bias O(β²); one-sided: O(β)).
"""

from __future__ import annotations

import copy

import torch

from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY
from eqkern.learning.bptt import bptt_gradients
from eqkern.learning.ep import Estimator, ep_gradients
from eqkern.errors import ArgumentError
from eqkern.model.checks import as_count
from eqkern.model.crnn import CRNN


def _param_names(model: CRNN) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _grads(model: CRNN) -> list[torch.Tensor]:
    # A parameter the truncated graph never reaches has no .grad: its gradient is zero.
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for p in model.parameters()]


def check_gdu(
    model: CRNN,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float,
    t_free: int,
    t_nudge: int,
    estimator: Estimator = "symmetric",
    backend: str | None = None,
    schedule: str = "synchronous",
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    solver: str = "plain",
) -> list[dict]:
    """Compare EP's gradient estimate with BPTT's gradient, one row per parameter tensor.

    BPTT backpropagates through the last ``t_nudge`` of ``t_free`` free steps. Each row has
    ``name``, ``cosine`` (similarity of the two), ``rel_error`` (``‖g_EP − g_BPTT‖ / ‖g_BPTT‖``;
    inf where only BPTT's is zero) and both norms. The model's own ``.grad`` are left untouched.
    ``schedule``: of EP's phases and of the steps BPTT unrolls alike (``"synchronous"`` or
    ``"alternating"``). ``tol``, ``check_every``, ``solver``: how EP settles its phases
    (:func:`eqkern.ep_gradients`; ``t_free`` and ``t_nudge`` are then caps); BPTT always runs its
    ``t_free`` plain steps, so the rows say how well a faster EP keeps to the same gradient.
    """
    # BPTT runs through the last t_nudge of the t_free steps: say so before EP has run at all.
    t_free = as_count("t_free", t_free, minimum=1)
    t_nudge = as_count("t_nudge", t_nudge, minimum=1)
    if t_nudge > t_free:
        raise ArgumentError(f"t_nudge must be <= t_free={t_free} (BPTT backpropagates through the "
                            f"last t_nudge free steps), got {t_nudge}")
    work = copy.deepcopy(model)
    work.zero_grad(set_to_none=True)
    # A network whose states start at random (state_init="uniform") must start both methods from
    # the same state: where it has several fixed points they would otherwise settle apart.
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        ep_gradients(work, x, y, beta=beta, t_free=t_free, t_nudge=t_nudge,
                     estimator=estimator, backend=backend, schedule=schedule, tol=tol,
                     check_every=check_every, solver=solver)
    ep = _grads(work)
    work.zero_grad(set_to_none=True)
    bptt_gradients(work, x, y, t_free=t_free, truncate=t_nudge, schedule=schedule)
    bp = _grads(work)
    return [compare_gradients(name, g_ep, g_bp)
            for name, g_ep, g_bp in zip(_param_names(model), ep, bp)]


def compare_gradients(name: str, g_ep: torch.Tensor, g_bptt: torch.Tensor) -> dict:
    """One row of :func:`check_gdu`: two gradients of one parameter (any shape, the same)."""
    a, b = g_ep.flatten().double(), g_bptt.flatten().double()
    # Two zero gradients (a layer that is saturated for this batch) agree perfectly.
    both_zero = a.norm() == 0 and b.norm() == 0
    cosine = 1.0 if both_zero else torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    # Against a zero gradient (BPTT finds a dead layer) any EP update is infinitely wrong:
    # inf, not a ratio to an epsilon that prints as 1e+295.
    rel = (0.0 if both_zero else float("inf") if b.norm() == 0
           else ((a - b).norm() / b.norm()).item())
    return {"name": name, "cosine": cosine, "rel_error": rel,
            "ep_norm": a.norm().item(), "bptt_norm": b.norm().item()}


def format_gdu(rows: list[dict]) -> str:
    """A plain-text table of :func:`check_gdu`'s rows."""
    lines = [f"{'parameter':<24}{'cosine':>10}{'rel_error':>12}{'|g_EP|':>12}{'|g_BPTT|':>12}"]
    for r in rows:
        lines.append(f"{r['name']:<24}{r['cosine']:>10.5f}{r['rel_error']:>12.3e}"
                     f"{r['ep_norm']:>12.3e}{r['bptt_norm']:>12.3e}")
    return "\n".join(lines)
