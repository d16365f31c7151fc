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
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from eqkern.data.crop_flip import crop_flip
from eqkern.data.datasets import DataSplit, iterate_batches
from eqkern.learning.separate_feedback import weight_angles
from eqkern.model.crnn import CRNN
from eqkern.training import checkpoint
from eqkern.training.evaluation import check_finite
from eqkern.training.interrupt import StopRequest
from eqkern.training.metrics import MetricsWriter
from eqkern.training.optim import make_optimizer, make_scheduler
from eqkern.training.steps import make_step

__all__ = ["fit", "Outputs"]


@dataclass
class Outputs:
    """Where a run writes: its checkpoint and its metrics."""

    checkpoint: Path
    metrics: MetricsWriter

    @classmethod
    def folder(cls, out_dir: str | os.PathLike, title: str | None = None) -> "Outputs":
        """``checkpoint.pt``, ``metrics.jsonl``, ``curves.png`` in ``out_dir``."""
        out = Path(out_dir)
        return cls(out / "checkpoint.pt", MetricsWriter(out / "metrics.jsonl", out / "curves.png", title))

    @classmethod
    def beside(cls, path: str | os.PathLike, title: str | None = None) -> "Outputs":
        """The checkpoint ``path`` (``x.pt``), with ``x.metrics.jsonl`` and ``x.curves.png``."""
        path = Path(path)
        return cls(path, MetricsWriter(path.with_suffix(".metrics.jsonl"),
                                       path.with_suffix(".curves.png"), title))


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
    """
    torch.manual_seed(cfg.seed)
    step = step if step is not None else make_step(cfg)
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = make_optimizer(model, cfg, optimizer)
    run = _Run(model, data, cfg, step, optimizer, make_scheduler(optimizer, cfg), kappa,
               out_dir if isinstance(out_dir, Outputs) or out_dir is None else Outputs.folder(out_dir),
               log, label, extra or {})
    return run.fit(resume, progress, on_batch, targets_of)


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

    def fit(self, resume, progress, on_batch, targets_of) -> list[dict]:
        cfg, model, data = self.cfg, self.model, self.data
        start, position = 0, None
        if self.out is not None:
            self.out.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                path = checkpoint.find(self.out.checkpoint, self.log)
                if path is not None:
                    start, position = self._restore(path)
                    where = f"epoch {start + 1}" + (f", batch {position['batch'] + 1}" if position else "")
                    self.log(f"resumed from {path} at {where}")
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
        path = checkpoint.save(self.out.checkpoint, self._payload(position))
        self.log(f"saved {path} at epoch {position['epoch'] + 1}, batch {position['batch'] + 1}: "
                 f"continue with resume=True (--resume)")

    def _restore(self, path: Path) -> tuple[int, dict | None]:
        ck = checkpoint.load(path)
        saved = {**json.loads(ck["config"]), **json.loads(ck["fingerprint"])}
        checkpoint.check_compatible(saved, {**self.config, **self.fingerprint}, where=str(path))
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
        except Exception as exc:
            raise RuntimeError(f"checkpoint {path} does not fit this model/optimizer "
                               f"(was it written with other settings?): {exc}") from exc
        if self.sched is not None and ck["scheduler"] is not None:
            self.sched.load_state_dict(ck["scheduler"])
        if self.kappa is not None and ck["kappa_schedule"] is not None:
            self.kappa.load_state_dict(ck["kappa_schedule"])
        checkpoint.set_rng_states(ck["rng"])
        self.history = list(ck["history"])
        return int(ck["epoch"]), ck["position"]


def _check_step(model: CRNN, s_abs: torch.Tensor, u_abs: torch.Tensor, where: str) -> None:
    """NaN/inf in a free-phase state or an EP update: stop, naming the layer (nothing is written)."""
    if not bool(torch.isfinite(s_abs).all() & torch.isfinite(u_abs).all()):
        for i, v in enumerate(s_abs.tolist()):
            if not math.isfinite(v):
                raise FloatingPointError(f"training diverged: state layer {i} ({model.specs[i]}) is "
                                         f"not finite at {where}; the last checkpoint is kept")
        for i, v in enumerate(u_abs.tolist()):
            if not math.isfinite(v):
                name = "read-out" if i == len(model.connections) else f"layer {i} ({model.specs[i]})"
                raise FloatingPointError(f"training diverged: the EP update of {name} is not finite "
                                         f"at {where}; the last checkpoint is kept")
