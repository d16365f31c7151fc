"""Backend ``cpp``: the analytic step of :mod:`.analytic`, the whole loop as one C++/CUDA op.

``settle`` is one call of ``eqkern::settle`` (``csrc/settle_loop.cpp``): the T steps of every layer
run in C++ without returning to Python. Per step and layer the convolutions go through ATen (oneDNN
on CPU, cuDNN on GPU) and the rest is two fused passes: max-pool + unpool of the layer above
(``csrc/pool_unpool.h``: the argmax is used where it is found, no index tensor) and the epilogue
``state ← ρ(α·u + γ·d + n)`` (``csrc/settle_epilogue.h``), in the same in-place order as
:func:`.analytic.layer_drives`. ``hebbian_update`` is one call of ``eqkern::hebbian_update``: per
conv layer one weight-gradient convolution over ``[s_a, s_b]`` against
``[unpool(s_a'), −unpool(s_b')]`` (layer 0 subtracts first), per FC layer one GEMM, then the read-out,
added into every ``.grad`` as :func:`.analytic.hebbian_update` does.
"""

from __future__ import annotations

import torch

from ..model import CRNN
from .common import Phase


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float,
    steps: int,
    y: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Run ``steps`` steps in place; ``u_0 = P_0(W_0 * x + b_0)`` is computed once, in C++."""
    from .. import ops  # imported late: loading eqkern._C is only needed when this backend runs

    with torch.no_grad():
        ops.settle(x, ops.network_args(model), state, beta, steps, y if beta != 0.0 else None)
    return state


@torch.no_grad()
def hebbian_update(model: CRNN, x: torch.Tensor, y: torch.Tensor, a: Phase, b: Phase) -> None:
    """The contrastive Hebbian update, added to every ``.grad`` (SPEC §2), in one C++ call."""
    from .. import ops

    params = list(model.parameters())  # weight, bias of every connection, then the read-out
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    net = ops.network_args(model)
    ops.hebbian_update(x, net, y if net.out_weight is not None else None, a.state, a.beta, b.state,
                       b.beta, [p.grad for p in params])
