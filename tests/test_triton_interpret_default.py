"""TRITON_INTERPRET's default (tests/interpret_default.py): the interpreter only where no CUDA
device is visible, compiled kernels where one is, the environment's value whenever it is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import interpret_default
from conftest import require_triton

ROOT = Path(__file__).resolve().parent.parent


def _never() -> bool:
    raise AssertionError("cuda_visible() asked although TRITON_INTERPRET was set")


@pytest.mark.parametrize("visible, expected", [(True, "0"), (False, "1")])
def test_default_follows_the_machine(visible, expected):
    env: dict[str, str] = {}
    got = interpret_default.apply(env, cuda_visible=lambda: visible)
    print(f"cuda visible={visible}: TRITON_INTERPRET={got!r}, expected {expected!r}")
    assert got == expected and env == {"TRITON_INTERPRET": expected}


@pytest.mark.parametrize("value", ["0", "1", ""])
def test_explicit_value_wins(value):
    env = {"TRITON_INTERPRET": value}
    got = interpret_default.apply(env, cuda_visible=_never)
    print(f"explicit {value!r}: got {got!r}")
    assert got == value and env == {"TRITON_INTERPRET": value}


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert interpret_default.interpret_default() == "0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert interpret_default.interpret_default() == "1"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert interpret_default.interpret_default() == "0"


# What each conftest leaves in the environment, and whether eqkern's triton backend saw it (it
# must be set before eqkern is imported): printed by a fresh interpreter that imports it.
_PROBE = """
import os, sys
sys.path.insert(0, {folder!r})
import conftest, torch
from eqkern.backends import unavailable_reason
print(os.environ["TRITON_INTERPRET"], unavailable_reason("triton", torch.device("cpu")) is None)
"""


@pytest.mark.parametrize("folder", ["tests", "bench"])
@pytest.mark.parametrize("explicit", [None, "0"])
def test_conftest_sets_it_before_eqkern_is_imported(folder, explicit):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if explicit is not None:
        env["TRITON_INTERPRET"] = explicit
    expected = explicit or ("0" if torch.cuda.is_available() else "1")
    out = subprocess.run([sys.executable, "-c", _PROBE.format(folder=str(ROOT / folder))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    print(out.stdout, out.stderr[-2000:])
    assert out.returncode == 0
    value, triton_on_cpu = out.stdout.split()[-2:]
    assert value == expected
    # The interpreter is what lets triton run on CPU tensors: proof eqkern saw the value.
    assert triton_on_cpu == str(expected == "1")


def test_gpu_machine_compiled_skips_interpreter_tests(monkeypatch):
    """TRITON_INTERPRET=0 (the GPU-machine default) skips the CPU interpreter tests, with why."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    request = SimpleNamespace(node=SimpleNamespace(get_closest_marker=lambda name: None))
    with pytest.raises(pytest.skip.Exception) as info:
        require_triton(request)
    print(info.value)
    assert "TRITON_INTERPRET='0' on a GPU machine" in str(info.value)


def test_agreement_tests_on_cuda_refuse_without_a_gpu(tmp_path):
    """EQKERN_TEST_DEVICE=cuda (make gpu-check) moves the vs_reference tests onto the GPU; where
    none is visible such a test fails saying so instead of silently running on the CPU."""
    env = {**os.environ, "EQKERN_TEST_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "tests/dynamics/test_schedules_convergence.py", "-m", "vs_reference"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-1500:])
    assert proc.returncode != 0
    assert "EQKERN_TEST_DEVICE='cuda' but no CUDA GPU is visible" in proc.stdout
