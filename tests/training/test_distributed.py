"""Data-parallel training under torchrun, on CPU with gloo: two ranks against one.

Each case launches ``python -m torch.distributed.run --standalone`` on ``ddp_worker.py`` (the demo
network, EP with random-sign nudging and crop + flip, so that the shared generators matter) and
compares what the ranks wrote. The unit parts of :mod:`eqkern.training.distributed` (shares,
buckets, the batch-size check) are tested in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqkern.errors import ArgumentError
from eqkern.training import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(nproc: int, out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), "--out", str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def weights(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(out / f"weights-rank{rank}.pt", weights_only=True)


def max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One rank for 2 epochs; two ranks for 2 epochs; two ranks for 1 epoch then resumed to 2;
    two ranks stopped by a Ctrl-C on rank 0 in epoch 1, then resumed mid-epoch."""
    root = tmp_path_factory.mktemp("ddp")
    done = {}
    cases = (("one", 1, [("--epochs", "2")]), ("two", 2, [("--epochs", "2")]),
             ("resumed", 2, [("--epochs", "1"), ("--epochs", "2", "--resume")]),
             ("interrupted", 2, [("--epochs", "2", "--interrupt-batch", "2"),
                                 ("--epochs", "2", "--resume")]))
    for name, nproc, steps in cases:
        for i, args in enumerate(steps):
            res = torchrun(nproc, root / name, *args)
            expect_ok = "--interrupt-batch" not in args
            assert (res.returncode == 0) == expect_ok, (
                f"{name} {args}: rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        done[name] = root / name
    return done


def test_two_ranks_equal_one_rank(runs):
    one, two = weights(runs["one"]), weights(runs["two"])
    diff = max_rel_diff(two, one)
    h1 = json.loads((runs["one"] / "history-rank0.json").read_text())
    h2 = json.loads((runs["two"] / "history-rank0.json").read_text())
    print(f"2 ranks vs 1 rank after 2 epochs (6 EP steps): max relative weight difference {diff:.3g}; "
          f"test acc {[h['test_acc'] for h in h1]} vs {[h['test_acc'] for h in h2]}; train loss "
          f"{[h['train_loss'] for h in h1]} vs {[h['train_loss'] for h in h2]}")
    assert all(torch.isfinite(v).all() for v in two.values())
    assert diff < 1e-5, diff
    for a, b in zip(h1, h2):
        assert a["test_acc"] == b["test_acc"] and a["train_acc"] == b["train_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
        assert a["state_abs"] == pytest.approx(b["state_abs"], rel=1e-5)
        assert a["update_abs"] == pytest.approx(b["update_abs"], rel=1e-5)


def test_every_rank_ends_with_the_same_weights(runs):
    r0, r1 = weights(runs["two"], 0), weights(runs["two"], 1)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


def test_only_rank_zero_writes_the_run_folder(runs):
    saves = [json.loads((runs["two"] / f"saves-rank{r}.json").read_text()) for r in (0, 1)]
    lines = (runs["two"] / "run" / "metrics.jsonl").read_text().splitlines()
    print(f"checkpoint writes per rank: {saves}; metrics lines: {len(lines)}")
    assert saves == [2, 0]
    assert len(lines) == 2


def test_resume_under_torchrun_equals_an_uninterrupted_run(runs):
    a, b = weights(runs["resumed"]), weights(runs["two"])
    for k in b:
        assert torch.equal(a[k], b[k]), f"{k}: {float((a[k] - b[k]).abs().max())}"
    ha = json.loads((runs["resumed"] / "history-rank1.json").read_text())
    hb = json.loads((runs["two"] / "history-rank1.json").read_text())
    assert [h["test_acc"] for h in ha] == [h["test_acc"] for h in hb]


def test_ctrl_c_on_one_rank_stops_all_after_the_same_batch_and_resumes_bit_identically(runs):
    a, b = weights(runs["interrupted"]), weights(runs["two"])
    ck_lines = (runs["interrupted"] / "run" / "metrics.jsonl").read_text().splitlines()
    print(f"interrupted + resumed: {len(ck_lines)} metrics lines; max weight difference "
          f"{max(float((a[k] - b[k]).abs().max()) for k in b):.3g}")
    for k in b:
        assert torch.equal(a[k], b[k]), k
    for r in (0, 1):
        ha = json.loads((runs["interrupted"] / f"history-rank{r}.json").read_text())
        hb = json.loads((runs["two"] / f"history-rank{r}.json").read_text())
        for x, y in zip(ha, hb):
            for key in ("train_acc", "train_loss", "test_acc", "state_abs", "update_abs",
                        "settle_steps"):
                assert x[key] == y[key], (r, key, x[key], y[key])


def test_a_failing_rank_stops_the_others_with_its_reason(tmp_path):
    res = torchrun(2, tmp_path, "--fail-rank", "1", "--fail-batch", "2", timeout=180)
    errors = {r: (tmp_path / f"error-rank{r}.txt").read_text() for r in (0, 1)
              if (tmp_path / f"error-rank{r}.txt").exists()}
    print(f"rc {res.returncode}; errors: {errors}")
    assert res.returncode != 0
    assert errors[1] == "RuntimeError: injected failure on rank 1"
    assert errors[0].startswith("RankFailure: rank 1 of 2 failed at epoch 1, batch 2 "
                                "(RuntimeError: injected failure on rank 1)"), errors[0]


# --- in-process parts ------------------------------------------------------------------------

def test_shares_cover_the_batch_in_order():
    x = torch.arange(11)
    parts = [distributed.Ranks(r, 3).shard(x)[0] for r in range(3)]
    print([p.tolist() for p in parts])
    assert torch.equal(torch.cat(parts), x)
    assert [len(p) for p in parts] == [4, 4, 3]


def test_buckets_split_by_size_and_dtype(monkeypatch):
    monkeypatch.setattr(distributed, "BUCKET_BYTES", 64)
    grads = [torch.zeros(10), torch.zeros(10), torch.zeros(3, dtype=torch.float64), torch.zeros(20)]
    sizes = [[g.numel() for g in b] for b in distributed._buckets(grads)]
    print(sizes)
    assert sizes == [[10], [10], [3], [20]]
    monkeypatch.setattr(distributed, "BUCKET_BYTES", 2**20)
    assert [[g.numel() for g in b] for b in distributed._buckets(grads)] == [[10, 10], [3], [20]]


@pytest.mark.parametrize("batch_size, n, fits", [(4, 8, True), (1, 8, False), (4, 9, False),
                                                 (4, 10, True)])
def test_batches_every_rank_can_share(batch_size, n, fits):
    ranks = distributed.Ranks(0, 2)
    if fits:
        ranks.check_batches(batch_size, n)
        return
    with pytest.raises(ArgumentError, match="cannot be shared by 2 ranks") as err:
        ranks.check_batches(batch_size, n)
    print(err.value)


def test_one_process_is_not_parallel(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = distributed.from_env(torch.device("cpu"))
    assert (ranks.rank, ranks.world, ranks.main, ranks.parallel) == (0, 1, True, False)
    with pytest.raises(ValueError, match="boom"):
        ranks.agree(ValueError("boom"), False, "here")
    assert ranks.agree(None, True, "here") is True


def test_eqkern_train_under_torchrun_speaks_and_writes_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "eqkern", "train", "--preset", "demo-mnist", "--set", "train_size=64", "--set",
           "test_size=32", "--set", "batch_size=16", "--set", "t_free=4", "--set", "t_nudge=2",
           "--set", "width=1/4", "--epochs", "2", "--backend", "torch", "--device", "cpu",
           "--out", str(tmp_path / "run"), "--no-progress", "--tensorboard", str(tmp_path / "tb")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    print(res.stdout, res.stderr[-2000:])
    assert res.returncode == 0
    assert res.stdout.count("eqkern train: demo-mnist") == 1
    assert res.stdout.count("final test accuracy") == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert len(list((tmp_path / "tb").iterdir())) == 1
