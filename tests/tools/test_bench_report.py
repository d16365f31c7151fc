"""bench/report.py --summary: the README's speed table from pytest-benchmark groups."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402


def test_summary_rows_ratios_and_floors():
    groups = {
        "settle-step-vgg5-b128 (5 steps per call)": {"reference": 0.6, "cpp": 0.4, "conv-floor": 0.5,
                                                     "conv-floor-cl": 0.38},
        "iteration-vgg5-b128": {"reference": 12.0, "torch": 8.0, "bptt": 10.0},
        "free-phase-synchronous-stop-vgg5-b128 (per step)": {"reference": 1.0},  # not a summary op
        "hebbian-update-tiny-b4": {"cpp": 0.002},
    }
    text = report.summary(groups)
    print(text)
    rows = text.splitlines()[2:]
    assert rows == [
        "| tiny-b4 | hebbian-update | – | – | 2.0 ms | – | – |",
        "| vgg5-b128 | settle-step | 600.0 ms | – | 400.0 ms (1.50×) | – | 500.0 / 380.0 ms |",
        "| vgg5-b128 | iteration | 12000.0 ms | 8000.0 ms (1.50×) | – | 10000.0 ms (1.20×) | – |",
    ]
