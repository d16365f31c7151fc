"""The one training loop of every entry point (``train``, ``train_vgg``, ``train_teacher``).

``fit(model, data, cfg, step=...)`` runs ``cfg.epochs`` epochs of a swappable step
(:mod:`eqkern.training.steps`: EP, BPTT or plain backprop) with the optimizer and LR scheduler
of :mod:`eqkern.training.optim`, and per epoch: the batches of a generator seeded from
``cfg.seed`` and the epoch (the same batches whether resumed or not), crop + flip from a second
one (``cfg.data_augmentation``), κ from a schedule (``kappa``), a test evaluation, the metrics
(:class:`~eqkern.training.metrics.MetricsWriter`), the callbacks
(:mod:`eqkern.training.callbacks`: per-batch and per-epoch records as dicts, TensorBoard) and a
checkpoint (:mod:`eqkern.training.checkpoint`). ``resume=True`` continues from the checkpoint
(refusing one made with another model, data or config, :mod:`eqkern.training.resume`) to the
same result as an uninterrupted run, also mid-epoch after a Ctrl-C
(:mod:`eqkern.training.interrupt`). For CRNNs each record has the per-layer mean |state| of the
free equilibrium and mean |update|, and the settle steps; NaN/inf in either stops training naming
the layer, and writes nothing, so the last good checkpoint stays.

The data is a :class:`~eqkern.data.datasets.DataSplit` of tensors (the fast path), or a
``Dataset``, ``DataLoader`` or re-iterable of ``(x, y)`` batches (:mod:`eqkern.data.sources`).
Under ``torchrun`` the run is data-parallel (:mod:`eqkern.training.distributed`): each rank
trains on its share of every global batch, the gradients are averaged before the optimizer step,
the evaluation is shared and summed, and rank 0 alone logs and writes the run folder.

The output folder belongs to the run (:func:`eqkern.training.run_folder.claim`): locked for its
life, refused when it holds another run unless ``resume`` or ``overwrite``, checked for
writability first. On resume the learning-rate schedule may change (applied to the restored
optimizer, :func:`eqkern.training.resume.apply_schedule`); other fields only when listed in
``allow_changes``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from eqkern.errors import ArgumentError, ArgumentTypeError, DivergenceError, RunFolderError
from eqkern.data.crop_flip import crop_flip
from eqkern.data.datasets import DataSplit
from eqkern.data.sources import LoaderSource, TensorSource, TrainingData, as_training_data
from eqkern.dynamics.settle import spread_over_images
from eqkern.learning.separate_feedback import weight_angles
from eqkern.model.crnn import CRNN
from eqkern.training import checkpoint, distributed, resume as resuming
from eqkern.training.callbacks import CallbackList
from eqkern.training.evaluation import as_rates, check_finite
from eqkern.training.interrupt import StopRequest
from eqkern.training.optim import make_optimizer, make_scheduler
from eqkern.training.run_folder import Outputs, claim
from eqkern.training.steps import make_step
from eqkern.validate import as_bool, describe

__all__ = ["fit", "Outputs"]


def fit(
    model: nn.Module,
    data: DataSplit | Any,
    cfg: Any,
    *,
    test_data: Any = None,
    step=None,
    optimizer=None,
    kappa=None,
    out_dir: str | os.PathLike | Outputs | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: Iterable[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Any = None,
    on_batch: Callable[[int, int], None] | None = None,
    targets_of: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    label: str = "",
    extra: dict | None = None,
) -> list[dict]:
    """Train ``model`` and return one record per epoch.

    ``data``: a :class:`~eqkern.data.datasets.DataSplit` (train and test tensors), a
    ``(train, test)`` pair, or the training data alone (then ``test_data`` is evaluated each
    epoch, and without it the records' ``test_acc``/``test_loss`` are None); each may be a
    ``Dataset`` (shuffled by eqkern from the seed), a ``DataLoader`` or a re-iterable of
    ``(x, y)`` batches (used as given: its own batch size and order), see
    :func:`eqkern.data.sources.as_training_data`.
    ``cfg``: a :class:`~eqkern.training.presets.Preset` (or, for the BP teacher, a
    :class:`~eqkern.training.teacher.TeacherConfig`: the same data, optimizer and run sections).
    ``step``: a step object (default :func:`~eqkern.training.steps.make_step` of ``cfg``).
    ``optimizer``: an optimizer, or what :func:`~eqkern.training.optim.make_optimizer` takes.
    ``kappa``: a κ schedule, set as ``model.kappa`` each epoch. ``callbacks``: a
    :class:`~eqkern.training.callbacks.Callback` (e.g. ``TensorBoardCallback(dir)``), a function
    of each epoch record, or a list of them. ``on_batch(epoch, batch)``: after every batch
    (0-based). ``targets_of(x, y)``: the targets of a batch (KD: teacher features). ``extra``:
    saved in every checkpoint as is (plain values). Each epoch ends with the step's own
    ``evaluate`` on the test data.

    ``out_dir`` (a folder or an :class:`Outputs`) is this run's alone while it runs. A fresh run
    into one that holds another run's checkpoint or metrics is refused, unless ``resume=True``
    (continue it) or ``overwrite=True`` (remove its files first). ``allow_changes``: config
    fields that may differ from the checkpoint's on resume (besides the epochs, backend and the
    learning-rate schedule, which always may).

    Launched under ``torchrun`` (``WORLD_SIZE`` > 1), the run is data-parallel; see
    :mod:`eqkern.training.distributed`.
    """
    resume, overwrite = as_bool("resume", resume), as_bool("overwrite", overwrite)
    if resume and overwrite:
        raise ArgumentError("resume=True and overwrite=True contradict each other: resume "
                            "continues the run in the output folder, overwrite deletes it; pass one")
    if not isinstance(out_dir, (str, os.PathLike, Outputs, type(None))):
        raise ArgumentTypeError(f"out_dir must be a folder path, an Outputs or None, got "
                                f"{describe(out_dir)}")
    source = data if isinstance(data, TrainingData) else as_training_data(data, test_data)
    cbs = CallbackList(callbacks)
    ranks = distributed.from_env(_model_device(model))
    # A loader batches by its own batch size: only the sources eqkern batches are checked here
    # (the loop checks every batch).
    if not isinstance(source.train, LoaderSource):
        ranks.check_batches(cfg.batch_size, source.train.num_examples)
    torch.manual_seed(cfg.seed)
    step = step if step is not None else make_step(cfg)
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = make_optimizer(model, cfg, optimizer)
    out = out_dir if isinstance(out_dir, Outputs) or out_dir is None else Outputs.folder(out_dir)
    if not ranks.main:  # rank 0 alone logs, shows progress and writes the folder
        log, progress, cbs = (lambda _text: None), False, CallbackList(None)
    run = _Run(model, source, cfg, step, optimizer, make_scheduler(optimizer, cfg), kappa,
               out if ranks.main else None, log, label, extra or {}, ranks, cbs)
    allowed = run.allowed_changes(allow_changes)
    with contextlib.ExitStack() as held:
        held.callback(cbs.close)
        error = None
        try:
            if run.out is not None:
                held.enter_context(claim(run.out, resume=resume, overwrite=overwrite, log=log))
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it, then it is re-raised
            error = exc
        ranks.agree(error, False, "the start (claiming the output folder)")
        return run.fit(resume and out is not None, allowed, progress, on_batch, targets_of)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _Run:
    def __init__(self, model, source: TrainingData, cfg, step, opt, sched, kappa, out, log,
                 label, extra, ranks: distributed.Ranks, cbs: CallbackList) -> None:
        self.model, self.source, self.cfg, self.step = model, source, cfg, step
        self.opt, self.sched, self.kappa, self.out, self.log = opt, sched, kappa, out, log
        self.label, self.extra, self.ranks, self.cbs = (label + " " if label else ""), extra, ranks, cbs
        self.crnn = isinstance(model, CRNN)
        # κ weighs the LE / KD signals of EP's and BPTT's energy: a net without them, or one
        # trained feed-forward, has no κ to log.
        self.uses_kappa = (self.crnn and model.weighs_kappa
                           and getattr(cfg, "method", "ep") != "bp")
        self.history: list[dict] = []
        self.config = checkpoint.config_dict(cfg)
        self.fingerprint = {"data": source.fingerprint(),
                            **{f"model.{k}": list(v.shape) for k, v in model.state_dict().items()}}
        train = source.train
        # Batches are drawn where the tensors are (the same permutation as ever), else where the
        # model is (a loader's batches are moved there).
        self.device = train.x.device if isinstance(train, TensorSource) else _model_device(model)
        self.num_batches = train.num_batches(cfg.batch_size)
        self.global_step = 0

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
        cfg, model, ranks = self.cfg, self.model, self.ranks
        start, position = (self._resume(allowed) if resume else (0, None))
        ranks.broadcast_module(model)  # one start on every rank
        self.global_step = sum(h.get("batches", 0) for h in self.history) + (
            position["acc"]["batches"] if position else 0)
        gen = torch.Generator(device=self.device)
        aug_gen = torch.Generator(device=self.device)
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
                self._end_epoch(epoch, record)
                # Agreed: a Ctrl-C that reached one rank only (during the evaluation, or after
                # the epoch's last batch) stops every rank here.
                if ranks.agree(None, stop.requested, f"the end of epoch {epoch + 1}"):
                    raise KeyboardInterrupt
        return self.history

    def _resume(self, allowed: frozenset[str]) -> tuple[int, dict | None]:
        """Rank 0 reads the checkpoint (or its ``.prev``) and sends it to the others."""
        found, error = None, None
        if self.ranks.main:
            try:
                found = checkpoint.load_latest(self.out.checkpoint, self.log,
                                               required=resuming.REQUIRED)
            except Exception as exc:  # noqa: BLE001 - every rank must hear of it
                error = exc
        self.ranks.agree(error, False, "the resume (reading the checkpoint)")
        found = self.ranks.broadcast_object(found)
        if found is None:
            return 0, None
        start, position = resuming.restore(self, *found, allowed, self.num_batches)
        where = f"epoch {start + 1}" + (f", batch {position['batch'] + 1}" if position else "")
        self.log(f"resumed from {found[1]} at {where}")
        if position is not None and not self.ranks.main:
            position = {**position, "acc": _empty_acc(position["acc"])}  # rank 0 holds the sums
        return start, position

    def _end_epoch(self, epoch: int, record: dict) -> None:
        """Evaluation, metrics, checkpoint, log and callbacks of a finished epoch."""
        model, ranks = self.model, self.ranks
        ranks.broadcast_module(model)  # rank 0's BatchNorm statistics (the teacher) everywhere
        t0 = time.perf_counter()
        record["test_acc"], record["test_loss"] = self._evaluate()
        record["eval_seconds"] = time.perf_counter() - t0
        record["seconds"] = record["train_seconds"] + record["eval_seconds"]
        check_finite(model, f"epoch {epoch + 1}")
        self.history.append(record)
        error = None
        if self.out is not None:  # before anything else can be interrupted
            try:
                with self._writing(f"epoch {epoch + 1}"):
                    self.out.metrics.write(self.history)
                    checkpoint.save(self.out.checkpoint, self._payload())
            except Exception as exc:  # noqa: BLE001 - the other ranks stop too
                error = exc
        ranks.agree(error, False, f"the end of epoch {epoch + 1} (writing the checkpoint)")
        self.log(self._summary(record))
        self.cbs.on_epoch_end(record)

    def _evaluate(self) -> tuple[float | None, float | None]:
        test = self.source.test
        if test is None:
            return None, None
        batches = test.batches(self.cfg.eval_batch_size, shuffle=False, generator=None,
                               device=self.device)
        shares = (share for share in (self.ranks.shard(x, y) for x, y in batches) if len(share[1]))
        sums = self.step.evaluate(self.model, shares)
        return as_rates(*(self.ranks.sum(list(sums)) if self.ranks.parallel else sums))

    def _epoch(self, epoch, gen, aug_gen, position, stop, progress, on_batch, targets_of) -> dict:
        cfg, model, ranks = self.cfg, self.model, self.ranks
        model.train()
        weights = self._weights()
        acc = {"correct": 0, "loss_sum": 0.0, "seen": 0, "batches": 0, "seconds": 0.0, "steps": 0,
               "state_abs": [0.0] * (model.num_layers if self.crnn else 0),
               "state_spread": [0.0] * (model.num_layers if self.crnn else 0),
               "spread_batches": 0, "update_abs": [0.0] * len(weights)}
        first = 0 if position is None else position["batch"] + 1
        # A mid-epoch resume: the same permutation without the batches done, then the saved
        # RNG states.
        batches = self.source.train.batches(cfg.batch_size, shuffle=True, generator=gen,
                                            device=self.device, skip=first)
        if position is not None:
            # The batches are drawn lazily: take the first now, so that the permutation comes
            # from the epoch's seed and not from the saved state set next.
            batches = itertools.chain([next(batches)], batches)
            gen.set_state(position["gen"])
            aug_gen.set_state(position["aug_gen"])
            acc = {**_no_spread(acc), **position["acc"]}
        state_sum = torch.zeros(2, len(acc["state_abs"]), dtype=torch.float64, device=self.device)
        update_sum = torch.zeros(len(weights), dtype=torch.float64, device=self.device)
        bar = tqdm(batches, total=self.num_batches, initial=first, disable=not progress,
                   leave=False, desc=f"{self.label}epoch {epoch + 1}/{cfg.epochs}")
        augment = cfg.data_augmentation == "crop_flip"
        t0 = time.perf_counter()
        for b, (xb, yb) in enumerate(bar, start=first):
            where = f"epoch {epoch + 1}, batch {b + 1}"
            if augment:  # on the global batch: every rank draws the same crops
                xb = crop_flip(xb, aug_gen, padding=cfg.crop_padding)
            n_global = len(yb)
            if n_global < ranks.world:
                raise ArgumentError(f"batch {b + 1} of epoch {epoch + 1} has {n_global} examples, "
                                    f"fewer than the {ranks.world} ranks sharing it")
            xb, yb = ranks.shard(xb, yb)
            error, s_abs, s_spread = None, None, None
            try:
                targets = yb if targets_of is None else targets_of(xb, yb)
                self.opt.zero_grad(set_to_none=True)
                res = self.step(model, xb, targets, generator=gen)
                if self.crnn:
                    s_abs = torch.stack([s.abs().mean() for s in res.free_state])
                    _check_states(model, s_abs, where)
                    # Whether a layer still depends on the input: near 0, every image of the
                    # batch reaches the same state there.
                    s_spread = spread_over_images(res.free_state)
            except Exception as exc:  # noqa: BLE001 - re-raised by agree, on every rank
                error = exc
            ranks.agree(error, False, where)  # before the collectives a failed rank would miss
            share = len(yb) / n_global
            ranks.average_gradients(model.parameters(), share)
            if self.crnn:
                u_abs = torch.stack([w.grad.abs().mean() if w.grad is not None else w.new_zeros(())
                                     for w in weights])
                _check_updates(model, u_abs, where)
                state_sum += torch.stack([s_abs, s_spread]) * share
                update_sum += u_abs
            self.opt.step()
            check_finite(model, where)
            correct = (res.predictions == yb).sum().item()
            acc["correct"] += correct
            acc["loss_sum"] += res.loss * len(yb)
            acc["seen"] += len(yb)
            acc["batches"] += 1
            acc["spread_batches"] += 1
            acc["steps"] += res.settle_steps
            self.global_step += 1
            if self.cbs.wants_batches:
                self.cbs.on_batch_end(self._batch_record(epoch, b, yb, res, correct, s_abs,
                                                         s_spread, u_abs if self.crnn else None))
            bar.set_postfix(acc=f"{100.0 * acc['correct'] / acc['seen']:.1f}%",
                            loss=f"{acc['loss_sum'] / acc['seen']:.3f}")
            if on_batch is not None:
                on_batch(epoch, b)
            # Every rank stops after the same batch (one Ctrl-C reaches one rank or all).
            stopping = ranks.agree(None, stop.requested, where)
            if stopping and (self.num_batches is None or b + 1 < self.num_batches):
                totals = self._totals(acc, state_sum, update_sum, time.perf_counter() - t0)
                self._save_position({"epoch": epoch, "batch": b, "acc": totals,
                                     "gen": gen.get_state(), "aug_gen": aug_gen.get_state()})
                raise KeyboardInterrupt
        bar.close()
        return self._record(epoch, self._totals(acc, state_sum, update_sum,
                                                time.perf_counter() - t0))

    def _totals(self, acc: dict, state_sum: torch.Tensor, update_sum: torch.Tensor,
                elapsed: float) -> dict:
        """``acc`` with the time and the on-device sums of the batches run since it was last
        closed (``state_sum``: (2, layers), |state| and spread; ``update_sum``: |update|), summed
        over all ranks (the same sums alone). The per-layer state sums are already weighted by
        each rank's share (the spread is over each rank's share of the batch); |update| is the
        same on every rank (it is read after the average); settle steps are the mean over ranks."""
        abs_sum, spread_sum = state_sum.tolist()
        acc = {**acc, "seconds": acc["seconds"] + elapsed,
               "state_abs": [a + v for a, v in zip(acc["state_abs"], abs_sum)],
               "state_spread": [a + v for a, v in zip(acc["state_spread"], spread_sum)],
               "update_abs": [a + v for a, v in zip(acc["update_abs"], update_sum.tolist())]}
        ranks = self.ranks
        if not ranks.parallel:
            return acc
        n_state = len(acc["state_abs"])
        summed = ranks.sum([acc["correct"], acc["loss_sum"], acc["seen"], acc["steps"],
                            *acc["state_abs"], *acc["state_spread"]])
        return {**acc, "correct": int(round(summed[0])), "loss_sum": summed[1],
                "seen": int(round(summed[2])), "steps": int(round(summed[3] / ranks.world)),
                "state_abs": summed[4:4 + n_state], "state_spread": summed[4 + n_state:]}

    def _batch_record(self, epoch, b, yb, res, correct, s_abs, s_spread, u_abs) -> dict:
        """What a callback's ``on_batch_end`` gets (rank 0's share under torchrun)."""
        n = len(yb)
        rec: dict[str, Any] = {"epoch": epoch + 1, "batch": b + 1, "step": self.global_step,
                               "examples": n, "loss": float(res.loss),
                               "acc": 100.0 * correct / max(1, n),
                               "settle_steps": int(res.settle_steps),
                               "lr": [g["lr"] for g in self.opt.param_groups]}
        if self.uses_kappa:
            rec["kappa"] = float(self.model.kappa)
        if self.crnn:
            rec["state_abs"] = s_abs.tolist()
            rec["state_spread"] = s_spread.tolist()
            rec["update_abs"] = u_abs.tolist()
        return rec

    def _weights(self) -> list[torch.Tensor]:
        if not self.crnn:
            return []
        return [m.weight for m in self.model.weight_layers()]

    def _record(self, epoch: int, acc: dict) -> dict:
        seen, nb, model = acc["seen"], acc["batches"], self.model
        rec: dict[str, Any] = {"epoch": epoch + 1}
        if self.uses_kappa:
            rec["kappa"] = float(model.kappa)
        rec.update({
            "lr": [g["lr"] for g in self.opt.param_groups],
            "train_acc": 100.0 * acc["correct"] / seen, "train_loss": acc["loss_sum"] / seen,
            "train_seconds": acc["seconds"], "batches": nb,
            # The steps really run (with a convergence stop, fewer than the caps t_free, t_nudge).
            "settle_steps": acc["steps"], "settle_steps_per_batch": acc["steps"] / nb})
        if self.crnn:
            rec["state_abs"] = [a / nb for a in acc["state_abs"]]
            if acc["spread_batches"]:  # none in an epoch resumed from before the spread was kept
                rec["state_spread"] = [a / acc["spread_batches"] for a in acc["state_spread"]]
            rec["update_abs"] = [a / nb for a in acc["update_abs"]]
            if model.separate_feedback:  # angle (°) between W_l and B_l, l ≥ 1 (Laborieux Fig. 7)
                rec["weight_angle"] = weight_angles(model)
        return rec

    def _summary(self, rec: dict) -> str:
        test = "no test data" if rec["test_acc"] is None else f"test acc {rec['test_acc']:.2f} %"
        s = (f"{self.label}epoch {rec['epoch']}/{self.cfg.epochs}: train acc {rec['train_acc']:.2f} % "
             f"{test}")
        if self.uses_kappa:
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


def _empty_acc(acc: dict) -> dict:
    """A rank > 0's share of a resumed epoch's sums: zero (rank 0 holds them). Kept: what is
    not summed over ranks (batch count, time) and the settle steps, a mean over ranks (each
    rank holding the saved mean, the next mean over ranks adds it once)."""
    return {**acc, "correct": 0, "loss_sum": 0.0, "seen": 0,
            "state_abs": [0.0] * len(acc["state_abs"]),
            "state_spread": [0.0] * len(acc["state_abs"])}


def _no_spread(acc: dict) -> dict:
    """What a saved epoch's sums lack when the checkpoint is from before the spread was kept:
    the spread of none of its batches (its record then averages the batches run since)."""
    return {"state_spread": [0.0] * len(acc["state_abs"]), "spread_batches": 0}


def _check_states(model: CRNN, s_abs: torch.Tensor, where: str) -> None:
    """NaN/inf in a free-phase state: stop, naming the layer (nothing is written)."""
    if not bool(torch.isfinite(s_abs).all()):
        i = next(i for i, v in enumerate(s_abs.tolist()) if not math.isfinite(v))
        raise DivergenceError(f"training diverged: state layer {i} ({model.specs[i]}) is not "
                              f"finite at {where}; the last checkpoint is kept")


def _check_updates(model: CRNN, u_abs: torch.Tensor, where: str) -> None:
    """NaN/inf in an EP update (after the average over ranks): stop, naming the layer."""
    if not bool(torch.isfinite(u_abs).all()):
        i = next(i for i, v in enumerate(u_abs.tolist()) if not math.isfinite(v))
        name = "read-out" if i == len(model.connections) else f"layer {i} ({model.specs[i]})"
        raise DivergenceError(f"training diverged: the EP update of {name} is not finite at "
                              f"{where}; the last checkpoint is kept")
