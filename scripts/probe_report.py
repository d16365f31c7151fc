"""Run every probe of the bad-input battery (tests/battery/test_*.py) and count the outcomes.

    .venv/bin/python scripts/probe_report.py [--json FILE] [-k SUBSTRING]

Prints, per battery module and in total: probes, clear errors, correct behaviours, unclear
errors, silently wrong results and data lost, then the detail of every probe that is not a clear
error or a correct behaviour. The same probes are the CI tests (pytest tests/battery); this
script only classifies instead of asserting.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATTERY = ROOT / "tests" / "battery"
os.environ.setdefault("TRITON_INTERPRET", "1")  # as in the test suite: no GPU compile here
sys.path[:0] = [str(BATTERY), str(ROOT / "tests")]

from probes import CLEAR, CORRECT, OUTCOMES, outcome  # noqa: E402


def load_modules():
    for path in sorted(BATTERY.glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"battery_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield path.stem, getattr(mod, "PROBES", [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="also write every probe's outcome here")
    ap.add_argument("-k", default="", help="only probes whose module or id contains this")
    args = ap.parse_args()
    rows, totals = [], Counter()
    print(f"{'module':24s} {'probes':>6s} " + " ".join(f"{o:>14s}" for o in OUTCOMES))
    for name, probes in load_modules():
        counts = Counter()
        for probe in probes:
            if args.k and args.k not in name and args.k not in probe.id:
                continue
            # the probes' own prints and progress bars are not the report
            with tempfile.TemporaryDirectory() as folder, \
                    contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                t0 = time.perf_counter()
                category, detail = outcome(probe, Path(folder))
            counts[category] += 1
            rows.append({"module": name, "probe": probe.id, "outcome": category,
                         "seconds": round(time.perf_counter() - t0, 3), "detail": detail[:2000]})
        n = sum(counts.values())
        totals.update(counts)
        print(f"{name:24s} {n:6d} " + " ".join(f"{counts[o]:14d}" for o in OUTCOMES))
    print(f"{'total':24s} {sum(totals.values()):6d} " + " ".join(f"{totals[o]:14d}" for o in OUTCOMES))
    bad = [r for r in rows if r["outcome"] not in (CLEAR, CORRECT)]
    for r in bad:
        print(f"\n{r['module']}::{r['probe']}: {r['outcome']}\n  {r['detail'][:600]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
