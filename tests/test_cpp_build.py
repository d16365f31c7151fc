"""The device code of eqkern::settle / eqkern::hebbian_update: the nvcc-only compile gate (no register
spills in the fused pool/unpool kernel), with or without a CUDA torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    return str(default) if default.exists() else None


def test_pool_unpool_kernel_has_no_spills(tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (neither on PATH nor in $CUDA_HOME/bin)")
    proc = subprocess.run([nvcc, "-std=c++17", "-c", "csrc/cuda/compile_check.cu", "-o", str(tmp_path / "cc.o"),
                           "-gencode", "arch=compute_90,code=sm_90", "-Xptxas", "-v"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    print(log[-3000:])
    assert proc.returncode == 0, "nvcc failed on the torch-free device code"
    props = re.findall(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
                       r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    kernels = {name: (int(st), int(ld)) for name, _, st, ld in props if "pool_unpool_kernel" in name}
    assert len(kernels) == 4, f"expected 4 pool_unpool kernels (one per dtype) in ptxas output, found {len(kernels)}"
    spilling = {k: v for k, v in kernels.items() if v != (0, 0)}
    assert not spilling, f"register spills (stores, loads): {spilling}"
