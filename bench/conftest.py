"""Shared sizes and providers of the benchmarks (pytest-benchmark, providers side by side).

Each benchmark group holds one (op, size) pair and one entry per provider, so a single run puts
``reference``, ``torch`` and ``cpp`` next to each other; ``bench/report.py`` turns the JSON into
ratios against ``reference``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# eqkern only looks for data in root= or $EQKERN_DATA (a user has no folder beside the checkout);
# the developers' real data is in shared/data beside it, so the benchmarks read it from there
# unless EQKERN_DATA already says otherwise.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("EQKERN_DATA", str(_SHARED_DATA))


def _apply_interpret_default() -> str:
    """tests/interpret_default.py's TRITON_INTERPRET default (interpreter only without a CUDA
    device; the environment wins), loaded by path so that bench/ needs no sys.path change and
    `from conftest import SIZES` keeps meaning this file."""
    path = Path(__file__).resolve().parent.parent / "tests" / "interpret_default.py"
    spec = importlib.util.spec_from_file_location("eqkern_tests_interpret_default", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.apply()


# Read at @triton.jit decoration time, so it must be set before anything imports eqkern.
_apply_interpret_default()

import pytest  # noqa: E402
import torch  # noqa: E402

from eqkern import CRNN, Conv, Linear  # noqa: E402

PROVIDERS = ["reference", "torch", "cpp"]


def vgg5(batch: int, width: float = 1.0) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
    """Laborieux's VGG-5: 128-256-512-512 3×3 convs, pools, padding 1-1-1-0, CIFAR-shaped input."""
    ch = [max(1, round(c * width)) for c in (128, 256, 512, 512)]
    model = CRNN((3, 32, 32), [Conv(ch[0]), Conv(ch[1]), Conv(ch[2]), Conv(ch[3], padding=0)], 10)
    return model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


def vgg7(batch: int, width: float = 1.0) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
    """Lin's VGG-7 (App. C): 64-128-256-512-512 3×3 convs, each pooled, FC-512, soft-max read-out."""
    ch = [max(1, round(c * width)) for c in (64, 128, 256, 512, 512, 512)]
    layers = [Conv(c) for c in ch[:5]] + [Linear(ch[5])]
    model = CRNN((3, 32, 32), layers, 10)
    return model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


# The one table of sizes every benchmark file uses: name -> (builder, batch, width).
SIZES = {
    "vgg5-b128": (vgg5, 128, 1.0),
    "vgg5-b32": (vgg5, 32, 1.0),
    "vgg5-b1": (vgg5, 1, 1.0),
    "vgg7-b128": (vgg7, 128, 1.0),
    "vgg7r-b128": (vgg7, 128, 1 / 8),  # reduced width: channels divided by 8
    "tiny-b4": (vgg7, 4, 1 / 32),  # for CI's --benchmark-disable smoke run only
}
# EQKERN_BENCH_SIZES=a,b picks sizes; `make test` runs the smoke size, `make bench` the others.
SELECTED = [s for s in os.environ.get("EQKERN_BENCH_SIZES", "").split(",") if s] or [
    s for s in SIZES if s != "tiny-b4"]
_unknown = sorted(set(SELECTED) - set(SIZES))
if _unknown:
    raise ValueError(f"EQKERN_BENCH_SIZES names unknown sizes {_unknown}; known: {sorted(SIZES)}")


@pytest.fixture(params=SELECTED)
def size(request):
    builder, batch, width = SIZES[request.param]
    return request.param, builder(batch, width)


def require_provider(name: str) -> None:
    """As tests/conftest.py's require_backend: a provider CI builds must run; EQKERN_CPP=0 opts
    out of cpp."""
    from eqkern.backends import unavailable_reason

    reason = unavailable_reason(name, torch.device("cpu"))
    if reason is None:
        return
    if name == "cpp" and os.environ.get("EQKERN_CPP") == "0":
        pytest.skip("EQKERN_CPP=0: built without native code")
    pytest.fail(f"provider {name} unavailable: {reason}")


def record_env(benchmark) -> None:
    """What a reader needs to compare runs: versions, threads, device."""
    import eqkern

    import platform

    benchmark.extra_info.update(torch=torch.__version__, eqkern=eqkern.__version__,
                                threads=torch.get_num_threads(), device="cpu",
                                device_name=platform.processor() or platform.machine())
