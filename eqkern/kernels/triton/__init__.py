"""Triton kernels of the ``triton`` backend, one module per op.

* :mod:`.forward_pool`: ``eqkern::forward_pool_triton``, conv + bias + 2×2 max-pool with indices;
* :mod:`.feedback_settle`: ``eqkern::feedback_settle_triton``, unpool-gather + transposed conv +
  the layer update ``s ← ρ(α·u + γ·d + n)``, in place;
* :mod:`.hebbian`: ``eqkern::hebbian_triton``, the contrastive weight and bias gradient of a layer.

Each module holds the ``@triton.jit`` kernel, the ``torch.library`` custom op that checks its
arguments and launches it (with ``register_fake``), and the ATen ``<op>_ref`` the tests compare
against.

:mod:`._common` holds what they share: the dtype and dot-precision policy, the one table of GPU
tiles (autotuned on a GPU, one problem-sized tile in the interpreter), the device guard.
``python -m eqkern.kernels.triton.compile_check`` (with ``TRITON_INTERPRET=0``) compiles every
launchable variant (each op's ``VARIANTS`` × dtypes × precisions × tiles) for sm_90 without a
GPU and reports shared memory, registers and spills per variant.

Importing this package decorates the kernels, and ``@triton.jit`` reads ``TRITON_INTERPRET`` at
that moment: on CPU, set ``TRITON_INTERPRET=1`` before the first import (``eqkern`` itself
imports this package only when the triton backend first runs).
"""

from __future__ import annotations

from eqkern.kernels.triton._common import INTERPRET
from eqkern.kernels.triton.feedback_settle import feedback_settle_triton
from eqkern.kernels.triton.forward_pool import forward_pool_triton
from eqkern.kernels.triton.hebbian import hebbian_triton

__all__ = ["INTERPRET", "feedback_settle_triton", "forward_pool_triton", "hebbian_triton"]
