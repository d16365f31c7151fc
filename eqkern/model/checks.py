"""Checks of what a phase is given (input, state, targets) against a CRNN, with errors that say
what is wrong: the argument, what it is and what the model needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from eqkern.model.auxiliary import Distill, labels_of

if TYPE_CHECKING:
    from eqkern.model.crnn import CRNN


def check_input(model: CRNN, x: torch.Tensor) -> None:
    """Raise a clear error if ``x: (batch, *input_shape)`` does not fit the model."""
    w = model.connections[0].weight
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != model.input_shape or x.dim() != len(model.input_shape) + 1:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (batch, *{model.input_shape})")
    if x.dtype != w.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {w.dtype}")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the model's parameters are on {w.device}")


def check_state(model: CRNN, state: Sequence[torch.Tensor], batch: int) -> None:
    """Raise a clear error if ``state`` does not match the model and batch."""
    w = model.connections[0].weight
    if len(state) != model.num_layers:
        raise ValueError(f"state has {len(state)} layers, the model has {model.num_layers}")
    for i, (s, shape) in enumerate(zip(state, model.state_shapes)):
        if tuple(s.shape) != (batch, *shape):
            raise ValueError(f"state[{i}] has shape {tuple(s.shape)}, expected {(batch, *shape)}")
        if s.dtype != w.dtype or s.device != w.device:
            raise TypeError(
                f"state[{i}] is {s.dtype} on {s.device}, the model is {w.dtype} on {w.device}"
            )


def check_targets(model: CRNN, y, batch: int) -> None:
    """Targets are class ids ``y: (batch,)`` of an integer dtype, on the model's device, or,
    with KD, ``Targets(labels, features)`` with one teacher tensor per augmented layer."""
    if isinstance(model.augment, Distill):
        feats = getattr(y, "features", None)
        if feats is None or len(feats) != len(model.augment.layers):
            raise ValueError(f"KD needs eqkern.model.auxiliary.Targets(labels, features) with "
                             f"{len(model.augment.layers)} teacher feature tensors")
        for j, (f, i) in enumerate(zip(feats, model.augment.layers)):
            if tuple(f.shape) != (batch, *model.state_shapes[i]):
                raise ValueError(f"teacher features[{j}] have shape {tuple(f.shape)}, layer {i} "
                                 f"needs {(batch, *model.state_shapes[i])}")
    y = labels_of(y)
    if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(
            f"targets must be class ids of shape ({batch},) and integer dtype, "
            f"got shape {tuple(y.shape)} dtype {y.dtype}"
        )
    if y.device != model.connections[0].weight.device:
        raise ValueError(f"targets are on {y.device}, the model on {model.connections[0].weight.device}")
