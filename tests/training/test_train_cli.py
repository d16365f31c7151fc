"""The training loop, checkpoints/resume and the command line, on the embedded MNIST subset."""

from __future__ import annotations

import json

import pytest
import torch

from eqkern import CRNN, Conv, TrainConfig, ep_gradients, settle, train
from eqkern.cli import demo_model, main
from eqkern.data.datasets import load_dataset


@pytest.fixture(scope="module")
def small_data():
    return load_dataset("mnist_subset", limit_train=600, limit_test=200)


def test_ep_training_learns(small_data, tmp_path):
    """A short real EP run must beat chance (10 %) by far: the learning rule has the right sign."""
    torch.manual_seed(0)
    model = demo_model()
    cfg = TrainConfig(epochs=2, batch_size=32, t_free=12, t_nudge=4, beta=0.5, lr=[0.2, 0.1, 0.05])
    hist = train(model, small_data, cfg, out_dir=tmp_path, progress=False)
    print("test accuracy per epoch:", [h["test_acc"] for h in hist])
    assert hist[-1]["test_acc"] > 50.0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]


def test_resume_equals_uninterrupted(small_data, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=100, t_free=5, t_nudge=2, lr=0.05)
    torch.manual_seed(0)
    straight = demo_model()
    train(straight, small_data, cfg, out_dir=tmp_path / "a", progress=False)

    def ctrl_c_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1/"):
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(demo_model(), small_data, cfg, out_dir=tmp_path / "b", progress=False,
              log=ctrl_c_after_first_epoch)
    resumed = demo_model()
    train(resumed, small_data, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        print(name, (p - q).abs().max().item())
        assert torch.equal(p, q)


def test_corrupt_checkpoint_is_reported(small_data, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        train(demo_model(), small_data, TrainConfig(epochs=1), out_dir=tmp_path, resume=True,
              progress=False)


def test_ep_keeps_no_graph():
    """EP must not hold an autograd graph: states come back without grad history."""
    model = CRNN((1, 8, 8), [Conv(3), Conv(4)], 3)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    res = ep_gradients(model, x, y, beta=0.5, t_free=4, t_nudge=2, backend="torch")
    assert all(s.grad_fn is None and not s.requires_grad for s in res.free_state)
    state = settle(model, x, model.init_state(2), 0.5, 3, y, backend="reference")
    assert all(s.grad_fn is None and not s.requires_grad for s in state)


def test_cli_gdu_and_info(capsys, tmp_path):
    assert main(["gdu", "--batch", "4", "--t-free", "40", "--t-nudge", "15",
                 "--png", str(tmp_path / "gdu.png")]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "connections.0.weight" in out and (tmp_path / "gdu.png").exists()
    assert main(["info"]) == 0
    assert "reference" in capsys.readouterr().out


def test_cli_reports_bad_input(capsys):
    assert main(["demo", "--dataset", "imagenet", "--epochs", "1"]) == 2
    assert "imagenet" in capsys.readouterr().err
