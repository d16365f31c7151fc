"""Turn a pytest-benchmark JSON file into a Markdown table of times and ratios vs ``reference``.

Usage: python bench/report.py bench/results/latest.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        # Phase benchmarks time several steps; report per step.
        steps = b.get("extra_info", {}).get("steps", 1)
        groups[b["group"]][b["params"]["provider"]] = b["stats"]["median"] / steps
    info = data.get("machine_info", {})
    print(f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, python {info.get('python_version')}")
    print("| benchmark | provider | median per call or step (s) | speed-up vs reference |")
    print("| --- | --- | --- | --- |")
    for group, times in sorted(groups.items()):
        ref = times.get("reference")
        for provider, t in sorted(times.items(), key=lambda kv: -kv[1]):
            ratio = f"{ref / t:.2f}×" if ref else "n/a"
            print(f"| {group} | {provider} | {t:.4f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
