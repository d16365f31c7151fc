"""Fewer settling steps (issue 7): alternating schedule and convergence stop, measured on trained nets.

    python bench/steps_study.py --out bench/results/steps.md

For each network it first trains the preset with EP for ``--iters`` iterations on ``cifar10_subset``
(so that the dynamics are not those of a random init), then, on a held test batch:

1. steps of the free phase to reach ``tol`` (largest absolute change of one step over every
   layer and element, checked every step) for the synchronous and the alternating schedule;
2. the GDU check (cosine per parameter tensor, EP vs BPTT unrolled with the same schedule) at the
   free-phase length each schedule needs, next to the synchronous schedule at ``T`` and at a
   quarter of ``T`` (the issue's goal: Laborieux's GDU in at most a quarter of his steps);
   then a sweep over ``--sweep-tols``: the steps and the mean GDU of each schedule stopped there;
3. the wall-clock of one full EP iteration at ``T``/``K`` fixed vs with the convergence stop
   (``tol``, checked every ``--check-every`` steps), and with the ±β phases batched.

Networks: (a) Laborieux's VGG-5 (preset ``vgg5-ce-cifar10``), (b) the reduced VGG-7 with LE
(``vgg7-le-cifar10``, no data augmentation); both at ``--width`` (1/8 on a CPU) and ``--batch``.
Trained models are cached under ``--cache`` so that a second run only measures.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqkern import check_gdu, ep_gradients, free_phase  # noqa: E402
from eqkern.data.crop_flip import crop_flip  # noqa: E402
from eqkern.data.datasets import load_dataset  # noqa: E402
from eqkern.training.presets import get_preset  # noqa: E402
from eqkern.training.build import build_model, make_kappa_schedule  # noqa: E402
from eqkern.training.optim import make_optimizer  # noqa: E402

NETS = {
    "vgg5": ("vgg5-ce-cifar10", {}),
    "vgg7-le": ("vgg7-le-cifar10", {"data_augmentation": "none"}),
}


def train(name: str, args, data, log) -> tuple:
    """The preset trained by EP for ``args.iters`` iterations (cached), and its preset."""
    preset_name, overrides = NETS[name]
    p = get_preset(preset_name, width=args.width, batch_size=args.batch, **overrides)
    torch.manual_seed(0)
    model = build_model(p, data.input_shape, data.num_classes)
    model.kappa = make_kappa_schedule(p)(0)
    stop = "" if args.train_tol is None else f"-tol{args.train_tol:g}"
    cache = Path(args.cache) / f"{name}-w{args.width:g}-b{args.batch}-it{args.iters}{stop}.pt"
    if cache.exists():
        model.load_state_dict(torch.load(cache))
        log(f"{name}: loaded the trained model from {cache}")
        return model, p, torch.load(cache.with_suffix(".info.pt"))
    opt = make_optimizer(model, p)
    gen = torch.Generator().manual_seed(0)
    backend = args.train_backend if model.augment is None else "torch"
    correct = seen = steps = 0
    t0 = time.perf_counter()
    for it in range(args.iters):
        pick = torch.randint(0, len(data.y_train), (args.batch,), generator=gen)
        xb, yb = data.x_train[pick], data.y_train[pick]
        if p.data_augmentation == "crop_flip":
            xb = crop_flip(xb, gen, padding=p.crop_padding)
        opt.zero_grad(set_to_none=True)
        res = ep_gradients(model, xb, yb, beta=p.beta, t_free=p.t_free, t_nudge=p.t_nudge,
                           estimator=p.estimator, backend=backend, tol=args.train_tol,
                           check_every=args.check_every)
        steps += res.settle_steps
        opt.step()
        if it >= args.iters - 50:
            correct += (res.predictions == yb).sum().item()
            seen += len(yb)
        if (it + 1) % 25 == 0:
            log(f"{name}: iteration {it + 1}/{args.iters}, loss {res.loss:.3f}, "
                f"{res.settle_steps} steps ({time.perf_counter() - t0:.0f} s)")
    test = free_phase(model, data.x_test[:256], p.t_free, backend=backend)
    info = {"iters": args.iters, "train_backend": backend, "seconds": time.perf_counter() - t0,
            "train_tol": args.train_tol, "steps_per_iter": steps / args.iters,
            "train_acc_last50": 100.0 * correct / max(seen, 1),
            "test_acc_256": 100.0 * (model.predict(test) == data.y_test[:256]).float().mean().item()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    torch.save(info, cache.with_suffix(".info.pt"))
    return model, p, info


def steps_to_tol(model, x, schedule: str, tol: float, cap: int) -> tuple[int, float]:
    """Free-phase steps to ``tol`` checked every step, and the seconds it took."""
    t0 = time.perf_counter()
    _, used = free_phase(model, x, cap, backend="torch", schedule=schedule, tol=tol,
                         check_every=1, return_steps=True)
    return used, time.perf_counter() - t0


def ep_iteration_seconds(model, x, y, p, args, repeats: int, **kw) -> tuple[float, int]:
    """Median wall-clock of one EP iteration (``ep_gradients``) and the steps it ran."""
    times, steps = [], 0
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        res = ep_gradients(model, x, y, beta=p.beta, t_free=args.t_free, t_nudge=args.t_nudge,
                           estimator=p.estimator, **kw)
        times.append(time.perf_counter() - t0)
        steps = res.settle_steps
    model.zero_grad(set_to_none=True)
    return statistics.median(times), steps


def gdu_row(model, x, y, p, t_free: int, t_nudge: int, schedule: str) -> list[dict]:
    return check_gdu(model, x, y, beta=p.beta, t_free=t_free, t_nudge=t_nudge,
                     estimator=p.estimator, backend="torch", schedule=schedule)


def mean_weight_cosine(rows: list[dict]) -> float:
    """The mean EP-vs-BPTT cosine over the weight tensors of one GDU check."""
    return statistics.mean(r["cosine"] for r in rows if "weight" in r["name"])


def study(name: str, args, data, log) -> list[str]:
    model, p, info = train(name, args, data, log)
    x, y = data.x_test[-args.batch:], data.y_test[-args.batch:]  # held out of the 256 above
    out = [f"## {name}: preset `{p.name}`, width {args.width:g}, batch {args.batch}",
           "",
           f"Trained by EP for {info['iters']} iterations of batch {args.batch} (backend "
           f"{info['train_backend']}, T={p.t_free}, K={p.t_nudge}, β={p.beta:g}"
           + ("" if info.get("train_tol") is None else
              f", convergence stop tol={info['train_tol']:g} every {args.check_every} steps: "
              f"{info['steps_per_iter']:.0f} steps per iteration on average")
           + f", {info['seconds']:.0f} s): train accuracy "
           f"over the last 50 iterations {info['train_acc_last50']:.1f} %, test accuracy on 256 "
           f"test images {info['test_acc_256']:.1f} %.", ""]

    log(f"{name}: steps to tol")
    steps = {}
    out += [f"### Free phase: steps to tol = {args.tol:g} (checked every step, cap {args.cap})", "",
            "| schedule | steps | seconds (torch backend) |", "| --- | ---: | ---: |"]
    for sch in ("synchronous", "alternating"):
        steps[sch], sec = steps_to_tol(model, x, sch, args.tol, args.cap)
        out.append(f"| {sch} | {steps[sch]} | {sec:.2f} |")
    ratio = steps["alternating"] / steps["synchronous"]
    out += ["", f"alternating / synchronous steps: **{ratio:.2f}**", ""]

    log(f"{name}: GDU")
    rows = {}
    # The goal: the GDU of Laborieux's fixed T in at most a quarter of the steps. T free
    # steps, then K = min(K, T) nudged steps for EP and as many unrolled by BPTT (which unrolls
    # the last K of the T free steps, so K ≤ T): a schedule run at its own length.
    runs = [(s, t, min(args.t_nudge, t)) for s, t in (
        ("synchronous", args.t_free), ("synchronous", math.ceil(args.t_free / 4)),
        ("synchronous", steps["synchronous"]), ("alternating", steps["synchronous"]),
        ("alternating", steps["alternating"]),
        ("alternating", math.ceil(steps["synchronous"] / 4)))]
    for run in runs:
        rows[run] = gdu_row(model, x, y, p, run[1], run[2], run[0])
    head = "| parameter | " + " | ".join(f"{s} T={t} K={k}" for s, t, k in runs) + " |"
    out += [f"### GDU: cosine EP vs BPTT per parameter (β={p.beta:g}, {p.estimator}; BPTT "
            f"unrolls the same schedule; columns: T={args.t_free} and a quarter of it, the steps "
            f"each schedule needs to reach tol, and a quarter of the synchronous steps)",
            "", head,
            "|" + " --- |" * (len(runs) + 1)]
    for k, r in enumerate(rows[runs[0]]):
        out.append(f"| {r['name']} | " + " | ".join(f"{rows[run][k]['cosine']:.4f}" for run in runs)
                   + " |")
    out.append("| mean over weights | " + " | ".join(
        f"**{mean_weight_cosine(rows[run]):.4f}**" for run in runs) + " |")
    out.append("")

    log(f"{name}: tolerance sweep")
    out += [f"### Convergence stop: free-phase steps to each tol (checked every step) and the mean "
            f"GDU over weights at those steps (K = min({args.t_nudge}, steps); synchronous at "
            f"T={args.t_free}: {mean_weight_cosine(rows[runs[0]]):.4f})", "",
            "| tol | synchronous steps | of T | GDU | alternating steps | of T | GDU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for tol in (float(t) for t in args.sweep_tols.split(",")):
        cells = []
        for sch in ("synchronous", "alternating"):
            # The main tol's steps and any length already checked above are not measured again.
            n = steps[sch] if tol == args.tol else steps_to_tol(model, x, sch, tol, args.cap)[0]
            run = (sch, n, min(args.t_nudge, n))
            if run not in rows:
                rows[run] = gdu_row(model, x, y, p, n, run[2], sch)
            cells += [str(n), f"{n / args.t_free:.2f}", f"{mean_weight_cosine(rows[run]):.4f}"]
        out.append(f"| {tol:g} | " + " | ".join(cells) + " |")
    out.append("")

    log(f"{name}: EP iteration wall-clock")
    configs = [("fixed T/K, synchronous", "cpp", {}),
               ("fixed T/K, synchronous", "torch", {}),
               ("fixed T/K, alternating", "torch", {"schedule": "alternating"}),
               (f"stop tol={args.tol:g}, synchronous", "torch", {"tol": args.tol}),
               (f"stop tol={args.tol:g}, alternating", "torch",
                {"tol": args.tol, "schedule": "alternating"}),
               (f"stop tol={args.tol:g}, alternating, batched ±β", "torch",
                {"tol": args.tol, "schedule": "alternating", "batched_nudge": True}),
               ("fixed T/K, synchronous, batched ±β", "torch", {"batched_nudge": True})]
    out += [f"### One EP iteration (T={args.t_free}, K={args.t_nudge} caps; convergence checked "
            f"every {args.check_every} steps; median of {args.repeats})", "",
            "| configuration | backend | steps (all phases) | seconds | vs fixed synchronous (same backend) |",
            "| --- | --- | ---: | ---: | ---: |"]
    base = {}
    work = copy.deepcopy(model)
    for label, backend, kw in configs:
        kw = dict(kw, check_every=args.check_every) if "tol" in kw else kw
        sec, n = ep_iteration_seconds(work, x, y, p, args, args.repeats, backend=backend, **kw)
        base.setdefault(backend, sec)
        out.append(f"| {label} | {backend} | {n} | {sec:.2f} | {base[backend] / sec:.2f}× |")
    out.append("")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/steps.md")
    ap.add_argument("--nets", default="vgg5,vgg7-le")
    ap.add_argument("--width", type=float, default=1 / 8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=200, help="EP training iterations before measuring")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--sweep-tols", default="1e-2,3e-3,1e-3,3e-4,1e-4",
                    help="tolerances of the steps/GDU sweep")
    ap.add_argument("--cap", type=int, default=1000, help="cap of the steps-to-tol measurement")
    ap.add_argument("--t-free", type=int, default=250)
    ap.add_argument("--t-nudge", type=int, default=25)
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-backend", default="cpp", help="for the nets the cpp backend runs")
    ap.add_argument("--train-tol", type=float, default=None,
                    help="convergence stop while training (T, K stay the caps)")
    ap.add_argument("--cache", default="/tmp/eqkern_steps_study")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    data = load_dataset("cifar10_subset", args.data_root)
    lines = ["# Fewer settling steps: alternating schedule and convergence stop", "",
             f"`python bench/steps_study.py {' '.join(sys.argv[1:])}` — torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), CPU; cifar10_subset "
             f"({len(data.y_train)} train / {len(data.y_test)} test images).", ""]
    for name in args.nets.split(","):
        lines += study(name, args, data, log)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")  # after each net: partial results survive
        log(f"{name}: written to {args.out}")


if __name__ == "__main__":
    main()
