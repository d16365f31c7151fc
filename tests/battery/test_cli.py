"""Bad input through the command line: every user error is one line on stderr and exit code 2
(the full traceback only with ``--debug``), a bug is a traceback and exit 1, Ctrl-C is exit 130
with nothing lost, and a run folder in use or holding another run is refused.

The commands run in this process through :func:`eqkern.cli.main` (fast), except the ones about
signals and a second process, which run ``python -m eqkern`` as a user would.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eqkern import cli
from probes import UNCLEAR, LOST, Probe, assert_probe, ids

# A demo run of about a second: 32 training images, two settling steps.
TINY = ["--epochs", "1", "--train-size", "32", "--test-size", "16", "--batch-size", "16",
        "--t-free", "2", "--t-nudge", "1"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(argv: list[str]) -> tuple[int, str]:
    """``eqkern ARGV`` in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse's refusals
            rc = exc.code
    return rc, err.getvalue()


def one_line_error(*words: str):
    """The check of a user error: exit 2, exactly one stderr line, naming each of ``words``."""
    def check(result, folder) -> bool:
        rc, err = result
        lines = err.strip().splitlines()
        print(f"rc={rc} stderr={err!r}")
        return (rc == 2 and len(lines) == 1 and "Traceback" not in err
                and all(w in lines[0] for w in words))
    return check


def cli_error(id: str, argv, *words: str) -> Probe:
    """A command that must fail with one clear line naming ``words``; ``argv`` may use ``{out}``."""
    return Probe(id, lambda f: run([a.format(out=f / "run") for a in argv]),
                 check=one_line_error(*words), fails_as=UNCLEAR)


def _demo_then(argv2: list[str]):
    """A finished tiny demo run in ``folder/run``, then ``eqkern ARGV2`` on the same folder."""
    def call(folder: Path):
        rc, err = run(["demo", *TINY, "--out", str(folder / "run")])
        assert rc == 0, err
        return run([a.format(out=folder / "run") for a in argv2])
    return call


def _file_at_out(folder: Path):
    (folder / "run").write_text("a file where the output folder should be")
    return run(["demo", *TINY, "--out", str(folder / "run")])


def _bug(folder: Path):
    """A defect inside eqkern (here: a patched function that divides by zero) is not dressed up
    as a user error."""
    import eqkern.training.presets as presets

    orig = presets.get_preset
    presets.get_preset = lambda *a, **k: 1 / 0
    try:
        return run(["train", "--preset", "demo-mnist"])
    finally:
        presets.get_preset = orig


def _is_bug_report(result, folder) -> bool:
    rc, err = result
    return rc == 1 and "ZeroDivisionError" in err and "internal error" in err


def _debug_shows_traceback(result, folder) -> bool:
    rc, err = result
    return rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("eqkern train: error:")


def _python_m_eqkern(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "eqkern", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_sigint_as_at_a_terminal, **kw)


def _sigint_as_at_a_terminal() -> None:
    # A suite started in the background of a shell (`cmd &`, nohup) inherits SIGINT ignored, and
    # Python then leaves it ignored: every Ctrl-C probe would test nothing (a run that ignores
    # them "resumes" equal to an uninterrupted one). The user's eqkern gets the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bad_setting_read_at_import(folder: Path):
    """A setting eqkern reads while it is imported ($EQKERN_TF32) with a bad value."""
    env = {**os.environ, "EQKERN_TF32": "banana"}
    proc = subprocess.run([sys.executable, "-m", "eqkern", "info"], capture_output=True, text=True,
                          env=env, timeout=120)
    return proc.returncode, proc.stderr


def _ctrl_c_while_starting(folder: Path):
    """Ctrl-C while ``eqkern`` imports torch. torch's C initialisation can swallow a SIGINT that
    lands inside it (the command then runs on), so press again, as a user would, until it ends."""
    p = _python_m_eqkern("info")
    time.sleep(0.3)  # importing torch takes longer than this
    for _ in range(20):
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=0.4)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        _, err = p.communicate(timeout=60)
    return p.returncode, err


LONG = ["--epochs", "2", "--train-size", "320", "--test-size", "16", "--batch-size", "16",
        "--t-free", "2", "--t-nudge", "1"]


def _interrupted_then_resumed(sig: int, after: str):
    """``sig`` to a running demo (``after="batch"``: inside the first epoch; ``"epoch"``: once the
    first epoch's checkpoint is written), then --resume, and an uninterrupted run beside it."""
    def call(folder: Path):
        out = folder / "run"
        p = _python_m_eqkern("demo", *LONG, "--out", str(out))
        deadline = time.time() + 120
        if after == "epoch":
            while not (out / "metrics.jsonl").exists() and time.time() < deadline:
                time.sleep(0.05)
        else:
            while not any(out.glob("*lock*")) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # inside the training loop
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        print(f"interrupted run: rc={p.returncode} stderr tail={err[-300:]!r}")
        assert p.returncode != 0, "the run finished before the signal: make it longer"
        resumed = run(["demo", *LONG, "--out", str(out), "--resume"])
        reference = run(["demo", *LONG, "--out", str(folder / "ref")])
        return resumed, reference
    return call


def _resumed_equals_uninterrupted(result, folder) -> bool:
    import json

    import torch

    (rc, err), (rc_ref, err_ref) = result
    epochs = [json.loads(line)["epoch"]
              for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    a = torch.load(folder / "run" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(folder / "ref" / "checkpoint.pt", weights_only=True)["model"]
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"resume rc={rc} epochs={epochs} bit-equal={same} {err[-300:]!r}")
    return rc == 0 and rc_ref == 0 and epochs == [1, 2] and same


def _second_run_while_first_holds(folder: Path):
    """A second demo into the folder of a running one is refused naming the first, and the first
    still finishes with its own results."""
    out = folder / "run"
    first = _python_m_eqkern("demo", "--epochs", "1", "--train-size", "640", "--test-size", "16",
                             "--batch-size", "16", "--t-free", "3", "--t-nudge", "2", "--out",
                             str(out))
    deadline = time.time() + 120
    while not any(out.glob("*lock*")) and time.time() < deadline:
        time.sleep(0.1)
    second = run(["demo", *TINY, "--out", str(out), "--overwrite"])
    _, err = first.communicate(timeout=300)
    return second, first.pid, first.returncode, err


def _refused_and_first_kept(result, folder) -> bool:
    (rc, err), first_pid, first_rc, first_err = result
    print(rc, err, first_rc, first_err[-500:])
    return (rc == 2 and "in use" in err and str(first_pid) in err and first_rc == 0
            and (folder / "run" / "metrics.jsonl").exists())


PROBES = [
    cli_error("unknown-preset", ["train", "--preset", "no-such-preset"], "no-such-preset"),
    cli_error("bool-field-on", ["train", "--preset", "vgg5-ce-cifar10", "--set", "cosine=on"],
              "cosine", "on"),
    cli_error("float-field-text", ["train", "--preset", "demo-mnist", "--set", "beta=abc"], "beta"),
    cli_error("unknown-option", ["demo", "--bogus"], "--bogus"),
    cli_error("int-option-text", ["train", "--preset", "demo-mnist", "--epochs", "two"], "--epochs",
              "two"),
    cli_error("unknown-field", ["train", "--preset", "demo-mnist", "--set", "betta=0.1"], "betta"),
    cli_error("batch-size-0", ["demo", *TINY, "--batch-size", "0", "--out", "{out}"], "--batch-size", "0"),
    cli_error("train-size-0", ["demo", "--train-size", "0", "--out", "{out}"], "--train-size"),
    cli_error("epochs-negative", ["demo", *TINY, "--epochs", "-1", "--out", "{out}"], "--epochs", "-1"),
    cli_error("t-free-negative", ["demo", *TINY, "--t-free", "-3", "--out", "{out}"], "--t-free"),
    cli_error("beta-zero", ["demo", *TINY, "--beta", "0", "--out", "{out}"], "--beta"),
    cli_error("beta-nan", ["demo", *TINY, "--beta", "nan", "--out", "{out}"], "--beta", "nan"),
    cli_error("lr-negative", ["demo", *TINY, "--lr", "-0.1", "0.1", "0.1", "--out", "{out}"], "--lr"),
    cli_error("threads-0", ["demo", *TINY, "--threads", "0", "--out", "{out}"], "--threads"),
    cli_error("device-cuda-without-gpu", ["train", "--preset", "demo-mnist", "--device", "cuda"],
              "--device", "cuda") if not _has_cuda() else
    cli_error("device-cuda-index-too-high", ["train", "--preset", "demo-mnist", "--device",
                                             "cuda:99"], "--device"),
    cli_error("device-bogus", ["teacher", "--device", "tpu", "--out", "{out}"], "--device"),
    cli_error("memory-batch-0", ["memory", "--preset", "vgg5-ce-cifar10", "--batch", "0"], "--batch"),
    cli_error("memory-no-preset", ["memory"], "--preset"),
    cli_error("gdu-batch-0", ["gdu", "--batch", "0"], "--batch"),
    cli_error("gdu-t-free-negative", ["gdu", "--t-free", "-1"], "--t-free"),
    cli_error("missing-data-root", ["demo", "--dataset", "mnist", "--data-root", "/nonexistent/eqk",
                                    "--out", "{out}"], "mnist"),
    cli_error("missing-teacher", ["train", "--preset", "vgg7-kd-cifar10", "--set",
                                  "dataset=mnist_subset", "--set", "train_size=32", "--set",
                                  "test_size=16", "--teacher", "/nonexistent/teacher.pt", "--out",
                                  "{out}"], "teacher.pt"),
    cli_error("teacher-on-non-kd-preset", ["train", "--preset", "demo-mnist", "--set",
                                           "train_size=32", "--teacher", "x.pt", "--out", "{out}"],
              "teacher"),
    Probe("out-is-a-file", _file_at_out, check=one_line_error("run"), fails_as=UNCLEAR),
    Probe("fresh-run-into-used-folder", _demo_then(["demo", *TINY, "--out", "{out}"]),
          check=one_line_error("--resume", "--overwrite"), fails_as=LOST),
    Probe("resume-with-other-beta", _demo_then(["demo", *TINY, "--beta", "0.3", "--resume", "--out",
                                                "{out}"]),
          check=one_line_error("beta"), fails_as=UNCLEAR),
    Probe("debug-shows-traceback", lambda f: run(["--debug", "train", "--preset", "no-such"]),
          check=_debug_shows_traceback, fails_as=UNCLEAR),
    Probe("bug-is-a-traceback", _bug, check=_is_bug_report, fails_as=UNCLEAR),
    Probe("bad-env-setting-at-import", _bad_setting_read_at_import,
          check=one_line_error("EQKERN_TF32", "banana"), fails_as=UNCLEAR),
    Probe("ctrl-c-while-starting", _ctrl_c_while_starting,
          # -SIGINT: a later press landed while the interrupted process was already exiting
          check=lambda r, f: r[0] in (130, -signal.SIGINT) and r[1].strip().splitlines() == [
              "eqkern: interrupted while starting; nothing was run"],
          fails_as=UNCLEAR),
    Probe("ctrl-c-mid-epoch-then-resume", _interrupted_then_resumed(signal.SIGINT, "batch"),
          check=_resumed_equals_uninterrupted, fails_as=LOST),
    Probe("sigterm-mid-epoch-then-resume", _interrupted_then_resumed(signal.SIGTERM, "batch"),
          check=_resumed_equals_uninterrupted, fails_as=LOST),
    Probe("sigkill-after-epoch-then-resume", _interrupted_then_resumed(signal.SIGKILL, "epoch"),
          check=_resumed_equals_uninterrupted, fails_as=LOST),
    Probe("second-run-while-first-runs", _second_run_while_first_holds,
          check=_refused_and_first_kept, fails_as=LOST),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
