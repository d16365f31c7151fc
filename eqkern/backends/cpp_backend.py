"""Backend ``cpp`` (:class:`CppBackend`): the analytic step of :mod:`.torch_backend`, the whole loop
as one C++/CUDA op.

``settle`` is one call of ``eqkern::settle`` (``csrc/loop/settle_loop.cpp``): the T steps of every layer
run in C++ without returning to Python. Per step and layer the convolutions go through ATen (oneDNN
on CPU, cuDNN on GPU) and the rest is two fused passes: max-pool + unpool of the layer above
(``csrc/math/pool_unpool.h``: the argmax is used where it is found, no index tensor) and the epilogue
``state ← ρ(α·u + γ·d + n)`` (``csrc/math/settle_epilogue.h``), in the same in-place order as
:func:`.torch_backend.layer_drives`. ``hebbian_gradients`` is one call of ``eqkern::hebbian_update``:
per conv layer one weight-gradient convolution over ``[s_a, s_b]`` against
``[unpool(s_a'), −unpool(s_b')]`` (layer 0 subtracts first), per FC layer one GEMM, then the
read-out, into zeroed buffers that it returns keyed by parameter (so nothing is written into a
frozen parameter's ``.grad``). ``connection_gradients`` (FRE, VF, KP-VF) is the shared ATen
default: the C++ op computes whole-network updates only.

LE / KD(W) nudges run inside the loop (``csrc/loop/nudge.h``) from what :func:`aux_nudge_args` packs:
the targets of a batch (one-hot labels, or the teacher's ``softmax(t/τ)``) are constants of the
phase, so they are computed once here. The update of the LE projections / KDW maps is the small
read-out-like term of :func:`.shared_terms.aux_gradients`, shared with the torch backend, and so are
the skip links' maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqkern.model.auxiliary import LocalError, labels_of
from eqkern.model.crnn import CRNN
from eqkern.backends import shared_terms
from eqkern.backends.base import Backend, ParamGrads, Phase, PhaseInputs, nudged


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


class CppBackend(Backend):
    """One C++/CUDA op per phase (``eqkern::settle``) and per update (``eqkern::hebbian_update``).

    ``connection_gradients``: ATen's weight-gradient convolution / GEMM (the shared default).
    Runs every model and schedule, skip links on the alternating schedule included.
    """

    name = "cpp"

    def unavailable_reason(self, device: torch.device) -> str | None:
        from eqkern.kernels import native

        if not native.cpp_available():
            return f"eqkern._C is not built or failed to load: {native.cpp_load_error()}"
        if device.type == "cuda" and not native.cuda_kernels_registered():
            return "eqkern._C was built without CUDA kernels (see `eqkern info`)"
        if device.type not in ("cpu", "cuda"):
            return f"the cpp backend runs on cpu and cuda, not {device.type}"
        return None

    def settle(self, model: CRNN, phase: PhaseInputs) -> None:
        """``u_0 = P_0(W_0 * x + b_0)`` is computed once, in C++; ``beta`` may be per sample."""
        from eqkern.kernels import ops  # imported late: loading eqkern._C is only needed when this backend runs

        x, y, beta = phase.x, phase.targets, phase.beta
        aux = aux_nudge_args(model, y, x.dtype) if nudged(beta) else ops.NO_AUX
        with torch.no_grad():
            ops.settle(x, ops.network_args(model), phase.state, beta, phase.steps,
                       labels_of(y) if nudged(beta) else None, aux, phase.schedule)

    @torch.no_grad()
    def hebbian_gradients(self, model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
        from eqkern.kernels import ops

        params = [p for m in model.weight_layers() for p in (m.weight, m.bias)]  # the op's order
        # The op adds into the buffers it is given: fresh zeros, never a parameter's .grad.
        buffers = [torch.zeros_like(p) for p in params]
        net = ops.network_args(model)
        ops.hebbian_update(x, net, labels_of(y) if net.out_weight is not None else None, a.state,
                           a.beta, b.state, b.beta, buffers)
        grads: ParamGrads = dict(zip(params, buffers))
        # the small maps outside the C++ op, as the torch backend computes them: LE/KDW, skip links
        grads.update(shared_terms.aux_gradients(model, y, a, b))
        grads.update(shared_terms.skip_gradients(model, a, b, shared_terms.hebbian_scale(x, a, b)))
        return grads


BACKEND = CppBackend()
