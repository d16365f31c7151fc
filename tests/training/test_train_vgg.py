"""train_vgg: every preset trains a step, resume equals uninterrupted, checkpoints, divergence,
the teacher and the CLI. Tiny widths and phases keep this fast."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from eqkern.cli import main
from eqkern.model.feedforward import feedforward_logits
from eqkern.training.presets import PRESETS, get_preset
from eqkern.training.teacher import build_teacher, load_teacher, teacher_features, train_teacher
from eqkern.training.train_preset import train_vgg
from training_helpers import TINY, _one_thread, fake_data  # noqa: F401 (_one_thread: autouse)


def _setup(name: str, n: int = 8):
    p = get_preset(name)
    shape = (1, 28, 28) if "mnist" in p.dataset else (3, 32, 32)
    classes = 100 if p.dataset == "cifar100" else 10
    teacher = build_teacher(p.teacher_arch, classes, shape, width=TINY["width"]) if p.teacher_arch else None
    return fake_data(shape, n, classes), teacher


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_a_training_step(name):
    data, teacher = _setup(name)
    res = train_vgg(name, data=data, teacher=teacher, progress=False, log=lambda s: None,
                    on_batch=lambda e, b: None, **TINY)
    rec = res.history[0]
    assert rec["epoch"] == 1 and 0 <= rec["test_acc"] <= 100 and rec["settle_steps"] > 0
    assert len(rec["state_abs"]) == res.model.num_layers
    # the read-out always moves; lower layers only once the nudge has reached them
    assert rec["update_abs"][-1] > 0 and all(v >= 0 for v in rec["update_abs"])
    p = res.preset
    if p.augment == "none":  # κ weighs LE / KD signals only: none to log without them
        assert "kappa" not in rec
    else:
        assert rec["kappa"] == pytest.approx(p.kappa) and res.model.kappa == rec["kappa"]


@pytest.mark.parametrize("method", ["bptt", "bp"])
def test_bptt_and_bp_train_the_same_network(method):
    """BPTT through the dynamics and backprop of the feed-forward pass (the ceiling of Laborieux
    Table 1) run on a preset's CRNN; bp's test accuracy is that of the feed-forward pass."""
    data, _ = _setup("vgg5-ce-cifar10", n=16)
    res = train_vgg("vgg5-ce-cifar10", data=data, progress=False, log=lambda s: None,
                    method=method, **TINY)
    rec = res.history[0]
    assert len(rec["state_abs"]) == res.model.num_layers and rec["update_abs"][-1] > 0
    if method == "bp":  # one pass reaches every layer (BPTT through 2 steps only the top ones)
        assert all(v > 0 for v in rec["update_abs"])
        with torch.no_grad():
            pred = feedforward_logits(res.model, data.x_test).argmax(1)
        want = 100.0 * (pred == data.y_test).float().mean().item()
        print(f"bp: test acc {rec['test_acc']} (engine) vs {want} (feed-forward pass)")
        assert rec["test_acc"] == pytest.approx(want) and rec["settle_steps"] == 0
    else:
        assert rec["settle_steps"] == TINY["t_free"] * rec["batches"]


def test_a_feed_forward_run_of_an_le_preset_logs_no_kappa():
    """bp trains the feed-forward pass, which has no LE signals for κ to weigh."""
    data, _ = _setup("vgg7-le-cifar10", n=16)
    res = train_vgg("vgg7-le-cifar10", data=data, progress=False, log=lambda s: None,
                    method="bp", **TINY)
    print(sorted(res.history[0]))
    assert "kappa" not in res.history[0] and res.history[0]["update_abs"][-1] > 0


def test_any_torch_optimizer_and_missing_teacher():
    data, _ = _setup("vgg5-ce-cifar10")
    res = train_vgg("vgg5-ce-cifar10", data=data, optimizer=torch.optim.Adam, progress=False,
                    log=lambda s: None, **TINY)
    assert len(res.history) == 1 and res.history[0]["lr"][:2] == [0.25, 0.15]
    with pytest.raises(ValueError, match="vgg19 teacher.*train_teacher.*"
                                         "eqkern teacher --arch vgg19 .*--teacher PATH"):
        train_vgg("vgg7-kd-cifar10", data=data, progress=False, **TINY)


def _kdw_run(out, data, teacher, **kw):
    return train_vgg("vgg7-kdw-cifar10", data=data, teacher=teacher, out_dir=out, progress=False,
                     log=lambda s: None, **{**TINY, "epochs": 2, "batch_size": 8}, **kw)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """Ctrl-C (a real SIGINT) during epoch 1 saves its position; resume ends bit-identical."""
    data, teacher = _setup("vgg7-kdw-cifar10", n=24)
    straight = _kdw_run(tmp_path / "a", data, teacher)

    def ctrl_c(epoch, batch):
        if (epoch, batch) == (0, 1):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        _kdw_run(tmp_path / "b", data, teacher, on_batch=ctrl_c)
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 0 and ck["position"]["batch"] == 1
    resumed = _kdw_run(tmp_path / "b", data, teacher, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    drop = ("seconds", "train_seconds", "eval_seconds")
    assert ([{k: v for k, v in h.items() if k not in drop} for h in straight.history]
            == [{k: v for k, v in h.items() if k not in drop} for h in resumed.history])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
    assert (tmp_path / "b" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_corrupt_checkpoint_falls_back_to_prev_and_is_kept(tmp_path):
    data, _ = _setup("vgg7-le-cifar10")
    kw = dict(data=data, out_dir=tmp_path, progress=False, **{**TINY, "epochs": 2})
    train_vgg("vgg7-le-cifar10", log=lambda s: None, **kw)
    ck, prev = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    blob = ck.read_bytes()[:100]
    ck.write_bytes(blob)  # truncated: resume falls back to the previous epoch's checkpoint
    logs = []
    res = train_vgg("vgg7-le-cifar10", resume=True, log=logs.append, **kw)
    print(logs)
    assert any(f"cannot read {ck}" in s and str(prev) in s for s in logs)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert (tmp_path / "checkpoint.corrupt.pt").read_bytes() == blob
    assert torch.load(ck, weights_only=True)["epoch"] == 2
    ck.write_bytes(blob)
    prev.write_bytes(blob)
    with pytest.raises(RuntimeError, match=r"neither .*checkpoint\.pt .*nor .*checkpoint\.prev\.pt"):
        train_vgg("vgg7-le-cifar10", resume=True, log=lambda s: None, **kw)
    assert ck.read_bytes() == blob and prev.read_bytes() == blob


def test_divergence_names_the_layer_and_keeps_the_checkpoint(tmp_path):
    data, _ = _setup("vgg5-ce-cifar10", n=16)

    def poison(epoch, batch):
        if epoch == 1:
            with torch.no_grad():
                model_ref[0].connections[2].weight.fill_(float("nan"))

    model_ref = []
    import eqkern.training.build as vgg

    orig = vgg.build_model
    vgg.build_model = lambda *a, **k: model_ref.append(orig(*a, **k)) or model_ref[-1]
    try:
        with pytest.raises(FloatingPointError, match=r"diverged: state layer \d \(Conv.*epoch 2, batch 2"):
            train_vgg("vgg5-ce-cifar10", data=data, out_dir=tmp_path, progress=False,
                      log=lambda s: None, on_batch=poison, **{**TINY, "epochs": 3})
    finally:
        vgg.build_model = orig
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_teacher_train_save_load_features(tmp_path):
    data = fake_data(n=16)
    res = train_teacher("vgg7", data, epochs=1, out=tmp_path / "t.pt", width=1 / 32, batch_size=8,
                        progress=False, log=lambda s: None)
    t = load_teacher(tmp_path / "t.pt")
    feats = teacher_features(t, data.x_test[:3])
    assert [tuple(f.shape) for f in feats] == [(3, 2, 16, 16), (3, 4, 8, 8), (3, 8, 4, 4),
                                               (3, 16, 2, 2), (3, 16, 1, 1)]
    assert all(not f.requires_grad for f in feats) and len(res.history) == 1
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read teacher checkpoint"):
        load_teacher(tmp_path / "bad.pt")


def test_cli_presets_and_train(tmp_path, capsys):
    assert main(["presets"]) == 0
    assert "vgg12-kd-cifar100" in capsys.readouterr().out
    out = tmp_path / "run"
    argv = ["train", "--preset", "frernn-conv-mnist", "--epochs", "1", "--out", str(out),
            "--no-progress", "--set", "dataset=mnist_subset", "--set", "train_size=32",
            "--set", "test_size=16", "--set", "width=1/8", "--set", "t_free=2", "--set", "t_nudge=1",
            "--set", "batch_size=16"]
    assert main(argv) == 0
    assert json.loads((out / "metrics.jsonl").read_text())["epoch"] == 1
    assert main(argv + ["--resume"]) == 0  # already done: resumes at the end, trains nothing
    assert main(["train", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_epoch_records_the_free_states_mean_and_spread_over_the_batch():
    """One batch of the whole (fake) training set at lr 1e-30 (it moves no float32 weight), so
    the network the engine settled is the one it returns: its free phase again, the mean |state| and the spread (population std
    over the images, averaged over units) computed here in float64."""
    from eqkern.dynamics.settle import free_phase

    data = fake_data((1, 28, 28), n=16)
    res = train_vgg("demo-mnist", data=data, progress=False, log=lambda s: None,
                    **{**TINY, "batch_size": 16, "t_free": 6}, lr=(1e-30,), momentum=0.0)
    rec, cfg = res.history[0], res.preset
    with torch.no_grad():
        state = free_phase(res.model, data.x_train, cfg.t_free, backend="torch", tol=cfg.tol,
                           check_every=cfg.check_every, solver=cfg.solver)
    flat = [s.double().flatten(1) for s in state]
    want_abs = [f.abs().mean().item() for f in flat]
    want_spread = [(f - f.mean(0)).pow(2).mean(0).sqrt().mean().item() for f in flat]
    print("state_abs", rec["state_abs"], want_abs, "state_spread", rec["state_spread"], want_spread)
    assert rec["state_abs"] == pytest.approx(want_abs, rel=1e-5)
    assert rec["state_spread"] == pytest.approx(want_spread, rel=1e-5)
    assert all(v > 0 for v in rec["state_spread"])
