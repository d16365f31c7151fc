"""The command line's surface: --version, help on every option, one spelling per option."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

import eqkern
from eqkern import cli


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_version():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    print(out.getvalue())
    assert exc.value.code == 0 and out.getvalue().strip() == f"eqkern {eqkern.__version__}"


def test_every_option_has_help_and_every_command_is_described():
    missing = {name: [a.option_strings[0] for a in sp._actions
                      if a.option_strings and not a.help]
               for name, sp in _subparsers().items()}
    print(missing)
    assert not any(missing.values())
    for name in _subparsers():
        assert name in cli.__doc__, f"`eqkern {name}` is missing from the top-level description"


def test_batch_size_is_one_spelling_everywhere():
    """Every command with a batch option accepts --batch-size (gdu and memory also keep --batch)."""
    for name, sp in _subparsers().items():
        flags = {f for a in sp._actions for f in a.option_strings}
        if "--batch" in flags or "--batch-size" in flags:
            print(name, sorted(f for f in flags if f.startswith("--batch")))
            assert "--batch-size" in flags, name
    args = cli.build_parser().parse_args(["memory", "--batch-size", "4"])
    assert args.batch == 4


def test_demo_no_progress_writes_no_bar(tmp_path):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = cli.main(["demo", "--epochs", "1", "--train-size", "32", "--test-size", "16",
                       "--batch-size", "16", "--t-free", "2", "--t-nudge", "1", "--no-progress",
                       "--out", str(tmp_path / "run")])
    print(rc, repr(err.getvalue()[-500:]), out.getvalue()[-300:])
    assert rc == 0 and "it/s" not in err.getvalue() and "reached" in out.getvalue()


def test_number_options_take_fractions_as_set_does():
    parser = cli.build_parser()
    args = parser.parse_args(["teacher", "--width", "1/4", "--out", "t.pt"])
    assert args.width == 0.25
    for bad in ("1/0", "abc", "-1/4"):
        with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit):
            parser.parse_args(["teacher", f"--width={bad}", "--out", "t.pt"])
        print(err.getvalue().strip())
        assert "argument --width: must be a finite number > 0" in err.getvalue()
