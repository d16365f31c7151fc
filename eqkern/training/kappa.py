"""κ schedules: the weight of the intermediate learning signals per epoch (Lin et al. eq. 14, App. E).

Every schedule is a small object, ``schedule(epoch) -> κ`` with ``epoch`` counted from 0 (the first
epoch trains at ``κ_init``), stepped once per epoch by the training driver (``model.kappa =
schedule(epoch)``). With ``E`` the epoch and ``E_total`` the schedule's length:

* constant:    ``κ = κ_init``
* linear:      ``κ = κ_init − κ_init · E / E_total``     (clamped at 0 past ``E_total``)
* exponential: ``κ = κ_init · exp(−γ E)``
* cosine:      ``κ = κ_min + ½ (κ_init − κ_min)(1 + cos(π E / E_total))``  (held at κ_min past E_total)
* step:        ``κ = κ_init · factor^⌊E / every⌋``       (not in the paper; a common option)

``state_dict()`` / ``load_state_dict()`` hold the parameters (a schedule is a pure function of the
epoch, so they are all a checkpoint needs); :func:`make_schedule` builds one by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from eqkern.errors import ArgumentError
from eqkern.validate import as_float, as_int

__all__ = ["KappaSchedule", "ConstantKappa", "LinearKappa", "ExponentialKappa", "CosineKappa",
           "StepKappa", "SCHEDULES", "make_schedule"]


@dataclass
class KappaSchedule:
    """Base class: ``kappa_init`` is κ at epoch 0."""

    kappa_init: float = 1.0

    name = "base"

    def __call__(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_epoch(self, epoch: int) -> int:
        if int(epoch) != epoch or epoch < 0:
            raise ArgumentError(f"epoch must be a non-negative integer, got {epoch!r}")
        return int(epoch)

    def state_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("name") != self.name:
            got = state.get("name") if isinstance(state, dict) else type(state).__name__
            raise ArgumentError(f"state_dict is of a {got!r} schedule, not {self.name!r}")
        missing = [f.name for f in fields(self) if f.name not in state]
        if missing:
            raise ArgumentError(f"state_dict of the {self.name} schedule has no {', '.join(missing)}")
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))


@dataclass
class ConstantKappa(KappaSchedule):
    name = "constant"

    def __call__(self, epoch: int) -> float:
        self._check_epoch(epoch)
        return float(self.kappa_init)


@dataclass
class LinearKappa(KappaSchedule):
    total_epochs: int = 250
    name = "linear"

    def __call__(self, epoch: int) -> float:
        e = min(self._check_epoch(epoch), self.total_epochs)
        return float(-self.kappa_init * e / self.total_epochs + self.kappa_init)


@dataclass
class ExponentialKappa(KappaSchedule):
    gamma: float = 0.02
    name = "exponential"

    def __call__(self, epoch: int) -> float:
        return float(self.kappa_init * math.exp(-self.gamma * self._check_epoch(epoch)))


@dataclass
class CosineKappa(KappaSchedule):
    total_epochs: int = 250
    kappa_min: float = 0.0
    name = "cosine"

    def __call__(self, epoch: int) -> float:
        e = min(self._check_epoch(epoch), self.total_epochs)
        return float(self.kappa_min + 0.5 * (self.kappa_init - self.kappa_min)
                     * (1.0 + math.cos(math.pi * e / self.total_epochs)))


@dataclass
class StepKappa(KappaSchedule):
    every: int = 50
    factor: float = 0.5
    name = "step"

    def __call__(self, epoch: int) -> float:
        return float(self.kappa_init * self.factor ** (self._check_epoch(epoch) // self.every))


SCHEDULES: dict[str, type[KappaSchedule]] = {
    c.name: c for c in (ConstantKappa, LinearKappa, ExponentialKappa, CosineKappa, StepKappa)
}


def make_schedule(name: str, kappa_init: float, *, total_epochs: int = 250, kappa_min: float = 0.0,
                  gamma: float = 0.02, every: int = 50, factor: float = 0.5) -> KappaSchedule:
    """A schedule by name (``constant``, ``linear``, ``exponential``, ``cosine``, ``step``);
    arguments that the named schedule does not use are ignored (but still type-checked).
    ArgumentError naming the argument for a value no schedule could use (``every=0`` would
    divide by zero, a NaN κ would reach the energy)."""
    if name not in SCHEDULES:
        raise ArgumentError(f"unknown kappa schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if name in ("linear", "cosine"):
        total_epochs = as_int("total_epochs", total_epochs, minimum=1)
    kw = {"total_epochs": as_int("total_epochs", total_epochs),
          "kappa_min": as_float("kappa_min", kappa_min),
          "gamma": as_float("gamma", gamma),
          "every": as_int("every", every, minimum=1),
          "factor": as_float("factor", factor, minimum=0.0)}
    cls = SCHEDULES[name]
    return cls(as_float("kappa_init", kappa_init),
               **{f.name: kw[f.name] for f in fields(cls) if f.name in kw})
