"""Per-layer activation functions ρ of the neuron dynamics ``s_l ← ρ(∂Φ/∂s_l)``.

Each activation has a name (what users write in a layer description), an integer code (what the C++
and CUDA epilogues switch on; keep in sync with ``csrc/math/settle_epilogue.h``) and an in-place torch
implementation used by the ``torch`` backend and, out of place, by ``reference`` and BPTT.
"""

from __future__ import annotations

from typing import Callable

import torch

from eqkern.errors import ArgumentError

# name -> code shared with csrc/math/settle_epilogue.h (enum Activation).
ACTIVATION_CODES: dict[str, int] = {
    "hard_sigmoid": 0,  # clamp(u/2, 0, 1): Laborieux's my_hard_sig, the default
    "clamp01": 1,  # clamp(u, 0, 1): FRE-RNN and the "shifted hard sigmoid" of older EP code
    "hard_sigmoid_courbariaux": 2,  # clamp((u+1)/2, 0, 1)
    "relu": 3,
    "tanh": 4,
}

# The range of each activation's values, (low, high), None for an unbounded side: where every
# equilibrium lies (eqkern.dynamics.solvers clamps a mixed point to it).
ACTIVATION_RANGES: dict[str, tuple[float | None, float | None]] = {
    "hard_sigmoid": (0.0, 1.0),
    "clamp01": (0.0, 1.0),
    "hard_sigmoid_courbariaux": (0.0, 1.0),
    "relu": (0.0, None),
    "tanh": (-1.0, 1.0),
}


def _hard_sigmoid(u: torch.Tensor) -> torch.Tensor:
    return (u * 0.5).clamp(0.0, 1.0)


def _hard_sigmoid_(u: torch.Tensor) -> torch.Tensor:
    return u.mul_(0.5).clamp_(0.0, 1.0)


def _courbariaux(u: torch.Tensor) -> torch.Tensor:
    return ((u + 1.0) * 0.5).clamp(0.0, 1.0)


def _courbariaux_(u: torch.Tensor) -> torch.Tensor:
    return u.add_(1.0).mul_(0.5).clamp_(0.0, 1.0)


_OUT_OF_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_sigmoid": _hard_sigmoid,
    "clamp01": lambda u: u.clamp(0.0, 1.0),
    "hard_sigmoid_courbariaux": _courbariaux,
    "relu": torch.relu,
    "tanh": torch.tanh,
}

_IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_sigmoid": _hard_sigmoid_,
    "clamp01": lambda u: u.clamp_(0.0, 1.0),
    "hard_sigmoid_courbariaux": _courbariaux_,
    "relu": torch.relu_,
    "tanh": torch.tanh_,
}


def check_activation(name: str, *, where: str = "") -> str:
    """Return ``name`` if it is a known activation, else raise an ArgumentError listing the known
    ones (``where``: a prefix saying whose activation it is, e.g. the layer)."""
    if not isinstance(name, str) or name not in ACTIVATION_CODES:
        prefix = f"{where} " if where else ""
        raise ArgumentError(f"{prefix}unknown activation {name!r}; known: {sorted(ACTIVATION_CODES)}")
    return name


def activate(name: str, u: torch.Tensor) -> torch.Tensor:
    """ρ(u), out of place (differentiable)."""
    return _OUT_OF_PLACE[check_activation(name)](u)


def activate_(name: str, u: torch.Tensor) -> torch.Tensor:
    """ρ(u), in place on ``u``; returns ``u``."""
    return _IN_PLACE[check_activation(name)](u)
