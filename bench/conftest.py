"""Shared sizes and providers of the benchmarks (pytest-benchmark, providers side by side).

Each benchmark group holds one (op, size) pair and one entry per provider, so a single run puts
``reference``, ``torch`` and ``cpp`` next to each other; ``bench/report.py`` turns the JSON into
ratios against ``reference``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from eqkern import CRNN, Conv  # noqa: E402

PROVIDERS = ["reference", "torch", "cpp"]


def vgg5(batch: int) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
    """Laborieux's VGG-5: 128-256-512-512 3×3 convs, pools, padding 1-1-1-0, CIFAR-shaped input."""
    model = CRNN((3, 32, 32), [Conv(128), Conv(256), Conv(512), Conv(512, padding=0)], 10)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


SIZES = {"vgg5-b128": (vgg5, 128)}


@pytest.fixture(params=list(SIZES))
def size(request):
    builder, batch = SIZES[request.param]
    return request.param, builder(batch)


def require_provider(name: str) -> None:
    from eqkern.backends import unavailable_reason

    reason = unavailable_reason(name, torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


def record_env(benchmark) -> None:
    """What a reader needs to compare runs: versions, threads, device."""
    import eqkern

    benchmark.extra_info.update(torch=torch.__version__, eqkern=eqkern.__version__,
                                threads=torch.get_num_threads(), device="cpu")
