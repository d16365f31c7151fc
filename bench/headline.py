"""The headline ratio: one EP iteration at Laborieux's settings on the autograd reference against
eqkern's default fast settings, same trained weights and batch, one run.

    python bench/headline.py --out bench/results/headline.md

The network is Laborieux's VGG-5 (preset ``vgg5-ce-cifar10``, full width 128-256-512-512 unless
``--width``), first trained by EP for ``--iters`` iterations (cached under ``--cache``; the preset's
default settings, ``cpp`` backend) so that the dynamics are not a random init's. On one CIFAR-10
batch of ``--batch`` held-out images it then times, interleaved, ``--repeats`` times each:

* ``reference``: the autograd backend (the stand-in for Laborieux's code: same step to 1.5e-8) at
  T=250, K=25, β=1, fixed steps;
* the fast settings: the ``cpp`` backend with the presets' default convergence stop
  (``tol``, T and K the caps), and any ``--extra`` settings given as ``key=value`` pairs.

and computes each one's GDU (mean cosine over the weight tensors of its EP update against BPTT
through the last K=25 of 250 free steps, as in Laborieux's check; once, outside the timing).
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

from eqkern import bptt_gradients, ep_gradients  # noqa: E402
from eqkern.data.datasets import load_dataset  # noqa: E402
from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY, DEFAULT_TOL  # noqa: E402
from eqkern.training.build import build_model  # noqa: E402
from eqkern.training.optim import make_optimizer  # noqa: E402
from eqkern.training.presets import get_preset, parse_overrides  # noqa: E402
from steps_study import grads_of, log, weight_cosines  # noqa: E402  (bench/ is the script's folder)

T_FREE, T_NUDGE, BETA = 250, 25, 1.0


def trained_model(args, data, log):
    p = get_preset("vgg5-ce-cifar10", width=args.width, batch_size=args.train_batch)
    torch.manual_seed(0)
    model = build_model(p, data.input_shape, data.num_classes)
    cache = Path(args.cache) / f"vgg5-w{args.width:g}-b{args.train_batch}-it{args.iters}.pt"
    if cache.exists():
        model.load_state_dict(torch.load(cache))
        log(f"loaded the trained model from {cache}")
        return model, p
    opt = make_optimizer(model, p)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for it in range(args.iters):
        pick = torch.randint(0, len(data.y_train), (args.train_batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        res = ep_gradients(model, data.x_train[pick], data.y_train[pick], beta=p.beta,
                           t_free=p.t_free, t_nudge=p.t_nudge, estimator=p.estimator,
                           backend="cpp", tol=p.tol, check_every=p.check_every)
        opt.step()
        log(f"training iteration {it + 1}/{args.iters}: loss {res.loss:.3f}, "
            f"{res.settle_steps} steps ({time.perf_counter() - t0:.0f} s)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model, p


def mean_weight_cosine(ep: dict, bp: dict) -> float:
    return statistics.mean(weight_cosines(ep, bp).values())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/headline.md")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=40, help="EP training iterations before measuring")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--extra", nargs="*", default=[], help="more fast rows, each preset fields as for --set, space-separated in one argument: 'tol=3e-3 check_every=5'")
    ap.add_argument("--cache", default="/tmp/eqkern_headline")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)
    data = load_dataset("cifar10", args.data_root)
    model, p = trained_model(args, data, log)
    if args.train_only:
        return
    x, y = data.x_test[-args.batch:], data.y_test[-args.batch:]
    configs = {"reference, T=250 K=25 fixed": ("reference", {}),
               f"cpp, tol={DEFAULT_TOL:g} (default)": ("cpp", {"tol": DEFAULT_TOL,
                                                            "check_every": DEFAULT_CHECK_EVERY})}
    for extra in args.extra:
        kw = dict({"tol": DEFAULT_TOL, "check_every": DEFAULT_CHECK_EVERY}, **parse_overrides(extra.split()))
        configs[f"cpp, {extra}"] = ("cpp", kw)
    work = copy.deepcopy(model)
    work.zero_grad(set_to_none=True)
    bptt_gradients(work, x, y, t_free=T_FREE, truncate=T_NUDGE)
    bp = grads_of(work)
    log("BPTT done")
    times = {k: [] for k in configs}
    info = {}
    for r in range(args.repeats):
        for label, (backend, kw) in configs.items():  # interleaved: the same load on every row
            work.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            res = ep_gradients(work, x, y, beta=BETA, t_free=T_FREE, t_nudge=T_NUDGE,
                               estimator="symmetric", backend=backend, **kw)
            times[label].append(time.perf_counter() - t0)
            if r == 0:
                info[label] = (res.free_steps, res.nudge_steps, res.settle_steps,
                               mean_weight_cosine(grads_of(work), bp))
            log(f"{label}: {times[label][-1]:.1f} s, {res.settle_steps} steps")
    base = statistics.median(times["reference, T=250 K=25 fixed"])
    lines = ["# Headline: one EP iteration, Laborieux's settings vs eqkern's defaults", "",
             f"`python bench/headline.py {' '.join(sys.argv[1:])}` — torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), CPU. VGG-5 width {args.width:g}, trained by EP "
             f"for {args.iters} iterations of batch {args.train_batch} (cpp, preset defaults); "
             f"one held-out CIFAR-10 batch of {args.batch}; β={BETA:g}, symmetric; median of "
             f"{args.repeats}. GDU: mean cosine over the weights of the EP update vs BPTT "
             f"through the last {T_NUDGE} of {T_FREE} free steps.", "",
             "| configuration | free steps | nudged steps (each) | all steps | seconds | speed-up "
             "| GDU |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label in configs:
        sec = statistics.median(times[label])
        f, n, total, gdu = info[label]
        lines.append(f"| {label} | {f} | {n} | {total} | {sec:.1f} | {base / sec:.2f}× | {gdu:.4f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
