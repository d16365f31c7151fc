"""The one TF32 policy (eqkern.kernels.precision) around every backend's work, checked on CPU.

No GPU is needed: the policy only reads the device of a call's inputs, so a stand-in input that
says ``cuda`` exercises the CUDA branch, and the flags it sets are plain torch globals."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import require_backend

from eqkern.backends import BACKENDS, base
from eqkern.backends.base import Backend, PhaseInputs
from eqkern.kernels import precision

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.fixture
def user_flags():
    """The user's own flags around eqkern calls, set to what the policy would not choose, and
    put back afterwards whatever a test does."""
    saved = _flags()
    outside = (not precision.TF32, not precision.TF32)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = outside
    yield outside
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Recorder(Backend):
    """A backend whose work methods record the flags they run under (and may fail)."""

    name = "recorder"

    def __init__(self, fail: bool = False):
        self.seen: dict[str, tuple[bool, bool]] = {}
        self.fail = fail

    def _record(self, method: str):
        self.seen[method] = _flags()
        if self.fail:
            raise ValueError(f"{method} failed")

    def settle(self, model, phase):
        self._record("settle")

    def unroll(self, model, x, state, steps, *, schedule="synchronous"):
        self._record("unroll")

    def hebbian_gradients(self, model, x, y, a, b):
        self._record("hebbian_gradients")

    def connection_gradients(self, model, i, inputs, out, indices=None):
        self._record("connection_gradients")


def _on(device: torch.device):
    """A stand-in input tensor: all the policy reads of it is ``.device``."""
    return SimpleNamespace(device=device)


def _call_all(be: Backend, device: torch.device) -> list[str]:
    x = _on(device)
    calls = [
        ("settle", lambda: be.settle(None, SimpleNamespace(x=x))),
        ("unroll", lambda: be.unroll(None, x, [], 1, schedule="alternating")),
        ("hebbian_gradients", lambda: be.hebbian_gradients(None, x=x, y=None, a=None, b=None)),
        ("connection_gradients", lambda: be.connection_gradients(None, 0, x, None)),
    ]
    assert [name for name, _ in calls] == list(base.WORK_METHODS), "a work method is not covered here"
    for name, call in calls:
        try:
            call()
        except ValueError as exc:
            assert str(exc) == f"{name} failed"
    return [name for name, _ in calls]


def test_cuda_calls_run_under_the_policy_and_restore(user_flags):
    be = Recorder()
    names = _call_all(be, CUDA)
    print("policy TF32 =", precision.TF32, "outside:", user_flags, "inside:", be.seen)
    for name in names:
        assert be.seen[name] == (precision.TF32, precision.TF32), name
    assert _flags() == user_flags


def test_cpu_calls_leave_the_flags_alone(user_flags):
    be = Recorder()
    names = _call_all(be, CPU)
    print("outside:", user_flags, "inside:", be.seen)
    for name in names:
        assert be.seen[name] == user_flags, name
    assert _flags() == user_flags


def test_flags_restored_after_an_exception(user_flags):
    be = Recorder(fail=True)
    _call_all(be, CUDA)  # every method raised (checked inside)
    print("inside:", be.seen, "after:", _flags())
    assert all(v == (precision.TF32, precision.TF32) for v in be.seen.values())
    assert _flags() == user_flags


def test_policy_context_directly(user_flags):
    with pytest.raises(KeyError), precision.tf32_policy("cuda"):
        assert _flags() == (precision.TF32, precision.TF32)
        raise KeyError("boom")
    assert _flags() == user_flags
    with precision.tf32_policy("cpu"):
        assert _flags() == user_flags


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_registered_backend_is_wrapped(name):
    cls = type(BACKENDS[name])
    wrapped = {m: getattr(getattr(cls, m), "_eqkern_tf32_policy", False) for m in base.WORK_METHODS}
    print(name, wrapped)
    assert all(wrapped.values())


@pytest.mark.parametrize("name", ["reference", "torch", "cpp"])
def test_real_backend_calls_go_through_the_policy(name, monkeypatch):
    """A real settle + Hebbian update on CPU asks the policy once per call, with the input's device."""
    require_backend(name)
    from eqkern import CRNN, Conv, Linear
    from eqkern.backends.base import Phase

    asked: list[torch.device] = []
    real = base.tf32_policy

    def spy(device):
        asked.append(torch.device(device))
        return real(device)

    monkeypatch.setattr(base, "tf32_policy", spy)
    be = BACKENDS[name]
    model = CRNN((1, 6, 6), [Conv(2), Linear(3)], 2).double()
    x, y = torch.rand(2, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1])
    free = model.init_state(2, like=x)
    be.settle(model, PhaseInputs(x, free, 0.0, 2))
    plus = [s.clone() for s in free]
    be.settle(model, PhaseInputs(x, plus, 0.5, 2, y))
    before = len(asked)
    be.hebbian_gradients(model, x, y, Phase(plus, 0.5), Phase(free, 0.0))
    print(name, "policy asked for:", asked)
    assert asked[:before] == [CPU, CPU]
    assert len(asked) > before and set(asked) == {CPU}


def _import_precision(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("EQKERN_TF32", "EQKERN_TRITON_FP32_DOT")}
    if value is not None:
        env["EQKERN_TF32"] = value
    code = ("import torch; from types import SimpleNamespace as N; from eqkern.kernels import precision as p\n"
            "torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False\n"
            "with p.tf32_policy('cuda'): inside = (torch.backends.cudnn.allow_tf32, "
            "torch.backends.cuda.matmul.allow_tf32)\n"
            "print(p.TF32, p.TRITON_FP32_DOT, inside, p.describe()['fp32_math'])")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("value,want", [
    (None, "False ieee (False, False) exact fp32"),
    ("0", "False ieee (False, False) exact fp32"),
    ("1", "True tf32 (True, True) tf32 (10-bit mantissa products)"),
])
def test_env_switch(value, want):
    proc = _import_precision(value)
    print(f"EQKERN_TF32={value!r}: rc {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}")
    assert proc.returncode == 0
    assert proc.stdout.strip() == want


def test_env_switch_rejects_banana():
    proc = _import_precision("banana")
    print(f"rc {proc.returncode}\n{proc.stderr[-2000:]}")
    assert proc.returncode != 0
    assert "ArgumentError" in proc.stderr
    assert "$EQKERN_TF32 must be 0 or 1, got 'banana'" in proc.stderr


def test_info_reports_the_policy():
    from eqkern.tools.info import format_info, info

    d = info()
    text = format_info(d)
    print(d["precision"], "\n", text)
    assert d["precision"] == precision.describe()
    assert precision.describe()["fp32_math"] in text
