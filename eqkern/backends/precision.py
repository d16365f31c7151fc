"""Mixed precision: bf16 / fp16 *storage*, fp32 *arithmetic* for the dynamics and the EP estimate.

EP's gradient is a difference quotient, ``(∂Φ/∂θ(s^{+β}) − ∂Φ/∂θ(s^{−β})) / 2β``, of two nearly
equal terms, and the states it contrasts differ by ``O(β)`` of their own size deep in the
network. In bf16 (8 mantissa bits) those differences are below the states' rounding, so the
first layer's gradient of a model stored in bf16 came out with cosine 0.02–0.96 against fp64
(``scripts/precision_table.py``). So for a model whose parameters are fp16 or bf16 the entry
points (``settle``, ``free_phase``, ``ep_gradients``, ``bptt_gradients``) run with
:func:`compute_in` around the work:

* the parameters are used upcast to :func:`accumulation_dtype` (fp32), one cast per call, not per
  step (:func:`upcast_parameters`: each parameter's storage is swapped for an fp32 copy for the
  duration of the call and put back afterwards, so the backends, the learning rules and the
  gradient dicts keyed by parameter need no change and run exactly their fp32 code);
* the input, the states and the teacher features are upcast the same way (``Tensor.to``, which
  returns the tensor itself when it already has the dtype), so
  every phase and the contrastive estimate (states subtracted before the products, ``/β``) are fp32;
* only the final gradient is rounded to the parameter's dtype, once, by
  :func:`eqkern.backends.base.accumulate_grads`.

fp32 and fp64 models are unchanged (their accumulation dtype is their own). ``torch.autocast``
is rejected by :func:`check_no_autocast`: it would re-run each convolution in the autocast dtype
(the very rounding the above avoids) and the ``cpp``/``triton`` ops get mixed dtypes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
from torch import nn

from eqkern.backends.base import PhaseInputs
from eqkern.errors import ArgumentError
from eqkern.model.auxiliary import Targets

__all__ = ["HALF_DTYPES", "accumulation_dtype", "check_no_autocast", "compute_in",
           "storage_arithmetic", "upcast_parameters", "upcast_phase",
           "upcast_targets", "write_back"]

HALF_DTYPES = (torch.float16, torch.bfloat16)

# Off only inside storage_arithmetic(): the old behaviour, for the "before" column of the table.
_ENABLED = [True]

# parameter -> its fp32 copy, reused from call to call (refreshed by copy_ each time) so that the
# copies keep their addresses: the CUDA-graph cache keys a captured phase on parameter addresses.
# Keyed by id (a WeakKeyDictionary would compare tensors with ==), dropped when the parameter dies.
_COPIES: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the dynamics and the EP estimate compute in for parameters of ``dtype``: float32
    for float16 / bfloat16 (unless :func:`storage_arithmetic` is on), ``dtype`` itself otherwise."""
    return torch.float32 if dtype in HALF_DTYPES and _ENABLED[0] else dtype


@contextlib.contextmanager
def storage_arithmetic() -> Iterator[None]:
    """Compute half-precision models in their storage dtype, as eqkern did before fp32
    accumulation (for measuring what it buys: ``scripts/precision_table.py --storage-arithmetic``)."""
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = True


def check_no_autocast(x: torch.Tensor) -> None:
    """ArgumentError if ``torch.autocast`` is on for ``x``'s device type (see the module docstring)."""
    device_type = x.device.type
    if device_type == "meta":
        return
    if torch.is_autocast_enabled(device_type):
        fast = torch.get_autocast_dtype(device_type)
        raise ArgumentError(
            f"eqkern does not run under torch.autocast (enabled for {device_type} with "
            f"dtype={fast}): autocast would round every convolution of the phases to {fast} and "
            f"the C++/Triton ops would get mixed dtypes. Store the model and the input in that "
            f"dtype instead (model.to({fast}), x.to({fast})) outside the autocast block: eqkern "
            f"then keeps the states and the contrastive estimate in float32 and writes the "
            f"gradients in {fast}")


def _upcast_copy(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``p`` in ``dtype``, in the buffer this parameter used last time when it still fits."""
    ref, copy = _COPIES.get(id(p), (None, None))
    if ref is None or ref() is not p:
        copy = None
        weakref.finalize(p, _COPIES.pop, id(p), None)
    if copy is None or copy.shape != p.shape or copy.device != p.device or copy.dtype != dtype:
        copy = torch.empty(p.shape, dtype=dtype, device=p.device)
        _COPIES[id(p)] = (weakref.ref(p), copy)
    return copy.copy_(p.detach())


@contextlib.contextmanager
def upcast_parameters(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Within the block every parameter of ``model`` that is not ``dtype`` holds an upcast copy
    (``p.data``; the same ``Parameter`` objects, ``requires_grad`` kept); restored afterwards,
    exceptions included. ``.grad`` is not touched: gradients are written after the block."""
    params = [p for p in model.parameters() if p.dtype != dtype]
    saved = [p.data for p in params]
    try:
        for p in params:
            p.data = _upcast_copy(p, dtype)
        yield
    finally:
        for p, data in zip(params, saved):
            p.data = data


def upcast_targets(y: object, dtype: torch.dtype) -> object:
    """Targets with the teacher features (KD) in ``dtype``; class ids stay as they are."""
    if isinstance(y, Targets) and y.features is not None:
        return Targets(y.labels, [f.to(dtype) for f in y.features])
    return y


@contextlib.contextmanager
def compute_in(model: nn.Module) -> Iterator[torch.dtype]:
    """Run the block with ``model``'s parameters in its :func:`accumulation_dtype`, which it
    yields (upcast the block's tensors with ``Tensor.to`` / :func:`upcast_targets`); a no-op for
    fp32 and fp64 models. ``model``: a CRNN whose arguments were checked (one parameter dtype)."""
    storage = next(model.parameters()).dtype
    dtype = accumulation_dtype(storage)
    if dtype == storage:
        yield dtype
        return
    with upcast_parameters(model, dtype):
        yield dtype


def write_back(state: Sequence[torch.Tensor], work: Sequence[torch.Tensor]) -> None:
    """Copy the upcast ``work`` states back into the caller's ``state`` (rounded once)."""
    for s, w in zip(state, work):
        if s is not w:
            s.copy_(w)


def upcast_phase(phase: PhaseInputs, dtype: torch.dtype) -> PhaseInputs:
    """``phase`` with its input, state, per-sample β and teacher features in ``dtype`` (new state
    tensors where they were narrower: :func:`write_back` them into the caller's afterwards)."""
    beta = phase.beta
    if isinstance(beta, torch.Tensor) and beta.dtype in HALF_DTYPES:
        beta = beta.to(dtype)
    return replace(phase, x=phase.x.to(dtype), state=[s.to(dtype) for s in phase.state],
                   beta=beta, targets=upcast_targets(phase.targets, dtype))
