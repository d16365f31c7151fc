"""``train``: the small training entry point (EP or BPTT of a given CRNN, SGD, cosine) that
``make demo`` and ``eqkern demo`` run, over :func:`eqkern.training.engine.fit`."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from eqkern.errors import ArgumentError
from eqkern.data.datasets import DataSplit
from eqkern.model.crnn import CRNN
from eqkern.training.config import METHODS
from eqkern.training.engine import Outputs, fit
from eqkern.training.presets import Preset, TrainConfig

__all__ = ["train", "TrainConfig"]


def train(
    model: CRNN,
    data: DataSplit | Any,
    config: Preset,
    *,
    test_data: Any = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: Iterable[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Any = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Train ``model`` on ``data`` and return one metrics dict per epoch.

    ``data``: a :class:`DataSplit`, or a ``Dataset``, ``DataLoader`` or re-iterable of
    ``(x, y)`` batches (a ``(train, test)`` pair, or the training data with ``test_data``).
    ``callbacks``: per-batch / per-epoch record sinks, e.g. ``TensorBoardCallback(dir)`` (see
    :func:`eqkern.training.engine.fit`). ``config``: a :class:`Preset`, e.g. ``TrainConfig(epochs=..., lr=...)`` (the ``demo-mnist``
    preset with overrides); its ``arch`` is not used, ``model`` is trained as given.

    With ``out_dir``: ``metrics.jsonl`` (one JSON line per epoch), ``curves.png`` and an atomic
    ``checkpoint.pt`` each epoch and at Ctrl-C (``resume=True`` continues from it, mid-epoch too,
    to the same result as an uninterrupted run). The folder is the run's alone: a fresh run into
    one that holds another run is refused unless ``overwrite=True`` (its files are removed);
    ``allow_changes``: config fields that may differ on resume (see
    :func:`eqkern.training.engine.fit`).
    """
    if config.method not in METHODS:
        raise ArgumentError(f"method must be one of {METHODS}, got {config.method!r}")
    model.default_steps = config.t_free
    out = Outputs.folder(out_dir, f"eqkern {config.method.upper()}") if out_dir is not None else None
    return fit(model, data, config, test_data=test_data, out_dir=out, resume=resume,
               overwrite=overwrite, allow_changes=allow_changes, progress=progress, log=log,
               callbacks=callbacks, on_batch=on_batch)
