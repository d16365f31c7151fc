"""Command line: ``eqkern info | demo | gdu | presets | train | teacher | memory`` (also
``python -m eqkern …``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Iterator

import torch

from eqkern.errors import ArgumentError, EqkernError
from eqkern.training.config import parse_number
from eqkern.validate import as_device, as_float, as_int

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Commands that train: an interruption there leaves the last checkpoint to resume from.
TRAINING_COMMANDS = ("demo", "train", "teacher")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``eqkern train: error: argument --epochs: ...``), like
    every other error of the command line, and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _arg_type(parse: Callable[[str], Any], check: Callable[..., Any], **bounds):
    """An argparse type: ``parse`` the text (``int``, ``float``), then the validation layer's
    ``check`` (:func:`eqkern.validate.as_int` / ``as_float``) with ``bounds``; its message, less
    the placeholder name, becomes argparse's ("argument --epochs: must be an integer >= 1, got 0")."""
    def convert(text: str):
        try:
            value = parse(text)
        except (ValueError, ZeroDivisionError):
            value = text  # the check then says what was expected, quoting the text
        try:
            return check("value", value, **bounds)
        except EqkernError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from None
    return convert


AT_LEAST_1 = _arg_type(int, as_int, minimum=1)
AT_LEAST_0 = _arg_type(int, as_int, minimum=0)
AT_LEAST_2 = _arg_type(int, as_int, minimum=2)
POSITIVE = _arg_type(parse_number, as_float, minimum=0.0, exclusive_min=True)
NONZERO = _arg_type(parse_number, as_float, nonzero=True)
AT_LEAST_0_FLOAT = _arg_type(parse_number, as_float, minimum=0.0)


def POSITIVE_OR_NONE(text: str):
    """A positive number, or ``none`` (as ``--set tol=none``)."""
    return None if text.strip().lower() == "none" else POSITIVE(text)


# The demo network's GDU check: a small β and enough steps for the free phase to settle.
GDU_DEMO = {"beta": 1e-3, "t_free": 100, "t_nudge": 30}
THREADS_HELP = "CPU threads for torch (default: torch's)"
NO_PROGRESS_HELP = "no progress bar (for logs and batch jobs)"
TENSORBOARD_HELP = ("also log the scalars (accuracy, loss, learning rates, settle steps, ...) per "
                    "epoch and per batch to TensorBoard event files in DIR; needs pip install "
                    "'eqkern[tensorboard]'")


def demo_model(input_shape=(1, 28, 28), num_classes: int = 10):
    """The ``make demo`` network: two 3×3 conv layers with max-pool and a soft-max read-out."""
    from eqkern.model.crnn import CRNN, Conv

    return CRNN(input_shape, [Conv(16), Conv(32)], num_classes, readout="ce")


@contextlib.contextmanager
def _callbacks(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The ``callbacks=`` keyword of a training entry point from the options (none given: no
    keyword at all, so the entry point runs exactly as without callbacks). Made before the data
    are loaded, so a missing tensorboard package is reported at once; closed at the end also when
    the entry point fails before its engine starts (which would close them)."""
    if args.tensorboard is None or _rank() != 0:  # rank 0 alone logs a data-parallel run
        yield {}
        return
    from eqkern.training.tensorboard import TensorBoardCallback

    tb = TensorBoardCallback(args.tensorboard)
    try:
        yield {"callbacks": [tb]}
    finally:
        tb.close()  # a no-op when the engine closed it


def _rank() -> int:
    """This process's rank under torchrun (0 alone)."""
    from eqkern.training.distributed import env_rank

    return env_rank()


def cmd_info(args: argparse.Namespace) -> int:
    from eqkern.tools.info import format_info, info

    d = info()
    print(json.dumps(d, indent=2, default=str) if args.json else format_info(d))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eqkern.data.datasets import load_dataset
    from eqkern.training.train_preset import train_vgg

    with _callbacks(args) as callbacks:
        data = load_dataset(args.dataset, args.data_root, limit_train=args.train_size,
                            limit_test=args.test_size)
        from eqkern.backends import resolve_backend

        print(f"eqkern demo: {args.method.upper()} on {args.dataset} ({len(data.y_train)} train / "
              f"{len(data.y_test)} test), backend "
              f"{resolve_backend(args.backend, torch.device('cpu'))}, "
              f"{torch.get_num_threads()} threads, T_free={args.t_free}, T_nudge={args.t_nudge}, "
              f"beta={args.beta}")
        t0 = time.perf_counter()
        # the demo-mnist preset (demo_model's network) with the command line's settings
        res = train_vgg("demo-mnist", data=data, out_dir=args.out, resume=args.resume,
                        overwrite=args.overwrite, allow_changes=args.allow_change,
                        dataset=args.dataset, train_size=args.train_size,
                        test_size=args.test_size, epochs=args.epochs,
                        batch_size=args.batch_size, t_free=args.t_free, t_nudge=args.t_nudge,
                        beta=args.beta, lr=tuple(args.lr), backend=args.backend, seed=args.seed,
                        method=args.method, progress=not args.no_progress, **callbacks)
    history = res.history
    best = max(h["test_acc"] for h in history)
    print(f"reached {history[-1]['test_acc']:.2f} % test accuracy (best {best:.2f} %) in "
          f"{time.perf_counter() - t0:.0f} s; curves: {args.out}/curves.png")
    return 0


def cmd_gdu(args: argparse.Namespace) -> int:
    from eqkern.learning.gdu import format_gdu

    if args.run is not None:
        if args.dataset != "mnist_subset":
            raise ArgumentError(f"--dataset {args.dataset} was given with --run: a run is checked "
                                f"on its own dataset; drop --dataset")
        if args.unsettled is not None:
            return _unsettled(args)
        if args.layers is not None:
            return _layers(args)
        rows, header = _gdu_of_run(args)
    else:
        run_only = {"--teacher": args.teacher is not None, "--kappa": args.kappa is not None,
                    "--offset": args.offset != 0, "--unsettled": args.unsettled is not None,
                    "--layers": args.layers is not None, "--at-init": args.at_init,
                    "--tol": args.tol is not ...}
        given = [flag for flag, is_set in run_only.items() if is_set]
        if given:
            raise ArgumentError(f"{given[0]} applies to a training run's network: add --run DIR")
        rows, header = _gdu_of_demo_net(args)
    print(header)
    print(format_gdu(rows))
    if args.png:
        from eqkern.tools.plots import plot_gdu

        print(f"wrote {plot_gdu(rows, args.png)}")
    return 0


def _gdu_of_demo_net(args: argparse.Namespace) -> tuple[list[dict], str]:
    from eqkern.data.datasets import load_dataset
    from eqkern.learning.gdu import check_gdu

    beta, t_free, t_nudge = (GDU_DEMO[k] if getattr(args, k) is None else getattr(args, k)
                             for k in ("beta", "t_free", "t_nudge"))
    batch = args.batch
    dtype = DTYPES[args.dtype or "float64"]
    data = load_dataset(args.dataset, args.data_root, limit_train=batch, limit_test=1)
    torch.manual_seed(args.seed)
    model = demo_model(data.input_shape, data.num_classes).to(dtype)
    x, y = data.x_train[:batch].to(dtype), data.y_train[:batch]
    rows = check_gdu(model, x, y, beta=beta, t_free=t_free, t_nudge=t_nudge,
                     estimator=args.estimator or "symmetric", backend=args.backend)
    return rows, (f"GDU check: {args.estimator or 'symmetric'} EP (beta={beta}, T_free={t_free}, "
                  f"K={t_nudge}) vs BPTT over the last K steps, {args.dtype or 'float64'}, "
                  f"batch {batch}")


def _unsettled(args: argparse.Namespace) -> int:
    from eqkern.tools.run_gdu import UNSETTLED_EXTRA_STEPS, UNSETTLED_THRESHOLD, unsettled_images

    torch.manual_seed(args.seed)  # a run whose states start at random (state_init="uniform")
    found = unsettled_images(args.run, images=args.unsettled, offset=args.offset,
                             data_root=args.data_root, backend=args.backend)
    last = args.offset + args.unsettled - 1
    print(f"{len(found)} of training images {args.offset}-{last} move by more than "
          f"{UNSETTLED_THRESHOLD:g} in {UNSETTLED_EXTRA_STEPS} steps after the run's T_free (their "
          f"EP update is not the gradient's)")
    for index, drift in found:
        print(f"  image {index}: {drift:.2e}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from eqkern.tools.run_gdu import layer_profile

    torch.manual_seed(args.seed)  # the fresh init of --at-init; random initial states
    rows = layer_profile(args.run, images=args.layers, offset=args.offset, at_init=args.at_init,
                         data_root=args.data_root, backend=args.backend)
    where = "a fresh initialisation of the run's network" if args.at_init else "its checkpoint"
    print(f"free-phase equilibrium per state layer at {where}, training images {args.offset}-"
          f"{args.offset + args.layers - 1} (spread: std over the images, averaged over units)")
    print("layer  mean |state|  at low  at high  spread")
    for r in rows:
        print(f"{r['layer']:>5}  {r['mean_abs']:12.3f}  {r['at_low']:6.2f}  {r['at_high']:7.2f}  "
              f"{r['spread']:.4f}")
    return 0


def _gdu_of_run(args: argparse.Namespace) -> tuple[list[dict], str]:
    from eqkern.tools.run_gdu import gdu_of_run

    phase = {k: getattr(args, k) for k in ("beta", "t_free", "t_nudge", "estimator")
             if getattr(args, k) is not None}
    if args.tol is not ...:
        phase["tol"] = args.tol
    torch.manual_seed(args.seed)
    check = gdu_of_run(args.run, batch=args.batch, offset=args.offset,
                       data_root=args.data_root, teacher=args.teacher, kappa=args.kappa,
                       backend=args.backend, dtype=DTYPES.get(args.dtype), **phase)
    return check.rows, check.header()


def cmd_presets(args: argparse.Namespace) -> int:
    from eqkern.training.presets import PRESETS, field_rows, format_presets, get_preset

    if args.name:
        section = None
        for sec, key, value, kind in field_rows(get_preset(args.name)):
            if sec != section:
                section = sec
                print(f"[{sec}]")
            print(f"  {key:18s} {value}" + ("" if key == "notes" else f"   [{kind}]"))
        return 0
    print(format_presets())
    print("\nnotes (eqkern presets --name NAME shows every field):")
    for p in PRESETS.values():
        print(f"- {p.name} [{p.source}]: {p.notes}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from eqkern.training.presets import get_preset, parse_overrides
    from eqkern.training.train_preset import train_vgg

    base = get_preset(args.preset)
    overrides = parse_overrides(args.set or [], base)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.backend is not None:
        overrides["backend"] = args.backend
    cfg = get_preset(base, **overrides)
    out = args.out or f"runs/{cfg.name}"
    with _callbacks(args) as callbacks:
        print(f"eqkern train: {cfg.name} on {cfg.dataset}, {cfg.epochs} epochs, width "
              f"{cfg.width:g}, T_free={cfg.t_free}, T_nudge={cfg.t_nudge}, beta={cfg.beta}, "
              f"out {out}")
        res = train_vgg(cfg, data_root=args.data_root, teacher=args.teacher, out_dir=out,
                        resume=args.resume, overwrite=args.overwrite,
                        allow_changes=args.allow_change, device=args.device,
                        progress=not args.no_progress, **callbacks)
    if res.history:
        best = max(res.test_acc)
        minutes = sum(res.seconds) / 60  # training + evaluation of every epoch, resumed ones too
        print(f"final test accuracy {res.test_acc[-1]:.2f} % (best {best:.2f} %) after "
              f"{len(res.history)} epochs, {minutes:.1f} min; metrics {out}/metrics.jsonl, "
              f"curves {out}/curves.png")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from eqkern.training.teacher import train_teacher

    with _callbacks(args) as callbacks:
        res = train_teacher(args.arch, args.dataset, args.epochs, args.out,
                            data_root=args.data_root, batch_size=args.batch_size, lr=args.lr,
                            width=args.width, limit_train=args.train_size,
                            limit_test=args.test_size, device=args.device, seed=args.seed,
                            progress=not args.no_progress, resume=args.resume,
                            overwrite=args.overwrite, allow_changes=args.allow_change,
                            **callbacks)
    print(f"teacher {args.arch}: test accuracy {res.history[-1]['test_acc']:.2f} %, saved to {args.out}")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from eqkern.tools.memory import format_memory_table, memory_table, preset_model, profile_memory

    if args.table:
        rows = memory_table(batch=args.batch, bptt_steps=args.bptt_steps, device=args.device)
        print(format_memory_table(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        if args.png:
            from eqkern.tools.plots import plot_memory

            print(f"wrote {plot_memory(rows, args.png)}")
        return 0
    if not args.preset:
        raise ArgumentError("give --preset NAME or --table")
    for method in ("ep", "bptt"):
        model, p = preset_model(args.preset, "none" if method == "bptt" else None)
        t_free = p.t_free if method == "ep" else args.bptt_steps
        prof = profile_memory(model, method=method, batch=args.batch, t_free=t_free,
                              t_nudge=p.t_nudge, beta=p.beta, device=args.device)
        print(f"{args.preset} {method.upper():4s} batch {args.batch}, {prof.steps} steps: peak "
              f"{prof.peak_mb:.0f} MB (baseline {prof.baseline_bytes / 2**20:.0f} MB); "
              f"measured with {prof.measured_with}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eqkern", description=__doc__)
    p.add_argument("--version", action="version", version=f"eqkern {_package_version()}")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error, not just its one-line message")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = sub.add_parser("info", help="versions, build, available backends")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(func=cmd_info)

    def data_args(q):
        q.add_argument("--dataset", default="mnist_subset",
                       help="mnist_subset (embedded), mnist, fashion_mnist, cifar10, ...")
        q.add_argument("--data-root", default=None, help="folder of the .npz files ($EQKERN_DATA)")
        q.add_argument("--backend", default=None, help="reference | torch | cpp")
        q.add_argument("--seed", type=AT_LEAST_0, default=0, help="seed of the weights and batches")

    def run_folder_args(q):
        q.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
        q.add_argument("--overwrite", action="store_true",
                       help="start afresh in an OUT that holds another run (its files are removed)")
        q.add_argument("--allow-change", action="append", metavar="FIELD", default=[],
                       help="with --resume: accept this config field differing from the "
                            "checkpoint's (repeatable); learning-rate fields and epochs may "
                            "always change")

    demo = sub.add_parser("demo", help="a short real EP training run on the embedded MNIST subset")
    data_args(demo)
    demo.add_argument("--method", choices=["ep", "bptt"], default="ep",
                      help="EP (default) or BPTT through the same dynamics")
    demo.add_argument("--epochs", type=AT_LEAST_1, default=3, help="epochs (default 3)")
    demo.add_argument("--train-size", type=AT_LEAST_1, default=None,
                      help="keep the first N training images (default: all)")
    demo.add_argument("--test-size", type=AT_LEAST_1, default=None,
                      help="keep the first N test images (default: all)")
    demo.add_argument("--batch-size", type=AT_LEAST_1, default=64, help="mini-batch size")
    demo.add_argument("--t-free", type=AT_LEAST_1, default=15, help="free-phase settling steps")
    demo.add_argument("--t-nudge", type=AT_LEAST_1, default=5, help="nudged-phase settling steps")
    demo.add_argument("--beta", type=NONZERO, default=0.5, help="nudging strength β")
    demo.add_argument("--lr", type=POSITIVE, nargs="+", default=[0.2, 0.1, 0.05],
                      help="learning rate per connection, input side first")
    demo.add_argument("--threads", type=AT_LEAST_1, default=None, help=THREADS_HELP)
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    demo.add_argument("--tensorboard", metavar="DIR", default=None, help=TENSORBOARD_HELP)
    run_folder_args(demo)
    demo.set_defaults(func=cmd_demo)

    gdu = sub.add_parser("gdu", help="EP's update vs BPTT's gradient, per parameter")
    data_args(gdu)
    gdu.add_argument("--run", default=None, metavar="DIR",
                     help="check a training run's network at its checkpoint (DIR of eqkern train "
                          "--out, or its checkpoint.pt) with the run's dataset, beta, T, K and "
                          "stop; without it: a fresh demo network")
    gdu.add_argument("--offset", type=AT_LEAST_0, default=0,
                     help="with --run: the batch starts at this training image (default 0)")
    gdu.add_argument("--unsettled", type=AT_LEAST_1, default=None, metavar="N",
                     help="with --run: instead of the GDU table, list which of N training images "
                          "(from --offset) have not settled after the run's T_free")
    gdu.add_argument("--layers", type=AT_LEAST_2, default=None, metavar="N",
                     help="with --run: instead of the GDU table, each state layer's free-phase "
                          "equilibrium on N training images: mean |state|, fraction clamped at the "
                          "bounds of its activation (0 and 1 for the hard sigmoid), spread over "
                          "the images")
    gdu.add_argument("--at-init", action="store_true",
                     help="with --layers: at a fresh initialisation (--seed) of the run's network")
    gdu.add_argument("--teacher", default=None,
                     help="with --run of a KD run: its teacher (default the run's teacher_path)")
    gdu.add_argument("--kappa", type=AT_LEAST_0_FLOAT, default=None,
                     help="with --run: learning-signal weight (default the run's last epoch's; "
                          "0: plain EP)")
    gdu.add_argument("--tol", type=POSITIVE_OR_NONE, default=...,
                     help="with --run: the phases' convergence stop, or 'none' for fixed T "
                          "(default the run's)")
    gdu.add_argument("--estimator", choices=["symmetric", "one_sided", "random_sign"],
                     default=None, help="EP gradient estimator (default symmetric / the run's)")
    gdu.add_argument("--batch-size", "--batch", dest="batch", type=AT_LEAST_1, default=16,
                     help="images in the batch (default 16)")
    gdu.add_argument("--beta", type=NONZERO, default=None,
                     help=f"nudging strength β (default {GDU_DEMO['beta']:g} / the run's)")
    gdu.add_argument("--t-free", type=AT_LEAST_1, default=None,
                     help=f"free-phase settling steps (default {GDU_DEMO['t_free']} / the run's)")
    gdu.add_argument("--t-nudge", type=AT_LEAST_1, default=None,
                     help=f"nudged-phase steps = BPTT's truncation K (default "
                          f"{GDU_DEMO['t_nudge']} / the run's)")
    gdu.add_argument("--dtype", choices=list(DTYPES), default=None,
                     help="arithmetic (default float64 for the demo network, a run's own for --run)")
    gdu.add_argument("--png", default=None, help="also write a bar chart here")
    gdu.set_defaults(func=cmd_gdu)

    pr = sub.add_parser("presets", help="the paper presets (Lin Tables 5-6, Laborieux, FRE-RNN)")
    pr.add_argument("--name", default=None, help="show every field of one preset")
    pr.set_defaults(func=cmd_presets)

    tr = sub.add_parser("train", help="train a paper preset (augmented EP) with checkpoints")
    tr.add_argument("--preset", required=True, help="a name from `eqkern presets`")
    tr.add_argument("--epochs", type=AT_LEAST_1, default=None, help="epochs (default: the preset's)")
    tr.add_argument("--data-root", default=None, help="folder of the .npz files ($EQKERN_DATA)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a preset field (repeatable), read by its declared type: bool "
                         "true/false (or 1/0), int, number (0.5, 1e-3, 1/8), none where a field "
                         "may be None, comma lists (lr=0.03,0.05; augment_layers= for none), and "
                         "for choice fields only their choices; e.g. --set width=1/8 --set "
                         "t_free=50. `eqkern presets --name NAME` lists every field and its type")
    tr.add_argument("--teacher", default=None, help="KD: teacher checkpoint from `eqkern teacher`")
    tr.add_argument("--out", default=None, help="output folder (default runs/PRESET)")
    run_folder_args(tr)
    tr.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    tr.add_argument("--backend", default=None, help="reference | torch | cpp | triton")
    tr.add_argument("--threads", type=AT_LEAST_1, default=None, help=THREADS_HELP)
    tr.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    tr.add_argument("--tensorboard", metavar="DIR", default=None, help=TENSORBOARD_HELP)
    tr.set_defaults(func=cmd_train)

    te = sub.add_parser("teacher", help="train a BP VGG teacher for KD presets")
    te.add_argument("--arch", default="vgg19", help="vgg7 vgg10 vgg11 vgg12 vgg13 vgg15 vgg16 vgg19")
    te.add_argument("--dataset", default="cifar10", help="data set name (default cifar10)")
    te.add_argument("--data-root", default=None, help="folder of the .npz files ($EQKERN_DATA)")
    te.add_argument("--epochs", type=AT_LEAST_1, default=200, help="epochs (default 200)")
    te.add_argument("--batch-size", type=AT_LEAST_1, default=128, help="mini-batch size")
    te.add_argument("--lr", type=POSITIVE, default=0.05, help="SGD learning rate (cosine-annealed)")
    te.add_argument("--width", type=POSITIVE, default=1.0, help="factor on every width (match the student)")
    te.add_argument("--train-size", type=AT_LEAST_1, default=None,
                    help="keep the first N training images (default: all)")
    te.add_argument("--test-size", type=AT_LEAST_1, default=None,
                    help="keep the first N test images (default: all)")
    te.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    te.add_argument("--seed", type=AT_LEAST_0, default=0, help="seed of the weights and batches")
    te.add_argument("--threads", type=AT_LEAST_1, default=None, help=THREADS_HELP)
    te.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    te.add_argument("--tensorboard", metavar="DIR", default=None, help=TENSORBOARD_HELP)
    te.add_argument("--out", required=True, help="checkpoint path (.pt)")
    run_folder_args(te)
    te.set_defaults(func=cmd_teacher)
    mem = sub.add_parser("memory", help="peak memory of one training iteration, EP vs BPTT")
    mem.add_argument("--preset", default=None, help="EP as the preset says, BPTT of its network")
    mem.add_argument("--table", action="store_true", help="Lin Table 2: VGG-7/10/11/12/13")
    mem.add_argument("--batch-size", "--batch", dest="batch", type=AT_LEAST_1, default=128,
                     help="batch of the iteration profiled")
    mem.add_argument("--bptt-steps", type=AT_LEAST_1, default=140,
                     help="steps BPTT unrolls (its memory grows with them)")
    mem.add_argument("--device", default="meta",
                     help="meta (exact accounting, no arithmetic; default), cpu, or cuda")
    mem.add_argument("--json", default=None, help="with --table: write the rows here")
    mem.add_argument("--png", default=None, help="with --table: bar chart here")
    mem.set_defaults(func=cmd_memory)
    return p


def _package_version() -> str:
    import eqkern

    return eqkern.__version__


def _apply_common(args: argparse.Namespace) -> None:
    """Options several commands share, applied (and ``--device`` checked) before any work."""
    if getattr(args, "threads", None) is not None:  # >= 1 by its argparse type
        torch.set_num_threads(args.threads)
    if getattr(args, "device", None) is not None:
        as_device("--device", args.device, extra=("meta",) if args.command == "memory" else ())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. An eqkern error (bad input, bad file, refused run) or an OS error (a
    missing folder, no permission, a full disk) is one line on stderr and exit code 2, with the
    traceback too under ``--debug``; anything else is a bug in eqkern: its traceback and exit 1."""
    args = build_parser().parse_args(argv)
    if _rank() != 0:
        # Under torchrun every rank runs the command; rank 0 speaks for all of them (errors,
        # on stderr, still come from the rank that has them).
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        _apply_common(args)
        return args.func(args)
    except (EqkernError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"eqkern {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = (": the last checkpoint is kept (continue with --resume)"
                if args.command in TRAINING_COMMANDS else "")
        print(f"eqkern {args.command}: interrupted{note}", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"eqkern {args.command}: internal error (a bug in eqkern, not in your input: please "
              f"report it with the traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
