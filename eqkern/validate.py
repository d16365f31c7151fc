"""The one validation layer: each helper checks one argument and returns it normalised, or raises
an :mod:`eqkern.errors` error naming the argument, the value given and what was expected.

``as_int("t_free", np.int64(30), minimum=0)`` -> ``30``; ``as_int("t_free", 2.5)`` raises
``ArgumentTypeError: t_free must be an integer >= 0, got 2.5 (float)``. Numpy and 0-d torch
integers count as integers; ``bool`` does not (``True`` is almost always a slip).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterable

import torch

from eqkern.errors import ArgumentError, ArgumentTypeError

__all__ = ["describe", "as_int", "as_float", "as_bool", "as_choice", "as_device", "check_tensor_finite"]


def describe(value: Any, n: int = 80) -> str:
    """``repr`` of ``value`` (cut at ``n`` characters) with its type: ``2.5 (float)``."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} dtype {value.dtype} on {value.device}"
    r = repr(value)
    r = r if len(r) <= n else r[: n - 3] + "..."
    return f"{r} ({type(value).__name__})"


def _range_text(minimum, maximum, *, exclusive_min: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_min else '>='} {minimum:g}" if isinstance(minimum, float)
                     else f"{'>' if exclusive_min else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}" if isinstance(maximum, float) else f"<= {maximum}")
    return " and ".join(parts)


def as_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
           allow_none: bool = False) -> int | None:
    """``value`` as a Python int in ``[minimum, maximum]`` (None passes with ``allow_none``)."""
    if value is None and allow_none:
        return None
    want = "an integer" + (f" {_range_text(minimum, maximum)}" if minimum is not None or
                           maximum is not None else "") + (" or None" if allow_none else "")
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and
                                   (value.dim() != 0 or value.is_floating_point())):
        raise ArgumentTypeError(f"{name} must be {want}, got {describe(value)}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be {want}, got {describe(value)}") from None
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ArgumentError(f"{name} must be {want}, got {v}")
    return int(v)


def as_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
             exclusive_min: bool = False, nonzero: bool = False,
             allow_none: bool = False) -> float | None:
    """``value`` as a finite Python float in the range (None passes with ``allow_none``)."""
    if value is None and allow_none:
        return None
    want = "a finite number"
    if minimum is not None or maximum is not None:
        want += " " + _range_text(minimum, maximum, exclusive_min=exclusive_min)
    if nonzero:
        want += " other than 0"
    if allow_none:
        want += " or None"
    if isinstance(value, (bool, str, bytes)) or (isinstance(value, torch.Tensor) and value.dim() != 0):
        raise ArgumentTypeError(f"{name} must be {want}, got {describe(value)}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{name} must be {want}, got {describe(value)}") from None
    bad = (not math.isfinite(v) or (nonzero and v == 0.0)
           or (minimum is not None and (v <= minimum if exclusive_min else v < minimum))
           or (maximum is not None and v > maximum))
    if bad:
        raise ArgumentError(f"{name} must be {want}, got {v!r}")
    return v


def as_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (or numpy bool); a string such as ``"on"`` is refused, not guessed."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ArgumentTypeError(f"{name} must be True or False, got {describe(value)}")


def as_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(map(repr, choices))}; got "
                            f"{describe(value)}")
    return value


def check_tensor_finite(name: str, t: torch.Tensor) -> None:
    """ArgumentError if ``t`` holds NaN or inf (one host sync)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ArgumentError(f"{name} must be finite, but {bad} of its {t.numel()} values are "
                            f"NaN or inf")


def as_device(name: str, value: Any, *, allow_none: bool = True,
              extra: Iterable[str] = ()) -> torch.device | str | None:
    """``value`` as a ``torch.device`` that this machine has (``"cuda"`` without a visible GPU, or
    ``"cuda:3"`` on a 2-GPU machine, is refused here rather than deep inside the first ``.to``).
    Strings in ``extra`` (e.g. ``"meta"`` for the memory tool) pass as given."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value in tuple(extra):
        return value
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:1', got "
                            f"{describe(value)}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ArgumentError(f"{name} is {str(dev)!r} but no CUDA GPU is visible here; use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise ArgumentError(f"{name} is {str(dev)!r} but only {count} CUDA GPU(s) are visible")
    elif dev.type not in ("cpu", "meta"):
        raise ArgumentError(f"{name} must be 'cpu' or 'cuda[:N]', got {str(dev)!r}")
    return dev
