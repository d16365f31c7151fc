"""TensorBoard logging of a training run: :class:`TensorBoardCallback`.

Needs the optional ``tensorboard`` package (``pip install 'eqkern[tensorboard]'``); eqkern itself
does not import it, only a :class:`TensorBoardCallback` being made does.
"""

from __future__ import annotations

import os
from typing import Any

from eqkern.errors import ArgumentTypeError, EqkernError, first_line
from eqkern.training.callbacks import Callback
from eqkern.validate import as_int, describe

__all__ = ["TensorBoardCallback", "TensorBoardMissingError", "INSTALL_HINT"]

INSTALL_HINT = ("TensorBoard logging needs the tensorboard package: pip install "
                "'eqkern[tensorboard]' (or pip install tensorboard)")


class TensorBoardMissingError(EqkernError, ImportError):
    """The ``tensorboard`` package is not installed (or cannot be imported)."""


_OURS = ("tensorboard", "torch.utils.tensorboard")


def _summary_writer_class():
    try:
        # torch's writer; it imports the tensorboard package and fails when it is missing.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        # Name the cause unless it is plainly the package missing (a broken install, an old
        # version or a missing dependency of it then says what to fix).
        missing = isinstance(exc, ModuleNotFoundError) and exc.name in _OURS
        why = "" if missing else f" (import failed: {first_line(exc)})"
        raise TensorBoardMissingError(INSTALL_HINT + why) from exc
    return SummaryWriter


class TensorBoardCallback(Callback):
    """Write the run's scalars to TensorBoard event files in ``log_dir``.

    ``batch_every``: write the batch scalars every that many batches (by the global step), ``0``
    for none (the engine then makes no batch records, saving a host sync per batch). The event
    file is flushed at each epoch end, so a crash loses at most the current epoch's batch
    scalars. Values that are ``None`` (no test data) or absent (not a CRNN, no separate feedback)
    are skipped. Raises :class:`TensorBoardMissingError` (an ``ImportError``) here, before
    training, when the ``tensorboard`` package is missing.

    =========================  ===========  ===================================================
    tag                        step         value
    =========================  ===========  ===================================================
    ``accuracy/train``         epoch        training accuracy of the epoch (%)
    ``accuracy/test``          epoch        test accuracy (%)
    ``loss/train``             epoch        mean training loss of the epoch
    ``loss/test``              epoch        test loss
    ``lr/group{i}``            epoch        learning rate of param group i (0-based)
    ``kappa``                  epoch        κ of the epoch (CRNN)
    ``settle_steps/per_batch`` epoch        settling steps run per batch (0 for backprop)
    ``state_abs/layer{i}``     epoch        mean |state| of the free equilibrium, layer i (CRNN)
    ``state_spread/layer{i}``  epoch        its std over the batch's images, averaged over units
    ``update_abs/layer{i}``    epoch        mean |update| of weight layer i; the last one is
                                            the read-out when there is one (CRNN)
    ``weight_angle/layer{l}``  epoch        angle (°) between W_l and B_l, l ≥ 1 (separate
                                            feedback weights)
    ``time/epoch``             epoch        seconds of the epoch (training + evaluation)
    ``time/train``             epoch        seconds of training
    ``time/eval``              epoch        seconds of the test evaluation
    ``batch/loss``             global step  mean loss of the batch
    ``batch/accuracy``         global step  accuracy of the batch (%)
    ``batch/settle_steps``     global step  settling steps run for the batch
    ``batch/lr/group{i}``      global step  learning rate of param group i
    =========================  ===========  ===================================================

    The epoch is 1-based; the global step counts batches from 1 over the whole run. A resumed
    run writing into the same ``log_dir`` adds a new event file; TensorBoard shows both as one
    run.
    """

    def __init__(self, log_dir: str | os.PathLike, *, batch_every: int = 1) -> None:
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ArgumentTypeError(f"log_dir must be a folder path, got {describe(log_dir)}")
        self.log_dir = os.fspath(log_dir)
        self.batch_every = as_int("batch_every", batch_every, minimum=0)
        writer_class = _summary_writer_class()  # the missing-package error before any file
        self.writer = writer_class(log_dir=self.log_dir)
        self._closed = False

    def __repr__(self) -> str:
        return f"TensorBoardCallback({self.log_dir!r}, batch_every={self.batch_every})"

    @property
    def wants_batches(self) -> bool:
        return self.batch_every > 0

    def on_batch_end(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if self.batch_every == 0 or step % self.batch_every:
            return
        self._scalars(step, {"batch/loss": record.get("loss"),
                             "batch/accuracy": record.get("acc"),
                             "batch/settle_steps": record.get("settle_steps")})
        self._series(step, "batch/lr/group", record.get("lr"))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        self._scalars(epoch, {
            "accuracy/train": record.get("train_acc"), "accuracy/test": record.get("test_acc"),
            "loss/train": record.get("train_loss"), "loss/test": record.get("test_loss"),
            "kappa": record.get("kappa"),
            "settle_steps/per_batch": record.get("settle_steps_per_batch"),
            "time/epoch": record.get("seconds"), "time/train": record.get("train_seconds"),
            "time/eval": record.get("eval_seconds")})
        self._series(epoch, "lr/group", record.get("lr"))
        self._series(epoch, "state_abs/layer", record.get("state_abs"))
        self._series(epoch, "state_spread/layer", record.get("state_spread"))
        self._series(epoch, "update_abs/layer", record.get("update_abs"))
        # weight_angle[0] is layer 1: layer 0 has no feedback weight of its own
        self._series(epoch, "weight_angle/layer", record.get("weight_angle"), first=1)
        self.writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.close()

    def _scalars(self, step: int, values: dict[str, Any]) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), global_step=step)

    def _series(self, step: int, prefix: str, values: list | None, first: int = 0) -> None:
        for i, value in enumerate(values or (), start=first):
            if value is not None:
                self.writer.add_scalar(f"{prefix}{i}", float(value), global_step=step)
