"""Turn a pytest-benchmark JSON file into the README's performance table and a PNG.

Usage: python bench/report.py bench/results/latest.json [--png bench/results/latest.png] [--summary]

Per group (one op and size), each provider's median time (per step for phase benchmarks, whose
``extra_info["steps"]`` says how many steps were timed), its speed-up against ``reference`` and
its ratio to the conv floor (the fastest ``conv-floor*`` provider of the group), headed by what a
reader needs to compare runs: git revision, torch version, device, threads. Entries that say
which arithmetic they used (bench/bench_triton.py's ``extra_info["math"]``, else the policy's
``extra_info["precision"]["fp32_math"]``) get a precision column.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def load(path: str) -> tuple[dict, dict[str, dict[str, float]]]:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        steps = b.get("extra_info", {}).get("steps", 1)
        groups[b["group"]][b["params"]["provider"]] = b["stats"]["median"] / steps
    return data, groups


def precisions(data: dict) -> dict[tuple[str, str], str]:
    """(group, provider) -> the arithmetic the entry says it used; empty for older files."""
    out = {}
    for b in data["benchmarks"]:
        extra = b.get("extra_info", {})
        math = extra.get("math") or (extra.get("precision") or {}).get("fp32_math")
        if math:
            out[(b["group"], b["params"]["provider"])] = math
    return out


def header(data: dict) -> str:
    extra = next((b.get("extra_info", {}) for b in data["benchmarks"]), {})
    commit = data.get("commit_info", {})
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    return (f"git {commit.get('id', '?')[:10]}{' (dirty)' if commit.get('dirty') else ''}, "
            f"torch {extra.get('torch', '?')}, {extra.get('device', '?')} ({cpu}), "
            f"{extra.get('threads', '?')} threads, {data.get('datetime', '')[:19]}")


def table(groups: dict[str, dict[str, float]],
          precision: dict[tuple[str, str], str] | None = None) -> str:
    """One row per (group, provider), slowest first; a precision column when ``precision`` has
    any entry."""
    cols = ["benchmark", "provider", *(["precision"] if precision else []),
            "median (s, per step for phases)", "speed-up vs reference", "time / conv floor"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for group, times in sorted(groups.items()):
        ref = times.get("reference")
        floors = [t for p, t in times.items() if p.startswith("conv-floor")]
        floor = min(floors) if floors else None
        for provider, t in sorted(times.items(), key=lambda kv: -kv[1]):
            speed = f"{ref / t:.2f}×" if ref else "–"
            to_floor = f"{t / floor:.2f}×" if floor and not provider.startswith("conv-floor") else "–"
            math = [precision.get((group, provider), "–")] if precision else []
            lines.append("| " + " | ".join([group, provider, *math, f"{t:.4f}", speed, to_floor])
                         + " |")
    return "\n".join(lines)


SUMMARY_OPS = ("settle-step", "free-phase", "hebbian-update", "iteration")
SUMMARY_PROVIDERS = ("reference", "torch", "cpp", "bptt")


def summary(groups: dict[str, dict[str, float]]) -> str:
    """The README's compact table: per size and op, each provider's median in ms (per step for
    phases) with its speed-up against reference, and the conv floor (NCHW / channels-last)."""
    rows = ["| size | op | " + " | ".join(SUMMARY_PROVIDERS) + " | conv floor (NCHW / channels-last) |",
            "| --- | --- |" + " --- |" * (len(SUMMARY_PROVIDERS) + 1)]
    found = {}
    for group, times in groups.items():
        # "settle-step-vgg5-b128 (5 steps per call)": an op, then a size of bench/conftest.py
        m = re.fullmatch(r"(?P<op>[a-z-]+?)-(?P<size>[a-z0-9]+-b\d+)", group.split(" (")[0])
        if m and m["op"] in SUMMARY_OPS:
            found[(m["size"], SUMMARY_OPS.index(m["op"]))] = (m["op"], times)
    for (size, _), (op, times) in sorted(found.items()):
        ref = times.get("reference")
        cells = []
        for p in SUMMARY_PROVIDERS:
            t = times.get(p)
            if t is None:
                cells.append("–")
            else:
                ratio = f" ({ref / t:.2f}×)" if ref and p != "reference" else ""
                cells.append(f"{1000 * t:.1f} ms{ratio}")
        floors = [times.get(p) for p in ("conv-floor", "conv-floor-cl")]
        floor = " / ".join("–" if t is None else f"{1000 * t:.1f}" for t in floors)
        rows.append(f"| {size} | {op} | " + " | ".join(cells) + f" | {floor + ' ms' if any(floors) else '–'} |")
    return "\n".join(rows)


def plot(groups: dict[str, dict[str, float]], path: str) -> None:
    """Speed-up against reference per group and provider (bar chart)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted(g for g in groups if "reference" in groups[g])
    providers = sorted({p for g in names for p in groups[g]})
    fig = Figure(figsize=(max(6, 1.2 * len(names)), 4))
    ax = fig.add_subplot()
    w = 0.8 / max(1, len(providers))
    for k, p in enumerate(providers):
        xs = [i + k * w for i, g in enumerate(names) if p in groups[g]]
        ys = [groups[g]["reference"] / groups[g][p] for g in names if p in groups[g]]
        ax.bar(xs, ys, w, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))], names, rotation=30, ha="right",
                  fontsize=7)
    ax.set_ylabel("speed-up vs reference")
    ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--png", default=None)
    ap.add_argument("--summary", action="store_true", help="the README's compact table instead")
    args = ap.parse_args()
    data, groups = load(args.json)
    print(header(data))
    print()
    print(summary(groups) if args.summary else table(groups, precisions(data)))
    if args.png:
        plot(groups, args.png)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
