"""Training callbacks (eqkern.training.callbacks) and the TensorBoard sink, event files read back."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from eqkern.errors import ArgumentError, ArgumentTypeError, EqkernError
from eqkern.training.callbacks import Callback, CallbackList

from training_helpers import _one_thread  # noqa: F401 (autouse)


class Recorder(Callback):
    """Every call, in order, with its record."""

    def __init__(self, name: str = "rec", log: list | None = None) -> None:
        self.name, self.calls = name, log if log is not None else []

    def on_batch_end(self, record):
        self.calls.append((self.name, "batch", record))

    def on_epoch_end(self, record):
        self.calls.append((self.name, "epoch", record))

    def close(self):
        self.calls.append((self.name, "close", None))


class EpochOnly(Callback):
    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_epoch_end(self, record):
        self.epochs.append(record)


BATCH = {"epoch": 1, "batch": 1, "step": 1, "examples": 8, "loss": 2.5, "acc": 12.5,
         "settle_steps": 3, "lr": [0.1, 0.05], "kappa": 1.0, "state_abs": [0.5, 0.25],
         "update_abs": [1e-3, 2e-3, 3e-3]}


def _epoch(epoch: int, test: bool = True) -> dict:
    """A synthetic epoch record of a CRNN with separate feedback weights (3 state layers)."""
    return {"epoch": epoch, "kappa": 0.5 * epoch, "lr": [0.1 / epoch, 0.05 / epoch],
            "train_acc": 40.0 + epoch, "train_loss": 2.0 / epoch, "train_seconds": 3.0 + epoch,
            "settle_steps": 120 * epoch, "settle_steps_per_batch": 12.5 + epoch,
            "test_acc": 30.0 + epoch if test else None, "test_loss": 2.5 / epoch if test else None,
            "eval_seconds": 0.5, "seconds": 3.5 + epoch,
            "state_abs": [0.1 * epoch, 0.2 * epoch, 0.3 * epoch],
            "state_spread": [0.05 * epoch, 0.04 * epoch, 0.03 * epoch],
            "update_abs": [1e-3 * epoch, 2e-3 * epoch, 3e-3 * epoch, 4e-3 * epoch],
            "weight_angle": [10.0 + epoch, 20.0 + epoch]}


# --- CallbackList ----------------------------------------------------------------------------

def test_none_and_empty_are_no_callbacks():
    for value in (None, [], ()):
        cbs = CallbackList(value)
        assert len(cbs) == 0 and not cbs.wants_batches
        cbs.on_batch_end(BATCH)
        cbs.on_epoch_end(_epoch(1))
        cbs.close()


def test_calls_in_order_and_close_once():
    log: list = []
    a, b = Recorder("a", log), Recorder("b", log)
    cbs = CallbackList([a, b])
    assert cbs.wants_batches and list(cbs) == [a, b]
    cbs.on_batch_end(BATCH)
    cbs.on_epoch_end(_epoch(1))
    cbs.close()
    cbs.close()  # the engine's finally may follow another close: nothing twice
    assert [(n, h) for n, h, _ in log] == [("a", "batch"), ("b", "batch"), ("a", "epoch"),
                                          ("b", "epoch"), ("a", "close"), ("b", "close")]
    assert log[0][2] == BATCH and log[2][2] == _epoch(1)


def test_single_callback_generator_and_callbacklist_are_accepted():
    rec = Recorder()
    assert list(CallbackList(rec)) == [rec]
    assert list(CallbackList(cb for cb in [rec])) == [rec]
    assert list(CallbackList(CallbackList([rec]))) == [rec]


def test_plain_callable_gets_epoch_records_only():
    seen: list[dict] = []
    cbs = CallbackList(seen.append)
    assert not cbs.wants_batches  # so the engine skips the batch records' host sync
    cbs.on_batch_end(BATCH)
    cbs.on_epoch_end(_epoch(1))
    cbs.on_epoch_end(_epoch(2))
    cbs.close()
    assert seen == [_epoch(1), _epoch(2)]


def test_wants_batches_follows_the_override():
    assert not CallbackList([EpochOnly(), print]).wants_batches
    assert CallbackList([EpochOnly(), Recorder()]).wants_batches

    class NoBatches(Recorder):
        wants_batches = False  # overrides on_batch_end, but opts out of the records

    quiet = NoBatches()
    cbs = CallbackList([quiet])
    assert not cbs.wants_batches
    cbs.on_batch_end(BATCH)
    assert quiet.calls == []


def test_each_callback_gets_its_own_copy():
    class Mutator(Callback):
        def on_epoch_end(self, record):
            record["train_acc"] = -1.0
            record["lr"].append(99.0)

    after = EpochOnly()
    record = _epoch(1)
    CallbackList([Mutator(), after]).on_epoch_end(record)
    assert record == _epoch(1) and after.epochs == [_epoch(1)]


@pytest.mark.parametrize("value,shown", [
    ("runs/tb", "'runs/tb' (str)"),
    (3, "3 (int)"),
    ({"tb": print}, "{'tb': <built-in function print>} (dict)"),
    ([Recorder(), 3], "3 (int) (in [<"),
])
def test_invalid_callbacks_are_refused(value, shown):
    with pytest.raises(ArgumentTypeError) as info:
        CallbackList(value)
    msg = str(info.value)
    print(msg)
    assert msg.startswith("callbacks must be None, a Callback")
    assert "a function of the epoch record, or a list of those" in msg
    assert f"got {shown}" in msg
    assert isinstance(info.value, TypeError) and isinstance(info.value, EqkernError)


def test_a_callback_class_instead_of_an_instance_is_refused():
    with pytest.raises(ArgumentTypeError, match=r"got the class Recorder; pass an instance, "
                                                r"e.g. Recorder\(\.\.\.\)"):
        CallbackList([Recorder])


def test_an_error_in_a_callback_propagates_naming_it():
    class Broken(Callback):
        def on_epoch_end(self, record):
            raise ValueError("full disk")

    after = EpochOnly()
    with pytest.raises(ValueError, match="full disk") as info:
        CallbackList([Broken(), after]).on_epoch_end(_epoch(1))
    assert "raised by the training callback Broken.on_epoch_end" in info.value.__notes__
    assert after.epochs == []  # training stops there, like any error of the loop


def test_close_closes_all_even_if_some_raise():
    class BadClose(Callback):
        def __init__(self, msg):
            self.msg = msg

        def close(self):
            raise OSError(self.msg)

    log: list = []
    cbs = CallbackList([BadClose("first"), Recorder("a", log), BadClose("second"),
                        Recorder("b", log)])
    with pytest.raises(OSError, match="first") as info:
        cbs.close()
    assert [n for n, h, _ in log if h == "close"] == ["a", "b"]
    notes = "\n".join(info.value.__notes__)
    print(notes)
    assert "raised by BadClose.close()" in notes and "also: OSError: second" in notes


# --- TensorBoard -----------------------------------------------------------------------------

def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``log_dir``: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep all
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    # event files store float32
    return [s for s, _ in a] == [s for s, _ in b] and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for (_, x), (_, y) in zip(a, b))


def test_tensorboard_writes_every_tag(tmp_path):
    import tensorboard  # noqa: F401 - a test dependency (make test installs it): fail, not skip
    from eqkern.training.tensorboard import TensorBoardCallback

    tb = TensorBoardCallback(tmp_path / "tb", batch_every=2)
    cbs = CallbackList([tb])
    assert cbs.wants_batches
    batches = [{**BATCH, "epoch": 1 + (s - 1) // 2, "batch": 1 + (s - 1) % 2, "step": s,
                "loss": 2.0 / s, "acc": 10.0 * s, "settle_steps": 10 + s, "lr": [0.1, 0.05 * s]}
               for s in range(1, 5)]
    cbs.on_batch_end(batches[0])
    cbs.on_batch_end(batches[1])
    cbs.on_epoch_end(_epoch(1))
    cbs.on_batch_end(batches[2])
    cbs.on_batch_end(batches[3])
    cbs.on_epoch_end(_epoch(2, test=False))  # no test data: no test scalars at epoch 2
    cbs.close()

    got = _scalars(tmp_path / "tb")
    e1, e2 = _epoch(1), _epoch(2)
    both = lambda key: [(1, e1[key]), (2, e2[key])]  # noqa: E731
    want = {
        "accuracy/train": both("train_acc"), "accuracy/test": [(1, e1["test_acc"])],
        "loss/train": both("train_loss"), "loss/test": [(1, e1["test_loss"])],
        "kappa": both("kappa"), "settle_steps/per_batch": both("settle_steps_per_batch"),
        "time/epoch": both("seconds"), "time/train": both("train_seconds"),
        "time/eval": both("eval_seconds"),
        **{f"lr/group{i}": [(1, e1["lr"][i]), (2, e2["lr"][i])] for i in range(2)},
        **{f"state_abs/layer{i}": [(1, e1["state_abs"][i]), (2, e2["state_abs"][i])]
           for i in range(3)},
        **{f"state_spread/layer{i}": [(1, e1["state_spread"][i]), (2, e2["state_spread"][i])]
           for i in range(3)},
        **{f"update_abs/layer{i}": [(1, e1["update_abs"][i]), (2, e2["update_abs"][i])]
           for i in range(4)},
        **{f"weight_angle/layer{i + 1}": [(1, e1["weight_angle"][i]), (2, e2["weight_angle"][i])]
           for i in range(2)},
        # batch_every=2: global steps 2 and 4
        "batch/loss": [(2, 1.0), (4, 0.5)], "batch/accuracy": [(2, 20.0), (4, 40.0)],
        "batch/settle_steps": [(2, 12), (4, 14)],
        "batch/lr/group0": [(2, 0.1), (4, 0.1)], "batch/lr/group1": [(2, 0.1), (4, 0.2)],
    }
    print(sorted(got))
    assert sorted(got) == sorted(want)
    for tag, series in want.items():
        assert _close(got[tag], series), (tag, got[tag], series)


def test_tensorboard_flushes_each_epoch_and_skips_what_a_model_lacks(tmp_path):
    """A backprop teacher's record: no κ, states, updates or angles; readable before close()."""
    import tensorboard  # noqa: F401 - a test dependency (make test installs it): fail, not skip
    from eqkern.training.tensorboard import TensorBoardCallback

    tb = TensorBoardCallback(str(tmp_path), batch_every=0)
    assert not tb.wants_batches and not CallbackList(tb).wants_batches
    record = {k: v for k, v in _epoch(1).items()
              if k not in ("kappa", "state_abs", "state_spread", "update_abs", "weight_angle")}
    record["settle_steps"] = record["settle_steps_per_batch"] = 0
    tb.on_batch_end(BATCH)  # batch_every=0: nothing, even if called
    tb.on_epoch_end(record)
    got = _scalars(tmp_path)  # flushed at the epoch end: a crash now would keep epoch 1
    assert sorted(got) == ["accuracy/test", "accuracy/train", "loss/test", "loss/train",
                           "lr/group0", "lr/group1", "settle_steps/per_batch", "time/epoch",
                           "time/eval", "time/train"]
    tb.close()
    tb.close()


def test_tensorboard_checks_its_arguments(tmp_path):
    import tensorboard  # noqa: F401 - a test dependency (make test installs it): fail, not skip
    from eqkern.training.tensorboard import TensorBoardCallback

    with pytest.raises(ArgumentTypeError, match=r"log_dir must be a folder path, got 3 \(int\)"):
        TensorBoardCallback(3)
    with pytest.raises(ArgumentError, match=r"batch_every must be an integer >= 0, got -1"):
        TensorBoardCallback(tmp_path, batch_every=-1)
    with pytest.raises(ArgumentTypeError, match=r"batch_every must be an integer >= 0, got 0.5"):
        TensorBoardCallback(tmp_path, batch_every=0.5)
    assert not list(tmp_path.iterdir())  # checked before the writer makes a file


def test_missing_tensorboard_is_reported_at_construction(tmp_path, monkeypatch):
    from eqkern.training.tensorboard import (INSTALL_HINT, TensorBoardCallback,
                                             TensorBoardMissingError)

    # As if not installed: None in sys.modules makes `import tensorboard` fail, and torch's
    # wrapper module must be imported afresh to try it.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(ImportError) as info:
        TensorBoardCallback(tmp_path / "tb")
    print(info.value)
    assert str(info.value) == ("TensorBoard logging needs the tensorboard package: pip install "
                               "'eqkern[tensorboard]' (or pip install tensorboard)") == INSTALL_HINT
    assert isinstance(info.value, (TensorBoardMissingError, EqkernError))
    assert not (tmp_path / "tb").exists()


def test_a_broken_tensorboard_install_says_why(tmp_path, monkeypatch):
    import builtins

    from eqkern.training.tensorboard import TensorBoardCallback

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("cannot import name 'builder' from 'google.protobuf.internal'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install tensorboard\) \(import failed: "
                                          r"ImportError: cannot import name 'builder'"):
        TensorBoardCallback(tmp_path)


# --- end to end: the engine calls them -------------------------------------------------------

# what the records have at least (the engine may add more)
BATCH_KEYS = {"epoch", "batch", "step", "examples", "loss", "acc", "settle_steps", "lr",
              "state_abs", "state_spread", "update_abs"}
EPOCH_KEYS = {"epoch", "lr", "train_acc", "train_loss", "train_seconds", "settle_steps",
              "settle_steps_per_batch", "test_acc", "test_loss", "eval_seconds", "seconds",
              "state_abs", "state_spread", "update_abs"}


def test_train_calls_the_callbacks(tmp_path):
    import tensorboard  # noqa: F401 - a test dependency (make test installs it): fail, not skip
    from eqkern import TrainConfig, train
    from eqkern.cli import demo_model
    from eqkern.data.datasets import load_dataset
    from eqkern.training.tensorboard import TensorBoardCallback

    data = load_dataset("mnist_subset", limit_train=32, limit_test=16)
    cfg = TrainConfig(epochs=2, batch_size=16, t_free=2, t_nudge=1, backend="torch")
    torch.manual_seed(0)
    model = demo_model()
    rec, epochs_only = Recorder(), []
    hist = train(model, data, cfg, progress=False, log=lambda msg: None,
                 callbacks=[rec, epochs_only.append, TensorBoardCallback(tmp_path / "tb")])

    batches = [r for _, hook, r in rec.calls if hook == "batch"]
    print(batches[0])
    assert [(r["epoch"], r["batch"], r["step"]) for r in batches] == [(1, 1, 1), (1, 2, 2),
                                                                     (2, 1, 3), (2, 2, 4)]
    for r in batches:
        assert BATCH_KEYS <= set(r), BATCH_KEYS - set(r)
        # settle steps: t_free + the two nudged phases of symmetric EP
        assert r["examples"] == 16 and 0 < r["settle_steps"] <= 2 + 2 * 1 and len(r["lr"]) == 3
        assert len(r["state_abs"]) == model.num_layers
        assert len(r["update_abs"]) == len(model.weight_layers())
        assert all(isinstance(v, float) for v in [r["loss"], r["acc"], *r["state_abs"]])
    epochs = [r for _, hook, r in rec.calls if hook == "epoch"]
    assert epochs == epochs_only == hist and EPOCH_KEYS <= set(hist[0])
    # the demo net has no LE / KD signals: no κ weighs anything, so none is logged
    assert not any("kappa" in r for r in batches + hist)
    assert [h for _, h, _ in rec.calls][-1] == "close"

    got = _scalars(tmp_path / "tb")
    assert "kappa" not in got
    for tag in ("accuracy/train", "accuracy/test", "loss/train", "loss/test",
                "settle_steps/per_batch", "lr/group0", "lr/group2", "state_abs/layer0",
                "state_spread/layer1", "update_abs/layer2", "time/epoch"):
        assert [s for s, _ in got[tag]] == [1, 2], tag
    assert _close(got["accuracy/test"], [(h["epoch"], h["test_acc"]) for h in hist])
    assert _close(got["batch/loss"], [(r["step"], r["loss"]) for r in batches])


def test_train_closes_the_callbacks_after_an_error():
    from eqkern import TrainConfig, train
    from eqkern.cli import demo_model
    from eqkern.data.datasets import load_dataset

    class StopAtEpoch1(Recorder):
        def on_epoch_end(self, record):
            super().on_epoch_end(record)
            raise KeyboardInterrupt

    data = load_dataset("mnist_subset", limit_train=16, limit_test=8)
    cb = StopAtEpoch1()
    with pytest.raises(KeyboardInterrupt):
        train(demo_model(), data, TrainConfig(epochs=2, batch_size=16, t_free=2, t_nudge=1,
                                              backend="torch"),
              progress=False, log=lambda msg: None, callbacks=cb)
    assert [h for _, h, _ in cb.calls] == ["batch", "epoch", "close"]
