"""The paper-preset training driver: augmented EP (LE / KD / KDW) of VGG-style CRNNs.

``train_vgg("vgg7-kd-cifar10", epochs=2, width=1/8, ...)`` builds the model of a preset
(:mod:`eqkern.training.presets`), loads its data, and trains it by three-phase EP with SGD + momentum +
weight decay, cosine annealing and layer-wise learning rates (any ``torch.optim`` optimizer can be
passed instead), random crop + flip on whole batches, teacher features once per batch for KD, and
``model.kappa`` set per epoch from the κ schedule (Lin eq. 14).

With ``out_dir``: ``metrics.jsonl`` (one JSON line per epoch), ``curves.png`` (accuracy, loss,
per-layer mean |state| and mean |update|, Lin Fig. 5) and ``checkpoint.pt``, written atomically
after every epoch and at Ctrl-C (the first Ctrl-C stops after the running batch and saves its
position; a second one stops at once). The checkpoint holds the model, optimizer, LR scheduler,
κ schedule and every RNG state, so ``resume=True`` continues to the same result as an
uninterrupted run. The previous epoch's checkpoint is kept as ``checkpoint.prev.pt``. NaN/inf in a
state or an update stops training with a message naming the layer and the step, and writes
nothing, so the last good checkpoint stays.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from eqkern.model.auxiliary import Distill, LocalError, Targets
from eqkern.learning.separate_feedback import weight_angles
from eqkern.data.crop_flip import crop_flip
from eqkern.data.datasets import DataSplit, iterate_batches, load_dataset
from eqkern.learning.ep import ep_gradients
from eqkern.model.crnn import CRNN
from eqkern.training.presets import Preset, get_preset
from eqkern.training.kappa import KappaSchedule, make_schedule
from eqkern.training.loop import check_finite, evaluate, param_groups

__all__ = ["train_vgg", "TrainResult", "build_model", "make_optimizer", "make_kappa_schedule"]

CKPT_FORMAT = "eqkern.train_vgg/1"


@dataclass
class TrainResult:
    """What :func:`train_vgg` did: the preset used, one record per epoch, the trained model."""

    preset: Preset
    history: list[dict]
    model: CRNN
    out_dir: Path | None = None

    def _col(self, key: str) -> list:
        return [h[key] for h in self.history]

    @property
    def train_acc(self) -> list[float]:
        return self._col("train_acc")

    @property
    def test_acc(self) -> list[float]:
        return self._col("test_acc")

    @property
    def train_loss(self) -> list[float]:
        return self._col("train_loss")

    @property
    def test_loss(self) -> list[float]:
        return self._col("test_loss")

    @property
    def seconds(self) -> list[float]:
        return self._col("seconds")

    @property
    def settle_steps(self) -> list[int]:
        return self._col("settle_steps")


# --- building blocks -------------------------------------------------------------------------

def build_model(preset: Preset, input_shape, num_classes: int) -> CRNN:
    """The CRNN of a preset (at its ``width``), with its LE / KD(W) augmentation."""
    aug = None
    if preset.augment == "le":
        aug = LocalError(tuple(preset.augment_layers), tau=preset.tau, learn=preset.le_learn)
    elif preset.augment in ("kd", "kdw"):
        aug = Distill(tuple(preset.augment_layers), tau=preset.tau, mapped=preset.augment == "kdw")
    return CRNN(input_shape, preset.layers(), num_classes, readout=preset.readout,
                init_scale=preset.init_scale, state_init=preset.state_init, augment=aug,
                feedback=preset.feedback, skips=preset.skip_pairs())


def _groups(model: CRNN, preset: Preset) -> list[dict]:
    """Layer-wise groups (eqkern.train.param_groups) plus one per LE projection / KDW map and one
    per FRE-RNN skip link, at the rate of the connection feeding its layer (the papers give none)."""
    n = len(model.connections) + (1 if model.out is not None else 0)
    rates = preset.learning_rates() if len(preset.arch) == model.num_layers else None
    if rates is None or len(rates) != n:
        from eqkern.training.presets import expand_lr

        rates = expand_lr(preset.lr, n)
    groups = param_groups(model, rates)
    if model.augment is not None and len(model.aux):
        for j, i in enumerate(model.augment.layers):
            params = [p for p in model.aux[j].parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": rates[i]})
    for (_, j), link in zip(model.skips, model.skip_links):  # at the rate of the target's connection
        groups.append({"params": list(link.parameters()), "lr": rates[j]})
    return groups


def make_optimizer(model: CRNN, preset: Preset, optimizer=None) -> torch.optim.Optimizer:
    """``optimizer``: None (the preset's ``sgd``/``adam``), a ``torch.optim.Optimizer`` class
    (built with the preset's weight decay, and momentum if it takes one), or a callable
    ``groups -> optimizer``."""
    groups = _groups(model, preset)
    if optimizer is None or isinstance(optimizer, str):
        name = (optimizer or preset.optimizer).lower()
        if name == "sgd":
            return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=preset.momentum,
                                   weight_decay=preset.weight_decay)
        if name == "adam":
            return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=preset.weight_decay)
        raise ValueError(f"unknown optimizer {name!r}; use 'sgd', 'adam' or a torch.optim class")
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        params = inspect.signature(optimizer).parameters
        kw: dict[str, Any] = {}
        if "weight_decay" in params:
            kw["weight_decay"] = preset.weight_decay
        if "momentum" in params:
            kw["momentum"] = preset.momentum
        return optimizer(groups, **kw)
    if callable(optimizer):
        return optimizer(groups)
    raise TypeError(f"optimizer must be None, a name, a torch.optim class or a callable, got {optimizer!r}")


def make_kappa_schedule(preset: Preset) -> KappaSchedule:
    return make_schedule(preset.kappa_schedule, preset.kappa,
                         total_epochs=preset.kappa_epochs or preset.epochs,
                         kappa_min=preset.kappa_min, gamma=preset.kappa_gamma)


def _resolve(preset_or_config, overrides: dict) -> Preset:
    if isinstance(preset_or_config, Mapping):
        d = dict(preset_or_config)
        if "name" not in d:
            raise ValueError("a config mapping needs the 'name' of the preset it starts from")
        name = d.pop("name")
        return get_preset(name, **{**d, **overrides})
    return get_preset(preset_or_config, **overrides)


class _Stop:
    """First Ctrl-C: ask to stop after the running batch. Second: stop at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.requested = False
        self._old = None
        self._log = log

    def _handler(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._old or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self._log("Ctrl-C: stopping after this batch and saving a checkpoint (again to stop now)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


# --- the driver ------------------------------------------------------------------------------

def train_vgg(
    preset_or_config: str | Preset | Mapping = "vgg7-le-cifar10",
    *,
    data: DataSplit | None = None,
    data_root: str | os.PathLike | None = None,
    teacher=None,
    optimizer=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a preset (a name, a :class:`Preset`, or a mapping with ``name`` and overrides).

    ``overrides``: any :class:`Preset` field (``epochs``, ``width``, ``t_free``, ``lr``, ...).
    ``data``: an already loaded split (else the preset's dataset from ``data_root``).
    ``teacher``: for KD, a :class:`eqkern.training.teacher.VGG` or a checkpoint path (else the preset's
    ``teacher_path``). ``optimizer``: see :func:`make_optimizer`. ``on_batch(epoch, batch)`` is
    called after every batch (0-based; for progress hooks and tests).
    """
    cfg = _resolve(preset_or_config, overrides)
    device = torch.device(device) if device is not None else (
        data.x_train.device if data is not None else
        torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    if data is None:
        data = load_dataset(cfg.dataset, data_root, device=device, limit_train=cfg.train_size,
                            limit_test=cfg.test_size)
    else:
        data = _limit(data, cfg, device)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    feats_of = _teacher_hook(cfg, model, teacher, device)
    opt = make_optimizer(model, cfg, optimizer)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.cosine_epochs or cfg.epochs,
                                                        eta_min=cfg.lr_min) if cfg.cosine else None)
    kappa = make_kappa_schedule(cfg)

    out = Path(out_dir) if out_dir is not None else None
    history: list[dict] = []
    start_epoch, position = 0, None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            ck = _find_checkpoint(out, log)
            if ck is not None:
                start_epoch, history, position = _load(ck, model, opt, sched, kappa)
                where = f"epoch {start_epoch + 1}" + (f", batch {position['batch'] + 1}" if position else "")
                log(f"resumed from {ck} at {where}")

    gen_dev = data.x_train.device
    gen, aug_gen = torch.Generator(device=gen_dev), torch.Generator(device=gen_dev)
    with _Stop(log) as stop:
        for epoch in range(start_epoch, cfg.epochs):
            model.kappa = kappa(epoch)
            gen.manual_seed(cfg.seed * 1000 + epoch)       # same batches whether resumed or not
            aug_gen.manual_seed(cfg.seed * 1000 + epoch + 7919)
            record = _train_epoch(model, data, cfg, opt, gen, aug_gen, epoch, feats_of, progress,
                                  stop, on_batch, position, out, sched, kappa, history)
            position = None
            if sched is not None:
                sched.step()
            t0 = time.perf_counter()
            record["test_acc"], record["test_loss"] = evaluate(
                model, data.x_test, data.y_test, t_free=cfg.t_free,
                batch_size=cfg.eval_batch_size, backend=cfg.backend, schedule=cfg.schedule,
                tol=cfg.tol, check_every=cfg.check_every)
            record["eval_seconds"] = time.perf_counter() - t0
            record["seconds"] = record["train_seconds"] + record["eval_seconds"]
            check_finite(model, f"epoch {epoch + 1}")
            history.append(record)
            if out is not None:
                _write_epoch(out, cfg, model, opt, sched, kappa, history)
            log(f"epoch {epoch + 1}/{cfg.epochs}: train acc {record['train_acc']:.2f} % "
                f"test acc {record['test_acc']:.2f} % κ={record['kappa']:.3g} "
                f"({record['seconds']:.1f} s, {record['settle_steps']} settle steps)")
            if stop.requested:
                raise KeyboardInterrupt
    return TrainResult(cfg, history, model, out)


def _limit(data: DataSplit, cfg: Preset, device) -> DataSplit:
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    if cfg.train_size is not None:
        xtr, ytr = xtr[:cfg.train_size], ytr[:cfg.train_size]
    if cfg.test_size is not None:
        xte, yte = xte[:cfg.test_size], yte[:cfg.test_size]
    return data._replace(x_train=xtr.to(device), y_train=ytr.to(device), x_test=xte.to(device),
                         y_test=yte.to(device))


def _teacher_hook(cfg: Preset, model: CRNN, teacher, device):
    """For KD: ``x -> [teacher features of each augmented layer]``; else None."""
    if cfg.augment not in ("kd", "kdw"):
        return None
    from eqkern.training.teacher import load_teacher, match_features, teacher_features

    if teacher is None:
        teacher = cfg.teacher_path
    if teacher is None:
        raise ValueError(f"preset {cfg.name} distils from a {cfg.teacher_arch} teacher: train one "
                         f"with eqkern.train_teacher(arch={cfg.teacher_arch!r}, width={cfg.width:g}, "
                         f"out=PATH) (CLI: eqkern teacher) and pass teacher=PATH or "
                         f"teacher_path=PATH")
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(teacher, map_location=device)
    teacher = teacher.to(device).eval()
    picks = match_features(teacher, model.state_shapes, cfg.augment_layers)

    def feats_of(x: torch.Tensor) -> list[torch.Tensor]:
        f = teacher_features(teacher, x)
        return [f[k] for k in picks]

    return feats_of


def _train_epoch(model, data, cfg, opt, gen, aug_gen, epoch, feats_of, progress, stop, on_batch,
                 position, out, sched, kappa, history) -> dict:
    model.train()
    n_batches = math.ceil(len(data.y_train) / cfg.batch_size)
    n_conn = len(model.connections) + (1 if model.out is not None else 0)
    weights = [m.weight for m in list(model.connections) + ([model.out] if model.out is not None else [])]
    acc = {"correct": 0, "loss_sum": 0.0, "seen": 0, "batches": 0, "seconds": 0.0, "steps": 0,
           "state_abs": [0.0] * model.num_layers, "update_abs": [0.0] * n_conn}
    batches = iterate_batches(data.x_train, data.y_train, cfg.batch_size, shuffle=True, generator=gen)
    first = 0
    if position is not None:  # mid-epoch resume: same permutation, then the saved RNG states
        first = position["batch"] + 1
        for _ in range(first):
            next(batches)
        gen.set_state(position["gen"])
        aug_gen.set_state(position["aug_gen"])
        acc = position["acc"]
    state_sum = torch.zeros(model.num_layers, dtype=torch.float64, device=data.x_train.device)
    update_sum = torch.zeros(n_conn, dtype=torch.float64, device=data.x_train.device)
    bar = tqdm(batches, total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress, leave=False)
    t0 = time.perf_counter()
    for b, (xb, yb) in enumerate(bar, start=first):
        if cfg.data_augmentation == "crop_flip":
            xb = crop_flip(xb, aug_gen, padding=cfg.crop_padding)
        targets = yb if feats_of is None else Targets(yb, feats_of(xb))
        opt.zero_grad(set_to_none=True)
        res = ep_gradients(model, xb, targets, beta=cfg.beta, t_free=cfg.t_free,
                           t_nudge=cfg.t_nudge, estimator=cfg.estimator, backend=cfg.backend,
                           generator=gen, rule=cfg.rule, leakage=cfg.leakage,
                           schedule=cfg.schedule, tol=cfg.tol, check_every=cfg.check_every,
                           batched_nudge=cfg.batched_nudge)
        where = f"epoch {epoch + 1}, batch {b + 1}"
        s_abs = torch.stack([s.abs().mean() for s in res.free_state])
        u_abs = torch.stack([w.grad.abs().mean() if w.grad is not None else w.new_zeros(())
                             for w in weights])
        _check_step(model, s_abs, u_abs, where)
        opt.step()
        check_finite(model, where)
        state_sum += s_abs
        update_sum += u_abs
        acc["correct"] += (res.predictions == yb).sum().item()
        acc["loss_sum"] += res.loss * len(yb)
        acc["seen"] += len(yb)
        acc["batches"] += 1
        acc["steps"] = acc.get("steps", 0) + res.settle_steps  # (checkpoints from before: no key)
        bar.set_postfix(acc=f"{100.0 * acc['correct'] / acc['seen']:.1f}%",
                        loss=f"{acc['loss_sum'] / acc['seen']:.3f}")
        if on_batch is not None:
            on_batch(epoch, b)
        if stop.requested and b + 1 < n_batches:
            acc["seconds"] += time.perf_counter() - t0
            acc["state_abs"] = [a + v for a, v in zip(acc["state_abs"], state_sum.tolist())]
            acc["update_abs"] = [a + v for a, v in zip(acc["update_abs"], update_sum.tolist())]
            if out is not None:
                pos = {"epoch": epoch, "batch": b, "acc": acc, "gen": gen.get_state(),
                       "aug_gen": aug_gen.get_state()}
                _save(out, _payload(cfg, model, opt, sched, kappa, history, pos))
                stop._log(f"saved {out / 'checkpoint.pt'} at epoch {epoch + 1}, batch {b + 1}: "
                      f"continue with resume=True (--resume)")
            raise KeyboardInterrupt
    bar.close()
    seen, nb = acc["seen"], acc["batches"]
    return {
        "epoch": epoch + 1, "kappa": float(model.kappa),
        "lr": [g["lr"] for g in opt.param_groups],
        "train_acc": 100.0 * acc["correct"] / seen, "train_loss": acc["loss_sum"] / seen,
        "train_seconds": acc["seconds"] + time.perf_counter() - t0,
        # The steps really run (with a convergence stop, fewer than the caps t_free, t_nudge).
        "settle_steps": acc.get("steps", 0), "settle_steps_per_batch": acc.get("steps", 0) / nb,
        "state_abs": [(a + v) / nb for a, v in zip(acc["state_abs"], state_sum.tolist())],
        "update_abs": [(a + v) / nb for a, v in zip(acc["update_abs"], update_sum.tolist())],
        # separate feedback: angle (°) between W_l and B_l, l ≥ 1, at the end of the epoch (Laborieux Fig. 7)
        **({"weight_angle": weight_angles(model)} if model.separate_feedback else {}),
    }


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


# --- checkpoints and outputs -----------------------------------------------------------------

def _rng_states() -> dict:
    d = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        d["cuda"] = torch.cuda.get_rng_state_all()
    return d


def _payload(cfg, model, opt, sched, kappa, history, position=None) -> dict:
    return {
        "format": CKPT_FORMAT, "preset": json.dumps(cfg.to_dict()),
        "epoch": len(history), "position": position, "history": history,
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "kappa_schedule": kappa.state_dict(), "rng": _rng_states(),
    }


def _save(out: Path, payload: dict) -> None:
    """Atomic write; the checkpoint it replaces becomes ``checkpoint.prev.pt``."""
    path, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    tmp = out / "checkpoint.pt.tmp"
    torch.save(payload, tmp)
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)


def _write_epoch(out: Path, cfg, model, opt, sched, kappa, history) -> None:
    from eqkern.tools.plots import plot_layer_curves

    tmp = out / "metrics.jsonl.tmp"
    with open(tmp, "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, out / "metrics.jsonl")
    _save(out, _payload(cfg, model, opt, sched, kappa, history))
    plot_layer_curves(history, out / "curves.png", title=f"eqkern {cfg.name} (width {cfg.width:g})")


def _find_checkpoint(out: Path, log) -> Path | None:
    path, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    if path.exists():
        return path
    if prev.exists():  # a crash between the two renames of _save
        log(f"{path} is missing; resuming from {prev}")
        return prev
    log(f"no checkpoint in {out}: starting from scratch")
    return None


def _load(path: Path, model, opt, sched, kappa) -> tuple[int, list[dict], dict | None]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
            raise ValueError("not an eqkern train_vgg checkpoint")
    except Exception as exc:  # truncated, corrupt or foreign: say so, touch nothing
        prev = path.with_name("checkpoint.prev.pt")
        hint = (f"; the previous epoch's checkpoint {prev} is untouched (move it to {path} to "
                f"resume from it)" if prev.exists() and prev != path else "")
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} does not fit this preset/model "
                           f"(was it written with other settings?): {exc}") from exc
    if sched is not None and ck["scheduler"] is not None:
        sched.load_state_dict(ck["scheduler"])
    kappa.load_state_dict(ck["kappa_schedule"])
    torch.set_rng_state(ck["rng"]["torch"])
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    return int(ck["epoch"]), list(ck["history"]), ck["position"]
