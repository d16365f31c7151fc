"""The one metrics writer: ``metrics.jsonl`` (one JSON line per epoch) and ``curves.png``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eqkern.training.checkpoint import atomic_write
from eqkern.training.curves import plot_layer_curves, plot_training_curves

__all__ = ["MetricsWriter"]


@dataclass
class MetricsWriter:
    """Writes the whole history atomically after each epoch; the curves show per-layer
    |state| / |update| panels when the records have them (CRNNs)."""

    metrics: Path
    curves: Path | None
    title: str | None = None

    def write(self, history: Sequence[dict]) -> None:
        text = "".join(json.dumps(rec) + "\n" for rec in history).encode()
        atomic_write(self.metrics, lambda f: f.write(text))
        if self.curves is not None and history:
            layered = any(rec.get("state_abs") for rec in history)
            plot = plot_layer_curves if layered else plot_training_curves
            plot(history, self.curves, title=self.title)
