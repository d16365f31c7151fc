"""``train_vgg``: a paper preset (augmented EP of VGG-style CRNNs, FRE-RNN, ...) over the engine.

``train_vgg("vgg7-kd-cifar10", epochs=2, width=1/8, ...)`` builds the model of a preset
(:mod:`eqkern.training.presets`), loads its data and runs :func:`eqkern.training.engine.fit`: its
step (``method``: EP with any rule/estimator, or BPTT), SGD + momentum + weight decay (or any
``torch.optim`` optimizer), cosine annealing and layer-wise rates, crop + flip, teacher features
per batch for KD and ``model.kappa`` per epoch from the κ schedule (Lin eq. 14). With
``out_dir``: ``metrics.jsonl``, ``curves.png`` (Lin Fig. 5) and ``checkpoint.pt`` (+
``checkpoint.prev.pt``) each epoch and at Ctrl-C; ``resume=True`` continues bit-identically,
``overwrite=True`` starts again in a folder that holds a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from eqkern.data.datasets import DataSplit, load_dataset
from eqkern.data.sources import as_training_data
from eqkern.model.crnn import CRNN
from eqkern.training import build
from eqkern.training.distributed import local_device
from eqkern.training.engine import Outputs, fit
from eqkern.training.optim import make_optimizer
from eqkern.training.presets import Preset

__all__ = ["train_vgg", "TrainResult"]


@dataclass
class TrainResult:
    """What :func:`train_vgg` did: the preset used, one record per epoch, the trained model."""

    preset: Preset
    history: list[dict]
    model: CRNN
    out_dir: Path | None = None

    train_acc = property(lambda self: [h["train_acc"] for h in self.history])
    test_acc = property(lambda self: [h["test_acc"] for h in self.history])
    train_loss = property(lambda self: [h["train_loss"] for h in self.history])
    test_loss = property(lambda self: [h["test_loss"] for h in self.history])
    seconds = property(lambda self: [h["seconds"] for h in self.history])
    settle_steps = property(lambda self: [h["settle_steps"] for h in self.history])


def train_vgg(
    preset_or_config: str | Preset | Mapping = "vgg7-le-cifar10",
    *,
    data: Any = None,
    test_data: Any = None,
    data_root: str | os.PathLike | None = None,
    teacher=None,
    optimizer=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: Iterable[str] = (),
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Any = None,
    on_batch: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a preset (a name, a :class:`Preset`, or a mapping with ``name`` and overrides).

    ``overrides``: any :class:`Preset` field (``epochs``, ``width``, ``t_free``, ``lr``, ...).
    ``data``: an already loaded :class:`DataSplit`, or a ``Dataset``, ``DataLoader`` or
    re-iterable of ``(x, y)`` batches (a ``(train, test)`` pair, or the training data with
    ``test_data``; see :func:`eqkern.training.engine.fit`); else the preset's dataset from
    ``data_root``. ``callbacks``: see :func:`eqkern.training.engine.fit` (e.g.
    ``[TensorBoardCallback("runs/tb")]``). Under ``torchrun`` the run is data-parallel, each
    rank on ``cuda:$LOCAL_RANK`` (or the CPU).
    ``teacher``: for KD, a :class:`eqkern.training.teacher.VGG` or a checkpoint path (else the preset's
    ``teacher_path``). ``optimizer``: see :func:`eqkern.training.optim.make_optimizer`.
    ``on_batch(epoch, batch)`` is called after every batch (0-based; for progress hooks and tests).
    ``out_dir`` is the run's alone: a fresh run into one that holds another run is refused
    unless ``resume=True`` or ``overwrite=True``; ``allow_changes``: preset fields that may
    differ from the checkpoint's on resume (see :func:`eqkern.training.engine.fit`).
    """
    cfg = build.resolve_preset(preset_or_config, overrides)
    device = local_device(device if device is not None else
                          data.x_train.device if isinstance(data, DataSplit) else None)
    source = None
    if isinstance(data, DataSplit):  # checked first; a test_data beside its test split is refused
        source = as_training_data(build.limit_data(data, cfg, device), test_data)
    elif data is not None:
        source = build.resolve_source(data, test_data, cfg)
    teacher = build.resolve_teacher(cfg, teacher, device)  # a bad teacher fails before the data
    torch.manual_seed(cfg.seed)
    if source is None:
        source = as_training_data(load_dataset(cfg.dataset, data_root, device=device,
                                               limit_train=cfg.train_size,
                                               limit_test=cfg.test_size), test_data)
    model = build.build_model(cfg, source.input_shape, source.num_classes).to(device)
    model.default_steps = cfg.t_free
    targets_of = build.teacher_targets(cfg, model, teacher)
    out = (Outputs.folder(out_dir, f"eqkern {cfg.name} (width {cfg.width:g})")
           if out_dir is not None else None)
    history = fit(model, source, cfg, optimizer=make_optimizer(model, cfg, optimizer),
                  kappa=build.make_kappa_schedule(cfg), out_dir=out, resume=resume,
                  overwrite=overwrite, allow_changes=allow_changes, progress=progress, log=log,
                  callbacks=callbacks, on_batch=on_batch, targets_of=targets_of)
    return TrainResult(cfg, history, model, Path(out_dir) if out_dir is not None else None)
