"""``--tensorboard DIR`` of ``eqkern demo | train | teacher``: a TensorBoardCallback for the run."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from eqkern import cli


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI machine: tiny convs spend two threads in OpenMP waits
    yield
    torch.set_num_threads(n)


def _capture(monkeypatch, target: str, result) -> dict:
    """Replace the entry point ``target`` by one that records its keywords."""
    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        return result

    monkeypatch.setattr(target, fake)
    return seen


TRAIN = ["train", "--preset", "demo-mnist", "--epochs", "1", "--no-progress"]
TEACHER = ["teacher", "--arch", "vgg7", "--dataset", "mnist_subset", "--epochs", "1",
           "--no-progress"]


@pytest.mark.parametrize("argv,target,result", [
    (TRAIN, "eqkern.training.train_preset.train_vgg", SimpleNamespace(history=[])),
    (TEACHER, "eqkern.training.teacher.train_teacher",
     SimpleNamespace(history=[{"test_acc": 50.0}])),
])
def test_train_and_teacher_pass_a_tensorboard_callback(argv, target, result, tmp_path,
                                                       monkeypatch):
    import tensorboard  # noqa: F401 - a test dependency (make test installs it): fail, not skip
    from eqkern.training.tensorboard import TensorBoardCallback

    seen = _capture(monkeypatch, target, result)
    out = ["--out", str(tmp_path / ("t.pt" if argv is TEACHER else "run"))]
    assert cli.main(argv + out + ["--tensorboard", str(tmp_path / "tb")]) == 0
    (cb,) = seen["callbacks"]
    assert isinstance(cb, TensorBoardCallback) and cb.log_dir == str(tmp_path / "tb")
    assert cb._closed  # by the command, though this fake entry point never ran the engine

    seen.clear()
    assert cli.main(argv + out) == 0
    assert "callbacks" not in seen  # without the option: the entry point's own default


def test_demo_writes_an_event_file(tmp_path, capsys):
    import tensorboard  # noqa: F401 - a test dependency (make test installs it): fail, not skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    # backend torch: this tests the logging, not the backends (tests/backends compares those)
    rc = cli.main(["demo", "--epochs", "1", "--train-size", "32", "--test-size", "16",
                   "--batch-size", "16", "--t-free", "2", "--t-nudge", "1", "--no-progress",
                   "--backend", "torch", "--out", str(tmp_path / "run"),
                   "--tensorboard", str(tb)])
    cap = capsys.readouterr()
    print(cap.out[-500:], cap.err[-2000:])
    assert rc == 0
    assert [p.name.startswith("events.out.tfevents.") for p in tb.iterdir()] == [True]
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    print(sorted(tags))
    assert {"accuracy/train", "accuracy/test", "loss/train", "loss/test",
            "settle_steps/per_batch", "lr/group0", "state_abs/layer0", "update_abs/layer0",
            "time/epoch", "batch/loss", "batch/accuracy"} <= tags
    assert [e.step for e in acc.Scalars("accuracy/test")] == [1]
    assert [e.step for e in acc.Scalars("batch/loss")] == [1, 2]


def test_missing_tensorboard_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("data loading started")

    monkeypatch.setattr("eqkern.data.datasets.load_dataset", boom)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    rc = cli.main(["demo", "--epochs", "1", "--out", str(tmp_path / "run"),
                   "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    print(err)
    assert rc == 2
    assert err == ("eqkern demo: error: TensorBoard logging needs the tensorboard package: pip "
                   "install 'eqkern[tensorboard]' (or pip install tensorboard)\n")
    assert not (tmp_path / "tb").exists() and not (tmp_path / "run").exists()
