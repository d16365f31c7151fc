"""The FRE-RNN learning rule (Liu & Chen, eq. 3-4 and Algorithm 1, lines 21-27).

After the free phase (``s^0``) and a nudged phase (``s^β``, the output error fed back through the
read-out as in every EP nudged phase: ``β W_outᵀ(onehot(y) − softmax(W_out s_N + b_out))``,
Algorithm 1 line 17 with ``B_f = W_outᵀ``), every connection moves by

    ΔW_i = ds_{i+1} · (s_i^0)ᵀ,      ds_{i+1} = s_{i+1}^β − s_{i+1}^0     (one-sided)
    Δb_i = ds_{i+1}                                                       (the "bias gradient" of §C.4)
    ΔW_out = (onehot(y) − ŷ^0) · (s_N^0)ᵀ,   Δb_out = onehot(y) − ŷ^0      (eq. 4, at the free state)

and a skip link ``R_ij`` by ``ds_j · (s_i^0)ᵀ``. Unlike the contrastive rule there is no ``1/β``:
the hidden-layer steps scale with ``β`` (and with the feedback scales γ below the output), which
is the paper's implicit layer-wise learning rate (§4.3). For a conv layer ``ds·sᵀ`` is the
weight-gradient convolution of ``⟨ds_{i+1}, P_i(W_i * s_i^0 + b_i)⟩`` (max-unpool with the free
state's pool indices, Algorithm S2), computed by the selected backend's
:meth:`~eqkern.backends.base.Backend.connection_gradients`. The gradients are ``−Δ/batch`` (the
paper's code averages over the batch), so that any ``torch.optim`` optimizer descends along ``Δ``;
:func:`eqkern.learning.ep.ep_gradients` writes them into ``.grad``.

With the symmetric estimate ``ds = (s^{+β} − s^{−β})/2``; with a random sign, ``ds`` is taken
with the sign of β, so that it always estimates the one-sided ``s^{|β|} − s^0``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from eqkern.errors import ArgumentError
from eqkern.model.auxiliary import labels_of
from eqkern.backends.base import Backend, ParamGrads, Phase
from eqkern.model.crnn import CRNN


@torch.no_grad()
def fre_gradients(
    backend: Backend,
    model: CRNN,
    x: torch.Tensor,
    y: torch.Tensor,
    free: Sequence[torch.Tensor],
    a: Phase,
    b: Phase,
    beta: float,
) -> ParamGrads:
    """The FRE-RNN update ``−ΔW/batch`` of every parameter (see the module docstring).

    ``backend``: the selected backend, whose ``connection_gradients`` computes each ``ds·sᵀ``.
    ``x: (batch, *input_shape)``; ``y: (batch,)`` class ids; ``free``: the free equilibrium ``s^0``
    (one ``(batch, *shape)`` tensor per layer); ``a``, ``b``: the two phases the estimate contrasts
    (``(s^β, β)`` and ``(s^0, 0)`` one-sided, ``(s^{+β}, β)`` and ``(s^{−β}, −β)`` symmetric);
    ``beta``: the nominal nudging strength, so that ``ds = (s_a − s_b)·|β|/(β_a − β_b)``.
    """
    if model.augment is not None:
        raise ArgumentError("rule='fre' does not support LE/KD augmentation (the paper has none); "
                         "use rule='ep'")
    batch = x.shape[0]
    factor = abs(beta) / (a.beta - b.beta)
    ds = [(sa - sb) * factor for sa, sb in zip(a.state, b.state)]
    scale = -1.0 / batch
    grads: ParamGrads = {}
    inputs = x
    for i, conn in enumerate(model.connections):
        # unpooled with the free state's own pool indices (the default of connection_gradients)
        gw, gb = backend.connection_gradients(model, i, inputs, ds[i])
        grads[conn.weight], grads[conn.bias] = gw * scale, gb * scale
        inputs = free[i]
    if model.out is not None:
        feat = free[-1].flatten(1)
        onehot = F.one_hot(labels_of(y).long(), model.num_classes).to(feat.dtype)
        err = torch.softmax(model.out(feat), dim=1) - onehot  # −(s_tar − s_p^0)
        grads[model.out.weight], grads[model.out.bias] = err.t() @ feat / batch, err.sum(0) / batch
    for (i, j), link in zip(model.skips, model.skip_links):
        grads[link.weight] = link.weight_grad(ds[j], free[i]) * scale
    return grads
