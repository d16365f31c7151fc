"""The one training engine: frozen parameters stay put, resume refuses another config and equals
an uninterrupted run (mid-epoch and at an epoch boundary) for train_vgg, train and train_teacher,
and checkpoints are written by the one atomic helper (fsync, .prev kept)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch

from conftest import require_backend
from eqkern import CRNN, Conv, TrainConfig, train
from eqkern.data.datasets import DataSplit
from eqkern.training import checkpoint
from eqkern.training.callbacks import Callback
from eqkern.training.checkpoint import CheckpointMismatch
from eqkern.training.teacher import load_teacher, train_teacher
from eqkern.training.train_preset import train_vgg
from training_helpers import TINY, _one_thread, fake_data as _fake_data  # noqa: F401 (autouse)

DROP = ("seconds", "train_seconds", "eval_seconds")
QUIET = dict(progress=False, log=lambda s: None)


def fake_data(shape=(3, 32, 32), n=24, **kw) -> DataSplit:
    return _fake_data(shape, n, **kw)


def small_crnn() -> CRNN:
    torch.manual_seed(0)
    return CRNN((1, 16, 16), [Conv(4), Conv(8)], 10)


def same_runs(a_state: dict, a_hist: list, b_state: dict, b_hist: list) -> None:
    for k, v in a_state.items():
        assert torch.equal(v, b_state[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in DROP} for r in h]  # noqa: E731
    assert strip(a_hist) == strip(b_hist)


def sigint_at(epoch: int, batch: int):
    def hook(e, b):
        if (e, b) == (epoch, batch):
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: stop after this batch
    return hook


def raise_at(epoch: int, batch: int):
    def hook(e, b):
        if (e, b) == (epoch, batch):
            raise KeyboardInterrupt  # as a second Ctrl-C: stop at once, nothing saved
    return hook


def after_epoch(n: int):
    def log(msg: str) -> None:
        if re.search(rf"epoch {n}/", msg) and "train acc" in msg:
            raise KeyboardInterrupt
    return log


# --- frozen parameters -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_frozen_parameter_stays_bit_identical(backend):
    require_backend(backend)  # fails when a backend CI builds is missing (EQKERN_CPP=0 opts out)
    model = small_crnn()
    model.connections[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=8, t_free=3, t_nudge=2, lr=0.1, weight_decay=1e-3,
                      backend=backend)
    train(model, fake_data((1, 16, 16), n=16), cfg, **QUIET)
    after = model.state_dict()
    assert torch.equal(after["connections.0.weight"], before["connections.0.weight"])
    assert not torch.equal(after["out.weight"], before["out.weight"])


def test_frozen_parameters_are_in_no_group():
    from eqkern.training.optim import make_optimizer

    model = small_crnn()
    model.connections[1].bias.requires_grad_(False)
    opt = make_optimizer(model, TrainConfig())
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.connections[1].bias) not in grouped
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


# --- resume refuses another run's checkpoint --------------------------------------------------

@pytest.mark.parametrize("change,field", [
    ({"preset": "vgg7-le-cifar10"}, "name"), ({"beta": 0.25}, "beta"), ({"seed": 1}, "seed"),
    ({"t_free": 3}, "t_free"), ({"dataset": "cifar10_subset"}, "dataset"), ({"width": 1 / 16}, "width"),
])
def test_resume_refuses_another_config(tmp_path, change, field):
    data = fake_data(n=8)
    train_vgg("vgg5-ce-cifar10", data=data, out_dir=tmp_path, **QUIET, **TINY)
    change = dict(change)
    preset = change.pop("preset", "vgg5-ce-cifar10")
    with pytest.raises(CheckpointMismatch, match=rf"\b{field} is .* there and .* here"):
        train_vgg(preset, data=data, out_dir=tmp_path, resume=True, **QUIET, **{**TINY, **change})
    # epochs and backend may change: a run is extended
    res = train_vgg("vgg5-ce-cifar10", data=data, out_dir=tmp_path, resume=True, **QUIET,
                    **{**TINY, "epochs": 2})
    assert [h["epoch"] for h in res.history] == [1, 2]


def test_train_resume_refuses_another_model_or_beta(tmp_path):
    data = fake_data((1, 16, 16), n=8)
    cfg = TrainConfig(epochs=1, batch_size=8, t_free=2, t_nudge=1)
    train(small_crnn(), data, cfg, out_dir=tmp_path, **QUIET)
    with pytest.raises(CheckpointMismatch, match="beta is 0.5 there and 0.3 here"):
        train(small_crnn(), data, TrainConfig(epochs=1, batch_size=8, t_free=2, t_nudge=1, beta=0.3), out_dir=tmp_path,
              resume=True, **QUIET)
    other = CRNN((1, 16, 16), [Conv(6), Conv(8)], 10)
    with pytest.raises(CheckpointMismatch, match=r"another model: model\.connections\.0\.weight"):
        train(other, data, cfg, out_dir=tmp_path, resume=True, **QUIET)


# --- resume equals an uninterrupted run -------------------------------------------------------

def _vgg(out, data, **kw):
    return train_vgg("vgg5-ce-cifar10", data=data, out_dir=out, **{**TINY, "epochs": 2},
                     **{"progress": False, "log": lambda s: None, **kw})


@pytest.mark.parametrize("how", ["boundary", "at_once"])
def test_train_vgg_resume_equals_uninterrupted(tmp_path, how):
    data = fake_data()
    a = _vgg(tmp_path / "a", data)
    with pytest.raises(KeyboardInterrupt):
        if how == "boundary":
            _vgg(tmp_path / "b", data, log=after_epoch(1))
        else:
            _vgg(tmp_path / "b", data, on_batch=raise_at(1, 1))
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    b = _vgg(tmp_path / "b", data, resume=True)
    same_runs(a.model.state_dict(), a.history, b.model.state_dict(), b.history)


@pytest.mark.parametrize("how", ["mid_epoch", "boundary"])
def test_train_resume_equals_uninterrupted(tmp_path, how):
    data = fake_data((1, 16, 16))
    cfg = TrainConfig(epochs=2, batch_size=8, t_free=3, t_nudge=2, lr=0.05, estimator="random_sign")
    a_model = small_crnn()
    a = train(a_model, data, cfg, out_dir=tmp_path / "a", **QUIET)
    with pytest.raises(KeyboardInterrupt):
        if how == "mid_epoch":
            train(small_crnn(), data, cfg, out_dir=tmp_path / "b", on_batch=sigint_at(1, 0), **QUIET)
        else:
            train(small_crnn(), data, cfg, out_dir=tmp_path / "b", progress=False, log=after_epoch(1))
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and (ck["position"] is None) == (how == "boundary")
    b_model = small_crnn()
    b = train(b_model, data, cfg, out_dir=tmp_path / "b", resume=True, **QUIET)
    same_runs(a_model.state_dict(), a, b_model.state_dict(), b)


def test_a_mid_epoch_checkpoint_from_before_the_spread_averages_the_batches_run_since(tmp_path):
    """A position saved before ``state_spread`` was kept (its sums lack it) resumes; that epoch's
    spread is the mean over the batches run after the resume, the rest of the record unchanged."""
    data = fake_data((1, 16, 16), n=24)  # 3 batches an epoch
    cfg = TrainConfig(epochs=2, batch_size=8, t_free=3, t_nudge=2, lr=0.05)
    batches = []
    a = train(small_crnn(), data, cfg, out_dir=tmp_path / "a", callbacks=_BatchLog(batches), **QUIET)
    with pytest.raises(KeyboardInterrupt):
        train(small_crnn(), data, cfg, out_dir=tmp_path / "b", on_batch=sigint_at(1, 0), **QUIET)
    path = tmp_path / "b" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    for key in ("state_spread", "spread_batches"):
        del ck["position"]["acc"][key]
    torch.save(ck, path)
    b = train(small_crnn(), data, cfg, out_dir=tmp_path / "b", resume=True, **QUIET)
    since = [r["state_spread"] for r in batches if r["epoch"] == 2 and r["batch"] > 1]
    want = [sum(v) / len(since) for v in zip(*since)]
    print("resumed epoch's spread", b[1]["state_spread"], "of batches 2-3", want)
    assert b[1]["state_spread"] == pytest.approx(want, rel=1e-6)
    assert b[1]["state_abs"] == pytest.approx(a[1]["state_abs"], rel=1e-6)
    assert {k: v for k, v in b[0].items() if k not in DROP} == {
        k: v for k, v in a[0].items() if k not in DROP}


class _BatchLog(Callback):
    def __init__(self, out: list):
        self.out = out

    def on_batch_end(self, record):
        self.out.append(record)


@pytest.mark.parametrize("how", ["mid_epoch", "boundary"])
def test_train_teacher_resume_equals_uninterrupted(tmp_path, how):
    data = fake_data()
    kw = dict(epochs=2, width=1 / 32, batch_size=8, progress=False)
    a = train_teacher("vgg7", data, out=tmp_path / "a.pt", log=lambda s: None, **kw)
    with pytest.raises(KeyboardInterrupt):
        if how == "mid_epoch":
            train_teacher("vgg7", data, out=tmp_path / "b.pt", log=lambda s: None,
                          on_batch=sigint_at(0, 1), **kw)
        else:
            train_teacher("vgg7", data, out=tmp_path / "b.pt", log=after_epoch(1), **kw)
    b = train_teacher("vgg7", data, out=tmp_path / "b.pt", log=lambda s: None, resume=True, **kw)
    same_runs(a.model.state_dict(), a.history, b.model.state_dict(), b.history)
    t = load_teacher(tmp_path / "b.pt")
    for k, v in t.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert (tmp_path / "b.metrics.jsonl").exists() and (tmp_path / "b.prev.pt").exists()


# --- checkpoints -----------------------------------------------------------------------------

def test_atomic_write_fsyncs_file_and_folder_and_keeps_prev(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})
    checkpoint.save(path, {"epoch": 2})
    assert synced.count(False) == 2 and synced.count(True) == 2  # each file, then its folder
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, broken, keep_prev=True)
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_one_atomic_write_helper():
    """Every write of the training engine and the tools goes through checkpoint.atomic_write."""
    root = Path(checkpoint.__file__).parents[1]
    for sub in ("training", "tools"):
        for f in (root / sub).glob("*.py"):
            if f.name != "checkpoint.py":
                src = f.read_text()
                assert "os.replace" not in src and "torch.save(" not in src, f


def test_old_or_foreign_checkpoint_is_named(tmp_path):
    torch.save({"format": "eqkern.train_vgg/1"}, tmp_path / "checkpoint.pt")
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*format eqkern.checkpoint/2 "
                                           r"\(found 'eqkern.train_vgg/1'\)"):
        train(small_crnn(), fake_data((1, 16, 16), n=8), TrainConfig(epochs=1), out_dir=tmp_path,
              resume=True, **QUIET)


# --- the run folder and the schedule on resume ------------------------------------------------

def test_outputs_lock_beside_their_checkpoint(tmp_path):
    from eqkern.training.engine import Outputs
    from eqkern.training.run_folder import Outputs as RunOutputs

    assert Outputs is RunOutputs  # still importable from the engine
    assert Outputs.folder(tmp_path / "run").lock == tmp_path / "run" / "run.lock"
    beside = Outputs.beside(tmp_path / "t.pt")
    assert beside.lock == tmp_path / "t.pt.lock" and beside.place == tmp_path / "t.pt"


def test_run_lock_released_on_keyboard_interrupt(tmp_path):
    from eqkern.errors import RunFolderError
    from eqkern.training.run_folder import RunLock

    lock = tmp_path / "run.lock"
    with pytest.raises(KeyboardInterrupt):
        with RunLock(lock, "first"):
            with pytest.raises(RunFolderError, match=rf"pid {os.getpid()} .*command: first"):
                with RunLock(lock, "second"):
                    pass
            raise KeyboardInterrupt
    assert not (tmp_path / "run.lock.owner.json").exists()
    with RunLock(lock):  # free again
        pass


def test_extended_run_follows_the_new_cosine_period(tmp_path):
    """epochs 1 -> 2 on resume (cosine_epochs None): the period T_max becomes 2, so epoch 2 runs
    at the rate of an uninterrupted 2-epoch run, not at the end of the old 1-epoch cosine."""
    data = fake_data((1, 16, 16), n=16)
    kw = dict(batch_size=8, t_free=2, t_nudge=1, lr=0.05)
    straight = train(small_crnn(), data, TrainConfig(epochs=2, **kw), out_dir=tmp_path / "a", **QUIET)
    train(small_crnn(), data, TrainConfig(epochs=1, **kw), out_dir=tmp_path / "b", **QUIET)
    logs: list[str] = []
    resumed = train(small_crnn(), data, TrainConfig(epochs=2, **kw), out_dir=tmp_path / "b",
                    resume=True, progress=False, log=logs.append)
    assert resumed[1]["lr"] == pytest.approx(straight[1]["lr"], rel=1e-12)
    assert any("T_max 1 -> 2" in s for s in logs) and any("epochs 1 -> 2" in s for s in logs)


def test_a_checkpoint_from_before_a_new_field_resumes_as_it_ran():
    """``solver`` did not exist when older checkpoints were written: absent means "plain". The
    changed default of ``tol`` (None -> 1e-3) is a change, refused with the hint."""
    from eqkern.training import checkpoint
    from eqkern.training.checkpoint import CheckpointMismatch

    old = {"t_free": 250, "tol": None}
    assert checkpoint.changed_fields(old, {"t_free": 250, "tol": None, "solver": "plain"}) == []
    assert checkpoint.changed_fields(old, {"t_free": 250, "tol": None,
                                           "solver": "anderson"}) == ["solver"]
    checkpoint.check_compatible(old, {"t_free": 250, "tol": None, "solver": "plain"})
    with pytest.raises(CheckpointMismatch, match=r"tol is null there and 0.001 here; resume "
                                                 r"refused .*allow_changes=\{'tol'\}"):
        checkpoint.check_compatible(old, {"t_free": 250, "tol": 1e-3, "solver": "plain"})


@pytest.mark.parametrize("solver", ["plain", "anderson"])
def test_training_runs_the_stop_and_solver_it_is_given(solver):
    """tol / check_every / solver reach every phase of training (and evaluation): fewer steps than
    the caps, recorded per epoch, finite losses."""
    data = fake_data((3, 16, 16), n=16)
    model = CRNN((3, 16, 16), [Conv(4), Conv(6)], 10)
    cfg = TrainConfig(epochs=1, batch_size=8, t_free=40, t_nudge=12, beta=0.3, tol=1e-3,
                      check_every=2, solver=solver)
    hist = train(model, data, cfg, **QUIET)
    cap = 2 * (40 + 2 * 12)  # two batches of free + two nudged phases at their caps
    print(f"{solver}: {hist[-1]['settle_steps']} of at most {cap} steps")
    assert 0 < hist[-1]["settle_steps"] < cap
    assert torch.isfinite(torch.tensor(hist[-1]["train_loss"]))
