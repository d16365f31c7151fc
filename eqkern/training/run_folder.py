"""A run's output folder: where it writes (:class:`Outputs`), and that it is this run's alone.

:func:`claim` is what the engine holds around a run that has an output folder:

* the folder must be usable: an existing file, a path under a file, or a folder that cannot be
  written is a :class:`~eqkern.errors.RunFolderError` naming the path and the reason, before any
  training;
* a lock (:class:`RunLock`, ``filelock``, taken without waiting) held for the run's life, with an
  owner record (pid, host, start time, command line) beside it, so a second run on the same
  folder is refused naming the one that holds it; it is released on every way out (exception,
  Ctrl-C), and by the OS when the process dies;
* a fresh run (``resume=False``) into a folder that holds another run's checkpoint or metrics
  is refused, naming what is there, unless ``overwrite=True``: then those files are removed
  first (and the log says so). Checked under the lock, so two fresh runs cannot both pass.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import filelock
import torch

from eqkern.errors import RunFolderError
from eqkern.training import checkpoint
from eqkern.training.metrics import MetricsWriter

__all__ = ["Outputs", "RunLock", "claim", "owner_record"]


@dataclass
class Outputs:
    """Where a run writes: its checkpoint and its metrics (and the lock that makes them its own).

    ``lock`` defaults to ``<checkpoint>.lock``; ``place`` (what messages call the run's
    location) to the checkpoint's folder."""

    checkpoint: Path
    metrics: MetricsWriter
    lock: Path | None = None
    place: Path | None = None

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        if self.lock is None:
            self.lock = self.checkpoint.with_name(self.checkpoint.name + ".lock")
        if self.place is None:
            self.place = self.checkpoint.parent

    @classmethod
    def folder(cls, out_dir: str | os.PathLike, title: str | None = None) -> "Outputs":
        """``checkpoint.pt``, ``metrics.jsonl``, ``curves.png`` and ``run.lock`` in ``out_dir``."""
        out = Path(out_dir)
        return cls(out / "checkpoint.pt", MetricsWriter(out / "metrics.jsonl", out / "curves.png", title),
                   out / "run.lock", out)

    @classmethod
    def beside(cls, path: str | os.PathLike, title: str | None = None) -> "Outputs":
        """The checkpoint ``path`` (``x.pt``), with ``x.metrics.jsonl``, ``x.curves.png`` and
        the lock ``x.pt.lock`` beside it."""
        path = Path(path)
        return cls(path, MetricsWriter(path.with_suffix(".metrics.jsonl"),
                                       path.with_suffix(".curves.png"), title),
                   path.with_name(path.name + ".lock"), path)

    def run_files(self) -> list[Path]:
        """The files of the run that are there: checkpoint, its ``.prev`` and set-aside copy,
        metrics, curves, and temporaries a killed process left."""
        ck, metrics = self.checkpoint, self.metrics
        named = [ck, checkpoint.prev_path(ck), checkpoint.corrupt_path(ck), metrics.metrics,
                 metrics.curves]
        temps = [t for p in named if p is not None for t in p.parent.glob(f".{p.name}.*.tmp")]
        return [p for p in named if p is not None and p.is_file()] + temps

    def previous_run(self) -> list[Path]:
        """The files that mean another run was here (its checkpoints or metrics)."""
        ck = self.checkpoint
        return [p for p in (ck, checkpoint.prev_path(ck), self.metrics.metrics) if p.is_file()]


def owner_record(command: str | None = None) -> dict:
    """Who holds a run folder: pid, host, start time (local, ISO), command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command if command is not None else " ".join(sys.argv)}


class RunLock:
    """The lock of one run location, held without waiting: ``with RunLock(path): ...``.

    A second holder (another process, or another ``RunLock`` in this one) gets a RunFolderError
    naming the first from its owner record ``<path>.owner.json``. ``subject``: what the message
    calls locked (default: the lock's folder)."""

    def __init__(self, path: str | os.PathLike, command: str | None = None, *,
                 subject: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.record = self.path.with_name(self.path.name + ".owner.json")
        self.subject = Path(subject) if subject is not None else self.path.parent
        self.command = command
        self._lock = filelock.FileLock(str(self.path))

    def __enter__(self) -> "RunLock":
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunFolderError(f"{self.subject} is in use by {self.holder()}; wait for it to "
                                 f"finish or choose another output folder") from None
        except OSError as exc:
            raise RunFolderError(f"cannot create the lock file {self.path} ({exc.strerror or exc}); "
                                 f"choose another output folder") from exc
        try:
            text = json.dumps(owner_record(self.command)).encode()
            checkpoint.atomic_write(self.record, lambda f: f.write(text))
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        try:  # the record first: once the lock is free, the next holder writes its own
            self.record.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            self._lock.release()
        return False

    def holder(self) -> str:
        """The lock's holder in words, from its owner record."""
        try:
            rec = json.loads(self.record.read_text())
            return (f"eqkern run pid {rec['pid']} on host {rec['host']} since {rec['started']} "
                    f"(command: {rec['command']})")
        except (OSError, ValueError, KeyError, TypeError):  # starting, or killed mid-write
            return f"another eqkern run (its owner record {self.record} is not readable yet)"


def _check_usable(out: Outputs) -> None:
    """RunFolderError unless ``out``'s folder exists (created here) and takes a new file."""
    folder = out.checkpoint.parent
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output folder {folder} is a file, not a folder; choose another "
                             f"output folder (or move the file away)")
    for parent in folder.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"cannot create output folder {folder}: {parent} is a file, "
                                     f"not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create output folder {folder} ({exc.strerror or exc}); "
                             f"choose another output folder") from exc
    if out.checkpoint.is_dir():
        raise RunFolderError(f"checkpoint path {out.checkpoint} is a folder; choose a file name "
                             f"such as {out.checkpoint / 'teacher.pt'}")
    try:  # write access as the OS really grants it (os.access is wrong for root, ACLs, mounts)
        fd, probe = tempfile.mkstemp(prefix=".eqkern-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunFolderError(f"output folder {folder} is not writable ({exc.strerror or exc}); "
                             f"choose another output folder or fix its permissions") from exc


def _describe(path: Path) -> str:
    """``checkpoint.pt (epoch 2 of 5)``: what a run file holds, for the refusal message."""
    if path.suffix == ".jsonl":
        try:
            n = sum(1 for line in path.read_text().splitlines() if line.strip())
        except (OSError, UnicodeDecodeError):
            return f"{path.name} (unreadable)"
        return f"{path.name} ({n} epoch{'s' if n != 1 else ''})"
    try:  # mmap: the epoch count without reading the weights
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epochs = json.loads(ck["config"]).get("epochs", "?")
        where = f"epoch {ck['epoch']} of {epochs}"
        if ck.get("position") is not None:
            where += f", stopped mid-epoch {ck['position']['epoch'] + 1}"
        return f"{path.name} ({where})"
    except Exception:  # noqa: BLE001 - any unreadable file is described as such
        return f"{path.name} (unreadable)"


def _make_room(out: Outputs, overwrite: bool, log: Callable[[str], None]) -> None:
    """A fresh run: refuse another run's files, or (``overwrite``) remove them."""
    found = out.previous_run()
    if not found:
        return
    if not overwrite:
        raise RunFolderError(
            f"{out.place} already holds a run ({', '.join(map(_describe, found))}); pass "
            f"resume=True (--resume) to continue it, or overwrite=True (--overwrite) to start "
            f"again (its files are then removed), or choose another output folder")
    removed = out.run_files()
    for p in removed:
        p.unlink(missing_ok=True)
    log(f"overwrite: removed the previous run's {', '.join(p.name for p in removed)} from "
        f"{out.place}")


@contextlib.contextmanager
def claim(out: Outputs, *, resume: bool, overwrite: bool,
          log: Callable[[str], None]) -> Iterator[RunLock]:
    """Hold ``out`` for one run: usable, locked, and (fresh runs) free of another run's files."""
    _check_usable(out)
    with RunLock(out.lock, subject=out.place) as lock:
        if not resume:
            _make_room(out, overwrite, log)
        yield lock
