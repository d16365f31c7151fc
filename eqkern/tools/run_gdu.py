"""The GDU check on a training run's network: EP's update vs BPTT's gradient at its checkpoint.

``eqkern gdu --run DIR`` asks, of a run that does not learn, whether EP's update still follows
the gradient (the estimate is wrong) or the gradient itself is small (the network or its
signal is). It rebuilds the run's network from its checkpoint, takes training images of its
dataset (not augmented) and runs :func:`eqkern.learning.gdu.check_gdu` with the
run's β, T, K, estimator and stop, at the κ the run last trained with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from eqkern.data.datasets import load_dataset
from eqkern.errors import ArgumentError
from eqkern.dynamics.settle import free_phase, settle, spread_over_images
from eqkern.learning.gdu import check_gdu
from eqkern.model.activations import ACTIVATION_RANGES
from eqkern.model.auxiliary import Targets
from eqkern.model.crnn import CRNN
from eqkern.training import checkpoint
from eqkern.training.build import build_model, make_kappa_schedule, resolve_teacher, teacher_targets
from eqkern.training.presets import Preset, get_preset

__all__ = ["LoadedRun", "RunCheck", "UNSETTLED_EXTRA_STEPS", "UNSETTLED_THRESHOLD", "gdu_of_run",
           "layer_profile", "load_run", "state_profile", "unsettled_images"]


@dataclasses.dataclass
class RunCheck:
    """What :func:`gdu_of_run` compared: the rows and the settings they were computed with."""

    rows: list[dict]
    preset: str
    epoch: int
    kappa: float
    beta: float
    t_free: int
    t_nudge: int
    tol: float | None
    batch: int
    offset: int
    dtype: str

    def header(self) -> str:
        stop = "fixed T" if self.tol is None else f"stop at tol {self.tol:g}"
        return (f"GDU check of {self.preset} at its checkpoint (after epoch {self.epoch}): EP "
                f"(beta={self.beta:g}, T_free={self.t_free}, K={self.t_nudge}, {stop}, "
                f"kappa={self.kappa:g}) vs BPTT over the last K of T_free plain steps, "
                f"training images {self.offset}-{self.offset + self.batch - 1}, {self.dtype}")


def _checkpoint_path(run: str | os.PathLike) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise ArgumentError(f"run={str(run)!r} (--run): no checkpoint there; expected a run folder "
                            f"written by `eqkern train --out DIR` or its checkpoint.pt")
    return path


def _run_config(saved: dict, run) -> Preset:
    """The run's preset: its named preset with every field the run changed (the architecture,
    saved as text, must be the preset's own)."""
    base = get_preset(saved["name"])
    plain = checkpoint.config_dict(base)
    if saved.get("arch") != plain["arch"]:
        raise ArgumentError(f"run={str(run)!r} (--run): its architecture {saved.get('arch')} is not "
                            f"preset {base.name}'s {plain['arch']}; check it with the Python API "
                            f"(eqkern.learning.gdu.check_gdu on the rebuilt network)")
    changed = {k: saved[k] for k in checkpoint.changed_fields(plain, saved)
               if k not in ("name", "source", "notes", "arch")}
    return get_preset(base.name, **changed)


@dataclasses.dataclass
class LoadedRun:
    """A run's network at its checkpoint and a slice of its training images (not augmented)."""

    preset: Preset
    model: CRNN
    history: list[dict]
    x: torch.Tensor  # (batch, channels, height, width)
    y: torch.Tensor  # (batch,) class ids


def load_run(run: str | os.PathLike, *, batch: int, offset: int = 0, data_root=None,
             **phase: Any) -> LoadedRun:
    """The network of ``run`` (a folder of ``eqkern train --out DIR`` or its checkpoint.pt) with
    its training images ``offset .. offset + batch - 1``; ``phase`` (``beta``, ``t_free``,
    ``t_nudge``, ``tol``, ``estimator``) replaces the run's."""
    ck = checkpoint.load(_checkpoint_path(run), required=("config", "model", "history"))
    cfg = _run_config(json.loads(ck["config"]), run)
    unknown = set(phase) - {"beta", "t_free", "t_nudge", "tol", "estimator"}
    if unknown:
        raise ArgumentError(f"got {sorted(unknown)}; a run's check takes beta, t_free, t_nudge, "
                            f"tol and estimator in place of the run's")
    cfg = dataclasses.replace(cfg, **phase)
    data = load_dataset(cfg.dataset, data_root, limit_train=offset + batch, limit_test=1)
    have = min(len(data.y_train), cfg.train_size or len(data.y_train))
    if have < offset + batch:
        raise ArgumentError(f"offset={offset} + batch={batch} (--offset, --batch): the run trained on "
                            f"{have} images of {cfg.dataset}")
    model = build_model(cfg, data.input_shape, data.num_classes)
    model.load_state_dict(ck["model"])
    return LoadedRun(cfg, model, ck["history"], data.x_train[offset:offset + batch],
                     data.y_train[offset:offset + batch].long())


def gdu_of_run(run: str | os.PathLike, *, batch: int = 16, offset: int = 0, data_root=None,
               teacher=None, kappa: float | None = None, backend: str | None = None,
               dtype: torch.dtype | None = None, **phase: Any) -> RunCheck:
    """EP vs BPTT, per parameter, on the network a training run has reached.

    ``run``: a run folder (``eqkern train --out DIR``) or its ``checkpoint.pt``. ``batch``: how
    many training images, from number ``offset`` on (one image at a time finds the outliers).
    ``teacher``: a KD run's teacher (a path or a network; default the run's ``teacher_path``).
    ``kappa``: the learning-signal weight (default: the κ of the run's last epoch; 0 compares
    plain EP). ``dtype``: the arithmetic (default the weights' own; float64 tells rounding apart
    from the estimate's bias). ``phase``: ``beta``, ``t_free``, ``t_nudge``, ``tol`` (None: fixed
    T), ``estimator`` in place of the run's.
    """
    loaded = load_run(run, batch=batch, offset=offset, data_root=data_root, **phase)
    cfg, model, history, x, y = (loaded.preset, loaded.model, loaded.history, loaded.x, loaded.y)
    if not model.weighs_kappa:
        kappa = 0.0  # the run's κ schedule has nothing to weigh without learning signals
    elif kappa is None:
        # The schedule's κ of the last epoch run, as training set it; from the schedule, not the
        # log: a run that does not use κ (method=bp) logs none.
        kappa = make_kappa_schedule(cfg)(max(len(history) - 1, 0))
    model.kappa = kappa
    targets = y
    if cfg.augment in ("kd", "kdw"):  # its losses read the teacher's features even at κ = 0
        targets_of = teacher_targets(cfg, model, resolve_teacher(cfg, teacher, x.device))
        targets = targets_of(x, y)
    if dtype is not None:
        model, x = model.to(dtype), x.to(dtype)
        if isinstance(targets, Targets):
            targets = Targets(targets.labels, [f.to(dtype) for f in targets.features])
    rows = check_gdu(model, x, targets, beta=cfg.beta, t_free=cfg.t_free, t_nudge=cfg.t_nudge,
                     estimator=cfg.estimator, backend=backend, tol=cfg.tol,
                     check_every=cfg.check_every, solver=cfg.solver)
    epoch = int(history[-1]["epoch"]) if history else 0
    return RunCheck(rows, cfg.name, epoch, kappa, cfg.beta, cfg.t_free, cfg.t_nudge, cfg.tol,
                    len(y), offset, str(x.dtype).removeprefix("torch."))


UNSETTLED_EXTRA_STEPS = 100  # unsettled_images' defaults, named for the CLI's report
UNSETTLED_THRESHOLD = 1e-3


def unsettled_images(run: str | os.PathLike, *, images: int = 128, offset: int = 0,
                     extra_steps: int = UNSETTLED_EXTRA_STEPS,
                     threshold: float = UNSETTLED_THRESHOLD, data_root=None,
                     backend: str | None = None) -> list[tuple[int, float]]:
    """The training images whose free phase has not settled after the run's ``T_free`` plain
    steps: ``(index, drift)`` for each image that ``extra_steps`` more steps move by more than
    ``threshold`` (drift: the largest change of any state). Such an image's EP update is
    meaningless; a few per batch can dominate it."""
    loaded = load_run(run, batch=images, offset=offset, data_root=data_root)
    model, x = loaded.model, loaded.x
    with torch.no_grad():
        end = free_phase(model, x, loaded.preset.t_free, backend=backend)
        later = settle(model, x, [s.clone() for s in end], 0.0, extra_steps, backend=backend)
        drift = torch.stack([(a - b).flatten(1).abs().amax(1) for a, b in zip(later, end)]).amax(0)
    return [(offset + i, float(d)) for i, d in enumerate(drift.tolist()) if d > threshold]


def layer_profile(run: str | os.PathLike, *, images: int = 64, offset: int = 0,
                  at_init: bool = False, data_root=None,
                  backend: str | None = None) -> list[dict[str, float]]:
    """Per state layer, the free-phase equilibrium of ``images`` training images (from ``offset``)
    at the run's checkpoint, or with ``at_init`` at a fresh initialisation of the run's network
    (seeded by the caller's ``torch.manual_seed``); the rows of :func:`state_profile`."""
    if images < 2:
        raise ArgumentError(f"images={images} (--layers): the spread over images needs at least 2")
    seeded = torch.get_rng_state()  # rebuilding the run's network draws from it too
    loaded = load_run(run, batch=images, offset=offset, data_root=data_root)
    model, x = loaded.model, loaded.x
    if at_init:
        torch.set_rng_state(seeded)
        model = build_model(loaded.preset, tuple(x.shape[1:]), model.num_classes)
    cfg = loaded.preset
    with torch.no_grad():
        state = free_phase(model, x, cfg.t_free, backend=backend, tol=cfg.tol,
                           check_every=cfg.check_every, solver=cfg.solver)
    return state_profile(model, state)


def state_profile(model: CRNN, state: list[torch.Tensor]) -> list[dict[str, float]]:
    """One row per state layer of ``state`` (each ``(images, ...)``, at least 2 images): ``layer``
    (from 1), ``mean_abs`` (mean |state|), ``at_low`` / ``at_high`` (the fraction of units clamped
    at the bounds of the layer's activation range, where they pass no signal back; 0 on an
    unbounded side) and ``spread`` (the state's standard deviation over the images, averaged over
    units, as training logs ``state_spread``: near 0, the layer no longer depends on the input,
    so the layers above cannot tell the images apart)."""
    rows, spread = [], spread_over_images(state).tolist()
    for i, (spec, s) in enumerate(zip(model.specs, state)):
        low, high = ACTIVATION_RANGES[spec.activation]
        rows.append({"layer": i + 1, "mean_abs": s.abs().mean().item(),
                     "at_low": 0.0 if low is None else (s <= low).float().mean().item(),
                     "at_high": 0.0 if high is None else (s >= high).float().mean().item(),
                     "spread": spread[i]})
    return rows
