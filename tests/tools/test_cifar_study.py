"""bench/cifar_study.py: the commands it runs are valid `eqkern train` commands, the resume state
round-trips through save/restore, and the report reads real metrics into its table and figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cifar_study  # noqa: E402
from eqkern.cli import build_parser  # noqa: E402
from eqkern.training.train_preset import train_vgg  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import TINY, fake_data  # noqa: E402


@pytest.mark.parametrize("study", list(cifar_study.STUDIES))
def test_every_command_parses(study, capsys):
    assert cifar_study.main(["commands", "--study", study]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(cifar_study.STUDIES[study].runs) + len(cifar_study.STUDIES[study].teachers)
    parser = build_parser()
    for line in lines:
        words = line.split(": ", 1)[1].split()[3:]  # after "python -m eqkern"
        args = parser.parse_args(words)  # an unknown option or value would exit here
        print(line)
        assert args.command in ("train", "teacher") and args.resume


def test_save_restore_and_report(tmp_path, capsys):
    runs, keep = tmp_path / "runs", tmp_path / "keep"
    folder = runs / "table1" / "ep-symmetric"
    hist = train_vgg("vgg5-ce-cifar10", data=fake_data(n=16), out_dir=folder, progress=False,
                     log=lambda s: None, **{**TINY, "epochs": 2}).history
    common = ["--study", "table1", "--runs", str(runs), "--keep", str(keep)]
    assert cifar_study.main(["save", *common]) == 0
    assert sorted(p.name for p in (keep / "table1" / "ep-symmetric").iterdir()) == [
        "checkpoint.pt", "metrics.jsonl"]
    restored = tmp_path / "restored"
    assert cifar_study.main(["restore", "--study", "table1", "--runs", str(restored), "--keep", str(keep)]) == 0
    assert (restored / "table1" / "ep-symmetric" / "checkpoint.pt").read_bytes() == (
        folder / "checkpoint.pt").read_bytes()
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    assert cifar_study.main(["report", *common, "--out", str(md), "--png", str(png)]) == 0
    table = md.read_text()
    print(table)
    row = next(line for line in table.splitlines() if line.startswith("| EP, symmetric"))
    assert "| 2/30 |" in row and "eqkern train --preset vgg5-ce-cifar10" in row
    assert "--data-root" not in row
    mean, last = (hist[0]["seconds"] + hist[1]["seconds"]) / 2, hist[1]["seconds"]
    assert f"| {mean:.0f} s ({last:.0f} s) |" in row  # time per epoch: mean and last
    assert "| 0/30 |" in next(line for line in table.splitlines() if line.startswith("| BPTT"))
    assert png.stat().st_size > 10_000
