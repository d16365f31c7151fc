"""Shared test set-up: seeds, the comparison metric, small model cases and backend availability."""

from __future__ import annotations

import os

# Read at @triton.jit decoration time, so it must be set before anything imports eqkern.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Scale-free relative RMS error ``‖out − ref‖ / ‖ref‖`` (fla's metric), in fp64."""
    ref, out = ref.detach().double(), out.detach().double()
    assert not torch.isnan(out).any(), "NaN in output"
    assert not torch.isnan(ref).any(), "NaN in reference"
    den = ref.norm()
    return (out - ref).norm().item() / den.item() if den > 0 else (out - ref).norm().item()


def require_backend(name: str, device: str = "cpu") -> None:
    """Fail (not skip) when a backend that CI builds is missing; EQKERN_CPP=0 opts out of cpp."""
    from eqkern.backends import unavailable_reason

    reason = unavailable_reason(name, torch.device(device))
    if reason is None:
        return
    if name == "cpp" and os.environ.get("EQKERN_CPP") == "0":
        pytest.skip("EQKERN_CPP=0: built without native code")
    pytest.fail(f"backend {name} unavailable: {reason}")


def require_triton(request) -> None:
    """CPU tests need the interpreter (fail, not skip, when it is broken); ``gpu`` tests need CUDA.
    A GPU machine runs the compiled kernels with TRITON_INTERPRET=0: the CPU tests skip there."""
    if request.node.get_closest_marker("gpu"):
        if torch.cuda.is_available():
            require_backend("triton", "cuda")
        return
    if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 on a GPU machine: the interpreter tests run on CPU machines")
    require_backend("triton")
