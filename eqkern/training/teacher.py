"""BP-trained VGG teachers for knowledge distillation (Lin et al. §3.2, App. D).

The teacher network (:class:`eqkern.model.vgg.VGG`, re-exported here) is a plain ``torch.nn``
VGG whose block outputs have the shapes of the student's states (see :mod:`eqkern.model.vgg`).
:func:`train_teacher` trains it by backprop over :func:`eqkern.training.engine.fit` (the
:class:`~eqkern.training.steps.BackpropStep`; SGD + momentum, cosine annealing, crop + flip), with
the checkpoint format of every run (atomic, ``.prev`` kept, resumable, mid-epoch too) at ``out``
and ``<out>.metrics.jsonl`` / ``<out>.curves.png`` beside it. :func:`load_teacher` reads it with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from eqkern.data.datasets import DataSplit, load_dataset
from eqkern.model.vgg import VGG, VGG_ARCHS, build_teacher, match_features, teacher_features
from eqkern.training.build import limit_data
from eqkern.training.config import DataSection, OptimSection, RunSection
from eqkern.training.engine import Outputs, fit

__all__ = ["train_teacher", "load_teacher", "TeacherResult", "TeacherConfig", "VGG", "VGG_ARCHS",
           "build_teacher", "teacher_features", "match_features"]


@dataclass
class TeacherResult:
    model: VGG
    history: list[dict]
    path: Path | None


@dataclass(frozen=True, kw_only=True)
class TeacherConfig(RunSection, OptimSection, DataSection):
    """The run config of :func:`train_teacher` (what its checkpoint records and resume checks):
    the data, optimizer and run sections every preset has, plus the teacher network's ``arch``
    and ``width``. Backprop, so no phase section."""

    arch: str
    width: float = 1.0
    method: str = "bp"


def load_teacher(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VGG:
    """A teacher saved by :func:`train_teacher` (``torch.load(weights_only=True)``), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no teacher checkpoint at {path}; train one with "
                                f"eqkern.train_teacher(arch=..., out='{path}') or `eqkern teacher`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        if "teacher" in ckpt:  # eqkern.checkpoint/2
            cfg, state = ckpt["teacher"], ckpt["model"]
        else:  # written before the one checkpoint format
            cfg, state = ckpt["config"], ckpt["state_dict"]
        teacher = VGG(cfg["arch"], cfg["num_classes"], tuple(cfg["input_shape"]), cfg["width"])
        teacher.load_state_dict(state)
    except Exception as exc:
        raise RuntimeError(f"cannot read teacher checkpoint {path}: {exc}") from exc
    return teacher.to(map_location).eval()


def train_teacher(
    arch: str = "vgg19",
    dataset: str | DataSplit = "cifar10",
    epochs: int = 200,
    out: str | os.PathLike | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    width: float = 1.0,
    augment: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> TeacherResult:
    """Train a VGG teacher by backprop (SGD + momentum, cosine annealing, crop + flip).

    ``dataset``: a name for :func:`eqkern.data.datasets.load_dataset` or a loaded ``DataSplit``.
    With ``out`` the checkpoint is written atomically after every epoch (and at Ctrl-C);
    ``resume=True`` continues from it.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = TeacherConfig(dataset=dataset if isinstance(dataset, str) else "custom", arch=arch,
                        epochs=epochs, batch_size=batch_size, lr=(float(lr),), momentum=momentum,
                        weight_decay=weight_decay, lr_min=0.0, width=width,
                        data_augmentation="crop_flip" if augment else "none",
                        train_size=limit_train, test_size=limit_test, seed=seed)
    data = (load_dataset(dataset, data_root, device=device, limit_train=limit_train,
                         limit_test=limit_test) if isinstance(dataset, str) else
            limit_data(dataset, cfg, device))
    torch.manual_seed(seed)
    teacher = VGG(arch, data.num_classes, data.input_shape, width).to(device)
    out_path = Path(out) if out is not None else None
    outputs = Outputs.beside(out_path, f"teacher {arch} (width {width:g})") if out_path else None
    history = fit(teacher, data, cfg, out_dir=outputs, resume=resume, progress=progress, log=log,
                  on_batch=on_batch, label=f"teacher {arch}", extra={"teacher": teacher.config()})
    teacher.eval()
    return TeacherResult(teacher, history, out_path)
