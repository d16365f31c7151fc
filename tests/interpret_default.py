"""The one place that decides TRITON_INTERPRET for pytest runs (tests/ and bench/ conftests).

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a kernel, i.e. when eqkern's Triton
modules are imported, so :func:`apply` must run before anything imports eqkern. The default
follows the machine: the interpreter (``"1"``) only where no CUDA device is visible (CPU tensors
can only run interpreted), compiled kernels (``"0"``) where one is (a plain ``pytest -m gpu`` on
a GPU machine then tests, and the benchmarks time, the real kernels). An explicit
TRITON_INTERPRET in the environment always wins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping

VAR = "TRITON_INTERPRET"


def _cuda_visible() -> bool:
    # torch.cuda.is_available() asks the driver for a device count (cuInit) but creates no CUDA
    # context and does not mark torch's lazy init done, so later forks stay usable; it is the
    # same query tests/conftest.py already makes at collection.
    import torch

    return torch.cuda.is_available()


def interpret_default(environ: MutableMapping[str, str] | None = None,
                      cuda_visible: Callable[[], bool] = _cuda_visible) -> str:
    """The TRITON_INTERPRET value to use: the environment's if set (even if empty), else ``"0"``
    when ``cuda_visible()`` and ``"1"`` when not (``cuda_visible`` is not called then)."""
    environ = os.environ if environ is None else environ
    if VAR in environ:
        return environ[VAR]
    return "0" if cuda_visible() else "1"


def apply(environ: MutableMapping[str, str] | None = None,
          cuda_visible: Callable[[], bool] = _cuda_visible) -> str:
    """Set TRITON_INTERPRET in ``environ`` (default ``os.environ``) to :func:`interpret_default`
    and return it."""
    environ = os.environ if environ is None else environ
    environ[VAR] = interpret_default(environ, cuda_visible)
    return environ[VAR]
