"""What a preset run is built from: its model, κ schedule, data and (KD) teacher targets."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import torch

from eqkern.errors import ArgumentError
from eqkern.data.datasets import DATASETS, DataSplit, check_split
from eqkern.data.sources import TrainingData, as_training_data
from eqkern.model.auxiliary import Distill, LocalError, Targets
from eqkern.model.crnn import CRNN
from eqkern.training.kappa import KappaSchedule, make_schedule
from eqkern.training.presets import Preset, get_preset

__all__ = ["build_model", "make_kappa_schedule", "resolve_preset", "limit_data", "resolve_source",
           "resolve_teacher", "teacher_targets"]


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


def make_kappa_schedule(preset: Preset) -> KappaSchedule:
    return make_schedule(preset.kappa_schedule, preset.kappa,
                         total_epochs=preset.kappa_epochs or preset.epochs,
                         kappa_min=preset.kappa_min, gamma=preset.kappa_gamma)


def resolve_preset(preset_or_config, overrides: dict) -> Preset:
    """A preset name, a :class:`Preset`, or a mapping with ``name`` and overrides."""
    if isinstance(preset_or_config, Mapping):
        d = dict(preset_or_config)
        if "name" not in d:
            raise ArgumentError("a config mapping needs the 'name' of the preset it starts from")
        name = d.pop("name")
        return get_preset(name, **{**d, **overrides})
    return get_preset(preset_or_config, **overrides)


def limit_data(data: DataSplit, cfg: Any, device) -> DataSplit:
    """A user-given split checked (:func:`eqkern.data.datasets.check_split`: shapes, label dtype
    and range, non-empty, finite), its first ``cfg.train_size`` / ``cfg.test_size`` examples on
    ``device`` (None: where they are), labels as int64 (what the losses index with)."""
    check_split(data, "data")
    device = device if device is not None else data.x_train.device
    xtr, ytr, xte, yte = data.x_train, data.y_train.long(), data.x_test, data.y_test.long()
    if cfg.train_size is not None:
        xtr, ytr = xtr[:cfg.train_size], ytr[:cfg.train_size]
    if cfg.test_size is not None:
        xte, yte = xte[:cfg.test_size], yte[:cfg.test_size]
    return data._replace(x_train=xtr.to(device), y_train=ytr.to(device), x_test=xte.to(device),
                         y_test=yte.to(device))


def resolve_source(data: Any, test_data: Any, cfg: Any) -> TrainingData:
    """A user's ``Dataset``, ``DataLoader`` or iterable of batches (not a DataSplit: see
    :func:`limit_data`) as the engine's training data, its ``input_shape`` and ``num_classes``
    (what the model is built for) the data's own when it tells them, else the config's
    dataset's."""
    for name in ("train_size", "test_size"):
        if getattr(cfg, name) is not None:
            raise ArgumentError(f"{name}={getattr(cfg, name)} keeps the first examples of in-memory "
                                f"data (a DataSplit); for a Dataset pass torch.utils.data.Subset("
                                f"dataset, range(n)) instead, a DataLoader is used as given")
    source = as_training_data(data, test_data)
    known = DATASETS.get(cfg.dataset)
    shape = source.input_shape or (known.input_shape if known else None)
    classes = source.num_classes or (known.num_classes if known else None)
    if shape is None or classes is None:
        what = source.train.describe()
        raise ArgumentError(f"cannot tell the input shape and number of classes of {what}: use a "
                            f"dataset whose examples and `classes` tell them, or a config whose "
                            f"dataset is one of {', '.join(sorted(DATASETS))}")
    return dataclasses.replace(source, input_shape=tuple(shape), num_classes=int(classes))


def resolve_teacher(cfg: Preset, teacher, device) -> Any:
    """The KD teacher network of a run, loaded before any data so that a missing or broken
    teacher file fails at once: ``teacher`` (a VGG or a checkpoint path), else the preset's
    ``teacher_path``; None for a preset that does not distil (which refuses a ``teacher``
    rather than ignoring it)."""
    if cfg.augment not in ("kd", "kdw"):
        if teacher is not None:
            raise ArgumentError(f"teacher= (--teacher) was given, but preset {cfg.name} does not "
                                f"distil (augment={cfg.augment!r}; only 'kd' and 'kdw' presets read "
                                f"a teacher): drop it, or pick a KD preset")
        return None
    from eqkern.training.teacher import load_teacher

    if teacher is None:
        teacher = cfg.teacher_path
    if teacher is None:
        raise ArgumentError(f"preset {cfg.name} distils from a {cfg.teacher_arch} teacher: train one "
                            f"with eqkern.train_teacher(arch={cfg.teacher_arch!r}, width={cfg.width:g}, "
                            f"out=PATH) and pass teacher=PATH or teacher_path=PATH (CLI: eqkern "
                            f"teacher --arch {cfg.teacher_arch} --width {cfg.width:g} --out PATH, then "
                            f"eqkern train --teacher PATH)")
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(teacher, map_location=device)
    return teacher.to(device).eval()


def teacher_targets(cfg: Preset, model: CRNN, teacher) -> Callable | None:
    """For KD: ``(x, y) -> Targets(y, [teacher features of each augmented layer])`` with the
    network of :func:`resolve_teacher`; else None."""
    if teacher is None:
        return None
    from eqkern.training.teacher import match_features, teacher_features

    picks = match_features(teacher, model.state_shapes, cfg.augment_layers)

    def targets_of(x: torch.Tensor, y: torch.Tensor) -> Targets:
        f = teacher_features(teacher, x)
        return Targets(y, [f[k] for k in picks])

    return targets_of
