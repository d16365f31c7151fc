"""Per-layer cosine of EP gradients in fp32 / bf16 / fp16 against fp64, as a Markdown table.

    OMP_NUM_THREADS=1 python scripts/precision_table.py [--backends reference torch cpp]
        [--storage-arithmetic]

For each test network (a 2-layer MLP on 28×28 inputs, a small conv net on 28×28, a VGG-5-like
conv net at 1/8 width on 32×32) one set of weights and one batch are drawn (seed 0), rounded to
bfloat16 once so that every dtype stores exactly the same numbers, and the symmetric EP gradient
(``ep_gradients``) is computed with the model in fp64 (the truth), fp32, bf16 and fp16 on each
backend. A "layer" is one weight layer (a connection or the read-out): its weight and bias
flattened together. The table gives the cosine of each layer's gradient with fp64's, and the
minimum over layers.

``--storage-arithmetic`` runs the phases and the contrastive estimate in the storage dtype (what
eqkern did before it accumulated half-precision models in fp32): the "before" figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from eqkern import CRNN, Conv, Linear, available_backends, ep_gradients
from eqkern.backends import precision

# beta, t_free, t_nudge: the free phase settles (its last step changes no state by more than
# ~1e-4 in fp64 on these nets) and the nudged phases move the state well within the linear regime.
SETTINGS = {"beta": 0.2, "t_free": 60, "t_nudge": 20, "estimator": "symmetric"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def networks() -> dict[str, tuple[CRNN, torch.Tensor, torch.Tensor]]:
    """``name -> (fp64 model, fp64 x, y)``, weights and inputs exactly representable in bf16."""
    nets = {
        "mlp-2x256 (28×28)": ((1, 28, 28), [Linear(256), Linear(256)], 16),
        "conv-16-32 (28×28)": ((1, 28, 28), [Conv(16), Conv(32)], 16),
        "vgg5/8 (32×32)": ((3, 32, 32), [Conv(16), Conv(32), Conv(64), Conv(64, padding=0)], 16),
    }
    out = {}
    for name, (shape, layers, batch) in nets.items():
        torch.manual_seed(0)
        model = CRNN(shape, layers, 10)
        x = torch.rand(batch, *shape)
        y = torch.randint(0, 10, (batch,))
        model = model.to(torch.bfloat16).double()  # rounded once: every dtype holds these values
        out[name] = (model, x.to(torch.bfloat16).double(), y)
    return out


def layer_grads(model: CRNN, x: torch.Tensor, y: torch.Tensor, backend: str) -> list[torch.Tensor]:
    """The EP gradient of each weight layer (weight and bias flattened together), in fp64."""
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, backend=backend, **SETTINGS)
    return [torch.cat([m.weight.grad.double().flatten(), m.bias.grad.double().flatten()])
            for m in model.weight_layers()]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm() * b.norm()))


def measure(backends: list[str], storage_arithmetic: bool) -> list[dict]:
    rows = []
    for net, (model64, x64, y) in networks().items():
        truth = layer_grads(model64, x64, y, "reference")
        for backend in backends:
            for label, dtype in DTYPES.items():
                model = copy.deepcopy(model64).to(dtype)
                t0 = time.perf_counter()
                with precision.storage_arithmetic() if storage_arithmetic else contextlib.nullcontext():
                    grads = layer_grads(model, x64.to(dtype), y, backend)
                finite = all(bool(torch.isfinite(g).all()) for g in grads)
                cos = [cosine(t, g) if finite else float("nan") for t, g in zip(truth, grads)]
                rows.append({"net": net, "backend": backend, "dtype": label, "cos": cos,
                             "seconds": time.perf_counter() - t0})
                print(f"# {net:20s} {backend:9s} {label}: "
                      + " ".join(f"{c:.5f}" for c in cos), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    width = max(len(r["cos"]) for r in rows)
    head = ["network", "backend", "dtype"] + [f"layer {i}" for i in range(width)] + ["min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{c:.5f}" for c in r["cos"]] + [""] * (width - len(r["cos"]))
        lines.append("| " + " | ".join([r["net"], r["backend"], r["dtype"], *cells,
                                        f"**{min(r['cos']):.5f}**"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: reference, torch and cpp where available")
    parser.add_argument("--storage-arithmetic", action="store_true",
                        help="phases and estimate in the storage dtype (the 'before' figures)")
    args = parser.parse_args()
    have = available_backends("cpu")
    backends = args.backends or [b for b in ("reference", "torch", "cpp") if b in have]
    rows = measure(backends, args.storage_arithmetic)
    print(f"\nsettings: {SETTINGS}; layers: the weight layers, last = read-out; "
          f"{'storage-dtype arithmetic (before)' if args.storage_arithmetic else 'fp32 accumulation'}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
