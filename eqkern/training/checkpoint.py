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
effect on the weights), and so may the learning-rate schedule (:data:`SCHEDULE_FIELDS`), which
the engine then applies to the restored optimizer; any other field only when the caller names it
(``allow_changes``). :func:`load_latest` falls back to ``checkpoint.prev.pt`` when
``checkpoint.pt`` cannot be read. A full disk while writing is a
:class:`~eqkern.errors.RunFolderError` naming the file, with no partial temporary left.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Iterable, Mapping

import torch
from eqkern.errors import ArgumentError, CheckpointError, EqkernError, RunFolderError

__all__ = ["FORMAT", "MAY_CHANGE", "SCHEDULE_FIELDS", "CheckpointMismatch", "atomic_write",
           "prev_path", "corrupt_path", "set_aside", "save", "load", "load_latest",
           "check_compatible", "changed_fields", "rng_states", "set_rng_states", "config_dict"]

FORMAT = "eqkern.checkpoint/2"
MAY_CHANGE = frozenset({"epochs", "backend", "eval_batch_size", "notes", "source", "teacher_path"})
# Config fields added after checkpoints were written, with the value that behaves as a checkpoint
# without the field did: such a checkpoint resumes under that value as unchanged. (A changed
# default is not such a field: tol=1e-3 against an older run's None is a change, refused.)
ADDED_FIELDS: Mapping[str, Any] = {"solver": "plain"}
# The learning-rate schedule: may change on resume; the engine applies the new values to the
# restored optimizer and scheduler (``optimizer`` and ``cosine`` change the run's state itself).
SCHEDULE_FIELDS = frozenset({"lr", "lr_min", "momentum", "weight_decay", "cosine_epochs"})
# errno of a full disk or quota, and of a folder that stopped accepting writes
_NO_SPACE = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


class CheckpointMismatch(EqkernError, ValueError):
    """Resume refused: the checkpoint was made with another model, data or config."""


def prev_path(path: Path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``: the file a save replaced."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def corrupt_path(path: Path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.corrupt.pt``: where an unreadable checkpoint is kept
    once a resume has fallen back to the previous one."""
    return path.with_name(f"{path.stem}.corrupt{path.suffix}")


def set_aside(path: Path) -> Path:
    """Rename the unreadable ``path`` to :func:`corrupt_path` (kept for inspection, replacing an
    older one): the next save must not rotate it over the good ``.prev`` file."""
    target = corrupt_path(path)
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


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
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in _NO_SPACE:
            raise RunFolderError(f"no space left on device writing {path} ({exc.strerror}); "
                                 f"{path.name} is unchanged and no partial file is left: free "
                                 f"some space and try again") from exc
        if exc.errno in _NO_WRITE:
            raise RunFolderError(f"cannot write {path} ({exc.strerror}); {path.name} is "
                                 f"unchanged and no partial file is left") from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically, keeping the one it replaces as ``*.prev.pt``.

    Serialised in memory first: torch's zip writer reports a failed write (a full disk) as
    ``RuntimeError: ... unexpected pos``, while a plain ``write`` of the bytes raises the
    OSError (ENOSPC) that :func:`atomic_write` turns into a clear error."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()), keep_prev=True)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
         required: Iterable[str] = ()) -> dict:
    """A checkpoint written by :func:`save`; CheckpointError naming the file (and its ``.prev``
    when there is one) if it is truncated, corrupt, foreign or of another format version, or
    lacks one of the ``required`` entries."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
            raise ArgumentError(f"not an eqkern checkpoint of format {FORMAT} (found {found!r})")
    except Exception as exc:  # say so, touch nothing
        prev = prev_path(path)
        hint = (f"; the previous epoch's checkpoint {prev} is untouched" if prev.exists()
                and prev != path else "")
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    missing = [k for k in required if k not in ck]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} has no {missing[0]!r} entry (it holds "
            f"{', '.join(k for k in ck if k != 'format')}): it was not written by eqkern's "
            f"training engine, or was edited")
    return ck


def load_latest(path: Path, log: Callable[[str], None], *, required: Iterable[str] = (),
                map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
    """The checkpoint to resume from and its path: ``path``, else (missing, or unreadable:
    logged, naming both) its ``.prev``; None when neither exists. CheckpointError naming both
    when neither can be read."""
    prev = prev_path(path)
    required = tuple(required)
    failed: list[tuple[Path, CheckpointError]] = []
    for candidate in (path, prev):
        if not candidate.exists():
            continue
        try:
            ck = load(candidate, map_location, required=required)
        except CheckpointError as exc:
            failed.append((candidate, exc))
            continue
        if failed:
            log(f"cannot read {path} ({_reason(failed[0][1])}); resuming from the previous "
                f"checkpoint {prev} instead")
        elif candidate != path:
            log(f"{path} is missing; resuming from {prev}")
        return ck, candidate
    if not failed:
        log(f"no checkpoint at {path}: starting from scratch")
        return None
    if len(failed) == 1:
        raise failed[0][1]
    raise CheckpointError(
        f"cannot resume: neither {path} ({_reason(failed[0][1])}) nor {prev} "
        f"({_reason(failed[1][1])}) can be read; both are left in place (move them away, or pass "
        f"overwrite=True instead of resume=True, to start again)")


def _reason(exc: BaseException, n: int = 160) -> str:
    """What is wrong with a file, without the file's name again: the cause of a CheckpointError."""
    text = (str(exc.__cause__ or exc) or type(exc).__name__).splitlines()[0]
    return text if len(text) <= n else text[: n - 3] + "..."


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
        a = saved.get(key, ADDED_FIELDS.get(key, "<absent>"))
        b = current.get(key, "<absent>")
        if a != b:
            fingerprint = key.startswith("model.") or key == "data"
            hint = ("use another output folder, or the settings it was made with" if fingerprint
                    else f"use another output folder, the settings it was made with, or "
                         f"allow_changes={{{key!r}}} to continue with the new value")
            raise CheckpointMismatch(
                f"checkpoint {where} was made with another {'model' if key.startswith('model.') else 'config'}: "
                f"{key} is {_short(a)} there and {_short(b)} here; resume refused ({hint})")


def changed_fields(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys of ``current`` whose value differs in ``saved``, in ``current``'s order (a key
    of :data:`ADDED_FIELDS` absent from ``saved`` counts as its old behaviour)."""
    return [k for k in current if saved.get(k, ADDED_FIELDS.get(k, "<absent>")) != current[k]]


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
