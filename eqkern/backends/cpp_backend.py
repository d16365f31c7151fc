"""Backend ``cpp``: the analytic step of :mod:`.analytic`, the whole loop as one C++/CUDA op.

``settle`` is one call of ``eqkern::settle`` (``csrc/loop/settle_loop.cpp``): the T steps of every layer
run in C++ without returning to Python. Per step and layer the convolutions go through ATen (oneDNN
on CPU, cuDNN on GPU) and the rest is two fused passes: max-pool + unpool of the layer above
(``csrc/math/pool_unpool.h``: the argmax is used where it is found, no index tensor) and the epilogue
``state ← ρ(α·u + γ·d + n)`` (``csrc/math/settle_epilogue.h``), in the same in-place order as
:func:`.analytic.layer_drives`. ``hebbian_update`` is one call of ``eqkern::hebbian_update``: per
conv layer one weight-gradient convolution over ``[s_a, s_b]`` against
``[unpool(s_a'), −unpool(s_b')]`` (layer 0 subtracts first), per FC layer one GEMM, then the read-out,
added into every ``.grad`` as :func:`.analytic.hebbian_update` does.

LE / KD(W) nudges run inside the loop (``csrc/loop/nudge.h``) from what :func:`aux_nudge_args` packs:
the targets of a batch (one-hot labels, or the teacher's ``softmax(t/τ)``) are constants of the
phase, so they are computed once here. The update of the LE projections / KDW maps is the small
read-out-like term of :func:`.analytic._aux_grads`, shared with the torch backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqkern.model.auxiliary import LocalError, labels_of
from eqkern.model.crnn import CRNN
from eqkern.backends.torch_backend import _aux_grads, _skip_grads
from eqkern.backends.base import Phase, accumulate_grads


def aux_nudge_args(model: CRNN, y, dtype: torch.dtype):
    """The :class:`eqkern.kernels.ops.AuxNudgeArgs` of an augmented model for targets ``y`` (see augment.py:
    LE ``c = κ/τ`` towards one-hot labels, KD(W) ``c = κτ`` towards ``softmax(t/τ)``)."""
    from eqkern.kernels import ops

    aug = model.augment
    if aug is None:
        return ops.NO_AUX
    maps, targets, scales = [], [], []
    for j, _ in enumerate(aug.layers):
        mod = model.aux_module(j)
        maps.append(None if mod is None else mod.weight)
        if isinstance(aug, LocalError):
            targets.append(F.one_hot(labels_of(y).long(), model.num_classes).to(dtype))
            scales.append(model.kappa / aug.tau)
        else:
            targets.append(torch.softmax(y.features[j].flatten(1).to(dtype) / aug.tau, dim=1))
            scales.append(model.kappa * aug.tau)
    return ops.AuxNudgeArgs(list(aug.layers), maps, targets, scales, float(aug.tau))


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    steps: int,
    y,
    schedule: str = "synchronous",
) -> list[torch.Tensor]:
    """Run ``steps`` steps in place; ``u_0 = P_0(W_0 * x + b_0)`` is computed once, in C++.

    ``beta``: a float or a ``(batch,)`` tensor (one β per sample).
    """
    from eqkern.kernels import ops  # imported late: loading eqkern._C is only needed when this backend runs

    nudged = isinstance(beta, torch.Tensor) or beta != 0.0
    aux = aux_nudge_args(model, y, x.dtype) if nudged else ops.NO_AUX
    with torch.no_grad():
        ops.settle(x, ops.network_args(model), state, beta, steps, labels_of(y) if nudged else None,
                   aux, schedule)
    return state


@torch.no_grad()
def hebbian_update(model: CRNN, x: torch.Tensor, y: torch.Tensor, a: Phase, b: Phase) -> None:
    """The contrastive Hebbian update, added to every ``.grad`` (SPEC §2), in one C++ call."""
    from eqkern.kernels import ops

    params = list(model.connections.parameters())  # weight, bias of every connection
    if model.out is not None:
        params += list(model.out.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    net = ops.network_args(model)
    ops.hebbian_update(x, net, labels_of(y) if net.out_weight is not None else None, a.state, a.beta,
                       b.state, b.beta, [p.grad for p in params])
    # the small maps outside the C++ op, as the torch backend computes them: LE/KDW, skip links
    pairs = [(m.weight, g) for m, g in zip(model.aux, _aux_grads(model, y, a, b)) if m.weight.requires_grad]
    scale = -1.0 / ((a.beta - b.beta) * x.shape[0])
    pairs += [(link.weight, g) for link, g in zip(model.skip_links, _skip_grads(model, a, b, scale))]
    if pairs:
        accumulate_grads(*zip(*pairs))
