"""eqkern._C is only loaded with the torch it was built against: a version mismatch leaves the
compiled backends unavailable with a reason that names both versions and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqkern.kernels import native

ROOT = Path(__file__).resolve().parents[2]
OTHER = "2.0.1+cu118"  # a torch that no test environment has
FIX = "pip install --no-build-isolation -e ."


@pytest.fixture
def recorded_other_torch(monkeypatch) -> dict:
    """The build info as if eqkern._C had been built against torch OTHER."""
    info = {**native.build_info(), "cpp_compiled": True, "torch": OTHER}
    monkeypatch.setattr(native, "build_info", lambda: dict(info))
    return info


def test_public_version_drops_the_local_label() -> None:
    assert native.public_version("2.14.1+cu130") == "2.14.1"
    assert native.public_version("2.15.0.dev20260101") == "2.15.0.dev20260101"


@pytest.mark.parametrize("info,installed", [
    ({"cpp_compiled": True, "torch": "2.14.1+cu130"}, "2.14.1+cu130"),
    ({"cpp_compiled": True, "torch": "2.14.1+cpu"}, "2.14.1+cu130"),  # same release, same C++ ABI
    ({}, "2.14.1"),  # never built (source tree): nothing to compare
    ({"cpp_compiled": False, "reason": "EQKERN_CPP=0"}, "2.14.1"),  # no native code
], ids=["same", "local-label", "no-build-info", "pure-python"])
def test_no_mismatch(info: dict, installed: str) -> None:
    assert native.torch_mismatch(info, installed) is None


def test_mismatch_reason_names_both_versions_and_the_fix() -> None:
    reason = native.torch_mismatch({"cpp_compiled": True, "torch": "2.13.0+cpu"}, "2.14.1+cu130")
    print(reason)
    assert reason is not None
    assert "2.13.0+cpu" in reason and "2.14.1+cu130" in reason
    assert FIX in reason and "torch==2.13.0" in reason and "cpp" in reason


def test_mismatch_is_checked_before_the_import(recorded_other_torch, monkeypatch) -> None:
    def no_import(name: str):
        raise AssertionError(f"{name} must not be imported on a torch mismatch")

    monkeypatch.setattr(native.importlib, "import_module", no_import)
    monkeypatch.delenv("EQKERN_FORCE_SKIP_LOADING_SO", raising=False)
    reason = native._load_extension()
    assert reason == native.torch_mismatch()
    assert OTHER in reason and torch.__version__ in reason and FIX in reason


def test_mismatch_makes_cpp_unavailable_and_info_says_why(recorded_other_torch, monkeypatch) -> None:
    from eqkern.backends import available_backends, unavailable_reason
    from eqkern.tools.info import format_info, info

    monkeypatch.delenv("EQKERN_FORCE_SKIP_LOADING_SO", raising=False)
    monkeypatch.setattr(native, "_LOAD_ERROR", native._load_extension())
    assert not native.cpp_available() and not native.cuda_kernels_registered()
    error = native.cpp_load_error()
    assert error == native.torch_mismatch()  # shown as is, no second hint appended
    for device in ("cpu", "cuda"):
        reason = unavailable_reason("cpp", device)
        assert reason is not None and OTHER in reason and torch.__version__ in reason, reason
    assert "cpp" not in available_backends("cpu") and "torch" in available_backends("cpu")
    text = format_info(info())
    print(text)
    assert f"eqkern._C: NOT loaded: {error}" in text
    assert FIX in text


# CI always builds the extension: only a build without native code (EQKERN_CPP=0) has none to refuse.
@pytest.mark.skipif(os.environ.get("EQKERN_CPP") == "0", reason="EQKERN_CPP=0: built without native code")
def test_fresh_import_with_another_torch_does_not_load_the_extension() -> None:
    """The import-time path, in a fresh interpreter whose torch reports another version."""
    code = (
        "import sys, torch\n"
        "from torch.torch_version import TorchVersion\n"
        "torch.__version__ = TorchVersion('9.9.9')\n"
        "from eqkern.kernels import native\n"
        "from eqkern.tools.info import format_info, info\n"
        "print('loaded' if 'eqkern._C' in sys.modules else 'not loaded')\n"
        "print(format_info(info()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EQKERN_FORCE_SKIP_LOADING_SO"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "not loaded"
    built = native.build_info()["torch"]
    assert any(line.startswith("eqkern._C: NOT loaded:") and built in line and "9.9.9" in line
               and FIX in line for line in lines)
    assert any(line.split()[:2] == ["cpu", "cpp"] and "no:" in line for line in lines)
