"""Training-curve PNGs (accuracy, loss, per-layer |state| and |update|). Headless (Agg), atomic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from eqkern.training.checkpoint import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported where a figure is made, not with eqkern: it is half a second of every
# `eqkern` start. A figure object from matplotlib.figure never touches pyplot's backend
# machinery, so these plots work on machines with no display whatever MPLBACKEND says.

__all__ = ["save_figure", "plot_training_curves", "plot_layer_curves"]

PANELS = (("accuracy (%)", ("train_acc", "test_acc")), ("loss", ("train_loss", "test_loss")))


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (:func:`eqkern.training.checkpoint.atomic_write`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return atomic_write(path, FigureCanvasAgg(fig).print_png)


def _epochs(history: Sequence[dict]) -> list:
    return [h.get("epoch", i + 1) for i, h in enumerate(history)]


def _metric_panels(axes, history: Sequence[dict]) -> None:
    """Accuracy and loss vs epoch, train and test, whichever keys appear."""
    epochs = _epochs(history)
    for ax, (ylabel, keys) in zip(axes, PANELS):
        for key in keys:
            pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key.split("_")[0])
        ax.set_ylabel(ylabel)


def _finish(fig: Figure, axes, path, title: str | None) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", ncols=2 if len(ax.get_lines()) > 6 else 1)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _steps_panel(ax, history: Sequence[dict]) -> None:
    """Settling steps per training batch (all phases) vs epoch: what the convergence stop used."""
    pts = [(e, h["settle_steps_per_batch"]) for e, h in zip(_epochs(history), history)
           if h.get("settle_steps_per_batch") is not None]
    if pts:
        ax.plot(*zip(*pts), marker="o", markersize=3, label="all phases")
    ax.set_ylabel("settle steps per batch")


def plot_training_curves(history: Sequence[dict], path: str | os.PathLike, *,
                         title: str | None = None) -> Path:
    """Accuracy (%) and loss vs epoch from per-epoch dicts, and the settling steps per batch
    (``settle_steps_per_batch``) where the records have them (a CRNN); returns the PNG path.

    Uses ``epoch`` if present (else 1, 2, ...), and whichever of ``train_acc``, ``test_acc``
    (already in %), ``train_loss``, ``test_loss`` appear; a panel with none of its keys says so.
    """
    from matplotlib.figure import Figure

    steps = any(h.get("settle_steps_per_batch") for h in history)
    fig = Figure(figsize=(15 if steps else 10, 4), layout="constrained")
    axes = fig.subplots(1, 3 if steps else 2)
    _metric_panels(axes, history)
    if steps:
        _steps_panel(axes[2], history)
    return _finish(fig, axes, path, title)


def plot_layer_curves(history: Sequence[dict], path: str | os.PathLike, *,
                      title: str | None = None) -> Path:
    """Six panels vs epoch: accuracy, loss, the settling steps per batch, and per state layer the
    mean |state| of the free equilibrium and its spread over the batch's images, and per weight
    layer the mean |update| (Lin Fig. 5), from ``settle_steps_per_batch`` and the ``state_abs``
    / ``state_spread`` / ``update_abs`` lists in each record. Returns the PNG path."""
    epochs = _epochs(history)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 8), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    _metric_panels(axes[:2], history)
    _steps_panel(axes[2], history)
    for ax, key, ylabel in ((axes[3], "state_abs", "mean |state| (free phase)"),
                            (axes[4], "update_abs", "mean |update| per parameter"),
                            (axes[5], "state_spread", "spread of the state over the batch")):
        n = max((len(h.get(key) or ()) for h in history), default=0)
        for layer in range(n):
            pts = [(e, h[key][layer]) for e, h in zip(epochs, history)
                   if h.get(key) and len(h[key]) > layer and h[key][layer] > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=f"layer {layer + 1}")
        if n:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
    return _finish(fig, axes, path, title)
