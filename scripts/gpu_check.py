"""`make gpu-check`: everything a GPU machine should confirm about eqkern, in one run of < 8 min.

    python scripts/gpu_check.py --out bench/results/gpu-check [--only a,b] [--skip e] [--list]

Without a CUDA GPU it stops at once (exit 2, one line saying why), before any long work. With one
it runs the steps of :func:`steps` in order, each in its own process group under its own timeout,
carrying on after a failure, and writes into ``--out``:

* ``<step>.log``: the full output of each step; ``junit-<step>.xml`` for the pytest steps;
  ``bench.json``: the GPU benchmarks (pytest-benchmark);
* ``gpu-check.json``: the machine and every step (command, rc, seconds, status, output tail,
  parsed counts);
* ``gpu-check.md``: the same as a Markdown summary, with the benchmark table (TFLOP/s and
  fraction of the peak of the arithmetic used, per provider).

Exit status 0 when every step passed (a missing compute-sanitizer is recorded, not a failure),
1 when one failed or timed out, 2 without a GPU. The step list, the parsers and the summary
writer are plain functions so that tests/tools/test_gpu_check.py checks them on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `make gpu-check` must end within 8 minutes on one H100/H200 including `make install`; the build
# is a no-op once the stamps are fresh, and this much is left for it.
TOTAL_BUDGET_S = 480
BUILD_ALLOWANCE_S = 60
STEP_BUDGET_S = TOTAL_BUDGET_S - BUILD_ALLOWANCE_S
BENCH_SIZES = "vgg5-b128,vgg7-b128"
TAIL_CHARS = 4000
NO_GPU = ("eqkern gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False): this check "
          "needs one; on a CPU machine run `make test`")


@dataclass
class Step:
    """One command of the check. ``argv`` is None when its tool is missing (``missing`` says
    which); ``parse`` names the parser of its output (:data:`PARSERS`)."""

    name: str
    title: str
    argv: list[str] | None
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    parse: str | None = None
    missing: str | None = None


@dataclass
class StepResult:
    """What :func:`run_step` recorded. status: passed | failed | timeout | not found | skipped."""

    name: str
    title: str
    command: str
    status: str
    rc: int | None
    seconds: float
    tail: str
    counts: dict = field(default_factory=dict)


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the CUDA toolkit's bin folder."""
    for candidate in (shutil.which("compute-sanitizer"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                   "compute-sanitizer"),
                      "/usr/local/cuda/bin/compute-sanitizer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def steps(out: Path, python: str, arch: int, sanitizer: str | None) -> list[Step]:
    """The check, in order (the README's "GPU check"); the timeouts add up to at most
    :data:`STEP_BUDGET_S`. Every step runs compiled Triton kernels (TRITON_INTERPRET=0)."""
    compiled = {"TRITON_INTERPRET": "0"}
    # Without the caching allocator every tensor is its own allocation, so memcheck sees an
    # access past a tensor's end instead of one inside a larger cached block.
    uncached = dict(compiled, PYTORCH_NO_CUDA_MEMORY_CACHING="1")

    def pytest(name: str, *args: str) -> list[str]:
        return [python, "-m", "pytest", *args, "-q", "-rfEs", "-p", "no:cacheprovider",
                f"--junitxml={out / f'junit-{name}.xml'}"]

    def sanitize(tool: str) -> Step:
        name = f"sanitizer-{tool}"
        title = f"compute-sanitizer --tool {tool} on a small settle + Hebbian update (cpp, triton)"
        if sanitizer is None:
            return Step(name, title, None, 40, uncached, "sanitizer",
                        missing="compute-sanitizer not found (PATH, /usr/local/cuda/bin)")
        return Step(name, title, [sanitizer, "--tool", tool, "--error-exitcode", "1", python,
                                  str(ROOT / "scripts" / "gpu_check_kernels.py")],
                    40, uncached, "sanitizer")

    return [
        Step("info", "eqkern info --json (build, backends on cuda)",
             [python, "-m", "eqkern", "info", "--json"], 15, compiled, "info"),
        Step("gpu-tests", "every GPU test (pytest -m gpu), compiled Triton kernels",
             pytest("gpu-tests", "tests", "-m", "gpu"), 100, compiled, "junit"),
        Step("vs-reference-cuda", "backend-agreement tests on cuda (-m vs_reference)",
             pytest("vs-reference-cuda", "tests", "-m", "vs_reference"), 50,
             dict(compiled, EQKERN_TEST_DEVICE="cuda"), "junit"),
        # Plain run first: it checks the numbers and fills Triton's on-disk kernel cache, so the
        # sanitizer runs below spend their time on the kernels, not on compiling them.
        Step("kernels", "small settle + Hebbian update on cuda (cpp, triton) vs reference",
             [python, str(ROOT / "scripts" / "gpu_check_kernels.py")], 40, compiled, "sanitizer"),
        sanitize("memcheck"),
        sanitize("racecheck"),
        Step("bench", f"GPU benchmarks ({BENCH_SIZES}, four providers)",
             pytest("bench", "bench/bench_triton.py", f"--benchmark-json={out / 'bench.json'}"),
             85, dict(compiled, EQKERN_BENCH_SIZES=BENCH_SIZES), "junit"),
        # fp32 (the dtype the tests and benchmarks run), the representative variants, compiled
        # in parallel: what fits the time box; the full sweep is a CI job of its own.
        Step("compile-check", f"Triton registers / spills / shared memory for sm_{arch} (fp32)",
             [python, "-m", "eqkern.kernels.triton.compile_check", "--arch", str(arch),
              "--dtypes", "fp32", "--representative", "--jobs", str(os.cpu_count() or 1)],
             50, compiled, "compile_check"),
    ]


# --- output parsers: (output text, step, out folder) -> counts ---------------------------------

def parse_junit(text: str, step: Step, out: Path) -> dict:
    """Test counts from the step's --junitxml file (pytest writes one <testsuite>)."""
    path = out / f"junit-{step.name}.xml"
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def parse_sanitizer(text: str, step: Step, out: Path) -> dict:
    """compute-sanitizer's summary lines and the workload's own OK/BAD lines."""
    counts = {"ok": len(re.findall(r"^OK ", text, re.MULTILINE)), "bad": len(re.findall(r"^BAD", text, re.MULTILINE))}
    if m := re.search(r"ERROR SUMMARY: (\d+) error", text):
        counts["errors"] = int(m.group(1))
    if m := re.search(r"RACECHECK SUMMARY: (\d+) hazard", text):
        counts["hazards"] = int(m.group(1))
    return counts


def parse_compile_check(text: str, step: Step, out: Path) -> dict:
    """compile_check prints one OK/BAD/FAIL line per kernel variant."""
    return {k.lower(): len(re.findall(rf"^{k}\b", text, re.MULTILINE)) for k in ("OK", "BAD", "FAIL")}


def parse_info(text: str, step: Step, out: Path) -> dict:
    """Which backends `eqkern info --json` reports available on cuda."""
    try:
        info = json.loads(text[text.index("{"):])
    except ValueError:
        return {}
    cuda = info.get("backends", {}).get("cuda", {})
    return {"cuda_backends": sorted(n for n, b in cuda.items() if b.get("available")),
            "cuda_unavailable": {n: b.get("reason") for n, b in cuda.items()
                                 if not b.get("available")}}


PARSERS = {"junit": parse_junit, "sanitizer": parse_sanitizer, "compile_check": parse_compile_check,
           "info": parse_info}


def run_step(step: Step, out: Path) -> StepResult:
    """Run one step in its own process group (so a timeout ends pytest's children too), log its
    output to ``out/<name>.log`` and parse it."""
    command = " ".join(step.argv) if step.argv else "(not run)"
    shown = " ".join(f"{k}={v}" for k, v in step.env.items()) + " " + command
    if step.argv is None:
        return StepResult(step.name, step.title, shown.strip(), "not found", None, 0.0,
                          step.missing or "")
    start = time.monotonic()
    proc = subprocess.Popen(step.argv, cwd=ROOT, env={**os.environ, **step.env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=step.timeout_s)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this step started, nothing else
        text, _ = proc.communicate()
        status = "timeout"
        text += f"\n[gpu-check: killed after {step.timeout_s} s]"
    seconds = time.monotonic() - start
    (out / f"{step.name}.log").write_text(text)
    try:
        counts = PARSERS[step.parse](text, step, out) if step.parse else {}
    except (OSError, ValueError, ET.ParseError) as exc:  # a half-written file: keep the record
        counts = {"parse_error": f"{type(exc).__name__}: {exc}"}
    return StepResult(step.name, step.title, shown.strip(), status, proc.returncode,
                      round(seconds, 1), text[-TAIL_CHARS:], counts)


# --- the summary --------------------------------------------------------------------------------

def bench_rows(bench: dict | None) -> list[dict]:
    """One row per pytest-benchmark entry: group, provider, arithmetic, ms per call, TFLOP/s and
    fraction of peak (from bench/bench_triton.py's extra_info; None where it has none)."""
    rows = []
    for b in (bench or {}).get("benchmarks", []):
        extra = b.get("extra_info", {})
        ms = extra.get("do_bench_ms", [b["stats"]["median"] * 1e3])[0]
        rows.append(dict(group=b["group"], provider=b["params"].get("provider", "?"),
                         math=extra.get("math"), ms=ms, tflops=extra.get("tflops"),
                         peak_tflops=extra.get("peak_tflops"),
                         peak_fraction=extra.get("peak_fraction")))
    return rows


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v not in ({}, [], None)) or "–"


def summary_markdown(env: dict, results: list[StepResult], bench: dict | None) -> str:
    """The Markdown report: machine, versions and TF32 policy, one row per step, benchmarks."""
    policy = env.get("precision", {})
    lines = ["# eqkern gpu-check", "",
             f"- device: {env.get('device', '?')} (sm_{env.get('arch', '?')})",
             f"- versions: torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
             f"triton {env.get('triton', '?')}, eqkern {env.get('eqkern', '?')}",
             f"- TF32 policy: {policy.get('fp32_math', '?')} (EQKERN_TF32="
             f"{int(bool(policy.get('tf32')))}, Triton fp32 dots {policy.get('triton_fp32_dot', '?')})",
             f"- result: {overall(results)}", "",
             "| step | status | rc | seconds | counts |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {_fmt(r.rc, 'd')} | {r.seconds:.1f} | "
                     f"{_counts_text(r.counts)} |")
    rows = bench_rows(bench)
    lines += ["", "## Benchmarks", ""]
    if not rows:
        lines.append("no benchmark results (see the bench step)")
    else:
        lines += ["| benchmark | provider | precision | ms per call | TFLOP/s | peak TFLOP/s | "
                  "fraction of peak |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in sorted(rows, key=lambda r: (r["group"], r["provider"])):
            lines.append(f"| {row['group']} | {row['provider']} | {row['math'] or '–'} | "
                         f"{row['ms']:.3f} | {_fmt(row['tflops'], '.2f')} | "
                         f"{_fmt(row['peak_tflops'], '.1f')} | {_fmt(row['peak_fraction'], '.1%')} |")
    failed = [r for r in results if r.status in ("failed", "timeout")]
    for r in failed:
        lines += ["", f"## {r.name}: {r.status} (last lines)", "", "```",
                  "\n".join(r.tail.splitlines()[-30:]), "```"]
    return "\n".join(lines) + "\n"


def overall(results: list[StepResult]) -> str:
    """"passed" when no step failed or timed out, else the names of those that did."""
    bad = [f"{r.name} {r.status}" for r in results if r.status in ("failed", "timeout")]
    return "passed" if not bad else "FAILED: " + ", ".join(bad)


def write_summary(out: Path, env: dict, results: list[StepResult], bench: dict | None) -> None:
    """Write ``out/gpu-check.json`` and ``out/gpu-check.md``."""
    record = {"environment": env, "result": overall(results),
              "steps": [asdict(r) for r in results], "benchmarks": bench_rows(bench)}
    (out / "gpu-check.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(summary_markdown(env, results, bench))


# --- the run ------------------------------------------------------------------------------------

def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check, or None. Only torch is imported (no eqkern, no
    build, no CUDA context)."""
    try:
        import torch
    except ImportError as exc:
        return f"eqkern gpu-check: torch is not importable ({exc}): run `make install` first"
    return None if torch.cuda.is_available() else NO_GPU


def environment() -> dict:
    """The machine and versions for the summary (called only with a GPU)."""
    import torch

    from eqkern import __version__
    from eqkern.kernels import precision

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    major, minor = torch.cuda.get_device_capability()
    return dict(device=torch.cuda.get_device_name(), arch=major * 10 + minor,
                torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version,
                eqkern=__version__, precision=precision.describe(), python=sys.version.split()[0])


def _select(all_steps: list[Step], only: str, skip: str) -> tuple[list[Step], list[Step]]:
    names = {s.name for s in all_steps}
    wanted = set(only.split(",")) if only else names
    dropped = set(skip.split(",")) if skip else set()
    unknown = (wanted | dropped) - names
    if unknown:
        raise SystemExit(f"eqkern gpu-check: unknown steps {sorted(unknown)}; known: "
                         f"{[s.name for s in all_steps]}")
    keep = [s for s in all_steps if s.name in wanted - dropped]
    return keep, [s for s in all_steps if s not in keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-check")
    parser.add_argument("--only", default="", help="comma list of step names to run")
    parser.add_argument("--skip", default="", help="comma list of step names to leave out")
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    if args.list:
        for s in steps(args.out, sys.executable, 90, find_sanitizer()):
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            print(f"{s.name:<20} {s.timeout_s:>4} s  {env} {' '.join(s.argv or [s.missing or ''])}")
        return 0
    reason = no_gpu_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    env = environment()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen, left = _select(steps(out, sys.executable, env["arch"], find_sanitizer()),
                           args.only, args.skip)
    (out / "bench.json").unlink(missing_ok=True)  # never summarise an earlier run's numbers
    results = [StepResult(s.name, s.title, "(not run: --only/--skip)", "skipped", None, 0.0, "")
               for s in left]
    for step in chosen:
        print(f"[gpu-check] {step.name}: {step.title} (timeout {step.timeout_s} s)", flush=True)
        result = run_step(step, out)
        results.append(result)
        print(f"[gpu-check] {step.name}: {result.status} in {result.seconds:.0f} s "
              f"{_counts_text(result.counts)}", flush=True)
        write_summary(out, env, results, None)  # a partial record survives a kill
    bench_path = out / "bench.json"
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else None
    order = [s.name for s in steps(out, sys.executable, env["arch"], None)]
    results.sort(key=lambda r: order.index(r.name))
    write_summary(out, env, results, bench)
    print(f"[gpu-check] {overall(results)}; wrote {out / 'gpu-check.md'} and gpu-check.json")
    return 0 if overall(results) == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
