"""Fewer settling steps: the convergence stop and the Anderson solver, measured on trained nets.

    python bench/steps_study.py --out bench/results/steps.md

For each network it first trains the preset with EP for ``--iters`` iterations on ``cifar10_subset``
(so that the dynamics are not those of a random init; cached under ``--cache``), then, on a held
test batch, for Laborieux's fixed T=250 / K=25 and for every ``--tols`` × ``--solvers`` (every
phase stopped at ``tol``, checked every step, T and K the caps):

* the steps each phase used (free, the larger nudged phase, all phases);
* the GDU: the cosine of each weight tensor's EP update against BPTT through the last K of T
  free steps from the zero state (Laborieux's check; BPTT is the same for every row), and its
  mean; and the same mean against BPTT from the row's own free equilibrium ("own"), which says
  whether a lower GDU comes from another equilibrium or from the update itself;
* the wall-clock of one EP iteration on ``--time-backend`` with the convergence checked every
  ``--check-every`` steps (the training default), median of ``--repeats``, the rows interleaved.

Networks (``--nets``, each ``name@width``): Laborieux's VGG-5 (``vgg5-ce-cifar10``) and the
reduced VGG-7 with LE (``vgg7-le-cifar10``, no data augmentation), batch ``--batch``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqkern import bptt_gradients, ep_gradients, free_phase  # noqa: E402
from eqkern.backends import get_backend  # noqa: E402
from eqkern.data.crop_flip import crop_flip  # noqa: E402
from eqkern.data.datasets import load_dataset  # noqa: E402
from eqkern.model import energy  # noqa: E402
from eqkern.training.presets import get_preset  # noqa: E402
from eqkern.training.build import build_model, make_kappa_schedule  # noqa: E402
from eqkern.training.optim import make_optimizer  # noqa: E402

NETS = {
    "vgg5": ("vgg5-ce-cifar10", {}),
    "vgg7-le": ("vgg7-le-cifar10", {"data_augmentation": "none"}),
}
T_FREE, T_NUDGE = 250, 25

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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def grads_of(model) -> dict:
    return {n: (torch.zeros_like(q) if q.grad is None else q.grad.detach().clone())
            for n, q in model.named_parameters()}


def weight_cosines(ep: dict, bp: dict) -> dict:
    """The EP-vs-BPTT cosine of every weight tensor (biases left out, as in the mean)."""
    return {n: torch.nn.functional.cosine_similarity(ep[n].flatten().double(),
                                                     bp[n].flatten().double(), dim=0).item()
            for n in ep if n.endswith("weight")}


def bptt_from(model, x, y, state) -> dict:
    """BPTT's gradient through K plain steps from ``state`` (a free equilibrium)."""
    work = copy.deepcopy(model)
    work.zero_grad(set_to_none=True)
    end = get_backend("torch", x.device, work).unroll(work, x, [s.clone() for s in state], T_NUDGE)
    (energy.total_loss(work, end, y) / x.shape[0]).backward()
    return grads_of(work)


def ep_row(model, x, y, p, kw: dict) -> tuple:
    """(result, gradients) of one EP iteration with the phase options ``kw`` (torch backend)."""
    work = copy.deepcopy(model)
    work.zero_grad(set_to_none=True)
    res = ep_gradients(work, x, y, beta=p.beta, t_free=T_FREE, t_nudge=T_NUDGE,
                       estimator=p.estimator, backend="torch", **kw)
    return res, grads_of(work)


def study(name: str, width: float, args, data, log) -> list[str]:
    args.width = width
    model, p, info = train(name, args, data, log)
    x, y = data.x_test[-args.batch:], data.y_test[-args.batch:]  # held out of the 256 above
    out = [f"## {name}: preset `{p.name}`, width {width:g}, batch {args.batch}", "",
           f"Trained by EP for {info['iters']} iterations of batch {args.batch} (backend "
           f"{info['train_backend']}, T={p.t_free}, K={p.t_nudge}, β={p.beta:g}"
           + ("" if info.get("train_tol") is None else
              f", convergence stop tol={info['train_tol']:g} every {args.check_every} steps: "
              f"{info['steps_per_iter']:.0f} steps per iteration on average")
           + f", {info['seconds']:.0f} s): train accuracy over the last 50 iterations "
           f"{info['train_acc_last50']:.1f} %, test accuracy on 256 test images "
           f"{info['test_acc_256']:.1f} %.", ""]
    rows = {f"fixed T={T_FREE} K={T_NUDGE}": {}}
    for solver in args.solvers.split(","):
        for tol in (float(t) for t in args.tols.split(",")):
            rows[f"{solver}, tol={tol:g}"] = {"solver": solver, "tol": tol}
    work = copy.deepcopy(model)
    work.zero_grad(set_to_none=True)
    bptt_gradients(work, x, y, t_free=T_FREE, truncate=T_NUDGE)
    bp = grads_of(work)
    measured = {}
    for label, kw in rows.items():
        log(f"{name}@{width:g}: {label}")
        res, g = ep_row(model, x, y, p, dict(kw, check_every=1) if kw else kw)
        cos = weight_cosines(g, bp)
        own = weight_cosines(g, bptt_from(model, x, y, res.free_state))
        measured[label] = (res, cos, statistics.mean(own.values()))
    times = {label: [] for label in rows}
    for _ in range(args.repeats):
        for label, kw in rows.items():  # interleaved
            kw = dict(kw, check_every=args.check_every) if kw else kw
            work.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            ep_gradients(work, x, y, beta=p.beta, t_free=T_FREE, t_nudge=T_NUDGE,
                         estimator=p.estimator, backend=args.time_backend, **kw)
            times[label].append(time.perf_counter() - t0)
    fixed = f"fixed T={T_FREE} K={T_NUDGE}"
    base_sec = statistics.median(times[fixed])
    base_gdu = statistics.mean(measured[fixed][1].values())
    names = list(measured[fixed][1])
    out += [f"Every phase stopped at `tol` (checked every step for the steps and the GDU), T={T_FREE}"
            f" and K={T_NUDGE} the caps; β={p.beta:g}, {p.estimator}. GDU: cosine of the EP update "
            f"of each weight tensor ({', '.join(n.removesuffix('.weight') for n in names)}) "
            f"against BPTT through the last {T_NUDGE} of {T_FREE} free steps, its mean, and the "
            f"mean against BPTT from the row's own free equilibrium. Seconds: one EP iteration on "
            f"`{args.time_backend}`, convergence checked every {args.check_every} steps, median "
            f"of {args.repeats}.", "",
            "| phases | free steps | nudged steps | all steps | GDU per weight | mean GDU | "
            "vs fixed | own-equilibrium GDU | seconds | speed-up |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, (res, cos, own) in measured.items():
        mean = statistics.mean(cos.values())
        sec = statistics.median(times[label])
        out.append(f"| {label} | {res.free_steps} | {res.nudge_steps} | {res.settle_steps} | "
                   + " ".join(f"{cos[n]:.3f}" for n in names)
                   + f" | {mean:.4f} | {mean - base_gdu:+.4f} | {own:.4f} | {sec:.2f} | "
                   f"{base_sec / sec:.2f}× |")
    out.append("")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/steps.md")
    ap.add_argument("--nets", default="vgg5@0.125,vgg5@0.25,vgg7-le@0.125",
                    help="name@width, comma-separated (names: " + ", ".join(NETS) + ")")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=300, help="EP training iterations before measuring")
    ap.add_argument("--tols", default="1e-2,3e-3,1e-3,3e-4,1e-4")
    ap.add_argument("--solvers", default="plain,anderson")
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-backend", default="cpp")
    ap.add_argument("--train-backend", default="cpp", help="for the nets the cpp backend runs")
    ap.add_argument("--train-tol", type=float, default=1e-4,
                    help="convergence stop while training (T, K stay the caps)")
    ap.add_argument("--cache", default="/tmp/eqkern_steps_study")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)
    data = load_dataset("cifar10_subset", args.data_root)
    lines = ["# Fewer settling steps: the convergence stop and the Anderson solver", "",
             f"`python bench/steps_study.py {' '.join(sys.argv[1:])}` — torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), CPU; cifar10_subset "
             f"({len(data.y_train)} train / {len(data.y_test)} test images).", ""]
    for net in args.nets.split(","):
        name, _, width = net.partition("@")
        lines += study(name, float(width or 0.125), args, data, log)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")  # after each net: partial results survive
        log(f"{net}: written to {args.out}")


if __name__ == "__main__":
    main()
