"""Typed Python entry points of the C++/CUDA ops in ``eqkern._C``, their fake kernels, and references.

The schemas are defined in ``csrc/ops.cpp`` (``TORCH_LIBRARY(eqkern)``, which names this module as
the home of the fake kernels); the kernels in ``csrc/cpu`` and ``csrc/cuda``. Each op ``<op>`` has a
pure-torch ``<op>_ref`` next to it that the tests compare against.
"""

from __future__ import annotations

import torch

from . import _build  # loads eqkern._C, which registers the eqkern::* kernels
from .activations import ACTIVATION_CODES, activate, check_activation

__all__ = ["settle_epilogue_", "settle_epilogue_ref"]


def _require_cpp(op: str) -> None:
    if not _build.cpp_available():
        raise RuntimeError(
            f"eqkern._C is not built or failed to load, so eqkern.{op} cannot run: "
            f"{_build.cpp_load_error()}. (The pure-torch backends need no build: EQKERN_BACKEND=torch.)"
        )


def settle_epilogue_(
    state: torch.Tensor,
    bottom_up: torch.Tensor,
    top_down: torch.Tensor | None,
    nudge: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: str,
) -> None:
    """Fused epilogue of one neuron update, in place: ``state ← ρ(α·bottom_up + γ·top_down + nudge)``.

    state: (batch, *layer_shape), float32/float64/float16/bfloat16, overwritten (its old value is
        not read). bottom_up, top_down, nudge: (batch, *layer_shape), same dtype and device as state;
        top_down / nudge may be None (= 0). Any strides. 16-bit inputs are computed in float32 and
        rounded once. activation: a name from ``eqkern.activations.ACTIVATION_CODES``.
    """
    code = ACTIVATION_CODES[check_activation(activation)]
    _require_cpp("settle_epilogue_")
    # Mixed devices would be dispatched to one device's kernel (or fail with a dispatcher error for
    # meta tensors) before the C++ checks run, so say it here, in the words the C++ checks use.
    for name, t in (("bottom_up", bottom_up), ("top_down", top_down), ("nudge", nudge)):
        if t is not None and t.device != state.device:
            raise RuntimeError(f"eqkern.settle_epilogue_: {name} is on {t.device} but state is on {state.device}")
    torch.ops.eqkern.settle_epilogue_.default(
        state, bottom_up, top_down, nudge, float(alpha), float(gamma), code
    )


def _settle_epilogue_fake(
    state: torch.Tensor,
    bottom_up: torch.Tensor,
    top_down: torch.Tensor | None,
    nudge: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: int,
) -> None:
    # Mutates `state` and returns nothing, so tracing (torch.compile, opcheck) only needs the checks.
    for name, t in (("bottom_up", bottom_up), ("top_down", top_down), ("nudge", nudge)):
        if t is None:
            continue
        torch._check(t.dtype == state.dtype, lambda: f"{name} has dtype {t.dtype}, state {state.dtype}")
        torch._check(t.dim() == state.dim(), lambda: f"{name} has shape {t.shape}, state {state.shape}")
        for a, b in zip(t.shape, state.shape):
            torch._check(a == b, lambda: f"{name} has shape {t.shape}, state {state.shape}")
    return None


# The op only exists once eqkern._C loaded (registering a fake for a missing op raises).
if _build.cpp_available():
    torch.library.register_fake("eqkern::settle_epilogue_")(_settle_epilogue_fake)


def settle_epilogue_ref(
    state: torch.Tensor,
    bottom_up: torch.Tensor,
    top_down: torch.Tensor | None,
    nudge: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: str,
) -> torch.Tensor:
    """Out-of-place pure-torch reference of :func:`settle_epilogue_`; returns the new state.

    Same arguments and shapes (``state: (batch, *layer_shape)`` is only used for its shape and
    dtype). Computed with ATen ops in the inputs' dtype, in the order the kernels use.
    """
    if bottom_up.shape != state.shape:
        raise ValueError(f"bottom_up has shape {tuple(bottom_up.shape)}, state {tuple(state.shape)}")
    u = alpha * bottom_up
    if top_down is not None:
        u = u + gamma * top_down
    if nudge is not None:
        u = u + nudge
    return activate(activation, u).to(state.dtype)
