"""Optimizer parameter groups, the optimizer and the LR scheduler of every training entry point.

Groups never hold a parameter with ``requires_grad=False``: a frozen parameter gets no update,
no momentum and no weight decay, whatever a backend writes into its ``.grad``.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import nn

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model.crnn import CRNN
from eqkern.validate import as_float, describe

__all__ = ["param_groups", "layer_rates", "model_groups", "make_optimizer", "make_scheduler"]


def _trainable(params) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def param_groups(model: CRNN, lr: float | Sequence[float]) -> list[dict]:
    """One optimizer group per connection (and the read-out), for layer-wise learning rates.
    A separate feedback weight B_l shares W_l's rate (and so momentum and weight decay), as in
    Laborieux App. E.1: Kolen-Pollack alignment needs the same update law on both."""
    modules = model.weight_layers()
    rates = [lr] * len(modules) if isinstance(lr, (int, float)) else list(lr)
    if len(rates) != len(modules):
        raise ArgumentError(f"lr has {len(rates)} rates, the model has {len(modules)} weight layers")
    rates = [as_float(f"lr[{i}]", r, minimum=0.0, exclusive_min=True) for i, r in enumerate(rates)]
    groups = [{"params": _trainable(m.parameters()), "lr": r} for m, r in zip(modules, rates)]
    for i in range(1, model.num_layers if model.separate_feedback else 0):
        groups[i]["params"] += _trainable([model.feedback_weight(i)])
    return groups


def layer_rates(model: CRNN, cfg: Any) -> list[float]:
    """One rate per weight layer from ``cfg.lr`` (one for all, or one per layer; a Preset's
    ``learning_rates()`` when its architecture is the model's)."""
    from eqkern.training.presets import expand_lr

    n = len(model.weight_layers())
    rates = None
    if len(cfg.arch) == model.num_layers:  # train() may pass a preset of another network
        rates = cfg.learning_rates()
    if rates is None or len(rates) != n:
        rates = expand_lr(cfg.lr, n)
    return rates


def model_groups(model: nn.Module, cfg: Any) -> list[dict]:
    """A CRNN: the layer-wise groups plus one per LE projection / KDW map and one per skip link,
    at the rate of the connection feeding its layer (the papers give none). Any other module
    (the BP teacher): one group of its trainable parameters at ``cfg.lr``."""
    if not isinstance(model, CRNN):
        return [{"params": _trainable(model.parameters()), "lr": float(cfg.lr[0])}]
    rates = layer_rates(model, cfg)
    groups = param_groups(model, rates)
    if model.augment is not None and len(model.aux):
        for j, i in enumerate(model.augment.layers):
            params = _trainable(model.aux[j].parameters())
            if params:
                groups.append({"params": params, "lr": rates[i]})
    for (_, j), link in zip(model.skips, model.skip_links):
        groups.append({"params": _trainable(link.parameters()), "lr": rates[j]})
    return groups


def make_optimizer(model: nn.Module, cfg: Any, optimizer=None) -> torch.optim.Optimizer:
    """``optimizer``: None (``cfg.optimizer``: ``sgd``/``adam``), a
    name, a ``torch.optim.Optimizer`` class (built with the config's weight decay, and momentum if
    it takes one), or a callable ``groups -> optimizer``."""
    groups = model_groups(model, cfg)
    wd, momentum = cfg.weight_decay, cfg.momentum
    if optimizer is None or isinstance(optimizer, str):
        name = (optimizer or cfg.optimizer).lower()
        if name == "sgd":
            return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=wd)
        if name == "adam":
            return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=wd)
        raise ArgumentError(f"unknown optimizer {name!r}; use 'sgd', 'adam' or a torch.optim class")
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        params = inspect.signature(optimizer).parameters
        kw: dict[str, Any] = {}
        if "weight_decay" in params:
            kw["weight_decay"] = wd
        if "momentum" in params:
            kw["momentum"] = momentum
        return optimizer(groups, **kw)
    if callable(optimizer):
        opt = optimizer(groups)
        if not isinstance(opt, torch.optim.Optimizer):  # else the first step fails far from here
            raise ArgumentTypeError(f"optimizer(groups) must return a torch.optim.Optimizer, got "
                                    f"{describe(opt)}")
        return opt
    raise ArgumentTypeError(f"optimizer must be None, a name, a torch.optim class or a callable, got {optimizer!r}")


def make_scheduler(opt: torch.optim.Optimizer, cfg: Any):
    """Cosine annealing over ``cfg.cosine_epochs`` (else ``cfg.epochs``) down to ``cfg.lr_min``
    when ``cfg.cosine``; else None."""
    if not cfg.cosine:
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.cosine_epochs or cfg.epochs,
                                                      eta_min=cfg.lr_min)
