"""BP-trained VGG teachers for knowledge distillation (Lin et al. §3.2, App. D).

A teacher is a plain ``torch.nn`` VGG: five blocks of (3×3 conv, padding 1, BatchNorm, ReLU)
followed by a 2×2 max-pool, then a small classifier. The block widths are 64-128-256-512-512 like
the student CRNNs of Lin App. C, so the output of block ``k`` (after its pool) has exactly the
shape of the student's state at the last conv of its block ``k``: KD needs no map
(:func:`teacher_features` returns them). Conv layouts per block: vgg11 (1-1-2-2-2), vgg13
(2-2-2-2-2), vgg16 (2-2-3-3-3), vgg19 (2-2-4-4-4) with two hidden FC-512 layers; vgg15 is vgg16's
13 convs with one hidden FC (13 + 2 = 15 weight layers; Lin's 'VGG-15' is not a standard VGG);
vgg7, vgg10, vgg12 mirror the students (1-1-1-1-1, 1-1-2-2-2, 2-2-2-2-2 with one hidden FC).

Checkpoints are written atomically and hold only tensors and plain values; they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eqkern.data.crop_flip import crop_flip
from eqkern.model.vgg import VGG, VGG_ARCHS, build_teacher, match_features, teacher_features
from eqkern.data.datasets import DataSplit, iterate_batches, load_dataset

__all__ = ["train_teacher", "load_teacher", "TeacherResult", "VGG", "VGG_ARCHS", "build_teacher",
           "teacher_features", "match_features"]

@dataclass
class TeacherResult:
    model: VGG
    history: list[dict]
    path: Path | None


def _save(path: Path, teacher: VGG, history: list[dict], dataset: str) -> None:
    from eqkern.training.loop import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"config": teacher.config(), "state_dict": teacher.state_dict(),
                           "history": history, "dataset": dataset})


def load_teacher(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VGG:
    """A teacher saved by :func:`train_teacher` (``torch.load(weights_only=True)``), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no teacher checkpoint at {path}; train one with "
                                f"eqkern.train_teacher(arch=..., out='{path}') or `eqkern teacher`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        cfg = ckpt["config"]
        teacher = VGG(cfg["arch"], cfg["num_classes"], tuple(cfg["input_shape"]), cfg["width"])
        teacher.load_state_dict(ckpt["state_dict"])
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
) -> TeacherResult:
    """Train a VGG teacher by backprop (SGD + momentum, cosine annealing, crop + flip).

    ``dataset``: a name for :func:`eqkern.data.datasets.load_dataset` or a loaded ``DataSplit``.
    With ``out`` the checkpoint is written atomically after every epoch.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = dataset if isinstance(dataset, str) else "custom"
    data = (load_dataset(dataset, data_root, device=device, limit_train=limit_train,
                         limit_test=limit_test) if isinstance(dataset, str) else dataset)
    torch.manual_seed(seed)
    teacher = VGG(arch, data.num_classes, data.input_shape, width).to(device)
    opt = torch.optim.SGD(teacher.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator(device=data.x_train.device)
    history: list[dict] = []
    out_path = Path(out) if out is not None else None
    for epoch in range(epochs):
        gen.manual_seed(seed * 1000 + epoch)
        teacher.train()
        t0, correct, loss_sum, seen = time.perf_counter(), 0, 0.0, 0
        batches = iterate_batches(data.x_train, data.y_train, batch_size, shuffle=True, generator=gen)
        for xb, yb in tqdm(batches, total=math.ceil(len(data.y_train) / batch_size),
                           desc=f"teacher epoch {epoch + 1}", disable=not progress, leave=False):
            if augment:
                xb = crop_flip(xb, gen)
            logits = teacher(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += (logits.argmax(1) == yb).sum().item()
            loss_sum += loss.item() * len(yb)
            seen += len(yb)
        sched.step()
        test_acc = _accuracy(teacher, data.x_test, data.y_test)
        history.append({"epoch": epoch + 1, "train_acc": 100.0 * correct / seen,
                        "train_loss": loss_sum / seen, "test_acc": test_acc,
                        "seconds": time.perf_counter() - t0})
        if out_path is not None:
            _save(out_path, teacher, history, name)
        log(f"teacher {arch} epoch {epoch + 1}/{epochs}: train {history[-1]['train_acc']:.2f} % "
            f"test {test_acc:.2f} %")
    teacher.eval()
    return TeacherResult(teacher, history, out_path)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum().item()
                  for xb, yb in iterate_batches(x, y, batch, shuffle=False))
    return 100.0 * correct / max(1, len(y))
