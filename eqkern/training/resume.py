"""Resuming a run of the engine from its checkpoint: the compatibility check, the restore of
model, optimizer, scheduler, κ schedule, RNG and history, and the learning-rate schedule of the
new config applied to the restored optimizer (:func:`apply_schedule`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from eqkern.errors import CheckpointError
from eqkern.training import checkpoint

__all__ = ["REQUIRED", "restore", "apply_schedule"]

# What a resume reads from a checkpoint (a file without one of them is named as such).
REQUIRED = ("config", "fingerprint", "epoch", "position", "history", "model", "optimizer",
            "scheduler", "kappa_schedule", "rng")


def restore(run: Any, ck: dict, path: Path, allowed: frozenset[str],
            num_batches: int | None) -> tuple[int, dict | None]:
    """Load checkpoint ``ck`` (read from ``path``) into ``run`` (the engine's ``_Run``: its
    model, opt, sched, kappa, config, fingerprint, history, log, out); returns the epoch to
    start at and the mid-epoch position (or None). ``num_batches``: batches per epoch of this
    run's data (None: unknown)."""
    saved_config = json.loads(ck["config"])
    saved = {**saved_config, **json.loads(ck["fingerprint"])}
    checkpoint.check_compatible(
        saved, {**run.config, **run.fingerprint}, where=str(path),
        may_change=checkpoint.MAY_CHANGE | checkpoint.SCHEDULE_FIELDS | allowed)
    start, position = int(ck["epoch"]), ck["position"]
    if position is not None:
        _check_position(run, position, saved, path, num_batches)
    fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in run.opt.param_groups]
    fresh_sched = (run.sched.T_max, run.sched.eta_min) if run.sched is not None else None
    try:
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer "
                              f"(was it written with other settings?): {exc}") from exc
    if run.sched is not None and ck["scheduler"] is not None:
        run.sched.load_state_dict(ck["scheduler"])
    elif run.sched is not None:  # cosine switched on (allow_changes): it has run `start` epochs
        run.sched.last_epoch = start
    if run.kappa is not None and ck["kappa_schedule"] is not None:
        run.kappa.load_state_dict(ck["kappa_schedule"])
    checkpoint.set_rng_states(ck["rng"])
    run.history = list(ck["history"])
    for key in checkpoint.changed_fields(saved_config, run.config):
        how = (" (applied to the restored optimizer)" if key in checkpoint.SCHEDULE_FIELDS
               else " (allowed by allow_changes)" if key in allowed else "")
        run.log(f"resume: {key} {_text(saved_config.get(key))} -> {_text(run.config[key])}{how}")
    apply_schedule(run.opt, run.sched, fresh_groups, fresh_sched, start, run.log)
    out = run.out  # None on the ranks > 0 of a data-parallel run: rank 0 keeps the folder
    if out is not None and path != out.checkpoint and out.checkpoint.exists():
        kept = checkpoint.set_aside(out.checkpoint)
        run.log(f"kept the unreadable {out.checkpoint.name} as {kept.name}")
    return start, position


def _check_position(run: Any, position: dict, saved: dict, path: Path,
                    num_batches: int | None) -> None:
    """A mid-epoch position continues the saved batch order: only with the same batches."""
    bs, data = run.config.get("batch_size"), run.fingerprint["data"]
    last = num_batches is not None and position["batch"] + 1 >= num_batches
    if saved.get("batch_size") != bs or saved.get("data") != data or last:
        raise CheckpointError(
            f"checkpoint {path} was saved mid-epoch (epoch {position['epoch'] + 1}, after batch "
            f"{position['batch'] + 1}, with batch_size {saved.get('batch_size')} on data "
            f"{saved.get('data')}); it cannot continue with batch_size {bs} on data {data} "
            f"(other batches): resume with the batch_size and data it was made with")


def apply_schedule(opt, sched, fresh_groups: list[dict], fresh_sched: tuple | None, epoch: int,
                   log: Callable[[str], None]) -> None:
    """Make the restored optimizer and scheduler follow this config's learning-rate schedule.

    The choice: from epoch ``epoch`` on, the run uses the rates an uninterrupted run with the
    new schedule would use there. Each param group gets the new base rate (``initial_lr``,
    and the scheduler's ``base_lrs``), momentum and weight decay; the cosine its new
    ``eta_min`` and period ``T_max`` (which follows ``epochs`` when ``cosine_epochs`` is
    None); the current rate is the new cosine's closed form at ``epoch`` (the constant rate
    without a scheduler). Momentum buffers are kept: they are the run's state. Nothing is
    touched when nothing differs, so a plain resume stays bit-identical."""
    groups = opt.param_groups
    for g, new in zip(groups, fresh_groups):
        for key in ("momentum", "weight_decay"):
            if key in g and key in new:
                g[key] = new[key]
    base = [new.get("initial_lr", new["lr"]) for new in fresh_groups]
    if sched is None:
        for g, lr in zip(groups, base):
            g["lr"] = lr
        return
    t_max, eta_min = fresh_sched
    if list(sched.base_lrs) == base and sched.eta_min == eta_min and sched.T_max == t_max:
        return
    if sched.T_max != t_max:
        log(f"resume: cosine period T_max {sched.T_max} -> {t_max} epochs (applied to the "
            f"restored scheduler)")
    sched.base_lrs, sched.eta_min, sched.T_max = base, eta_min, t_max
    lrs = [eta_min + (b - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2 for b in base]
    for g, b, lr in zip(groups, base, lrs):
        g["initial_lr"], g["lr"] = b, lr
    sched._last_lr = lrs  # what get_last_lr() reports until the next step


def _text(v: Any) -> str:
    """A config value for the log: ``0.05`` for a one-rate list, ``0.2,0.1`` for several."""
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)
