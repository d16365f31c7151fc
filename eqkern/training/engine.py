"""The one training loop of every entry point (``train``, ``train_vgg``, ``train_teacher``).

``fit(model, data, cfg, step=...)`` runs ``cfg.epochs`` epochs of a swappable step
(:mod:`eqkern.training.steps`: EP, BPTT or plain backprop) with the optimizer and LR scheduler
of :mod:`eqkern.training.optim`, and per epoch: the batches of a generator seeded from
``cfg.seed`` and the epoch (the same batches whether resumed or not), crop + flip from a second
one (``cfg.data_augmentation``), κ from a schedule (``kappa``), a test evaluation, the metrics
(:class:`~eqkern.training.metrics.MetricsWriter`) and a checkpoint
(:mod:`eqkern.training.checkpoint`). ``resume=True`` continues from the checkpoint (refusing one
made with another model, data or config) to the same result as an uninterrupted run, also
mid-epoch after a Ctrl-C (:mod:`eqkern.training.interrupt`). For CRNNs each record has the
per-layer mean |state| of the free equilibrium and mean |update|, and the settle steps; NaN/inf in
either stops training naming the layer, and writes nothing, so the last good checkpoint stays.

The output folder belongs to the run (:func:`eqkern.training.run_folder.claim`): locked for its
life, refused when it holds another run unless ``resume`` or ``overwrite``, checked for
writability first. On resume the learning-rate schedule may change (it is applied to the restored
optimizer, see :meth:`_Run._apply_schedule`); other fields only when listed in ``allow_changes``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from eqkern.errors import (ArgumentError, ArgumentTypeError, CheckpointError, DivergenceError,
                           RunFolderError)
from eqkern.data.crop_flip import crop_flip
from eqkern.data.datasets import DataSplit, iterate_batches
from eqkern.learning.separate_feedback import weight_angles
from eqkern.model.crnn import CRNN
from eqkern.training import checkpoint
from eqkern.training.evaluation import check_finite
from eqkern.training.interrupt import StopRequest
from eqkern.training.optim import make_optimizer, make_scheduler
from eqkern.training.run_folder import Outputs, claim
from eqkern.training.steps import make_step
from eqkern.validate import as_bool, describe

__all__ = ["fit", "Outputs"]

# What a resume reads from a checkpoint (a file without one of them is named as such).
_REQUIRED = ("config", "fingerprint", "epoch", "position", "history", "model", "optimizer",
             "scheduler", "kappa_schedule", "rng")


def fit(
    model: nn.Module,
    data: DataSplit,
    cfg: Any,
    *,
    step=None,
    optimizer=None,
    kappa=None,
    out_dir: str | os.PathLike | Outputs | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: Iterable[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int, int], None] | None = None,
    targets_of: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    label: str = "",
    extra: dict | None = None,
) -> list[dict]:
    """Train ``model`` and return one record per epoch.

    ``cfg``: a :class:`~eqkern.training.presets.Preset` (or, for the BP teacher, a
    :class:`~eqkern.training.teacher.TeacherConfig`: the same data, optimizer and run sections).
    ``step``: a step object (default :func:`~eqkern.training.steps.make_step` of ``cfg``).
    ``optimizer``: an optimizer, or what :func:`~eqkern.training.optim.make_optimizer` takes.
    ``kappa``: a κ schedule, set as ``model.kappa`` each epoch. ``on_batch(epoch, batch)``: after
    every batch (0-based). ``targets_of(x, y)``: the targets of a batch (KD: teacher features).
    ``extra``: saved in every checkpoint as is (plain values). Each epoch ends with the step's
    own ``evaluate`` on the test split.

    ``out_dir`` (a folder or an :class:`Outputs`) is this run's alone while it runs. A fresh run
    into one that holds another run's checkpoint or metrics is refused, unless ``resume=True``
    (continue it) or ``overwrite=True`` (remove its files first). ``allow_changes``: config
    fields that may differ from the checkpoint's on resume (besides the epochs, backend and the
    learning-rate schedule, which always may).
    """
    resume, overwrite = as_bool("resume", resume), as_bool("overwrite", overwrite)
    if resume and overwrite:
        raise ArgumentError("resume=True and overwrite=True contradict each other: resume "
                            "continues the run in the output folder, overwrite deletes it; pass one")
    torch.manual_seed(cfg.seed)
    step = step if step is not None else make_step(cfg)
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = make_optimizer(model, cfg, optimizer)
    if not isinstance(out_dir, (str, os.PathLike, Outputs, type(None))):
        raise ArgumentTypeError(f"out_dir must be a folder path, an Outputs or None, got "
                                f"{describe(out_dir)}")
    out = out_dir if isinstance(out_dir, Outputs) or out_dir is None else Outputs.folder(out_dir)
    run = _Run(model, data, cfg, step, optimizer, make_scheduler(optimizer, cfg), kappa, out,
               log, label, extra or {})
    allowed = run.allowed_changes(allow_changes)
    held = (claim(out, resume=resume, overwrite=overwrite, log=log) if out is not None
            else contextlib.nullcontext())
    with held:
        return run.fit(resume, allowed, progress, on_batch, targets_of)


class _Run:
    def __init__(self, model, data, cfg, step, opt, sched, kappa, out, log, label, extra) -> None:
        self.model, self.data, self.cfg, self.step = model, data, cfg, step
        self.opt, self.sched, self.kappa, self.out, self.log = opt, sched, kappa, out, log
        self.label, self.extra = (label + " " if label else ""), extra
        self.crnn = isinstance(model, CRNN)
        self.history: list[dict] = []
        self.config = checkpoint.config_dict(cfg)
        self.fingerprint = {
            "data": f"{len(data.y_train)} train, {len(data.y_test)} test, input "
                    f"{list(data.input_shape)}, {data.num_classes} classes",
            **{f"model.{k}": list(v.shape) for k, v in model.state_dict().items()}}

    # --- the loop ----------------------------------------------------------------------------

    def allowed_changes(self, names: Iterable[str]) -> frozenset[str]:
        """``allow_changes`` checked against the config's fields (a single name may be a str)."""
        try:
            names = (names,) if isinstance(names, str) else tuple(names)
        except TypeError:
            raise ArgumentTypeError(f"allow_changes must be field names (e.g. {{'beta'}}), got "
                                    f"{describe(names)}") from None
        unknown = [n for n in names if n not in self.config]
        if unknown:
            raise ArgumentError(f"allow_changes names {', '.join(map(repr, unknown))}, not a "
                                f"field of this config; its fields are: {', '.join(self.config)}")
        return frozenset(names)

    def fit(self, resume, allowed, progress, on_batch, targets_of) -> list[dict]:
        cfg, model, data = self.cfg, self.model, self.data
        start, position = 0, None
        if self.out is not None and resume:
            found = checkpoint.load_latest(self.out.checkpoint, self.log, required=_REQUIRED)
            if found is not None:
                start, position = self._restore(*found, allowed)
                where = f"epoch {start + 1}" + (f", batch {position['batch'] + 1}" if position else "")
                self.log(f"resumed from {found[1]} at {where}")
        dev = data.x_train.device
        gen, aug_gen = torch.Generator(device=dev), torch.Generator(device=dev)
        with StopRequest(self.log) as stop:
            for epoch in range(start, cfg.epochs):
                if self.kappa is not None:
                    model.kappa = self.kappa(epoch)
                gen.manual_seed(cfg.seed * 1000 + epoch)  # same batches whether resumed or not
                aug_gen.manual_seed(cfg.seed * 1000 + epoch + 7919)
                record = self._epoch(epoch, gen, aug_gen, position, stop, progress, on_batch, targets_of)
                position = None
                if self.sched is not None:
                    self.sched.step()
                t0 = time.perf_counter()
                record["test_acc"], record["test_loss"] = self.step.evaluate(model, data.x_test,
                                                                             data.y_test)
                record["eval_seconds"] = time.perf_counter() - t0
                record["seconds"] = record["train_seconds"] + record["eval_seconds"]
                check_finite(model, f"epoch {epoch + 1}")
                self.history.append(record)
                if self.out is not None:  # before anything else can be interrupted
                    with self._writing(f"epoch {epoch + 1}"):
                        self.out.metrics.write(self.history)
                        checkpoint.save(self.out.checkpoint, self._payload())
                self.log(self._summary(record))
                if stop.requested:
                    raise KeyboardInterrupt
        return self.history

    def _epoch(self, epoch, gen, aug_gen, position, stop, progress, on_batch, targets_of) -> dict:
        cfg, model, data = self.cfg, self.model, self.data
        model.train()
        n_batches = math.ceil(len(data.y_train) / cfg.batch_size)
        weights = self._weights()
        acc = {"correct": 0, "loss_sum": 0.0, "seen": 0, "batches": 0, "seconds": 0.0, "steps": 0,
               "state_abs": [0.0] * (model.num_layers if self.crnn else 0),
               "update_abs": [0.0] * len(weights)}
        batches = iterate_batches(data.x_train, data.y_train, cfg.batch_size, shuffle=True,
                                  generator=gen)
        first = 0
        if position is not None:  # mid-epoch resume: same permutation, then the saved RNG states
            first = position["batch"] + 1
            for _ in range(first):
                next(batches)
            gen.set_state(position["gen"])
            aug_gen.set_state(position["aug_gen"])
            acc = position["acc"]
        dev = data.x_train.device
        state_sum = torch.zeros(len(acc["state_abs"]), dtype=torch.float64, device=dev)
        update_sum = torch.zeros(len(weights), dtype=torch.float64, device=dev)
        bar = tqdm(batches, total=n_batches, initial=first, disable=not progress, leave=False,
                   desc=f"{self.label}epoch {epoch + 1}/{cfg.epochs}")
        augment = cfg.data_augmentation == "crop_flip"
        t0 = time.perf_counter()
        for b, (xb, yb) in enumerate(bar, start=first):
            if augment:
                xb = crop_flip(xb, aug_gen, padding=cfg.crop_padding)
            targets = yb if targets_of is None else targets_of(xb, yb)
            self.opt.zero_grad(set_to_none=True)
            res = self.step(model, xb, targets, generator=gen)
            where = f"epoch {epoch + 1}, batch {b + 1}"
            if self.crnn:
                s_abs = torch.stack([s.abs().mean() for s in res.free_state])
                u_abs = torch.stack([w.grad.abs().mean() if w.grad is not None else w.new_zeros(())
                                     for w in weights])
                _check_step(model, s_abs, u_abs, where)
                state_sum += s_abs
                update_sum += u_abs
            self.opt.step()
            check_finite(model, where)
            acc["correct"] += (res.predictions == yb).sum().item()
            acc["loss_sum"] += res.loss * len(yb)
            acc["seen"] += len(yb)
            acc["batches"] += 1
            acc["steps"] += res.settle_steps
            bar.set_postfix(acc=f"{100.0 * acc['correct'] / acc['seen']:.1f}%",
                            loss=f"{acc['loss_sum'] / acc['seen']:.3f}")
            if on_batch is not None:
                on_batch(epoch, b)
            if stop.requested and b + 1 < n_batches:
                acc["seconds"] += time.perf_counter() - t0
                acc["state_abs"] = [a + v for a, v in zip(acc["state_abs"], state_sum.tolist())]
                acc["update_abs"] = [a + v for a, v in zip(acc["update_abs"], update_sum.tolist())]
                self._save_position({"epoch": epoch, "batch": b, "acc": acc, "gen": gen.get_state(),
                                     "aug_gen": aug_gen.get_state()})
                raise KeyboardInterrupt
        bar.close()
        return self._record(epoch, acc, state_sum, update_sum, time.perf_counter() - t0)

    def _weights(self) -> list[torch.Tensor]:
        if not self.crnn:
            return []
        return [m.weight for m in self.model.weight_layers()]

    def _record(self, epoch, acc, state_sum, update_sum, elapsed) -> dict:
        seen, nb, model = acc["seen"], acc["batches"], self.model
        rec: dict[str, Any] = {"epoch": epoch + 1}
        if self.crnn:
            rec["kappa"] = float(model.kappa)
        rec.update({
            "lr": [g["lr"] for g in self.opt.param_groups],
            "train_acc": 100.0 * acc["correct"] / seen, "train_loss": acc["loss_sum"] / seen,
            "train_seconds": acc["seconds"] + elapsed,
            # The steps really run (with a convergence stop, fewer than the caps t_free, t_nudge).
            "settle_steps": acc["steps"], "settle_steps_per_batch": acc["steps"] / nb})
        if self.crnn:
            rec["state_abs"] = [(a + v) / nb for a, v in zip(acc["state_abs"], state_sum.tolist())]
            rec["update_abs"] = [(a + v) / nb for a, v in zip(acc["update_abs"], update_sum.tolist())]
            if model.separate_feedback:  # angle (°) between W_l and B_l, l ≥ 1 (Laborieux Fig. 7)
                rec["weight_angle"] = weight_angles(model)
        return rec

    def _summary(self, rec: dict) -> str:
        s = (f"{self.label}epoch {rec['epoch']}/{self.cfg.epochs}: train acc {rec['train_acc']:.2f} % "
             f"test acc {rec['test_acc']:.2f} %")
        if self.kappa is not None:
            s += f" κ={rec['kappa']:.3g}"
        s += f" ({rec['seconds']:.1f} s"
        return s + (f", {rec['settle_steps']} settle steps)" if self.crnn else ")")

    # --- checkpoints -------------------------------------------------------------------------

    def _payload(self, position: dict | None = None) -> dict:
        return {
            "config": json.dumps(self.config), "fingerprint": json.dumps(self.fingerprint),
            "epoch": len(self.history), "position": position, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "kappa_schedule": self.kappa.state_dict() if self.kappa is not None else None,
            "rng": checkpoint.rng_states(), **self.extra,
        }

    def _save_position(self, position: dict) -> None:
        if self.out is None:
            return
        with self._writing(f"epoch {position['epoch'] + 1}, batch {position['batch'] + 1}"):
            path = checkpoint.save(self.out.checkpoint, self._payload(position))
        self.log(f"saved {path} at epoch {position['epoch'] + 1}, batch {position['batch'] + 1}: "
                 f"continue with resume=True (--resume)")

    @contextlib.contextmanager
    def _writing(self, when: str):
        """A failed write of the outputs (a full disk) says where the run stands."""
        try:
            yield
        except RunFolderError as exc:
            last = self.out.checkpoint
            raise RunFolderError(f"{exc}. The run stopped at {when}; the last complete checkpoint "
                                 f"is {last} (or {checkpoint.prev_path(last).name}): continue with "
                                 f"resume=True (--resume) once the folder can be written") from exc

    def _restore(self, ck: dict, path: Path, allowed: frozenset[str]) -> tuple[int, dict | None]:
        saved_config = json.loads(ck["config"])
        saved = {**saved_config, **json.loads(ck["fingerprint"])}
        checkpoint.check_compatible(
            saved, {**self.config, **self.fingerprint}, where=str(path),
            may_change=checkpoint.MAY_CHANGE | checkpoint.SCHEDULE_FIELDS | allowed)
        start, position = int(ck["epoch"]), ck["position"]
        if position is not None:
            self._check_position(position, saved, path)
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]
        fresh_sched = (self.sched.T_max, self.sched.eta_min) if self.sched is not None else None
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
        except Exception as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer "
                               f"(was it written with other settings?): {exc}") from exc
        if self.sched is not None and ck["scheduler"] is not None:
            self.sched.load_state_dict(ck["scheduler"])
        elif self.sched is not None:  # cosine switched on (allow_changes): it has run `start` epochs
            self.sched.last_epoch = start
        if self.kappa is not None and ck["kappa_schedule"] is not None:
            self.kappa.load_state_dict(ck["kappa_schedule"])
        checkpoint.set_rng_states(ck["rng"])
        self.history = list(ck["history"])
        for key in checkpoint.changed_fields(saved_config, self.config):
            how = (" (applied to the restored optimizer)" if key in checkpoint.SCHEDULE_FIELDS
                   else " (allowed by allow_changes)" if key in allowed else "")
            self.log(f"resume: {key} {_text(saved_config.get(key))} -> {_text(self.config[key])}{how}")
        self._apply_schedule(fresh_groups, fresh_sched, start)
        if path != self.out.checkpoint and self.out.checkpoint.exists():
            kept = checkpoint.set_aside(self.out.checkpoint)
            self.log(f"kept the unreadable {self.out.checkpoint.name} as {kept.name}")
        return start, position

    def _check_position(self, position: dict, saved: dict, path: Path) -> None:
        """A mid-epoch position continues the saved batch order: only with the same batches."""
        bs, data = self.config.get("batch_size"), self.fingerprint["data"]
        n_batches = math.ceil(len(self.data.y_train) / self.cfg.batch_size)
        if saved.get("batch_size") != bs or saved.get("data") != data or position["batch"] + 1 >= n_batches:
            raise CheckpointError(
                f"checkpoint {path} was saved mid-epoch (epoch {position['epoch'] + 1}, after batch "
                f"{position['batch'] + 1}, with batch_size {saved.get('batch_size')} on data "
                f"{saved.get('data')}); it cannot continue with batch_size {bs} on data {data} "
                f"(other batches): resume with the batch_size and data it was made with")

    def _apply_schedule(self, fresh_groups: list[dict], fresh_sched: tuple | None, epoch: int) -> None:
        """Make the restored optimizer and scheduler follow this config's learning-rate schedule.

        The choice: from epoch ``epoch`` on, the run uses the rates an uninterrupted run with the
        new schedule would use there. Each param group gets the new base rate (``initial_lr``,
        and the scheduler's ``base_lrs``), momentum and weight decay; the cosine its new
        ``eta_min`` and period ``T_max`` (which follows ``epochs`` when ``cosine_epochs`` is
        None); the current rate is the new cosine's closed form at ``epoch`` (the constant rate
        without a scheduler). Momentum buffers are kept: they are the run's state. Nothing is
        touched when nothing differs, so a plain resume stays bit-identical."""
        groups, sched = self.opt.param_groups, self.sched
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
            self.log(f"resume: cosine period T_max {sched.T_max} -> {t_max} epochs (applied to the "
                     f"restored scheduler)")
        sched.base_lrs, sched.eta_min, sched.T_max = base, eta_min, t_max
        lrs = [eta_min + (b - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2 for b in base]
        for g, b, lr in zip(groups, base, lrs):
            g["initial_lr"], g["lr"] = b, lr
        sched._last_lr = lrs  # what get_last_lr() reports until the next step


def _check_step(model: CRNN, s_abs: torch.Tensor, u_abs: torch.Tensor, where: str) -> None:
    """NaN/inf in a free-phase state or an EP update: stop, naming the layer (nothing is written)."""
    if not bool(torch.isfinite(s_abs).all() & torch.isfinite(u_abs).all()):
        for i, v in enumerate(s_abs.tolist()):
            if not math.isfinite(v):
                raise DivergenceError(f"training diverged: state layer {i} ({model.specs[i]}) is "
                                         f"not finite at {where}; the last checkpoint is kept")
        for i, v in enumerate(u_abs.tolist()):
            if not math.isfinite(v):
                name = "read-out" if i == len(model.connections) else f"layer {i} ({model.specs[i]})"
                raise DivergenceError(f"training diverged: the EP update of {name} is not finite "
                                         f"at {where}; the last checkpoint is kept")


def _text(v: Any) -> str:
    """A config value for the log: ``0.05`` for a one-rate list, ``0.2,0.1`` for several."""
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)
