"""The backend interface (:class:`Backend`) and the small types the backends share.

A backend computes two things for a :class:`~eqkern.model.crnn.CRNN`, each its own way (autograd
of Φ_β, ATen calls, one C++ op, Triton kernels):

* :meth:`Backend.settle`: ``steps`` steps of the dynamics, in place on a state
  (:class:`PhaseInputs` holds what one phase runs with);
* :meth:`Backend.hebbian_gradients`: the contrastive Hebbian update of two phases
  (:class:`Phase`), as a dict ``{parameter: gradient}`` over ``model.ep_parameters()``. The
  backends never write ``.grad``: :func:`accumulate_grads` does, in one place, and skips
  parameters with ``requires_grad=False``;
* :meth:`Backend.connection_gradients`: the weight-gradient product of one connection, the
  building block of the rules that are not the gradient of Φ (FRE, VF, KP-VF in
  :mod:`eqkern.learning`), so that they run on the selected backend too.

:meth:`Backend.unavailable_reason` (can it run on a device) and :meth:`Backend.unsupported_reason`
(can it run a model with a schedule) say why not, in words; :mod:`eqkern.backends` keeps the
registry that uses them. ``differentiable`` backends also :meth:`Backend.unroll` steps under
autograd (BPTT).

Every backend's work methods (settle, unroll, hebbian_gradients, connection_gradients) run under
the one TF32 policy, :func:`eqkern.kernels.precision.tf32_policy` of their inputs' device:
:class:`Backend` wraps each subclass's own definitions when the class is created, so that no
backend can forget it (torch leaves cuDNN's TF32 on, which would make the ATen convolutions of
reference/torch/cpp disagree with Triton's exact fp32 by ~1e-3).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eqkern.backends.shared_terms import ParamGrads, aten_connection_gradients
from eqkern.backends.update_order import SCHEDULES, schedule_groups
from eqkern.kernels.precision import tf32_policy
from eqkern.model.crnn import CRNN

__all__ = [
    "SCHEDULES",
    "WORK_METHODS",
    "Backend",
    "ParamGrads",
    "Phase",
    "PhaseInputs",
    "accumulate_grads",
    "nudged",
    "schedule_groups",
]


@dataclass(frozen=True)
class Phase:
    """The end state of one phase of EP and the nudging strength it ran with.

    state: one ``(batch, *layer_shape)`` tensor per state layer; beta: 0 for the free phase.
    """

    state: Sequence[torch.Tensor]
    beta: float


@dataclass
class PhaseInputs:
    """What one phase of the dynamics runs with.

    x: ``(batch, *model.input_shape)``, the clamped input; state: one
    ``(batch, *model.state_shapes[i])`` tensor per layer, updated in place; beta: the nudging
    strength, a float (0: free phase) or a per-sample ``(batch,)`` tensor; steps: how many steps;
    targets: ``(batch,)`` class ids (or :class:`~eqkern.model.auxiliary.Targets`), needed when
    nudged; schedule: ``"synchronous"`` or ``"alternating"``.
    """

    x: torch.Tensor
    state: list[torch.Tensor]
    beta: float | torch.Tensor
    steps: int
    targets: object = None
    schedule: str = "synchronous"


def accumulate_grads(grads: Mapping[nn.Parameter, torch.Tensor | None]) -> None:
    """Add ``grads`` into ``p.grad`` as ``backward()`` would: the one place a gradient is written.

    A parameter with ``requires_grad=False`` is skipped (it keeps its ``.grad``, usually None, and
    so an optimizer does not move it); a missing gradient (None) counts as zero. A gradient
    computed in a wider dtype than its parameter (fp32 for a bf16/fp16 model,
    :mod:`eqkern.backends.precision`) is rounded to the parameter's dtype here, once.
    """
    with torch.no_grad():
        for p, g in grads.items():
            if not p.requires_grad:
                continue
            if g is None:
                g = torch.zeros_like(p)
            if p.grad is None:
                p.grad = g.detach().to(dtype=p.dtype, copy=True)
            else:
                p.grad.add_(g)  # a wider g: added in its dtype, the sum rounded once


# β of a phase is one float for the whole batch, or a per-sample ``(batch,)`` tensor (the +β and −β
# phases run as one batch of 2B, eqkern.learning's ``batched_nudge``); eqkern.model.auxiliary.per_sample
# shapes it for the nudge terms.
def nudged(beta: float | torch.Tensor) -> bool:
    """Whether a phase has nudge terms: a per-sample β tensor always counts as nudged (reading its
    values would synchronise the device)."""
    return isinstance(beta, torch.Tensor) or beta != 0.0


# The work methods of a backend, each with where its call runs: the device of the tensor that the
# interface says the work follows (parameters named as in Backend, so keyword calls bind too).
WORK_METHODS: dict[str, Callable[..., torch.device]] = {
    "settle": lambda model, phase, *a, **k: phase.x.device,
    "unroll": lambda model, x, *a, **k: x.device,
    "hebbian_gradients": lambda model, x, *a, **k: x.device,
    "connection_gradients": lambda model, i, inputs, *a, **k: inputs.device,
}


def _under_tf32_policy(fn: Callable, device_of: Callable[..., torch.device]) -> Callable:
    """``fn`` (a backend method) run inside ``tf32_policy`` of its call's device."""
    if getattr(fn, "_eqkern_tf32_policy", False) or getattr(fn, "__isabstractmethod__", False):
        return fn

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with tf32_policy(device_of(*args, **kwargs)):
            return fn(self, *args, **kwargs)

    run._eqkern_tf32_policy = True
    return run


def _apply_tf32_policy(cls: type) -> None:
    """Wrap the work methods that ``cls`` itself defines (inherited ones are wrapped already)."""
    for name, device_of in WORK_METHODS.items():
        if name in cls.__dict__:
            setattr(cls, name, _under_tf32_policy(cls.__dict__[name], device_of))


class Backend(abc.ABC):
    """One way of computing the dynamics and the Hebbian update of a CRNN (see the module).

    Subclasses set ``name`` (the registry name), ``differentiable`` (whether :meth:`unroll`
    exists) and ``alternating_skips`` (a capability :meth:`unsupported_reason` reports),
    implement :meth:`settle` and :meth:`hebbian_gradients`, and override the probes and
    :meth:`connection_gradients` where they differ from the defaults.
    """

    name: str = ""
    differentiable: bool = False
    # Whether its alternating step has the skip-link terms (torch and triton: not yet).
    alternating_skips: bool = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        _apply_tf32_policy(cls)  # the work methods it defines run under the TF32 policy (module doc)

    def __repr__(self) -> str:
        return f"<eqkern backend {self.name!r}>"

    # -- what it can run ------------------------------------------------------------------------

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` (missing build, wrong device), or None."""
        return None

    def unsupported_reason(self, model: CRNN, *, schedule: str = "synchronous") -> str | None:
        """Why this backend cannot run ``model`` with ``schedule``, or None when it can."""
        schedule_groups(model.num_layers, schedule)  # an unknown schedule is a ValueError
        if model.skips and schedule == "alternating" and not self.alternating_skips:
            return (f"backend {self.name!r} does not implement skip links with schedule="
                    f"'alternating' yet (its alternating step has no skip terms)")
        return None

    def describe(self) -> str:
        """One line on how this backend computes the dynamics and the updates."""
        return (self.__doc__ or self.name).strip().splitlines()[0]

    # -- the dynamics ---------------------------------------------------------------------------

    @abc.abstractmethod
    def settle(self, model: CRNN, phase: PhaseInputs) -> None:
        """Run ``phase.steps`` steps of ``phase.schedule`` in place on ``phase.state``."""

    def unroll(self, model: CRNN, x: torch.Tensor, state: Sequence[torch.Tensor], steps: int, *,
               schedule: str = "synchronous") -> list[torch.Tensor]:
        """``steps`` free-phase steps out of place and under autograd (BPTT): the new state.

        Only ``differentiable`` backends implement it."""
        raise NotImplementedError(f"backend {self.name!r} cannot unroll its steps under autograd")

    # -- the updates ----------------------------------------------------------------------------

    @abc.abstractmethod
    def hebbian_gradients(self, model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
        """``g_θ = −[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)`` for every
        parameter of ``model.ep_parameters()`` (parameters with ``requires_grad=False`` may be
        left out). ``x: (batch, *input_shape)``, ``y``: the targets."""

    def connection_gradients(
        self,
        model: CRNN,
        i: int,
        inputs: torch.Tensor,
        out: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(∂/∂W_i, ∂/∂b_i)`` of ``Σ_batch ⟨out, P_i(W_i * inputs + b_i)⟩``, one connection's
        Hebbian product.

        ``inputs: (batch, *input shape of i)``, ``out: (batch, *model.state_shapes[i])``. With a
        pool, ``out`` is unpooled through ``indices`` (default: the pool indices of ``W_i``'s own
        forward pass on ``inputs``; the separate-feedback rules pass ``B_i``'s). The gradient has
        ``W_i``'s shape, so it serves ``B_i`` as well. Default: ATen's weight-gradient convolution
        or one GEMM (:func:`eqkern.backends.shared_terms.aten_connection_gradients`).
        """
        return aten_connection_gradients(model, i, inputs, out, indices)


_apply_tf32_policy(Backend)  # its default connection_gradients (the abstract methods stay as they are)
