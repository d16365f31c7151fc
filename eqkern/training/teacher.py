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
from typing import Any, Callable, Iterable, Mapping

import torch

from eqkern.data.datasets import DATASETS, DataSplit, load_dataset
from eqkern.errors import (ArgumentError, ArgumentTypeError, CheckpointError, MissingFileError,
                           first_line)
from eqkern.model.vgg import (VGG, VGG_ARCHS, build_teacher, check_vgg_config, match_features,
                              teacher_features, vgg_state_size)
from eqkern.training.build import limit_data
from eqkern.training.config import DataSection, OptimSection, RunSection, check_fields, choice
from eqkern.training.distributed import local_device
from eqkern.training.engine import Outputs, fit
from eqkern.validate import as_float, describe

__all__ = ["train_teacher", "load_teacher", "TeacherResult", "TeacherConfig", "VGG", "VGG_ARCHS",
           "build_teacher", "teacher_features", "match_features", "MAX_TEACHER_VALUES"]

# The most state-dict values a teacher file may ask for: 2**31 (8 GiB in fp32), ~100x a
# full-width VGG-19. A file's config is checked against it before any network is built.
MAX_TEACHER_VALUES = 2**31
_CONFIG_KEYS = ("arch", "num_classes", "input_shape", "width")


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

    dataset: str = choice((*DATASETS, "custom"), positional=True)  # custom: a DataSplit given
    arch: str
    width: float = 1.0
    method: str = "bp"

    def validate(self) -> None:
        """The field types, each section's ranges, then the network's arch and width
        (:func:`check_vgg_config`; the data's shape is checked when the network is built)."""
        check_fields(self, TeacherConfig)
        for section in (DataSection, OptimSection, RunSection):
            section.check_ranges(self)
        check_vgg_config(self.arch, 1, (3, 32, 32), self.width)


def load_teacher(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VGG:
    """A teacher saved by :func:`train_teacher` (``torch.load(weights_only=True)``), in eval mode.

    The file is untrusted: its config is checked first (:func:`check_vgg_config`, and the size it
    implies against :data:`MAX_TEACHER_VALUES`, computed without allocating), then its state
    dict against the network that config describes (built on the ``meta`` device), then every
    value for NaN/inf; only then is the network materialised. Each failure is a
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no teacher checkpoint at {path}; train one with "
                                f"eqkern.train_teacher(arch=..., out='{path}') or `eqkern teacher`")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"cannot read teacher checkpoint {path}: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/pickle/zip raise many types for one cause
        # Only the first line: torch's later lines are advice about weights_only and a link.
        raise CheckpointError(f"cannot read teacher checkpoint {path}: {first_line(exc)}") from exc
    cfg, state = _teacher_parts(ckpt, path)
    try:
        arch, num_classes, input_shape, width = check_vgg_config(*(cfg[k] for k in _CONFIG_KEYS))
    except (ArgumentError, ArgumentTypeError) as exc:
        raise CheckpointError(f"teacher checkpoint {path} describes no valid teacher: {exc}") from exc
    size = vgg_state_size(arch, num_classes, input_shape, width)
    if size > MAX_TEACHER_VALUES:
        raise CheckpointError(
            f"teacher checkpoint {path} asks for a {arch} (width {width:g}, input_shape "
            f"{input_shape}, {num_classes} classes) of {size:,} parameters and statistics, more "
            f"than the {MAX_TEACHER_VALUES:,} eqkern loads; the file is corrupt or not a teacher")
    with torch.device("meta"):  # the shapes the config implies, with no memory behind them
        teacher = VGG(arch, num_classes, input_shape, width)
    _check_state(teacher.state_dict(), state, path)
    teacher = teacher.to_empty(device=map_location)
    teacher.load_state_dict(state)
    return teacher.eval()


def _teacher_parts(ckpt: Any, path: Path) -> tuple[Mapping, Mapping]:
    """``(config, state dict)`` of a loaded teacher file, either layout, with their types checked."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"teacher checkpoint {path} holds {describe(ckpt, 40)}, not the dict "
                              f"train_teacher writes")
    if "teacher" in ckpt:  # eqkern.checkpoint/2
        cfg, state = ckpt["teacher"], ckpt.get("model")
    elif "config" in ckpt and "state_dict" in ckpt:  # written before the one checkpoint format
        cfg, state = ckpt["config"], ckpt["state_dict"]
    else:
        raise CheckpointError(f"teacher checkpoint {path} has no 'teacher' config (keys: "
                              f"{', '.join(map(str, list(ckpt)[:8]))}); is it a student's "
                              f"checkpoint? Teachers are written by eqkern.train_teacher")
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"teacher checkpoint {path}: its teacher config must be a dict, got "
                              f"{describe(cfg, 40)}")
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"teacher checkpoint {path}: its teacher config has no "
                              f"{', '.join(missing)} (it has {', '.join(map(str, cfg))})")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"teacher checkpoint {path}: its weights must be a state dict, got "
                              f"{describe(state, 40)}")
    return cfg, state


def _check_state(expected: Mapping[str, torch.Tensor], state: Mapping, path: Path) -> None:
    """``state`` has exactly the keys of ``expected``, each a tensor of its shape and kind
    (floating or integer), and holds no NaN/inf."""
    def listed(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = ([f"missing {listed(missing)}"] if missing else []) + (
            [f"unexpected {listed(map(str, unexpected))}"] if unexpected else [])
        raise CheckpointError(f"teacher checkpoint {path}: its weights do not fit the network its "
                              f"config describes: {'; '.join(parts)}")
    for key, ref in expected.items():
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"teacher checkpoint {path}: {key} must be a tensor, got "
                                  f"{describe(t, 40)}")
        if tuple(t.shape) != tuple(ref.shape) or t.is_floating_point() != ref.is_floating_point():
            raise CheckpointError(f"teacher checkpoint {path}: {key} has shape {tuple(t.shape)} "
                                  f"dtype {t.dtype}, but its config's network needs shape "
                                  f"{tuple(ref.shape)} dtype {ref.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointError(f"teacher checkpoint {path}: {key} holds {nan} NaN and {inf} inf "
                                  f"of its {t.numel()} values; the teacher diverged or the file is "
                                  f"corrupt: retrain it")


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
    overwrite: bool = False,
    allow_changes: Iterable[str] = (),
    callbacks: Any = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TeacherResult:
    """Train a VGG teacher by backprop (SGD + momentum, cosine annealing, crop + flip).

    ``dataset``: a name for :func:`eqkern.data.datasets.load_dataset` or a loaded ``DataSplit``.
    With ``out`` the checkpoint is written atomically after every epoch (and at Ctrl-C);
    ``resume=True`` continues from it; a fresh run over an existing ``out`` is refused unless
    ``overwrite=True``; ``allow_changes``: config fields that may differ on resume;
    ``callbacks``: record sinks such as ``TensorBoardCallback(dir)`` (both: see
    :func:`eqkern.training.engine.fit`). Under ``torchrun`` the training is data-parallel.
    """
    device = local_device(device)
    if not isinstance(dataset, (str, DataSplit)):
        raise ArgumentTypeError(f"dataset must be a dataset name or a DataSplit, got "
                                f"{describe(dataset)}")
    cfg = TeacherConfig(dataset=dataset if isinstance(dataset, str) else "custom", arch=arch,
                        epochs=epochs, batch_size=batch_size, lr=(as_float("lr", lr),),
                        momentum=momentum, weight_decay=weight_decay, lr_min=0.0, width=width,
                        data_augmentation="crop_flip" if augment else "none",
                        train_size=limit_train, test_size=limit_test, seed=seed)
    cfg.validate()  # before any data is loaded
    data = (load_dataset(dataset, data_root, device=device, limit_train=limit_train,
                         limit_test=limit_test) if isinstance(dataset, str) else
            limit_data(dataset, cfg, device))
    torch.manual_seed(seed)
    teacher = VGG(arch, data.num_classes, data.input_shape, width).to(device)
    out_path = Path(out) if out is not None else None
    outputs = Outputs.beside(out_path, f"teacher {arch} (width {width:g})") if out_path else None
    history = fit(teacher, data, cfg, out_dir=outputs, resume=resume, overwrite=overwrite,
                  allow_changes=allow_changes, progress=progress, log=log, callbacks=callbacks,
                  on_batch=on_batch, label=f"teacher {arch}", extra={"teacher": teacher.config()})
    teacher.eval()
    return TeacherResult(teacher, history, out_path)
