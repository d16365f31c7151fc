"""Augmented EP (Lin et al. §3.2): local-error (LE) and knowledge-distillation (KD, KDW) signals.

The augmented primitive function (Lin eq. 10) adds, on the chosen state layers ``i ∈ Υ``,

    Φ_β = Φ − β L_EP(ŷ, y) − β κ Σ_{i∈Υ} L_aug,i(s_i)

* LE: ``r_i = B_i · flat(s_i)`` (``B_i``: classes × dim s_i, random init, learned by eq. 20 or
  frozen), ``L_aug = CE(softmax(r_i / τ), y)``.
* KD: teacher features ``t_i`` of the shape of ``s_i`` (constants of the batch),
  ``L_aug = τ² · KL(softmax(t_i/τ) ‖ softmax(s_i/τ))`` over each sample's flattened features.
* KDW: as KD with ``s_i`` replaced by ``M_i(s_i)``, a learned map. Lin et al. do not say its
  shape; a full linear map of a conv feature map would have dim(s_i)² weights, so we use a 1×1
  convolution (a channel mixing, C_i × C_i, initialised to the identity) on conv layers and a
  square matrix on FC layers.

Everything summed over the batch, like Φ. ``κ`` is ``model.kappa``, set per epoch by a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LocalError:
    """LE on state layers ``layers`` (0-based indices into the model's layers)."""

    layers: tuple[int, ...]
    tau: float = 4.0
    learn: bool = True


@dataclass(frozen=True)
class Distill:
    """KD on state layers ``layers``; ``mapped=True`` is KDW (a learned map before the loss)."""

    layers: tuple[int, ...]
    tau: float = 4.0
    mapped: bool = False


Augmentation = Union[LocalError, Distill]


class Targets(NamedTuple):
    """Targets of a batch: ``labels: (batch,)`` class ids and, for KD, one teacher feature tensor
    ``(batch, *state_shapes[layer])`` per augmented layer, in the order of ``Distill.layers``."""

    labels: torch.Tensor
    features: Sequence[torch.Tensor] | None = None


def labels_of(y: torch.Tensor | Targets) -> torch.Tensor:
    return y.labels if isinstance(y, Targets) else y


def repeat_targets(y: torch.Tensor | Targets, times: int) -> torch.Tensor | Targets:
    """``y`` for a batch that holds ``times`` copies of the samples (class ids and, for KD, the
    teacher features repeated along the batch dimension)."""
    if isinstance(y, Targets):
        feats = None if y.features is None else [torch.cat([f] * times) for f in y.features]
        return Targets(torch.cat([y.labels] * times), feats)
    return torch.cat([y] * times)


def per_sample(beta: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """``beta`` ready to multiply ``like: (batch, ...)``: a float as it is, a per-sample
    ``(batch,)`` tensor viewed as ``(batch, 1, ..., 1)``."""
    if isinstance(beta, torch.Tensor):
        return beta.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return beta


def _log_softmax_flat(u: torch.Tensor, tau: float) -> torch.Tensor:
    return F.log_softmax(u.flatten(1) / tau, dim=1)


def aux_loss(
    aug: Augmentation, module, j: int, s: torch.Tensor, y, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``L_aug`` of augmented layer number ``j`` (state ``s``), summed over the batch
    (``Σ_b w_b L_b`` with ``weight: (batch,)``)."""
    tau = aug.tau
    if isinstance(aug, LocalError):
        if weight is None:
            return F.cross_entropy(module(s.flatten(1)) / tau, labels_of(y).long(), reduction="sum")
        per = F.cross_entropy(module(s.flatten(1)) / tau, labels_of(y).long(), reduction="none")
        return (per * weight).sum()
    r = module(s) if module is not None else s
    log_p = _log_softmax_flat(r, tau)
    log_t = _log_softmax_flat(y.features[j], tau)
    if weight is None:
        return tau * tau * (log_t.exp() * (log_t - log_p)).sum()
    return tau * tau * ((log_t.exp() * (log_t - log_p)).sum(1) * weight).sum()


def aux_error(aug: Augmentation, module, j: int, s: torch.Tensor, y) -> torch.Tensor:
    """``∂L_aug/∂r`` where ``r`` is the read-out of the layer (``B_i s``, ``M_i(s)`` or ``s``).

    LE: ``(softmax(r/τ) − onehot(y)) / τ``; KD(W): ``τ (softmax(r/τ) − softmax(t/τ))``, both
    shaped like ``r``.
    """
    tau = aug.tau
    if isinstance(aug, LocalError):
        r = module(s.flatten(1))
        onehot = F.one_hot(labels_of(y).long(), r.shape[1]).to(r.dtype)
        return (torch.softmax(r / tau, dim=1) - onehot) / tau
    r = module(s) if module is not None else s
    p = _log_softmax_flat(r, tau).exp()
    t = _log_softmax_flat(y.features[j], tau).exp()
    return (tau * (p - t)).view_as(r)


def aux_readout_transpose(aug: Augmentation, module, err: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(∂r/∂s)ᵀ err``: how the read-out error of a layer reaches its state."""
    if isinstance(aug, LocalError):
        return (err @ module.weight).view_as(s)
    if module is None:
        return err
    if isinstance(module, torch.nn.Conv2d):  # 1×1 channel map
        return torch.einsum("bohw,oc->bchw", err, module.weight[:, :, 0, 0])
    return err @ module.weight


def aux_weight_grad(aug: Augmentation, module, err: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
    """``∂L_aug/∂θ`` of the layer's map (``B_i`` or ``M_i``) from its read-out error, or None."""
    if module is None:
        return None
    if isinstance(aug, LocalError):
        return err.t() @ s.flatten(1)
    if isinstance(module, torch.nn.Conv2d):
        return torch.einsum("bohw,bchw->oc", err, s)[:, :, None, None]
    return err.t() @ s


def make_aux_modules(aug: Augmentation | None, shapes, num_classes: int) -> torch.nn.ModuleList:
    """The learned parts of an augmentation: ``B_i`` (LE) or ``M_i`` (KDW), one per layer."""
    mods = torch.nn.ModuleList()
    if aug is None or (isinstance(aug, Distill) and not aug.mapped):
        return mods
    for i in aug.layers:
        shape = shapes[i]
        if isinstance(aug, LocalError):
            m = torch.nn.Linear(int(torch.tensor(shape).prod()), num_classes, bias=False)
            m.weight.requires_grad_(aug.learn)
        elif len(shape) == 3:
            m = torch.nn.Conv2d(shape[0], shape[0], 1, bias=False)
        else:
            m = torch.nn.Linear(shape[0], shape[0], bias=False)
        mods.append(m)
    return mods


@torch.no_grad()
def reset_aux_module(aug: Augmentation, module: torch.nn.Module, init_scale: float) -> None:
    """LE projections: the default Kaiming-uniform init × ``init_scale``; KDW maps: the identity,
    so that KDW starts as KD."""
    if isinstance(aug, LocalError):
        module.reset_parameters()
        module.weight.mul_(init_scale)
    else:
        module.weight.zero_()
        torch.nn.init.eye_(module.weight.view(module.weight.shape[0], -1))
