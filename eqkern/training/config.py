"""Typed configuration: the sections a :class:`~eqkern.training.presets.Preset` is made of.

Each section is a frozen dataclass of the fields one part of eqkern reads, with its types, its
defaults and its choice lists (imported from the module that owns them, so every list is written
once); ``validate()`` checks the types and choices (:func:`check_fields`), then the values
(``check_ranges()``: range, finiteness, consistency, each error naming the field and the value):

* :class:`LabelSection`   name, source, notes
* :class:`DataSection`    dataset, its augmentation, sizes and batch sizes        (eqkern.data)
* :class:`ModelSection`   arch, read-out, feedback, init, width, skip links       (eqkern.model)
* :class:`PhaseSection`   β, the phases, estimator, rule, schedule, stop          (dynamics, learning)
* :class:`OptimSection`   learning rates, optimiser, cosine annealing              (training)
* :class:`AugmentSection` LE / KD(W) signals, the κ schedule, the teacher          (model.auxiliary, kappa)
* :class:`RunSection`     epochs, seed, backend                                    (eqkern.backends)

``Preset`` inherits every section, so its fields stay flat (``cfg.t_free``, ``cfg.lr``).
:func:`parse_field` reads a ``--set`` value by the field's declared type and :func:`check_field`
checks a Python value; both raise an :class:`~eqkern.errors.ArgumentError` (a ``ValueError``)
naming the field, the value and the type.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Union

from eqkern.errors import ArgumentError
from eqkern.validate import as_float, as_int
from eqkern.backends import BACKENDS
from eqkern.backends.update_order import SCHEDULES
from eqkern.data.datasets import DATASETS
from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY, DEFAULT_TOL, check_stop_args
from eqkern.dynamics.solvers import SOLVERS
from eqkern.learning.ep import ESTIMATORS
from eqkern.learning.separate_feedback import RULES
from eqkern.model.skips import random_skips, residual_skips
from eqkern.model.specs import FEEDBACK_MODES, READOUTS, STATE_INITS, LayerSpec
from eqkern.model.vgg import VGG_ARCHS
from eqkern.training.kappa import SCHEDULES as KAPPA_SCHEDULES
from eqkern.training.kappa import make_schedule

__all__ = ["parse_number", "Section", "validate_section", "LabelSection", "DataSection", "ModelSection", "PhaseSection", "OptimSection",
           "AugmentSection", "RunSection", "SECTIONS", "METHODS", "OPTIMIZERS", "SKIPS",
           "AUGMENTS", "DATA_AUGMENTATIONS", "parse_field", "check_field", "check_fields",
           "describe_type", "field_types", "choice", "MAX_SEED"]

# The choice lists that no lower module owns (the others are imported above).
METHODS = ("ep", "bptt", "bp")                  # bp: feed-forward backprop
OPTIMIZERS = ("sgd", "adam")
SKIPS = ("none", "residual", "random")
AUGMENTS = ("none", "le", "kd", "kdw")
DATA_AUGMENTATIONS = ("crop_flip", "none")

_TRUE, _FALSE = ("true", "1"), ("false", "0")
MAX_SEED = 2**53  # seeds feed torch generators as seed * 1000 + epoch: far from their 64-bit limit


def choice(options, default: Any = MISSING, *, positional: bool = False):
    """A field whose (non-None) value must be one of ``options``."""
    return field(default=default, kw_only=not positional, metadata={"choices": tuple(options)})


# --- the sections ----------------------------------------------------------------------------

class Section:
    """What every section does: ``validate()`` checks the types and choices of its own fields
    (:func:`check_fields`), then its ``check_ranges()``. A config made of several sections (a
    Preset) calls :func:`validate_section` for each."""

    def validate(self) -> None:
        validate_section(self, type(self))

    def check_ranges(self) -> None:
        """Range, finiteness and consistency of the section's fields (beyond their types)."""


def validate_section(obj, section: type) -> None:
    """``section``'s checks on ``obj`` (the section itself, or a config that includes it)."""
    check_fields(obj, section)
    section.check_ranges(obj)


@dataclass(frozen=True, kw_only=True)
class LabelSection(Section):
    name: str = field(kw_only=False)
    source: str = field(kw_only=False)           # paper and table it reproduces
    notes: str = ""                              # where a paper is silent and what we chose


@dataclass(frozen=True, kw_only=True)
class DataSection(Section):
    dataset: str = choice(DATASETS, positional=True)   # eqkern.data.datasets name
    data_augmentation: str = choice(DATA_AUGMENTATIONS, "crop_flip")
    crop_padding: int = 4
    train_size: int | None = None                # keep the first n training examples
    test_size: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 500

    def check_ranges(self) -> None:
        # train_size / test_size 0 would leave no data (a division by zero an epoch later).
        _at_least(self, 1, "batch_size", "eval_batch_size", "train_size", "test_size")
        _at_least(self, 0, "crop_padding")


@dataclass(frozen=True, kw_only=True)
class ModelSection(Section):
    arch: tuple[LayerSpec, ...] = field(kw_only=False)   # full-width layer specs
    readout: str = choice(READOUTS, "ce")        # "ce" (soft-max read-out) or "mse"
    feedback: str = choice(FEEDBACK_MODES, "symmetric")  # separate: B_l (Laborieux §2.4)
    init_scale: float = 1.0                      # factor on PyTorch's Kaiming-uniform init
    state_init: str = choice(STATE_INITS, "zeros")       # zeros | uniform (U(0,1))
    width: float = 1.0                           # factor on every hidden width (tests, CPU runs)
    skips: str = choice(SKIPS, "none")           # residual (every skip_every layers) | random (AGT)
    skip_every: int = 3                          # residual: links (0, k), (k, 2k), … between state layers
    skip_p: float = 0.2                          # random: probability of each pair (i, j), j > i + 1
    skip_seed: int = 0                           # random: seed of the topology

    def skip_pairs(self) -> tuple[tuple[int, int], ...]:
        """The skip links ``(i, j)`` of the state layers (:mod:`eqkern.model.skips`)."""
        if self.skips == "residual":
            return residual_skips(len(self.arch), self.skip_every)
        if self.skips == "random":
            return random_skips(len(self.arch), self.skip_p, self.skip_seed)
        return ()

    def check_ranges(self) -> None:
        if not self.arch:
            raise ArgumentError("arch must have at least one layer")
        _positive(self, "init_scale", "width")
        _at_least(self, 2, "skip_every")  # a skip spans at least two layers
        if not (math.isfinite(self.skip_p) and 0.0 <= self.skip_p <= 1.0):
            raise ArgumentError(f"skip_p must be a probability in [0, 1], got {self.skip_p!r}")
        as_int("skip_seed", self.skip_seed, minimum=0, maximum=MAX_SEED)
        self.skip_pairs()


@dataclass(frozen=True, kw_only=True)
class PhaseSection(Section):
    beta: float = 0.5
    t_free: int = 250
    t_nudge: int = 50
    estimator: str = choice(ESTIMATORS, "symmetric")
    method: str = choice(METHODS, "ep")          # ep (any estimator/rule) | bptt | bp
    truncate: int | None = None                  # bptt: steps the graph covers (None: all of t_free)
    rule: str | None = choice(RULES, None)       # None: ep (symmetric) / kp-vf (separate)
    leakage: float = 0.0                         # KP-VF λ on W_l, B_l (weight_decay acts too)
    schedule: str = choice(SCHEDULES, "synchronous")     # alternating: even, then odd layers
    tol: float | None = DEFAULT_TOL              # convergence stop of every phase, T, K the caps (None: fixed T, K)
    check_every: int = DEFAULT_CHECK_EVERY       # steps between two convergence checks
    solver: str = choice(SOLVERS, "plain")       # fixed-point solver of every phase (eqkern.dynamics.solvers)
    batched_nudge: bool = False                  # the ±β phases as one batch of 2B

    def check_ranges(self) -> None:
        _at_least(self, 1, "t_free", "t_nudge", "truncate")
        # Every EP estimate divides by beta (eqkern.learning.ep): refuse 0 here, not mid-run.
        as_float("beta", self.beta, nonzero=self.method == "ep")
        as_float("leakage", self.leakage, minimum=0.0)
        check_stop_args(self.tol, self.check_every)


@dataclass(frozen=True, kw_only=True)
class OptimSection(Section):
    lr: tuple[float, ...] = (0.03,)              # one per weight layer (read-out included), or one for all
    optimizer: str = choice(OPTIMIZERS, "sgd")   # (or pass any torch.optim class to train_vgg)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    cosine: bool = True                          # cosine annealing of the learning rates
    cosine_epochs: int | None = None             # its period T_max (None: the number of epochs)
    lr_min: float = 1e-5                         # its eta_min

    def check_ranges(self) -> None:
        if not self.lr:
            raise ArgumentError("lr must give at least one rate")
        for i, rate in enumerate(self.lr):
            as_float("lr" if len(self.lr) == 1 else f"lr[{i}]", rate, minimum=0.0,
                     exclusive_min=True)
        # momentum 1 never forgets a gradient (and > 1 diverges): SGD needs [0, 1).
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ArgumentError(f"momentum must be >= 0 and < 1, got {self.momentum!r}")
        for name in ("weight_decay", "lr_min"):
            as_float(name, getattr(self, name), minimum=0.0)
        _at_least(self, 1, "cosine_epochs")


@dataclass(frozen=True, kw_only=True)
class AugmentSection(Section):
    augment: str = choice(AUGMENTS, "none")      # none | le | kd | kdw
    augment_layers: tuple[int, ...] = ()         # state-layer indices (0-based)
    tau: float = 4.0
    le_learn: bool = True                        # LE projections B_i learned (eq. 20) or frozen
    kappa: float = 0.0                           # κ_init
    kappa_schedule: str = choice(KAPPA_SCHEDULES, "constant")
    kappa_epochs: int | None = None              # E_total of eq. 14 (None: the number of epochs)
    kappa_min: float = 0.0
    kappa_gamma: float = 0.02
    teacher_arch: str | None = choice(VGG_ARCHS, None)   # KD: eqkern.teacher architecture
    teacher_path: str | None = None              # KD: checkpoint written by train_teacher

    def check_ranges(self) -> None:
        if self.augment != "none" and not self.augment_layers:
            raise ArgumentError(f"augment={self.augment!r} needs augment_layers")
        if self.teacher_path is not None and self.augment not in ("kd", "kdw"):
            raise ArgumentError(f"teacher_path={self.teacher_path!r} is set but "
                                f"augment={self.augment!r} does not distil (only 'kd' and 'kdw' "
                                f"read a teacher); drop teacher_path or set augment")
        _positive(self, "tau")
        for name in ("kappa", "kappa_min", "kappa_gamma"):  # weights and a decay rate: >= 0
            as_float(name, getattr(self, name), minimum=0.0)
        _at_least(self, 1, "kappa_epochs")
        make_schedule(self.kappa_schedule, self.kappa, total_epochs=self.kappa_epochs or 1,
                      kappa_min=self.kappa_min, gamma=self.kappa_gamma)


@dataclass(frozen=True, kw_only=True)
class RunSection(Section):
    epochs: int = 250
    seed: int = 0
    backend: str | None = choice(BACKENDS, None)  # None: the device's default

    def check_ranges(self) -> None:
        _at_least(self, 1, "epochs")
        as_int("seed", self.seed, minimum=0, maximum=MAX_SEED)


# Bottom to top: the positional fields of a Preset are name, source, dataset, arch.
SECTIONS = (LabelSection, DataSection, ModelSection, PhaseSection, OptimSection, AugmentSection,
            RunSection)


# --- field types -----------------------------------------------------------------------------

@functools.cache  # read on every validate: resolve each class's annotations once
def field_types(cls) -> dict[str, tuple[Any, tuple | None]]:
    """``{field: (type, choices or None)}`` of a section (or of Preset)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("choices")) for f in fields(cls)}


def _args(tp) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else ()


def _optional(tp) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    arms = [a for a in _args(tp) if a is not type(None)]
    if len(arms) == len(_args(tp)) - 1 and len(arms) >= 1:
        return (arms[0] if len(arms) == 1 else Union[tuple(arms)]), True
    return tp, False


def _item(tp):
    """``X`` of ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


# type: (as text, as a Python value, plural)
_NAMES = {bool: ("a bool (true/false or 1/0)", "a bool", "bools"), int: ("an int", "an int", "ints"),
          float: ("a number (e.g. 0.5, 1e-3 or 1/8)", "a number", "numbers"),
          str: ("a string", "a string", "strings")}


def describe_type(tp, choices: tuple | None = None, *, text: bool = True) -> str:
    """In words, for messages: ``'an int or none'``, ``'one of ce, mse'``, ... (``text``: as
    ``--set`` reads it, else as a Python value)."""
    inner, optional = _optional(tp)
    item = _item(inner)
    if choices:
        txt = "one of " + ", ".join(map(str, choices))
    elif item in _NAMES:
        plural = _NAMES[item][2]
        txt = f"comma-separated {plural} (empty for none)" if text else f"a sequence of {plural}"
    elif item is not None:
        txt = f"a tuple of {describe_type(item, text=text)}"
    elif inner in _NAMES:
        txt = _NAMES[inner][0 if text else 1]
    else:
        txt = " or ".join(getattr(a, "__name__", str(a)) for a in (_args(inner) or (inner,)))
    return txt + (" or none" if optional else "")


class _Mismatch(Exception):
    pass


def parse_number(text: str) -> float:
    """A float, or a fraction (``1/8``): how ``--set`` and the CLI's number options read one.
    ValueError or ZeroDivisionError when ``text`` is neither."""
    return float(Fraction(text)) if "/" in text else float(text)


def _from_text(tp, raw: str) -> Any:
    """``raw`` read as ``tp`` (raises _Mismatch)."""
    inner, optional = _optional(tp)
    text = raw.strip()
    if optional and text.lower() == "none":
        return None
    item = _item(inner)
    if item is not None:
        parts = [t for t in text.strip("()[]").split(",") if t.strip()]
        return tuple(_from_text(item, t) for t in parts)
    try:
        if inner is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
        elif inner is int:
            return int(text)
        elif inner is float:
            return parse_number(text)
        elif inner is str:
            return text
    except (ValueError, ZeroDivisionError):
        pass
    raise _Mismatch


def _from_python(tp, value: Any) -> Any:
    """``value`` checked against ``tp`` and normalised (int → float, list → tuple; raises _Mismatch)."""
    inner, optional = _optional(tp)
    if value is None and optional:
        return None
    item = _item(inner)
    if item is not None:
        values = value if isinstance(value, (list, tuple)) else (value,)
        return tuple(_from_python(item, v) for v in values)
    if inner is bool and isinstance(value, bool):
        return value
    if inner is int and isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    if inner is float and isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    if inner is str and isinstance(value, str):
        return value
    if isinstance(inner, type) and inner not in _NAMES and isinstance(value, inner):
        return value
    if _args(inner) and any(isinstance(value, a) for a in _args(inner) if isinstance(a, type)):
        return value
    raise _Mismatch


def parse_field(name: str, raw: str, types_: dict) -> Any:
    """The text ``raw`` of field ``name`` (``--set name=raw``) as its declared type."""
    tp, choices = types_[name]
    if name == "arch":
        raise ArgumentError("--set arch: the architecture cannot be set from the command line; "
                         "use the Python API")
    try:
        value = _from_text(tp, raw)
    except _Mismatch:
        value = _Mismatch
    if value is _Mismatch or (choices and value is not None and value not in choices):
        raise ArgumentError(f"--set {name}={raw!r}: expected {describe_type(tp, choices)}")
    return value


def check_field(name: str, value: Any, types_: dict) -> Any:
    """A Python value of field ``name`` checked against its declared type, normalised."""
    tp, choices = types_[name]
    try:
        value = _from_python(tp, value)
    except _Mismatch:
        raise ArgumentError(f"{name} must be {describe_type(tp, text=False)}, got {value!r}") from None
    if choices and value is not None and value not in choices:
        raise ArgumentError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_fields(obj, section) -> None:
    """The type and choice of every field of ``section`` on ``obj`` (a section or a Preset)."""
    types_ = field_types(section)
    for name in types_:
        check_field(name, getattr(obj, name), types_)



def _at_least(obj, low: int, *names: str) -> None:
    """Each int (or None) field ``names`` of ``obj`` is >= ``low`` (types: :func:`check_fields`).
    Its own message rather than :func:`eqkern.validate.as_int`'s: ``"batch_size must be >= 1,
    got 0"`` is the wording callers already match."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value >= low:
            raise ArgumentError(f"{name} must be >= {low}, got {value!r}")


def _positive(obj, *names: str) -> None:
    for name in names:
        as_float(name, getattr(obj, name), minimum=0.0, exclusive_min=True)
