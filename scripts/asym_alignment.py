"""KP-VF vs VF on the small conv MNIST network (the ``make demo`` net, mnist_subset): the angle
between forward and backward weights per layer (Laborieux Fig. 7) and the test accuracy.

    OMP_NUM_THREADS=1 python scripts/asym_alignment.py [--epochs 3] [--leakage 0.02]

Every run starts from the same W, b, read-out (seed 0) and, for the separate models, the same
B_l; the data, batches and hyper-parameters are the same; only the feedback and the rule differ.
"""

from __future__ import annotations

import argparse
import time

import torch

from eqkern import CRNN, Conv, ep_gradients, evaluate, weight_angles
from eqkern.data.datasets import iterate_batches, load_dataset
from eqkern.training.optim import param_groups


def run(data, feedback: str, rule: str | None, args) -> dict:
    torch.manual_seed(0)
    model = CRNN((1, 28, 28), [Conv(16), Conv(32)], 10, feedback=feedback)
    opt = torch.optim.SGD(param_groups(model, args.lr), momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=1e-5)
    leakage = args.leakage if feedback == "separate" else 0.0
    angles = [weight_angles(model)]
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        for xb, yb in iterate_batches(data.x_train, data.y_train, args.batch, shuffle=True,
                                      generator=gen):
            opt.zero_grad(set_to_none=True)
            ep_gradients(model, xb, yb, beta=args.beta, t_free=args.t_free, t_nudge=args.t_nudge,
                         backend="torch", rule=rule, leakage=leakage)
            opt.step()
        sched.step()
        angles.append(weight_angles(model))
    acc, _ = evaluate(model, data.x_test, data.y_test, t_free=args.t_free, backend="torch")
    return {"angles": angles, "test_acc": acc, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--t-free", type=int, default=12)
    ap.add_argument("--t-nudge", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--lr", type=float, nargs=3, default=[0.2, 0.1, 0.05])
    ap.add_argument("--leakage", type=float, default=0.02)
    args = ap.parse_args()
    data = load_dataset("mnist_subset", limit_train=args.train, limit_test=args.test)
    print(f"mnist_subset {args.train}/{args.test}, conv16-conv32 (pools) + CE read-out, "
          f"batch {args.batch}, T={args.t_free}, K={args.t_nudge}, β={args.beta}, lr={args.lr}, "
          f"SGD momentum 0.9, cosine, {args.epochs} epochs, leakage λ={args.leakage}")
    for feedback, rule in (("symmetric", None), ("separate", "kp-vf"), ("separate", "vf")):
        r = run(data, feedback, rule, args)
        label = "symmetric EP" if rule is None else rule.upper()
        per_epoch = " → ".join("[" + ", ".join(f"{a:.1f}" for a in e) + "]" for e in r["angles"]
                               if e)
        print(f"{label:13s} test acc {r['test_acc']:.2f} %  ({r['seconds']:.0f} s)  "
              f"angle W_1∠B_1 (°) per epoch: {per_epoch or '-'}", flush=True)


if __name__ == "__main__":
    main()
