"""Bad-input battery: the run folder, resume and checkpoints (issue 16).

Each probe does one careless thing with a run's output folder (train again into it, train twice
at once, resume with other settings, a corrupt or incomplete checkpoint, an unusable folder, a
full disk, Ctrl-C) and must get a clear error or the correct behaviour, never lost files.
Tiny runs: a two-conv CRNN on 32 embedded MNIST images, T_free 3, T_nudge 2, the torch backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqkern import CRNN, Conv, TrainConfig, train
from eqkern.data.datasets import load_dataset
from eqkern.errors import ArgumentError, CheckpointError, RunFolderError
from eqkern.training.checkpoint import CheckpointMismatch
from eqkern.training.metrics import MetricsWriter
from probes import LOST, Probe, assert_probe, ids

CK, PREV, METRICS = "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl"


@functools.cache
def _data():
    return load_dataset("mnist_subset", limit_train=32, limit_test=16)


def _model() -> CRNN:
    torch.manual_seed(0)
    return CRNN((1, 28, 28), [Conv(4), Conv(8)], 10)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 16, "t_free": 3, "t_nudge": 2,
                          "backend": "torch", **kw})


@contextlib.contextmanager
def _no_curves():
    """Metrics without curves.png: a plot takes about a second, and these probes are about the
    checkpoints and metrics."""
    real = MetricsWriter.write
    MetricsWriter.write = lambda self, history: real(dataclasses.replace(self, curves=None), history)
    try:
        yield
    finally:
        MetricsWriter.write = real


def _run(out, logs: list | None = None, *, model=None, run_kw: dict | None = None, **cfg_kw):
    """Train the tiny model into ``out``; returns ``(model, history)``; log lines go to ``logs``."""
    model = model if model is not None else _model()
    log = logs.append if logs is not None else (lambda s: None)
    with _no_curves():
        hist = train(model, _data(), _cfg(**cfg_kw), out_dir=out, progress=False, log=log,
                     **(run_kw or {}))
    return model, hist


def _ck(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()
            and p.name in (CK, PREV, METRICS)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


# --- a folder belongs to one run ---------------------------------------------------------------

def fresh_run_into_used_folder(folder: Path):
    _run(folder)
    _run(folder)


def fresh_run_keeps_old_files(folder: Path):
    _run(folder, epochs=2)
    before = _snapshot(folder)
    try:
        _run(folder, epochs=2, lr=0.2)
    except RunFolderError:
        pass
    return before == _snapshot(folder)


def overwrite_starts_again(folder: Path):
    _run(folder, epochs=2)
    logs: list[str] = []
    _run(folder, logs, run_kw={"overwrite": True}, epochs=1)
    return {"epoch": _ck(folder / CK)["epoch"], "prev": (folder / PREV).exists(),
            "lines": len((folder / METRICS).read_text().splitlines()),
            "said": any("removed" in s and CK in s for s in logs)}


def resume_and_overwrite(folder: Path):
    _run(folder, run_kw={"resume": True, "overwrite": True})


def _holder_code(folder: Path) -> str:
    return ("import sys; from eqkern.training.run_folder import RunLock\n"
            f"with RunLock({str(folder / 'run.lock')!r}, 'holder test'):\n"
            "    print('held', flush=True); sys.stdin.read()\n")


def concurrent_run_other_process(folder: Path):
    holder = subprocess.Popen([sys.executable, "-c", _holder_code(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held", "the holder process did not start"
        _run(folder)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def concurrent_run_same_process(folder: Path):
    from eqkern.training.run_folder import RunLock

    with RunLock(folder / "run.lock", "test holder"):
        _run(folder)


def lock_released_after_exception(folder: Path):
    def boom(epoch, batch):
        raise RuntimeError("a bug in a hook")

    try:
        _run(folder, run_kw={"on_batch": boom})
    except RuntimeError:
        pass
    _run(folder, run_kw={"resume": True})  # would be refused if the lock were still held
    return sorted(p.name for p in folder.iterdir() if "owner" in p.name)


def teacher_again_refused(folder: Path):
    from eqkern.data.datasets import DataSplit
    from eqkern.training.teacher import train_teacher

    g = torch.Generator().manual_seed(0)
    data = DataSplit(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g),
                     torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g),
                     tuple(map(str, range(10))), (3, 32, 32), 10)
    kw = dict(epochs=1, width=1 / 32, batch_size=8, progress=False, log=lambda s: None)
    train_teacher("vgg7", data, out=folder / "t.pt", **kw)
    train_teacher("vgg7", data, out=folder / "t.pt", **kw)


# --- resume with other settings ----------------------------------------------------------------

def resume_other_beta(folder: Path):
    _run(folder)
    _run(folder, run_kw={"resume": True}, beta=0.3)


def resume_other_beta_allowed(folder: Path):
    _run(folder)
    logs: list[str] = []
    _run(folder, logs, run_kw={"resume": True, "allow_changes": {"beta"}}, beta=0.3, epochs=2)
    ck = _ck(folder / CK)
    return {"beta": json.loads(ck["config"])["beta"], "epoch": ck["epoch"],
            "said": any("beta 0.5 -> 0.3" in s for s in logs)}


def allow_unknown_field(folder: Path):
    _run(folder)
    _run(folder, run_kw={"resume": True, "allow_changes": {"betta"}}, beta=0.3)


def resume_new_lr(folder: Path):
    _, straight = _run(folder / "a", epochs=2, lr=0.02)
    try:
        _run(folder / "b", epochs=2, lr=0.05, run_kw={"on_batch": _stop_after_epoch(0)})
    except KeyboardInterrupt:
        pass
    logs: list[str] = []
    _, resumed = _run(folder / "b", logs, epochs=2, lr=0.02, run_kw={"resume": True})
    ck = _ck(folder / "b" / CK)
    groups = ck["optimizer"]["param_groups"]
    return {"lr_epoch2": resumed[1]["lr"], "straight_epoch2": straight[1]["lr"],
            "initial_lr": {g["initial_lr"] for g in groups},
            "base_lrs": set(ck["scheduler"]["base_lrs"]),
            "config_lr": json.loads(ck["config"])["lr"],
            "said": any("lr 0.05 -> 0.02" in s and "applied" in s for s in logs)}


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-12 for x, y in zip(a, b))


def _new_lr_ok(r, _folder) -> bool:
    return (_close(r["lr_epoch2"], r["straight_epoch2"]) and r["initial_lr"] == {0.02}
            and r["base_lrs"] == {0.02} and r["config_lr"] == [0.02] and r["said"])


def _stop_after_epoch(epoch: int):
    """``on_batch`` raising KeyboardInterrupt at the first batch of ``epoch + 1`` (nothing saved
    mid-epoch: the checkpoint of ``epoch`` is the last)."""
    def hook(e, b):
        if e == epoch + 1:
            raise KeyboardInterrupt
    return hook


def _interrupt_mid_epoch(folder: Path) -> None:
    """A first Ctrl-C at the first batch of epoch 1: the engine saves the mid-epoch position."""
    def hook(e, b):
        if (e, b) == (0, 0):
            os.kill(os.getpid(), signal.SIGINT)
    try:
        _run(folder, epochs=2, run_kw={"on_batch": hook})
    except KeyboardInterrupt:
        pass
    assert _ck(folder / CK)["position"] is not None


def mid_epoch_other_batch_size(folder: Path):
    _interrupt_mid_epoch(folder)
    _run(folder, epochs=2, batch_size=8, run_kw={"resume": True})


def mid_epoch_other_batch_size_allowed(folder: Path):
    _interrupt_mid_epoch(folder)
    _run(folder, epochs=2, batch_size=8, run_kw={"resume": True, "allow_changes": {"batch_size"}})


def interrupted_then_resumed(folder: Path):
    a, _ = _run(folder / "a", epochs=2)
    try:
        _run(folder / "b", epochs=2, run_kw={"on_batch": _stop_after_epoch(0)})
    except KeyboardInterrupt:
        pass
    b, _ = _run(folder / "b", epochs=2, run_kw={"resume": True})
    return _same_weights(a, b)


# --- checkpoints that cannot be read -----------------------------------------------------------

def corrupt_falls_back_to_prev(folder: Path):
    _run(folder, epochs=2)
    _truncate(folder / CK)
    logs: list[str] = []
    _, hist = _run(folder, logs, epochs=3, run_kw={"resume": True})
    return {"epochs": [h["epoch"] for h in hist], "epoch": _ck(folder / CK)["epoch"],
            "said": any(CK in s and PREV in s for s in logs),
            "kept": sorted(p.name for p in folder.iterdir() if "corrupt" in p.name)}


def both_corrupt(folder: Path):
    _run(folder, epochs=2)
    _truncate(folder / CK)
    _truncate(folder / PREV)
    _run(folder, epochs=3, run_kw={"resume": True})


def missing_key(folder: Path):
    _run(folder)
    ck = _ck(folder / CK)
    del ck["rng"]
    torch.save(ck, folder / CK)
    _run(folder, epochs=2, run_kw={"resume": True})


# --- folders that cannot be written --------------------------------------------------------------

def out_is_a_file(folder: Path):
    (folder / "out").write_text("not a folder")
    _run(folder / "out")


def out_under_a_file(folder: Path):
    (folder / "notes.txt").write_text("not a folder")
    _run(folder / "notes.txt" / "run")


def read_only_folder(folder: Path):
    ro = folder / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root: permissions do not stop writes, /sys does
        ro = Path("/sys")
    try:
        _run(ro)
    finally:
        (folder / "ro").chmod(0o755)


class _FullDisk:
    """While active, the temporary file of ``name`` accepts ``room`` bytes, then every write
    fails with ENOSPC, as on a full disk (os.fdopen is how atomic_write opens it)."""

    def __init__(self, name: str, room: int = 100) -> None:
        self.name, self.room, self._real = name, room, os.fdopen

    def _fdopen(self, fd, *args, **kwargs):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else ""
        if f".{self.name}." not in os.path.basename(target):
            return self._real(fd, *args, **kwargs)
        room = self.room

        class Full(io.FileIO):
            def write(self, b):
                nonlocal room
                if len(b) > room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                room -= len(b)
                return super().write(b)

        return io.BufferedWriter(Full(fd, "wb"))

    def __enter__(self):
        os.fdopen = self._fdopen
        return self

    def __exit__(self, *exc):
        os.fdopen = self._real
        return False


def _disk_fills_at_epoch_2(folder: Path, name: str):
    def hook(e, b):
        if e == 1 and b == 0:
            full.__enter__()

    full = _FullDisk(name)
    try:
        _run(folder, epochs=2, run_kw={"on_batch": hook})
    finally:
        full.__exit__()


def full_disk_checkpoint(folder: Path):
    _disk_fills_at_epoch_2(folder, CK)


def full_disk_metrics(folder: Path):
    _disk_fills_at_epoch_2(folder, METRICS)


def full_disk_keeps_files(folder: Path):
    try:
        _disk_fills_at_epoch_2(folder, CK)
    except Exception:  # noqa: BLE001 - the files are the point here
        pass
    return {"tmp": [p.name for p in folder.iterdir() if p.name.endswith(".tmp")],
            "epoch": _ck(folder / CK)["epoch"]}


PROBES: list[Probe] = [
    Probe("fresh-run-into-used-folder", fresh_run_into_used_folder, error=RunFolderError,
          match=r"checkpoint\.pt.*epoch 1.*resume=True.*overwrite=True"),
    Probe("fresh-run-keeps-old-files", fresh_run_keeps_old_files, check=lambda r, f: r is True,
          fails_as=LOST),
    Probe("overwrite-starts-again", overwrite_starts_again, fails_as=LOST,
          check=lambda r, f: r == {"epoch": 1, "prev": False, "lines": 1, "said": True}),
    Probe("resume-and-overwrite", resume_and_overwrite, error=ArgumentError,
          match=r"resume.*overwrite"),
    Probe("concurrent-run-other-process", concurrent_run_other_process, error=RunFolderError,
          match=r"in use by eqkern run pid \d+ on host .* since .*choose another output folder"),
    Probe("concurrent-run-same-process", concurrent_run_same_process, error=RunFolderError,
          match=rf"in use by eqkern run pid {os.getpid()} on host"),
    Probe("lock-released-after-exception", lock_released_after_exception,
          check=lambda r, f: r == []),
    Probe("teacher-again-refused", teacher_again_refused, error=RunFolderError,
          match=r"t\.pt.*resume=True.*overwrite=True"),
    Probe("resume-other-beta", resume_other_beta, error=CheckpointMismatch,
          match=r"beta is 0\.5 there and 0\.3 here.*allow_changes"),
    Probe("resume-other-beta-allowed", resume_other_beta_allowed,
          check=lambda r, f: r == {"beta": 0.3, "epoch": 2, "said": True}),
    Probe("allow-changes-unknown-field", allow_unknown_field, error=ArgumentError,
          match=r"allow_changes.*'betta'.*\bbeta\b"),
    Probe("resume-new-lr-applied", resume_new_lr, check=_new_lr_ok),
    Probe("mid-epoch-other-batch-size", mid_epoch_other_batch_size,
          error=CheckpointMismatch,
          match=r"batch_size is 16 there and 8 here"),
    Probe("mid-epoch-other-batch-size-allowed", mid_epoch_other_batch_size_allowed,
          error=CheckpointError, match=r"mid-epoch.*batch_size"),
    Probe("interrupted-then-resumed", interrupted_then_resumed, check=lambda r, f: r is True),
    Probe("corrupt-falls-back-to-prev", corrupt_falls_back_to_prev, fails_as=LOST,
          check=lambda r, f: r == {"epochs": [1, 2, 3], "epoch": 3, "said": True,
                                   "kept": ["checkpoint.corrupt.pt"]}),
    Probe("both-checkpoints-corrupt", both_corrupt, error=CheckpointError,
          match=r"neither .*checkpoint\.pt .*nor .*checkpoint\.prev\.pt"),
    Probe("checkpoint-missing-key", missing_key, error=CheckpointError,
          match=r"checkpoint\.pt has no 'rng' entry"),
    Probe("out-is-a-file", out_is_a_file, error=RunFolderError, match=r"out\b.*is a file"),
    Probe("out-under-a-file", out_under_a_file, error=RunFolderError,
          match=r"notes\.txt.*is a file"),
    Probe("read-only-folder", read_only_folder, error=RunFolderError, match=r"not writable"),
    Probe("full-disk-checkpoint", full_disk_checkpoint, error=RunFolderError,
          match=r"no space left on device writing .*checkpoint\.pt"),
    Probe("full-disk-metrics", full_disk_metrics, error=RunFolderError,
          match=r"no space left on device writing .*metrics\.jsonl"),
    Probe("full-disk-keeps-files", full_disk_keeps_files, fails_as=LOST,
          check=lambda r, f: r == {"tmp": [], "epoch": 1}),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
