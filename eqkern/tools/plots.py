"""PNG figures: training curves and the per-parameter GDU check. Headless (Agg), atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

# A figure object from matplotlib.figure never touches pyplot's backend machinery, so these
# plots work on machines with no display and never open a window, whatever MPLBACKEND says.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_training_curves", "plot_gdu", "plot_layer_curves", "plot_memory"]


def _save_atomic(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers (or a crash mid-write) then see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(fig).print_png(f)
        # mkstemp creates the file 0600; make it readable like a normal output file (fixed mode
        # rather than querying the umask, which would briefly change process-global state).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_training_curves(history: Sequence[dict], path: str | os.PathLike, *,
                         title: str | None = None) -> Path:
    """Accuracy (%) and loss vs epoch from per-epoch dicts; returns the PNG path.

    Uses ``epoch`` if present (else 1, 2, ...), and whichever of ``train_acc``, ``test_acc``
    (already in %), ``train_loss``, ``test_loss`` appear; a panel with none of its keys says so.
    """
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig = Figure(figsize=(10, 4), layout="constrained")
    panels = (("accuracy (%)", ("train_acc", "test_acc")), ("loss", ("train_loss", "test_loss")))
    for ax, (ylabel, keys) in zip(fig.subplots(1, 2), panels):
        drawn = False
        for key in keys:
            pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, label=key.split("_")[0])
                drawn = True
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save_atomic(fig, path)


def plot_gdu(table: Sequence[dict], path: str | os.PathLike, *,
             title: str | None = None) -> Path:
    """Grouped bars per parameter: EP-vs-BPTT ``cosine`` (left axis) and ``rel_error`` (right).

    The relative error goes on its own log axis: it spans orders of magnitude (1e-6 for a good
    small-beta estimate up to ~1), which a shared linear axis with the cosine would hide.
    """
    names = [str(r["name"]) for r in table]
    cos = [float(r["cosine"]) for r in table]
    rel = [max(float(r["rel_error"]), 1e-12) for r in table]  # log axis needs > 0
    pos = list(range(len(names)))
    width = 0.4
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    ax.bar([p - width / 2 for p in pos], cos, width, color="tab:blue", label="cosine")
    ax.set_ylim(min(0.0, min(cos, default=0.0)) - 0.05, 1.05)
    ax.axhline(1.0, color="tab:blue", lw=0.8, ls=":")
    ax.set_ylabel("cosine similarity", color="tab:blue")
    ax2 = ax.twinx()
    ax2.bar([p + width / 2 for p in pos], rel, width, color="tab:orange", label="rel. error")
    ax2.set_yscale("log")
    ax2.set_ylabel("relative error ‖g_EP − g_BPTT‖ / ‖g_BPTT‖", color="tab:orange")
    ax.set_xticks(pos, names, rotation=45, ha="right")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    # Above the axes: inside, the twin axis' bars would cover it.
    ax.legend(handles, [h.get_label() for h in handles], loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    fig.suptitle(title or "GDU check: EP update vs BPTT gradient per parameter")
    return _save_atomic(fig, path)


def plot_layer_curves(history: Sequence[dict], path: str | os.PathLike, *,
                      title: str | None = None) -> Path:
    """Four panels vs epoch: accuracy, loss, and per state layer the mean |state| of the free
    equilibrium and per weight layer the mean |update| (Lin Fig. 5), from ``state_abs`` /
    ``update_abs`` lists in each record. Returns the PNG path."""
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    panels = (("accuracy (%)", ("train_acc", "test_acc")), ("loss", ("train_loss", "test_loss")))
    for ax, (ylabel, keys) in zip(axes[:2], panels):
        for key in keys:
            pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key.split("_")[0])
        ax.set_ylabel(ylabel)
    for ax, key, ylabel in ((axes[2], "state_abs", "mean |state| (free phase)"),
                            (axes[3], "update_abs", "mean |update| per parameter")):
        n = max((len(h.get(key) or ()) for h in history), default=0)
        for layer in range(n):
            pts = [(e, h[key][layer]) for e, h in zip(epochs, history)
                   if h.get(key) and len(h[key]) > layer and h[key][layer] > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=f"layer {layer + 1}")
        if n:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
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
    return _save_atomic(fig, path)


def plot_memory(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Bar chart of peak memory per network and variant (EP variants vs BPTT), log scale, with
    Lin Table 2's figures beside ours where the paper has one. ``rows`` from
    :func:`eqkern.tools.memory.memory_table`."""
    nets = list(dict.fromkeys(r["network"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    width = 0.8 / (2 * len(variants))
    for k, variant in enumerate(variants):
        for source, key, alpha in (("eqkern", "peak_mb", 1.0), ("Lin Table 2", "paper_mb", 0.35)):
            xs, ys = [], []
            for n, net in enumerate(nets):
                r = next((r for r in rows if r["network"] == net and r["variant"] == variant), None)
                if r is not None and r.get(key):
                    offset = (2 * k + (key == "paper_mb")) * width
                    xs.append(n + offset)
                    ys.append(r[key])
            label = f"{variant} ({source})"
            ax.bar(xs, ys, width, alpha=alpha, color=f"C{k}", label=label)
    ax.set_xticks([n + 0.4 - width / 2 for n in range(len(nets))], nets)
    ax.set_yscale("log")
    ax.set_ylabel("peak memory of one iteration (MB)")
    ax.set_title(f"EP vs BPTT, batch {rows[0]['batch']} ({rows[0]['measured_with']})", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save_atomic(fig, path)
