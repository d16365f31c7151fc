"""Checks of what a phase is given (input, state, targets, β) against a CRNN, with errors that say
what is wrong: the argument, what it is and what the model needs.

The metadata checks (type, shape, dtype, device) cost nothing; :func:`check_values` reads the
values (NaN/inf in ``x`` or a state, per-sample β out of range, class ids outside the classes)
with one host synchronisation, and is called once per entry point (``settle``, ``ep_gradients``,
``bptt_gradients``), never per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model.auxiliary import Distill, Targets, labels_of
from eqkern.validate import as_float, as_int, check_tensor_finite, describe

if TYPE_CHECKING:
    from eqkern.model.crnn import CRNN

# |β| bound. The papers use β ≤ 1; far beyond, the nudge β·∂L/∂s swamps the drive α·u of the
# layer it reaches, the "gradient" (a difference quotient in β) means nothing, and β·∂L/∂s itself
# overflows: fp16 (max 65504) at |β| of a few 1e4, fp32 at ~1e38 (β = 1e300 gave NaN gradients).
# 1e4 keeps fp16/bf16 phases finite and is four orders above any published β.
BETA_MAX = 1e4


def as_count(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as a step count (an int ``>= minimum``; numpy and 0-d torch ints count).

    A non-integer is an :class:`ArgumentError` (a ``ValueError``), not a type error: the step
    counts of eqkern have always raised ``ValueError`` for ``2.5``, and callers catch that."""
    try:
        return as_int(name, value, minimum=minimum)
    except (ArgumentError, ArgumentTypeError):
        raise ArgumentError(f"{name} must be an int >= {minimum}, got {describe(value)}") from None


def _model_ref(model: CRNN) -> torch.Tensor:
    return model.connections[0].weight


def check_input(model: CRNN, x: torch.Tensor) -> None:
    """Raise a clear error if ``x: (batch, *input_shape)`` does not fit the model."""
    w = _model_ref(model)
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != model.input_shape or x.dim() != len(model.input_shape) + 1:
        raise ArgumentError(f"x has shape {tuple(x.shape)}, expected (batch, *{model.input_shape})")
    if x.shape[0] < 1:
        raise ArgumentError(f"x must hold at least one sample, got shape {tuple(x.shape)}")
    if x.dtype != w.dtype:
        raise ArgumentTypeError(f"x has dtype {x.dtype} but the model's parameters are {w.dtype}")
    if x.device != w.device:
        raise ArgumentError(f"x is on {x.device} but the model's parameters are on {w.device}")


def check_state(model: CRNN, state: Sequence[torch.Tensor], batch: int) -> None:
    """Raise a clear error if ``state`` does not match the model and batch."""
    w = _model_ref(model)
    if not isinstance(state, (list, tuple)):
        raise ArgumentTypeError(f"state must be a list of {model.num_layers} tensors (one per state "
                                f"layer, e.g. model.init_state(batch)), got {describe(state)}")
    if len(state) != model.num_layers:
        raise ArgumentError(f"state has {len(state)} layers, the model has {model.num_layers}")
    for i, (s, shape) in enumerate(zip(state, model.state_shapes)):
        if not isinstance(s, torch.Tensor):
            raise ArgumentTypeError(f"state[{i}] must be a torch.Tensor, got {describe(s)}")
        if tuple(s.shape) != (batch, *shape):
            raise ArgumentError(f"state[{i}] has shape {tuple(s.shape)}, expected {(batch, *shape)}")
        if s.dtype != w.dtype:
            raise ArgumentTypeError(f"state[{i}] has dtype {s.dtype}, the model is {w.dtype}")
        if s.device != w.device:
            raise ArgumentError(f"state[{i}] is on {s.device}, the model on {w.device}")


def check_beta(beta: Any, x: torch.Tensor) -> float | torch.Tensor:
    """``beta`` as a float in ``[-BETA_MAX, BETA_MAX]``, or a per-sample ``(batch,)`` float tensor on
    ``x``'s device (its values are checked by :func:`check_values`)."""
    if isinstance(beta, torch.Tensor) and beta.dim() > 0:
        if not beta.is_floating_point():
            raise ArgumentTypeError(f"a per-sample beta must be a floating-point tensor, got "
                                    f"{describe(beta)}")
        if tuple(beta.shape) != (x.shape[0],):
            raise ArgumentError(f"a per-sample beta must have shape ({x.shape[0]},) (one per sample), "
                                f"got {describe(beta)}")
        if beta.device != x.device:
            raise ArgumentError(f"beta is on {beta.device}, x on {x.device}")
        return beta
    return as_float("beta", beta, minimum=-BETA_MAX, maximum=BETA_MAX)


def check_targets(model: CRNN, y: Any, batch: int) -> torch.Tensor | Targets:
    """Targets are class ids ``y: (batch,)`` of any integer dtype, on the model's device, or,
    with KD, ``Targets(labels, features)`` with one teacher tensor per augmented layer.

    Returns them with the labels as int64 (what every backend indexes with), so an int16 or uint8
    ``y`` gives the gradients of the same ids in int64."""
    w = _model_ref(model)
    if isinstance(model.augment, Distill):
        feats = getattr(y, "features", None)
        if feats is None or len(feats) != len(model.augment.layers):
            raise ArgumentError(f"KD needs eqkern.model.auxiliary.Targets(labels, features) with "
                                f"{len(model.augment.layers)} teacher feature tensors")
        for j, (f, i) in enumerate(zip(feats, model.augment.layers)):
            if not isinstance(f, torch.Tensor) or tuple(f.shape) != (batch, *model.state_shapes[i]):
                raise ArgumentError(f"teacher features[{j}] have shape "
                                    f"{tuple(getattr(f, 'shape', ()))}, layer {i} needs "
                                    f"{(batch, *model.state_shapes[i])}")
            if f.dtype != w.dtype or f.device != w.device:
                raise ArgumentTypeError(f"teacher features[{j}] are {f.dtype} on {f.device}, the model "
                                        f"is {w.dtype} on {w.device}")
    labels = labels_of(y)
    if not isinstance(labels, torch.Tensor):
        raise ArgumentTypeError(f"targets must be a tensor of class ids, got {describe(labels)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        # an ArgumentError (ValueError), as this check has always raised
        raise ArgumentError(f"targets must be class ids of an integer dtype, got dtype "
                                f"{labels.dtype} (use y.long())")
    if tuple(labels.shape) != (batch,):
        raise ArgumentError(f"targets must be class ids of shape ({batch},), got shape "
                            f"{tuple(labels.shape)}")
    if labels.device != w.device:
        raise ArgumentError(f"targets are on {labels.device}, the model on {w.device}")
    labels = labels.long()
    return Targets(labels, y.features) if isinstance(y, Targets) else labels


def _finite_sum(t: torch.Tensor) -> torch.Tensor:
    """A bool tensor that is False if ``t`` holds NaN or inf: one reduction pass, where
    ``isfinite(t).all()`` makes four (on a busy 2-core CPU each pass costs a thread-pool wake-up,
    ~6 ms, more than the pass itself). Any NaN/inf makes the sum NaN/inf; a finite ``t`` whose sum
    overflows is a false alarm that only sends :func:`check_values` to its exact slow path."""
    return torch.isfinite(t.sum(dtype=torch.promote_types(t.dtype, torch.float32)))


def check_values(
    model: CRNN,
    x: torch.Tensor,
    *,
    targets: torch.Tensor | Targets | None = None,
    beta: float | torch.Tensor = 0.0,
    state: Sequence[torch.Tensor] = (),
) -> None:
    """ArgumentError if ``x``, a ``state`` tensor or a teacher feature holds NaN/inf, a per-sample
    ``beta`` is not finite or beyond ``BETA_MAX``, or a class id is outside ``0..num_classes-1``.

    The arguments are assumed to have passed the metadata checks above. One host sync for all of
    them (nothing to read on ``meta`` tensors, which memory profiles use); the slow search for the
    culprit runs only when something is wrong."""
    if x.device.type == "meta":
        return
    labels = None if targets is None else labels_of(targets)
    features = list(getattr(targets, "features", None) or ())
    finite = {"x": x, **{f"state[{i}]": s for i, s in enumerate(state)},
              **{f"teacher features[{j}]": f for j, f in enumerate(features)}}
    flags = [_finite_sum(t) for t in finite.values()]
    if isinstance(beta, torch.Tensor):
        flags.append((beta.abs() <= BETA_MAX).all())  # False for NaN too
    if labels is not None:
        flags.append(((labels >= 0) & (labels < model.num_classes)).all())
    if bool(torch.stack(flags).all()):
        return
    for name, t in finite.items():
        check_tensor_finite(name, t)
    if isinstance(beta, torch.Tensor):
        bad = (~(beta.abs() <= BETA_MAX)).nonzero()
        if len(bad):
            i = bad[0, 0].item()
            raise ArgumentError(f"a per-sample beta must be finite with |beta| <= {BETA_MAX:g}, got "
                                f"beta[{i}] = {beta[i].item()!r}")
    if labels is not None:
        wrong = ((labels < 0) | (labels >= model.num_classes)).nonzero()
        if len(wrong):
            i = wrong[0, 0].item()
            raise ArgumentError(f"targets must be class ids in 0..{model.num_classes - 1}, got "
                                f"{labels[i].item()} at sample {i} ({len(wrong)} out of range)")


# -- memory overlap ----------------------------------------------------------------------------

def _span(t: torch.Tensor) -> tuple[int, int] | None:
    """``[first byte, last byte + 1)`` of ``t``'s elements, or None when it has none to compare."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
    start = t.data_ptr()
    return start, start + extent * t.element_size()


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def check_no_overlap(written: dict[str, torch.Tensor], read: dict[str, torch.Tensor] | None = None,
                     *, in_place_ok: bool = False) -> None:
    """ArgumentError naming two tensors whose memory overlaps when one of them is written.

    ``written``: the tensors an op writes (states, gradient buffers): none may overlap another or
    a ``read`` one. ``in_place_ok``: an elementwise op may read and write the very same view (each
    element is read before it is written), so an exact alias of a written and a read tensor passes.
    Disjoint views of one buffer pass too (unlike :func:`eqkern.validate.check_not_aliased`, which
    compares storages): the check compares byte ranges, so two interleaved strided views of one
    buffer are (conservatively) refused. Skipped while compiling (fake tensors have no memory)."""
    if torch.compiler.is_compiling():
        return
    spans = []
    for is_written, group in ((True, written), (False, read or {})):
        for name, t in group.items():
            span = None if t is None else _span(t)
            if span is not None:
                spans.append((span[0], span[1], name, is_written, t))
    spans.sort(key=lambda s: s[0])
    for i, (start, end, name, w, t) in enumerate(spans):
        for start2, _, name2, w2, t2 in spans[i + 1:]:
            if start2 >= end:
                break
            if not (w or w2) or t.device != t2.device:
                continue
            if in_place_ok and w != w2 and _same_view(t, t2):
                continue
            first, second = (name, name2) if w else (name2, name)
            raise ArgumentError(f"{first} and {second} overlap in memory, and {first} is written; "
                                f"pass separate tensors (e.g. {second}.clone())")
