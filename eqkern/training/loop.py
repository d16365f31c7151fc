"""A small, complete training loop: EP (or BPTT) with SGD, progress bars, metrics, checkpoints.

The full paper-preset driver (``train_vgg``, augmentation, κ schedules) is built on the same pieces
(issue 8); this loop is what ``make demo`` and ``eqkern demo`` run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm

from eqkern.model import energy
from eqkern.learning.bptt import bptt_gradients
from eqkern.data.datasets import DataSplit, iterate_batches
from eqkern.dynamics.settle import free_phase
from eqkern.learning.ep import Estimator, ep_gradients
from eqkern.model.crnn import CRNN


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`. ``lr`` is one rate, or one per connection (+ read-out)."""

    epochs: int = 3
    batch_size: int = 64
    method: Literal["ep", "bptt"] = "ep"
    t_free: int = 20
    t_nudge: int = 6
    beta: float = 0.5
    estimator: Estimator = "symmetric"
    lr: float | Sequence[float] = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    cosine: bool = True
    backend: str | None = None
    seed: int = 0
    eval_batch_size: int = 500


def param_groups(model: CRNN, lr: float | Sequence[float]) -> list[dict]:
    """One optimizer group per connection (and the read-out), for layer-wise learning rates."""
    modules = list(model.connections) + ([model.out] if model.out is not None else [])
    rates = [lr] * len(modules) if isinstance(lr, (int, float)) else list(lr)
    if len(rates) != len(modules):
        raise ValueError(f"lr has {len(rates)} rates, the model has {len(modules)} weight layers")
    groups = [{"params": list(m.parameters()), "lr": r} for m, r in zip(modules, rates)]
    # A separate feedback weight B_l shares W_l's rate (and so momentum and weight decay), as in
    # Laborieux App. E.1: Kolen-Pollack alignment needs the same update law on both.
    for i in range(1, model.num_layers if model.separate_feedback else 0):
        groups[i]["params"].append(model.feedback_weight(i))
    return groups


@torch.no_grad()
def evaluate(
    model: CRNN, x: torch.Tensor, y: torch.Tensor, *, t_free: int, batch_size: int = 500,
    backend: str | None = None, schedule: str = "synchronous", tol: float | None = None,
    check_every: int = 10,
) -> tuple[float, float]:
    """(accuracy in %, mean loss) of the free-phase equilibrium on ``x: (N, ...)``, ``y: (N,)``
    (``schedule``, ``tol``, ``check_every``: as in :func:`eqkern.free_phase`)."""
    correct, loss = 0, 0.0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        state = free_phase(model, xb, t_free, backend=backend, schedule=schedule, tol=tol,
                           check_every=check_every)
        correct += (model.predict(state) == yb).sum().item()
        loss += energy.loss(model, state[-1], yb).item()
    return 100.0 * correct / len(y), loss / len(y)


def check_finite(model: CRNN, where: str) -> None:
    """Stop training with a message naming the layer when a weight became NaN/inf."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"training diverged: {name} is not finite after {where}")


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically: a crash mid-write never replaces the last good checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def train(
    model: CRNN,
    data: DataSplit,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``model`` on ``data`` and return one metrics dict per epoch.

    With ``out_dir``: ``metrics.jsonl`` (one JSON line per epoch), ``curves.png`` and an atomic
    ``checkpoint.pt`` each epoch (``resume=True`` continues from it, to the same result as an
    uninterrupted run). An interruption (Ctrl-C) loses at most the running epoch.
    """
    torch.manual_seed(config.seed)
    optimizer = torch.optim.SGD(param_groups(model, config.lr), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=1e-5)
                 if config.cosine else None)
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict] = []
    start_epoch = 0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / "checkpoint.pt"
        if resume and ckpt.exists():
            start_epoch, history = _load_checkpoint(ckpt, model, optimizer, scheduler)
            log(f"resumed from {ckpt} at epoch {start_epoch}")
    gen = torch.Generator().manual_seed(config.seed)
    for epoch in range(start_epoch, config.epochs):
        gen.manual_seed(config.seed * 1000 + epoch)  # the same batches whether resumed or not
        record = _train_epoch(model, data, config, optimizer, gen, epoch, progress)
        if scheduler is not None:
            scheduler.step()
        record["test_acc"], record["test_loss"] = evaluate(
            model, data.x_test, data.y_test, t_free=config.t_free,
            batch_size=config.eval_batch_size, backend=config.backend)
        history.append(record)
        if out is not None:  # before anything else can be interrupted
            _write_epoch(out, model, optimizer, scheduler, config, history)
        log(f"epoch {epoch + 1}/{config.epochs}: train acc {record['train_acc']:.2f} % "
            f"test acc {record['test_acc']:.2f} % ({record['seconds']:.1f} s)")
    return history


def _train_epoch(model, data, config, optimizer, gen, epoch, progress) -> dict:
    model.train()
    t0, correct, loss_sum, seen = time.perf_counter(), 0, 0.0, 0
    n_batches = math.ceil(len(data.y_train) / config.batch_size)
    bar = tqdm(iterate_batches(data.x_train, data.y_train, config.batch_size, shuffle=True,
                               generator=gen),
               total=n_batches, desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
    for xb, yb in bar:
        optimizer.zero_grad(set_to_none=True)
        if config.method == "ep":
            res = ep_gradients(model, xb, yb, beta=config.beta, t_free=config.t_free,
                               t_nudge=config.t_nudge, estimator=config.estimator,
                               backend=config.backend, generator=gen)
        elif config.method == "bptt":
            res = bptt_gradients(model, xb, yb, t_free=config.t_free)
        else:
            raise ValueError(f"method must be 'ep' or 'bptt', got {config.method!r}")
        optimizer.step()
        check_finite(model, f"epoch {epoch + 1}, batch {seen // config.batch_size + 1}")
        correct += (res.predictions == yb).sum().item()
        loss_sum += res.loss * len(yb)
        seen += len(yb)
        bar.set_postfix(acc=f"{100.0 * correct / seen:.1f}%", loss=f"{loss_sum / seen:.3f}")
    return {"epoch": epoch + 1, "train_acc": 100.0 * correct / seen, "train_loss": loss_sum / seen,
            "seconds": time.perf_counter() - t0}


def _write_epoch(out: Path, model, optimizer, scheduler, config, history) -> None:
    from eqkern.tools.plots import plot_training_curves

    with open(out / "metrics.jsonl", "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")
    plot_training_curves(history, out / "curves.png", title=f"eqkern {config.method.upper()}")
    save_checkpoint(out / "checkpoint.pt", {
        "epoch": len(history), "history": history, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "config": json.dumps(asdict(config)), "rng": _rng_state(),
    })


def _load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so, keep the file for inspection
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return int(ckpt["epoch"]), list(ckpt["history"])
