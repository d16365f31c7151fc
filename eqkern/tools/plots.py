"""PNG figures of the tools: the per-parameter GDU check and peak memory. Headless (Agg), atomic
writes. The training curves are :mod:`eqkern.training.curves` (re-exported here)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from eqkern.training.curves import plot_layer_curves, plot_training_curves
from eqkern.training.curves import save_figure as _save_atomic

__all__ = ["plot_training_curves", "plot_gdu", "plot_layer_curves", "plot_memory"]


def plot_gdu(table: Sequence[dict], path: str | os.PathLike, *,
             title: str | None = None) -> Path:
    """Grouped bars per parameter: EP-vs-BPTT ``cosine`` (left axis) and ``rel_error`` (right).

    The relative error goes on its own log axis: it spans orders of magnitude (1e-6 for a good
    small-beta estimate up to ~1), which a shared linear axis with the cosine would hide.
    """
    names = [str(r["name"]) for r in table]
    cos = [float(r["cosine"]) for r in table]
    # a log axis needs > 0; an infinite error (BPTT's gradient zero) is drawn at the top
    rel = [float(r["rel_error"]) for r in table]
    top = max([1.0, *(v for v in rel if math.isfinite(v))]) * 10
    rel = [min(max(v, 1e-12), top) for v in rel]
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
