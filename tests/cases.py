"""Small CRNN cases used by the backend tests: odd sizes, batch 1, no pool, FC-only, MSE, scales."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from eqkern import CRNN, Conv, Linear


@dataclass
class Case:
    id: str
    input_shape: tuple[int, ...]
    layers: list
    num_classes: int = 5
    batch: int = 3
    readout: str = "ce"
    kwargs: dict = field(default_factory=dict)

    def build(self, dtype: torch.dtype) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
        model = CRNN(self.input_shape, self.layers, self.num_classes, self.readout, **self.kwargs)
        model = model.to(dtype)
        x = torch.rand(self.batch, *self.input_shape, dtype=dtype) * 2 - 0.5
        y = torch.randint(0, self.num_classes, (self.batch,))
        return model, x, y


CASES = [
    Case("conv-pool-odd11", (1, 11, 11), [Conv(4), Conv(6, padding=0), Linear(7)]),
    Case("batch1-rgb9", (3, 9, 9), [Conv(5), Conv(4, padding=0, pool=False)], batch=1),
    Case("conv-nopool-mse", (2, 8, 7), [Conv(4, pool=False), Conv(5), Linear(5)], readout="mse"),
    Case("fc-only", (13,), [Linear(9), Linear(6)], batch=4),
    Case("fc-only-mse", (13,), [Linear(9), Linear(5)], readout="mse"),
    Case("activations-scales-uniform", (1, 10, 10),
         [Conv(4, activation="relu", gamma=0.5), Conv(4, activation="clamp01", alpha=0.8),
          Linear(6, activation="hard_sigmoid_courbariaux", gamma=0.3)],
         kwargs={"state_init": "uniform", "init_scale": 0.7}),
    Case("kernel5-pad2-tanh", (1, 12, 12), [Conv(3, kernel_size=5, padding=2, activation="tanh"),
                                             Conv(4, padding=1)]),
]
