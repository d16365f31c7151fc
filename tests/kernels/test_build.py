"""The build: its recorded info, which kernels registered, the nvcc-only compile gate (no register
spills in the device code of the ops, with or without a CUDA torch), eqkern info."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqkern.kernels import native as _build

ROOT = Path(__file__).resolve().parents[2]
OP = "eqkern::settle_epilogue_"


def _nvcc() -> str:
    """nvcc on PATH or in $CUDA_HOME/bin. CI machines have a toolkit, so a missing one fails;
    EQKERN_CUDA=0 (a build without CUDA) opts out with a skip that says so."""
    found = shutil.which("nvcc")
    default = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    if found or default.exists():
        return found or str(default)
    if os.environ.get("EQKERN_CUDA") == "0":
        pytest.skip("EQKERN_CUDA=0: no CUDA toolkit expected")
    pytest.fail("nvcc not found (neither on PATH nor in $CUDA_HOME/bin); set EQKERN_CUDA=0 to test "
                "a build without CUDA")


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    print("$", " ".join(args), "->", proc.returncode, "\n", proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def test_build_info_matches_installed_torch() -> None:
    info = _build.build_info()
    print(json.dumps(info, indent=2))
    assert info, "eqkern/_build_info.json is missing: install with `pip install --no-build-isolation -e .`"
    for key in ("cpp_compiled", "cuda_compiled", "python", "built_at", "reason"):
        assert key in info, f"_build_info.json lacks {key!r}"
    if info["cpp_compiled"]:
        assert info["torch"] == torch.__version__, "eqkern._C was built against another torch: rebuild"
        assert info["torch_cuda"] == torch.version.cuda
        assert _build.cpp_available(), _build.cpp_load_error()
        assert torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CPU")


def test_cuda_kernels_registered_iff_compiled() -> None:
    info = _build.build_info()
    print(json.dumps(info, indent=2), "\nregistered:", _build.cuda_kernels_registered())
    if info.get("cuda_compiled"):
        assert info["cuda_arch_list"], "a CUDA build must record its arch list"
        assert _build.cuda_kernels_registered(), f"CUDA build, but no CUDA kernel for {OP}"
    else:
        assert not _build.cuda_kernels_registered()
        assert info.get("reason"), "a build without CUDA kernels must say why"


@pytest.fixture(scope="module")
def ptxas_spills(tmp_path_factory) -> dict[str, tuple[int, int]]:
    """``kernel -> (spill stores, spill loads)`` of every kernel of csrc/cuda/compile_check.cu (the
    device code of the ops, instantiated for exactly the types they dispatch: c10::Half and
    c10::BFloat16, whose header-only definitions come from torch's include folder) compiled once
    for sm_90."""
    from torch.utils.cpp_extension import include_paths

    out = tmp_path_factory.mktemp("nvcc") / "cc.o"
    proc = _run([_nvcc(), "-std=c++17", "-c", "csrc/cuda/compile_check.cu", "-I", include_paths()[0],
                 "-o", str(out), "-gencode", "arch=compute_90,code=sm_90", "-Xptxas", "-v"])
    assert proc.returncode == 0, "nvcc failed on the device code"
    props = re.findall(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
                       r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stdout + proc.stderr)
    return {name: (int(st), int(ld)) for name, _, st, ld in props}


@pytest.mark.parametrize("kernel,count", [("settle_epilogue_kernel", 20), ("pool_unpool_kernel", 4)])
def test_device_kernels_have_no_spills(ptxas_spills, kernel, count) -> None:
    """settle_epilogue: 5 activations × 4 storage dtypes; pool_unpool: one per dtype."""
    kernels = {k: v for k, v in ptxas_spills.items() if kernel in k}
    assert len(kernels) == count, f"expected {count} {kernel}s in ptxas output, found {len(kernels)}"
    spilling = {k: v for k, v in kernels.items() if v != (0, 0)}
    assert not spilling, f"register spills (stores, loads): {spilling}"


def test_info_lists_backends_and_formats() -> None:
    from eqkern.tools.info import format_info, info

    d = info()
    text = format_info(d)
    print(text)
    json.dumps(d)  # plain data, so `eqkern info --json`-style output works
    assert d["versions"]["torch"] == torch.__version__
    for device in ("cpu", "cuda"):
        entries = d["backends"][device]
        assert {"reference", "torch", "cpp", "triton"} <= set(entries)
        assert entries["triton"]["available"] == (_build._triton()[0] is not None and (
            device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"))
        for e in entries.values():
            assert e["available"] == (e["reason"] is None)
    for device in ("cpu", "cuda"):
        for name in ("reference", "torch"):
            assert d["backends"][device][name]["available"]
    assert d["backends"]["cpu"]["cpp"]["available"] == _build.cpp_available()
    assert d["backends"]["cuda"]["cpp"]["available"] == _build.cuda_kernels_registered()
    assert "reference" in text and "eqkern._C" in text


def test_force_skip_loading_so() -> None:
    code = "import eqkern.kernels.native as b; print(b.cpp_available()); print(b.cpp_load_error())"
    proc = _run([sys.executable, "-c", code], env={"EQKERN_FORCE_SKIP_LOADING_SO": "1"})
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "False"
    assert "EQKERN_FORCE_SKIP_LOADING_SO=1" in proc.stdout


def test_setup_without_torch_fails_fast() -> None:
    # `pip install .` with build isolation has no torch: setup.py must say what to do, in one line.
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    proc = _run([sys.executable, "-c", code], env={"EQKERN_CPP": "1"})
    assert proc.returncode != 0
    assert "install torch first" in proc.stderr and "--no-build-isolation" in proc.stderr


def test_setup_eqkern_cuda_1_without_toolkit_fails_clearly(tmp_path: Path) -> None:
    proc = _run([sys.executable, "setup.py", "--name"],
                env={"EQKERN_CPP": "1", "EQKERN_CUDA": "1", "CUDA_HOME": str(tmp_path)})
    assert proc.returncode != 0
    assert "EQKERN_CUDA=1 but CUDA kernels cannot be built" in proc.stderr
