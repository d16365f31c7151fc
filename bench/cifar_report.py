"""The table and the figure of a CIFAR-10 study of bench/cifar_study.py, from its runs'
``metrics.jsonl`` (one JSON record per epoch, as `eqkern train` writes them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqkern.training.curves import save_figure  # noqa: E402

# one per method of a study (the depth study has 6): a reader tells the methods apart by them
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]


def read_history(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def _hours(history: list[dict]) -> list[float]:
    total, out = 0.0, []
    for rec in history:
        total += rec["seconds"]
        out.append(total / 3600)
    return out


def display_command(cmd: list[str]) -> str:
    """``eqkern ...`` as a user types it: no interpreter path, no machine's data folder."""
    words = cmd[cmd.index("eqkern"):]
    if "--data-root" in words:
        i = words.index("--data-root")
        words = words[:i] + words[i + 2:]
    return " ".join(words)


def _row(label, cmd, history, epochs, paper) -> str:
    if not history:
        return f"| {label} | `{cmd}` | 0/{epochs} | – | – | – | – | – | {paper} |"
    last = history[-1]
    best = max(r["test_acc"] for r in history)
    per_epoch = sum(r["seconds"] for r in history) / len(history)
    steps = sum(r.get("settle_steps_per_batch", 0) for r in history) / len(history)
    # mean and last: the convergence stop ends the first epochs' phases early (states near 0),
    # so the last epoch's figures are the ones that tell the rest of a run's cost
    return (f"| {label} | `{cmd}` | {len(history)}/{epochs} | {last['test_acc']:.2f} % | "
            f"{best:.2f} % | {last['train_acc']:.2f} % | {per_epoch:.0f} s ({last['seconds']:.0f} s) | "
            f"{steps:.0f} ({last.get('settle_steps_per_batch', 0):.0f}) | {paper} |")


def write_report(args, study, jobs, epochs: int) -> None:
    name = args.study
    out = Path(args.out or f"bench/results/cifar10-mini/{name}.md")
    png = Path(args.png or f"docs/cifar10_{name}_curves.png")
    commands = {j.name: display_command(j.command) for j in jobs}
    metrics = {j.name: j.metrics for j in jobs}
    lines = [f"# {study.title}", "",
             f"`python bench/cifar_study.py report --study {name}`; the runs by `python "
             f"bench/cifar_study.py run --study {name}` (each row's command below). Test accuracy "
             f"on the subset's 2,000 test images; time per epoch: training + evaluation on this "
             f"machine; settle steps: per batch, all phases (the convergence stop's, T and K the caps); "
             f"both the mean over the epochs run and, in brackets, the last epoch's. "
             f"Paper: the full-scale figure (full width, 50,000 images, published epochs).", "",
             "| method | command | epochs | test acc (last) | test acc (best) | train acc (last) "
             "| time / epoch | settle steps / batch | paper |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for t in study.teachers:
        n = f"teacher-{t.name}"
        if n in commands:
            lines.append(_row(f"teacher {t.arch} (BP)", commands[n], read_history(metrics[n]),
                              epochs, t.paper))
    histories = {}
    for r in study.runs:
        if r.name in commands:
            histories[r.label] = read_history(metrics[r.name])
            lines.append(_row(r.label, commands[r.name], histories[r.label], epochs, r.paper))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_study(histories, png, study.title)
    print(f"wrote {out} and {png}")


def plot_study(histories: dict[str, list[dict]], png: Path, title: str) -> None:
    layered = any(rec.get("state_abs") for h in histories.values() for rec in h)
    fig = Figure(figsize=(14 if layered else 12, 8 if layered else 4.2), layout="constrained")
    if layered:  # accuracy on top; |state|, |update| and the spread per layer below
        grid = fig.subplot_mosaic([["e"] * 3 + ["w"] * 3, ["s", "s", "u", "u", "p", "p"]])
        axes = [[grid["e"], grid["w"]], [grid["s"], grid["u"], grid["p"]]]
    else:
        axes = fig.subplots(1, 2, squeeze=False)
    for k, (label, h) in enumerate(histories.items()):
        if not h:
            continue
        ep = [r["epoch"] for r in h]
        acc = [r["test_acc"] for r in h]
        axes[0][0].plot(ep, acc, marker=".", color=f"C{k}", label=label)
        axes[0][1].plot(_hours(h), acc, marker=".", color=f"C{k}", label=label)
    axes[0][0].set_xlabel("epoch")
    axes[0][1].set_xlabel("wall-clock (hours, this machine)")
    for ax in axes[0]:
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if layered:
        _layer_panels(axes[1], histories)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, png)


def _layer_panels(axes, histories: dict[str, list[dict]]) -> None:
    """Per-layer mean |state| and |update| over epochs (Lin Fig. 5) and the state's spread over
    each batch's images (logged from the epochs run since training kept it): colour the layer,
    line style the method (one legend entry each)."""
    from matplotlib.lines import Line2D

    drawn, layers = [], 0
    for label, h in histories.items():
        if not h or not h[0].get("state_abs"):
            continue
        style = STYLES[len(drawn) % len(STYLES)]
        drawn.append(Line2D([], [], color="k", ls=style, label=label))
        for key, ax in (("state_abs", axes[0]), ("update_abs", axes[1]),
                        ("state_spread", axes[2])):
            kept = [r for r in h if r.get(key)]
            if not kept:
                continue
            layers = max(layers, len(kept[0][key]))
            for layer in range(len(kept[0][key])):
                ax.plot([r["epoch"] for r in kept], [r[key][layer] for r in kept], ls=style,
                        color=f"C{layer}", marker="." if len(kept) == 1 else None)
    axes[0].set_ylabel("mean |state| per layer")
    axes[1].set_ylabel("mean |update| per weight tensor (last: read-out)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("spread of the state over a batch's images")
    if not axes[2].lines:
        axes[2].text(0.5, 0.5, "no epoch has logged it yet", ha="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    colours = [Line2D([], [], color=f"C{i}", label=f"layer {i + 1}") for i in range(layers)]
    axes[0].legend(handles=drawn, fontsize=7, loc="upper left")
    axes[1].legend(handles=colours, fontsize=7, ncols=2, loc="lower right")
