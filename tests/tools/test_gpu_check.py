"""scripts/gpu_check.py (`make gpu-check`) on CPU: the no-GPU refusal, the step list and its time
box, the output parsers and the summary writer on fake results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gc = _load()


def test_without_gpu_exits_2_at_once_and_builds_nothing(tmp_path):
    out = tmp_path / "out"
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this checks the refusal on a GPU machine too.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    seconds = time.monotonic() - start
    print(f"rc {res.returncode} in {seconds:.1f} s; stdout {res.stdout!r}; stderr {res.stderr!r}")
    assert res.returncode == 2
    assert res.stderr.strip() == gc.NO_GPU and res.stdout == ""
    assert "torch.cuda.is_available() is False" in gc.NO_GPU and "make test" in gc.NO_GPU
    assert seconds < 30
    assert not out.exists()  # no output folder, no log, no build


def test_make_gpu_check_refuses_before_building(tmp_path):
    """`make gpu-check` where the driver lists no GPU stops before `install` (no venv, no build):
    a PATH whose nvidia-smi finds nothing stands for a CPU machine (also on a GPU machine)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "-s", "gpu-check", f"VENV={tmp_path / 'no-venv'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})
    seconds = time.perf_counter() - t0
    print(proc.returncode, proc.stdout, proc.stderr, f"{seconds:.2f} s")
    assert proc.returncode == 2
    assert "no CUDA GPU visible" in proc.stderr and seconds < 10
    assert not (tmp_path / "no-venv").exists(), "make gpu-check started an install"


def test_step_list_covers_the_check_within_the_time_box(tmp_path):
    steps = gc.steps(tmp_path, "PY", 90, "/opt/cs")
    by_name = {s.name: s for s in steps}
    total = sum(s.timeout_s for s in steps)
    print([(s.name, s.timeout_s) for s in steps], "total", total, "budget", gc.STEP_BUDGET_S)
    assert list(by_name) == ["info", "gpu-tests", "vs-reference-cuda", "kernels",
                             "sanitizer-memcheck", "sanitizer-racecheck", "bench", "compile-check"]
    assert total <= gc.STEP_BUDGET_S and gc.STEP_BUDGET_S + gc.BUILD_ALLOWANCE_S <= 8 * 60
    assert all(s.timeout_s > 0 and s.env["TRITON_INTERPRET"] == "0" for s in steps)
    assert by_name["info"].argv == ["PY", "-m", "eqkern", "info", "--json"]
    gpu = by_name["gpu-tests"].argv
    assert gpu[:6] == ["PY", "-m", "pytest", "tests", "-m", "gpu"]
    assert f"--junitxml={tmp_path / 'junit-gpu-tests.xml'}" in gpu
    vs = by_name["vs-reference-cuda"]
    assert vs.argv[3:6] == ["tests", "-m", "vs_reference"] and vs.env["EQKERN_TEST_DEVICE"] == "cuda"
    assert by_name["kernels"].argv == ["PY", str(ROOT / "scripts" / "gpu_check_kernels.py")]
    for tool in ("memcheck", "racecheck"):
        argv = by_name[f"sanitizer-{tool}"].argv
        assert argv[:3] == ["/opt/cs", "--tool", tool]
        assert argv[-1] == str(ROOT / "scripts" / "gpu_check_kernels.py")
    bench = by_name["bench"]
    assert "bench/bench_triton.py" in bench.argv
    assert f"--benchmark-json={tmp_path / 'bench.json'}" in bench.argv
    assert bench.env["EQKERN_BENCH_SIZES"] == "vgg5-b128,vgg7-b128"
    assert by_name["compile-check"].argv[1:5] == ["-m", "eqkern.kernels.triton.compile_check",
                                                  "--arch", "90"]


def test_missing_sanitizer_is_recorded_not_run(tmp_path):
    step = next(s for s in gc.steps(tmp_path, "PY", 90, None) if s.name == "sanitizer-memcheck")
    result = gc.run_step(step, tmp_path)
    print(result)
    assert step.argv is None and result.status == "not found" and "not found" in result.tail
    assert gc.overall([result]) == "passed"


def test_run_step_records_failure_and_timeout(tmp_path):
    fail = gc.Step("fail", "exits 3", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                   20)
    slow = gc.Step("slow", "sleeps", [sys.executable, "-c", "import time; time.sleep(30)"], 1)
    r_fail, r_slow = gc.run_step(fail, tmp_path), gc.run_step(slow, tmp_path)
    print(r_fail, r_slow, sep="\n")
    assert (r_fail.status, r_fail.rc, r_fail.tail.strip()) == ("failed", 3, "boom")
    assert (tmp_path / "fail.log").read_text().strip() == "boom"
    assert r_slow.status == "timeout" and r_slow.seconds < 15
    assert gc.overall([r_fail, r_slow]) == "FAILED: fail failed, slow timeout"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1"
failures="2" skipped="3" tests="10" time="1.0"></testsuite></testsuites>"""


def test_parsers(tmp_path):
    step = gc.Step("gpu-tests", "t", ["x"], 1, parse="junit")
    (tmp_path / "junit-gpu-tests.xml").write_text(JUNIT)
    junit = gc.parse_junit("", step, tmp_path)
    sanitizer = gc.parse_sanitizer("OK  cpp: ...\nBAD triton: ...\n========= ERROR SUMMARY: 4 errors\n",
                                   step, tmp_path)
    compile_ = gc.parse_compile_check("OK   hebbian fp32\nBAD  forward fp32\nFAIL x: y\nOK   z\n",
                                      step, tmp_path)
    info = gc.parse_info('{"backends": {"cuda": {"cpp": {"available": true}, "triton": '
                         '{"available": false, "reason": "no triton"}}}}', step, tmp_path)
    print(junit, sanitizer, compile_, info, sep="\n")
    assert junit == {"tests": 10, "failures": 2, "errors": 1, "skipped": 3, "passed": 4}
    assert sanitizer == {"ok": 1, "bad": 1, "errors": 4}
    assert compile_ == {"ok": 2, "bad": 1, "fail": 1}
    assert info == {"cuda_backends": ["cpp"], "cuda_unavailable": {"triton": "no triton"}}


def _bench_entry(provider: str, ms: float, tflops: float | None, math: str) -> dict:
    extra = {"do_bench_ms": [ms, ms * 0.9, ms * 1.1], "math": math, "peak_tflops": 67.0,
             "precision": {"tf32": False, "triton_fp32_dot": "ieee", "fp32_math": "exact fp32"}}
    if tflops is not None:
        extra.update(tflops=tflops, peak_fraction=tflops / 67.0)
    return {"group": "settle-step-vgg5-b128-cuda", "params": {"provider": provider},
            "stats": {"median": ms * 2e-3}, "extra_info": extra}


def test_summary_writer_on_fake_results(tmp_path):
    env = {"device": "NVIDIA H200", "arch": 90, "torch": "2.14.1", "cuda": "13.0",
           "triton": "3.8.0", "eqkern": "0.1.0",
           "precision": {"tf32": False, "triton_fp32_dot": "ieee", "fp32_math": "exact fp32"}}
    results = [
        gc.StepResult("info", "i", "PY -m eqkern info --json", "passed", 0, 1.23, "{}",
                      {"cuda_backends": ["cpp", "triton"]}),
        gc.StepResult("gpu-tests", "g", "PY -m pytest", "failed", 1, 42.0, "line1\nE  assert 1 == 2",
                      {"tests": 5, "failures": 1, "errors": 0, "skipped": 0, "passed": 4}),
        gc.StepResult("sanitizer-memcheck", "m", "(not run)", "not found", None, 0.0, "missing"),
    ]
    bench = {"benchmarks": [_bench_entry("triton", 2.0, 33.5, "fp32"),
                            _bench_entry("cpp", 4.0, None, "tf32")]}
    gc.write_summary(tmp_path, env, results, bench)
    md = (tmp_path / "gpu-check.md").read_text()
    record = json.loads((tmp_path / "gpu-check.json").read_text())
    print(md)
    assert "- device: NVIDIA H200 (sm_90)" in md
    assert "- versions: torch 2.14.1, CUDA 13.0, triton 3.8.0, eqkern 0.1.0" in md
    assert "- TF32 policy: exact fp32 (EQKERN_TF32=0, Triton fp32 dots ieee)" in md
    assert "- result: FAILED: gpu-tests failed" in md
    assert "| gpu-tests | failed | 1 | 42.0 | tests 5, failures 1, errors 0, skipped 0, passed 4 |" in md
    assert "| sanitizer-memcheck | not found | – | 0.0 | – |" in md
    assert "| settle-step-vgg5-b128-cuda | triton | fp32 | 2.000 | 33.50 | 67.0 | 50.0% |" in md
    assert "| settle-step-vgg5-b128-cuda | cpp | tf32 | 4.000 | – | 67.0 | – |" in md
    assert "## gpu-tests: failed (last lines)" in md and "E  assert 1 == 2" in md
    assert record["result"] == "FAILED: gpu-tests failed"
    assert record["environment"] == env
    assert [s["name"] for s in record["steps"]] == ["info", "gpu-tests", "sanitizer-memcheck"]
    assert record["steps"][1]["counts"]["failures"] == 1 and record["steps"][1]["rc"] == 1
    assert record["benchmarks"][0] == {"group": "settle-step-vgg5-b128-cuda", "provider": "triton",
                                       "math": "fp32", "ms": 2.0, "tflops": 33.5,
                                       "peak_tflops": 67.0, "peak_fraction": 0.5}


def test_summary_without_benchmarks(tmp_path):
    gc.write_summary(tmp_path, {}, [], None)
    md = (tmp_path / "gpu-check.md").read_text()
    print(md)
    assert "no benchmark results" in md and "- result: passed" in md


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_environment_on_gpu():
    env = gc.environment()
    print(env)
    assert env["arch"] >= 70 and env["device"] and env["precision"]["fp32_math"]


def test_main_runs_every_step_past_a_failure_and_summarises(tmp_path, monkeypatch):
    """main() with the GPU probe, the machine and the step list faked: a failing step does not
    stop the next, --skip is recorded, bench.json is summarised, the exit status says failed."""
    bench = {"benchmarks": [_bench_entry("torch", 1.0, 10.0, "fp32")]}
    write_bench = f"import json, sys; open(sys.argv[1], 'w').write({json.dumps(json.dumps(bench))})"

    def fake_steps(out, python, arch, sanitizer):
        return [gc.Step("fails", "exits 1", [python, "-c", "raise SystemExit(1)"], 20),
                gc.Step("bench", "writes bench.json", [python, "-c", write_bench,
                                                       str(out / "bench.json")], 20),
                gc.Step("left-out", "never runs", [python, "-c", "raise SystemExit(5)"], 20)]

    monkeypatch.setattr(gc, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(gc, "environment", lambda: {"device": "fake", "arch": 90})
    monkeypatch.setattr(gc, "steps", fake_steps)
    rc = gc.main(["--out", str(tmp_path), "--skip", "left-out"])
    record = json.loads((tmp_path / "gpu-check.json").read_text())
    print(rc, json.dumps(record["steps"], indent=1)[:2000])
    assert rc == 1
    assert [(s["name"], s["status"]) for s in record["steps"]] == [
        ("fails", "failed"), ("bench", "passed"), ("left-out", "skipped")]
    assert record["benchmarks"][0]["tflops"] == 10.0
    assert "| settle-step-vgg5-b128-cuda | torch | fp32 | 1.000 | 10.00 |" in (
        tmp_path / "gpu-check.md").read_text()
