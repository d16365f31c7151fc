"""Layer specs of a CRNN and the shape arithmetic every layer of eqkern shares.

A CRNN is a stack of *connections*; connection ``l`` maps the state ``s_l`` (``s_0 = x``, the
clamped input) to the drive of state layer ``s_{l+1}``:

* :class:`Conv`: ``P_l(W_l * s_l + b_l)``, a k×k stride-1 convolution with optional zero padding
  and an optional 2×2 stride-2 max-pool ``P_l`` (bias inside the pool, as in Laborieux's Φ);
* :class:`Linear`: ``W_l · flat(s_l) + b_l``.

Each spec also describes the state layer it feeds: its activation ρ, its forward scale α (on the
bottom-up drive) and its feedback scale γ (on the top-down term it receives from the layer above).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model.activations import check_activation
from eqkern.validate import as_bool, as_float, as_int, describe

Readout = Literal["ce", "mse"]
Feedback = Literal["symmetric", "separate"]
StateInit = Literal["zeros", "uniform"]
# Each choice list is written once, here; presets, the CLI and the checks read it.
READOUTS: tuple[str, ...] = ("ce", "mse")
FEEDBACK_MODES: tuple[str, ...] = ("symmetric", "separate")
STATE_INITS: tuple[str, ...] = ("zeros", "uniform")


@dataclass(frozen=True)
class Conv:
    """A convolutional connection and the state layer it feeds.

    out_channels: channels of the state layer; kernel_size, padding: of the stride-1 convolution;
    pool: a 2×2 stride-2 max-pool after it; activation/alpha/gamma: of the state layer it feeds.
    """

    out_channels: int
    kernel_size: int = 3
    padding: int = 1
    pool: bool = True
    activation: str = "hard_sigmoid"
    alpha: float = 1.0
    gamma: float = 1.0


@dataclass(frozen=True)
class Linear:
    """A fully connected connection and the state layer it feeds (see :class:`Conv`)."""

    out_features: int
    activation: str = "hard_sigmoid"
    alpha: float = 1.0
    gamma: float = 1.0


LayerSpec = Union[Conv, Linear]


def conv_output_size(height: int, width: int, kernel_size: int, padding: int) -> tuple[int, int]:
    """``(H', W')`` of a stride-1 convolution before any pool: ``H + 2·padding − k + 1``.

    The one place this formula is written (the model, the unpooling and the Triton launchers
    read it)."""
    return height + 2 * padding - kernel_size + 1, width + 2 * padding - kernel_size + 1


def output_shape(in_shape: tuple[int, ...], spec: LayerSpec) -> tuple[int, ...]:
    """Shape of the state layer that ``spec`` feeds from an input of ``in_shape`` (no batch)."""
    if isinstance(spec, Linear):
        return (spec.out_features,)
    _, h, w = in_shape
    h, w = conv_output_size(h, w, spec.kernel_size, spec.padding)
    if spec.pool:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ArgumentError(f"{spec} turns an input of shape {in_shape} into an empty map")
    return (spec.out_channels, h, w)


def check_spec(i: int, spec: LayerSpec, in_shape: tuple[int, ...]) -> LayerSpec:
    """``spec`` with its sizes as Python ints and its scales as floats, or an error naming layer
    ``i`` and the spec when it cannot read an input of ``in_shape`` (no batch) or feeds an empty map.
    """
    if not isinstance(spec, (Conv, Linear)):
        raise ArgumentTypeError(f"layer {i}: expected eqkern.Conv or eqkern.Linear, got {describe(spec)}")
    where = f"layer {i} {spec!r}:"
    check_activation(spec.activation, where=where)
    scales = {name: as_float(f"{where} {name}", getattr(spec, name)) for name in ("alpha", "gamma")}
    if isinstance(spec, Linear):
        return replace(spec, out_features=as_int(f"{where} out_features", spec.out_features, minimum=1),
                       **scales)
    if len(in_shape) != 3:
        raise ArgumentError(f"layer {i}: Conv needs a (C, H, W) input, got shape {in_shape}")
    spec = replace(spec, out_channels=as_int(f"{where} out_channels", spec.out_channels, minimum=1),
                   kernel_size=as_int(f"{where} kernel_size", spec.kernel_size, minimum=1),
                   padding=as_int(f"{where} padding", spec.padding, minimum=0),
                   pool=as_bool(f"{where} pool", spec.pool), **scales)
    h, w = conv_output_size(in_shape[1], in_shape[2], spec.kernel_size, spec.padding)
    size = f"{in_shape[1]}×{in_shape[2]}"
    if h < 1 or w < 1:
        raise ArgumentError(f"{where} kernel_size {spec.kernel_size} with padding {spec.padding} turns "
                            f"its {size} input into an empty map")
    if spec.pool and (h < 2 or w < 2):
        raise ArgumentError(f"{where} its 2×2 pool turns the {h}×{w} map of its {size} input into an "
                            f"empty map (use pool=False, more padding or fewer layers)")
    return spec


def is_pooled(spec: LayerSpec) -> bool:
    """Whether connection ``spec`` ends in a 2×2 max-pool."""
    return isinstance(spec, Conv) and spec.pool
