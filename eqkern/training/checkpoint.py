"""The one checkpoint format of every training entry point, and the one atomic write.

``save(path, payload)`` writes ``{"format": FORMAT, **payload}`` with :func:`atomic_write`: a
temp file in the same folder, flushed and fsynced, renamed over ``path`` (the file it replaces
becomes ``<stem>.prev<suffix>``, e.g. ``checkpoint.prev.pt``), then the folder is fsynced so the
renames survive a power cut. ``load`` reads with ``torch.load(weights_only=True)`` and says what is
wrong with a truncated or foreign file (and where the previous one is).

A payload holds the model, optimizer, LR scheduler, κ schedule, every RNG state, the mid-epoch
position, the history and the config it was made with (``config``: a JSON string). On resume
:func:`check_compatible` compares that config with the new one and names the first field that
differs; the fields in :data:`MAY_CHANGE` may differ (``epochs``: extend a run; ``backend``: the
same maths on other kernels; ``eval_batch_size``, ``notes``, ``source``, ``teacher_path``: no
effect on the weights).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Mapping

import torch

__all__ = ["FORMAT", "MAY_CHANGE", "CheckpointMismatch", "atomic_write", "prev_path", "save", "load",
           "find", "check_compatible", "rng_states", "set_rng_states", "config_dict"]

FORMAT = "eqkern.checkpoint/2"
MAY_CHANGE = frozenset({"epochs", "backend", "eval_batch_size", "notes", "source", "teacher_path"})


class CheckpointMismatch(ValueError):
    """Resume refused: the checkpoint was made with another model, data or config."""


def prev_path(path: Path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``: the file a save replaced."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 keep_prev: bool = False) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temp file in the same folder, which is
    fsynced and renamed over ``path``; then the folder is fsynced. Readers (or a crash mid-write)
    see the old file or the complete new one. ``keep_prev``: the replaced file is kept as
    :func:`prev_path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a normal output file is readable
        if keep_prev and path.exists():
            os.replace(path, prev_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically, keeping the one it replaces as ``*.prev.pt``."""
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f), keep_prev=True)


def find(path: Path, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to resume from: ``path``, else its ``.prev`` (a crash between the two
    renames of a save), else None."""
    if path.exists():
        return path
    prev = prev_path(path)
    if prev.exists():
        log(f"{path} is missing; resuming from {prev}")
        return prev
    log(f"no checkpoint at {path}: starting from scratch")
    return None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by :func:`save`; RuntimeError naming the file (and its ``.prev``
    when there is one) if it is truncated, corrupt, foreign or of another format version."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
            raise ValueError(f"not an eqkern checkpoint of format {FORMAT} (found {found!r})")
    except Exception as exc:  # say so, touch nothing
        prev = prev_path(path)
        hint = (f"; the previous epoch's checkpoint {prev} is untouched (move it to {path} to "
                f"resume from it)" if prev.exists() and prev != path else "")
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    return ck


def config_dict(cfg: Any) -> dict:
    """A config (a Preset, whose architecture prints as text, or a TeacherConfig) as plain JSON
    values."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=str))


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], *, where: str = "",
                     may_change: frozenset[str] = MAY_CHANGE) -> None:
    """CheckpointMismatch naming the first field (in ``current``'s order, then the saved-only
    ones) whose value differs, unless it is in ``may_change``."""
    for key in list(current) + [k for k in saved if k not in current]:
        if key in may_change:
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b:
            raise CheckpointMismatch(
                f"checkpoint {where} was made with another {'model' if key.startswith('model.') else 'config'}: "
                f"{key} is {_short(a)} there and {_short(b)} here; resume refused (use another "
                f"output folder, or the settings it was made with)")


def _short(v: Any, n: int = 120) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def rng_states() -> dict:
    """The global torch (and, if initialised, CUDA) RNG states."""
    d = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        d["cuda"] = torch.cuda.get_rng_state_all()
    return d


def set_rng_states(d: Mapping[str, Any]) -> None:
    torch.set_rng_state(d["torch"])
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])
