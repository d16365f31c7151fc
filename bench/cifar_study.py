"""The papers' CIFAR-10 results in miniature, as resumable `eqkern train` runs: Laborieux et al.
2021 Table 1 (VGG-5: EP with each gradient estimate, BPTT, BP) and Lin et al.'s depth result
(VGG-7: standard EP, LE, KD, BP), at width 1/4 on the 10,000-image CIFAR-10 subset.

    python bench/cifar_study.py commands --study table1       # the command of every run
    python bench/cifar_study.py run --study table1 --minutes 150
    python bench/cifar_study.py report --study table1         # table + figure from the metrics

``run`` trains the unfinished runs of a study one after the other, each with ``eqkern train
--resume`` in its own folder under ``--runs`` (so a run continues where it stopped, mid-epoch
too). At ``--minutes`` it sends the run Ctrl-C, which makes it write its checkpoint and stop,
and exits: run it again (next session) to go on. ``save`` / ``restore`` copy each run's
``metrics.jsonl``, and the checkpoints a run under way needs to go on, to and from ``--keep`` (a
tracked folder, for machines whose ``runs/`` does not survive). ``report`` writes the study's table (markdown) and its figure
(test accuracy against epoch and against wall-clock, every method on one figure; per-layer mean
|state| and |update| for the depth study) from the runs' ``metrics.jsonl``.

Scaled from the papers, because a CPU must: width 1/4 of every layer, the 10,000-image training
subset (and its 2,000 test images), 30 epochs, the cosine schedules shortened with them
(Laborieux's T_max = 100 of 120 epochs becomes 25 of 30; Lin's cosine κ and rate span the run's
epochs). Everything else is the preset's: learning rates, β, T and K as caps of the convergence
stop (tol = 1e-3), batch size, crop + flip, seed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SCALED = ("width=1/4", "dataset=cifar10_subset")
EPOCHS = 30


@dataclass(frozen=True)
class Run:
    name: str                        # its folder
    label: str                       # its row and curve
    preset: str
    sets: tuple[str, ...] = ()       # --set overrides beyond the study's
    paper: str = "—"                 # the paper's full-scale figure (test accuracy)
    teacher: str | None = None       # a Teacher's name: --teacher its checkpoint


@dataclass(frozen=True)
class Teacher:
    name: str
    arch: str
    paper: str


@dataclass(frozen=True)
class Study:
    title: str
    runs: tuple[Run, ...]
    sets: tuple[str, ...] = SCALED
    teachers: tuple[Teacher, ...] = field(default=())


STUDIES = {
    "table1": Study(
        "Laborieux et al. 2021 Table 1 in miniature: VGG-5 (32-64-128-128), CIFAR-10 subset",
        (Run("ep-symmetric", "EP, symmetric", "vgg5-ce-cifar10", paper="88.32 % (CE)"),
         Run("ep-random-sign", "EP, random sign", "vgg5-ce-cifar10", ("estimator=random_sign",),
             paper="78.45 % (squared error; 1 of 5 runs unstable)"),
         Run("ep-one-sided", "EP, one-sided", "vgg5-ce-cifar10", ("estimator=one_sided",),
             paper="13.36 % (squared error; fails to fit)"),
         Run("bptt", "BPTT (last K=25 steps)", "vgg5-ce-cifar10", ("method=bptt", "truncate=25"),
             paper="88.88 % (CE)"),
         Run("bp", "BP, feed-forward", "vgg5-ce-cifar10", ("method=bp",))),
        sets=SCALED + ("cosine_epochs=25",)),
    "depth": Study(
        "Lin et al. depth result in miniature: VGG-7 (16-32-64-128-128, fc 128), CIFAR-10 subset",
        (Run("ep-standard", "EP, standard", "vgg7-le-cifar10", ("augment=none", "augment_layers=")),
         Run("ep-le", "EP + LE", "vgg7-le-cifar10", paper="88.99 %"),
         Run("ep-kd", "EP + KD (VGG-19 teacher)", "vgg7-kd-cifar10", paper="89.67 %",
             teacher="vgg19"),
         Run("bp", "BP, feed-forward", "vgg7-le-cifar10", ("method=bp",)),
         # PyTorch's default init (the presets', Laborieux's) is Kaiming-uniform with a = √5:
         # bound 1/√fan_in; ×√6 gives He et al.'s a = 0 bound √(6/fan_in) (the biases scale too).
         Run("bp-he", "BP, feed-forward, He init (init_scale=√6)", "vgg7-le-cifar10",
             ("method=bp", "init_scale=2.449")),
         Run("ep-standard-he", "EP, standard, He init (init_scale=√6)", "vgg7-le-cifar10",
             ("augment=none", "augment_layers=", "init_scale=2.449"))),
        teachers=(Teacher("vgg19", "vgg19", "93.37 % (full width, full data)"),)),
}


def run_dir(args, study: str, name: str) -> Path:
    return Path(args.runs) / study / name


def teacher_path(args, study: str, t: Teacher) -> Path:
    return Path(args.runs) / study / f"teacher-{t.name}.pt"


def train_command(args, study: str, run: Run) -> list[str]:
    s = STUDIES[study]
    cmd = [sys.executable, "-m", "eqkern", "train", "--preset", run.preset, "--epochs", str(EPOCHS)]
    for item in s.sets + run.sets:
        cmd += ["--set", item]
    if run.teacher is not None:
        t = next(t for t in s.teachers if t.name == run.teacher)
        cmd += ["--teacher", str(teacher_path(args, study, t))]
    return cmd + ["--out", str(run_dir(args, study, run.name)), "--resume", "--no-progress",
                  *data_root(args)]


def teacher_command(args, study: str, t: Teacher) -> list[str]:
    """Its training, resumed; trained again from the start where only its metrics were kept (the
    teacher's weights are kept only while a student needs them: see :func:`_run_files`)."""
    path = teacher_path(args, study, t)
    again = path.with_suffix(".metrics.jsonl").exists() and not path.exists()
    return [sys.executable, "-m", "eqkern", "teacher", "--arch", t.arch, "--dataset",
            "cifar10_subset", "--width", "1/4", "--epochs", str(EPOCHS), "--out", str(path),
            "--overwrite" if again else "--resume", "--no-progress", *data_root(args)]


def data_root(args) -> list[str]:
    return [] if args.data_root is None else ["--data-root", args.data_root]


def epochs_done(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


class Job(NamedTuple):
    name: str
    command: list[str]
    metrics: Path
    todo: bool  # epochs to go, or a teacher's weights to make again for a student under way


def students_left(args, study: str, teacher: str) -> bool:
    """Whether a run that distils from this teacher still has epochs to go."""
    return any(r.teacher == teacher and
               epochs_done(run_dir(args, study, r.name) / "metrics.jsonl") < EPOCHS
               for r in STUDIES[study].runs)


def jobs(args, study: str) -> list[Job]:
    """Every run of the study, teachers first."""
    out = []
    for t in STUDIES[study].teachers:
        path = teacher_path(args, study, t)
        metrics = path.with_suffix(".metrics.jsonl")
        todo = epochs_done(metrics) < EPOCHS or (not path.exists() and students_left(args, study, t.name))
        out.append(Job(f"teacher-{t.name}", teacher_command(args, study, t), metrics, todo))
    for r in STUDIES[study].runs:
        metrics = run_dir(args, study, r.name) / "metrics.jsonl"
        out.append(Job(r.name, train_command(args, study, r), metrics, epochs_done(metrics) < EPOCHS))
    only = set(args.only.split(",")) if args.only else None
    return [j for j in out if only is None or j.name in only]


def run_all(args) -> int:
    deadline = time.monotonic() + 60 * args.minutes
    for name, cmd, metrics, todo in jobs(args, args.study):
        if not todo:
            continue
        left = deadline - time.monotonic()
        if left < 60:
            print(f"[cifar_study] out of time before {name}: run again to go on", flush=True)
            return 0
        print(f"[cifar_study] {name}: {' '.join(cmd[1:])} ({left / 60:.0f} min left)", flush=True)
        metrics.parent.mkdir(parents=True, exist_ok=True)
        cmd = cmd + ["--threads", str(args.threads)] if args.threads else cmd
        proc = subprocess.Popen(cmd, cwd=ROOT)
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:  # Ctrl-C: the run writes its checkpoint and stops
            proc.send_signal(signal.SIGINT)
            proc.wait()
            print(f"[cifar_study] {name} stopped at the time limit: run again to go on", flush=True)
            return 0
        if proc.returncode == 130:  # Ctrl-C reached the run itself: its checkpoint is written
            print(f"[cifar_study] {name} interrupted: run again to go on", flush=True)
            return proc.returncode
        if proc.returncode != 0:
            print(f"[cifar_study] {name} failed (exit {proc.returncode})", flush=True)
            return proc.returncode
    return 0


def _run_files(args, study: str) -> list[Path]:
    """The files that resuming needs, relative to ``--runs``: every run's metrics, the checkpoint
    of a run not yet finished, and a teacher's while a run that distils from it is under way
    (a finished run needs none: its metrics are its result)."""
    s, files = STUDIES[study], []

    def unfinished(metrics: Path) -> bool:
        return epochs_done(metrics) < EPOCHS

    for r in s.runs:
        folder = run_dir(args, study, r.name)
        files.append(folder / "metrics.jsonl")
        if unfinished(folder / "metrics.jsonl"):
            files.append(folder / "checkpoint.pt")
    for t in s.teachers:
        p = teacher_path(args, study, t)
        files.append(p.with_suffix(".metrics.jsonl"))
        students = [run_dir(args, study, r.name) / "metrics.jsonl" for r in s.runs if r.teacher == t.name]
        if unfinished(p.with_suffix(".metrics.jsonl")) or any(
                (m.parent / "checkpoint.pt").exists() and unfinished(m) for m in students):
            files.append(p)
    return [f.relative_to(args.runs) for f in files]


def copy_files(src: Path, dst: Path, rels: list[Path]) -> None:
    for rel in rels:
        if (src / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
            print(f"{src / rel} -> {dst / rel}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["commands", "run", "report", "save", "restore"])
    ap.add_argument("--study", choices=list(STUDIES), required=True)
    ap.add_argument("--runs", default="runs/cifar10-mini", help="the runs' folders")
    ap.add_argument("--keep", default="bench/results/cifar10-mini/state",
                    help="save/restore: where the resume state is kept")
    ap.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    ap.add_argument("--minutes", type=float, default=150.0, help="run: stop (resumably) after")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=None, help="folder of the .npz files (default $EQKERN_DATA)")
    ap.add_argument("--out", default=None, help="report: the markdown (default bench/results/cifar10-mini/STUDY.md)")
    ap.add_argument("--png", default=None, help="report: the figure (default docs/cifar10_STUDY_curves.png)")
    args = ap.parse_args(argv)
    if args.action == "commands":
        for name, cmd, *_ in jobs(args, args.study):
            print(f"{name}: python {' '.join(cmd[1:])}")
        return 0
    if args.action == "run":
        return run_all(args)
    if args.action in ("save", "restore"):
        a, b = Path(args.runs), Path(args.keep)
        copy_files(*((a, b) if args.action == "save" else (b, a)), _run_files(args, args.study))
        return 0
    from cifar_report import write_report  # noqa: E402 (matplotlib only for the report)
    write_report(args, STUDIES[args.study], jobs(args, args.study), EPOCHS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
