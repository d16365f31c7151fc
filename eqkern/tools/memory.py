"""Peak memory of one training iteration, EP vs BPTT  (Lin Table 2).

Two methods, and every report says which it used:

* ``cuda``: ``torch.cuda.max_memory_allocated`` after a reset, on a CUDA device.
* ``accounting``: an exact count of the bytes of every tensor the iteration creates, tracked at
  the dispatcher (:class:`LiveTensorBytes`): a storage is counted when an op first returns it and
  released when the last tensor on it dies (autograd's saved tensors keep theirs alive, so
  BPTT's graph is counted). It does not depend on an allocator's caching, and it runs on
  ``meta`` tensors, where no arithmetic happens, so a BPTT iteration that would not fit in this
  machine's memory is still measured exactly. Temporaries inside a single ATen kernel (e.g.
  oneDNN scratch buffers) are not seen. Parameters, optimizer state and the batch, which exist
  before the iteration, are added as the baseline.

The peak RSS of a fresh process running the same iteration on real CPU tensors
(:func:`rss_check`) cross-checks the accounting where it fits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from eqkern.errors import ArgumentError
from eqkern.validate import as_choice, as_float, as_int, describe
from eqkern.model.auxiliary import Distill, Targets
from eqkern.learning.bptt import bptt_gradients
from eqkern.learning.ep import ep_gradients
from eqkern.model.crnn import CRNN

Method = Literal["ep", "bptt"]


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops create while the mode is active.

    ``live``: bytes alive now; ``peak``: the most alive at once since entering.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [nbytes, tensors alive on it]

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.live -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            entry = self._storages.get(key)
            if entry is None:  # a new storage (views and in-place results reuse one)
                entry = self._storages[key] = [storage.nbytes(), 0]
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


@dataclass
class MemoryProfile:
    """Peak bytes of one iteration: ``baseline`` (parameters, optimizer state, batch) plus the
    peak of what the iteration itself allocated (``iteration``)."""

    method: str
    batch: int
    steps: int
    baseline_bytes: int
    iteration_bytes: int
    measured_with: str
    device: str

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.iteration_bytes

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def as_dict(self) -> dict:
        return {**asdict(self), "peak_bytes": self.peak_bytes, "peak_mb": self.peak_mb}


def _device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:  # torch's text lists every device type
        raise ArgumentError(f"device must be 'meta', 'cpu' or a CUDA device such as 'cuda:0', "
                            f"got {describe(device)}") from exc


def _nbytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _batch(model: CRNN, batch: int, device) -> tuple[torch.Tensor, object]:
    x = torch.randn(batch, *model.input_shape, device=device)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    if isinstance(model.augment, Distill):  # teacher features: constants of the batch
        feats = [torch.rand(batch, *model.state_shapes[i], device=device) for i in model.augment.layers]
        return x, Targets(labels, feats)
    return x, labels


def _iteration(model, opt, x, y, method: Method, t_free: int, t_nudge: int, beta: float,
               backend: str | None) -> None:
    opt.zero_grad(set_to_none=True)
    if method == "ep":
        ep_gradients(model, x, y, beta=beta, t_free=t_free, t_nudge=t_nudge, backend=backend)
    else:
        bptt_gradients(model, x, y, t_free=t_free)
    opt.step()


def profile_memory(
    model: CRNN,
    *,
    method: Method = "ep",
    batch: int = 128,
    t_free: int = 30,
    t_nudge: int = 10,
    beta: float = 0.5,
    device: str | torch.device = "meta",
    backend: str | None = "torch",
) -> MemoryProfile:
    """Peak memory of one training iteration (SGD with momentum) of ``model`` on a random batch.

    ``method="ep"``: free phase ``t_free`` + two nudged phases of ``t_nudge`` and the Hebbian
    update; ``"bptt"``: a free phase of ``t_free`` steps with its autograd graph. ``device``:
    ``"meta"`` (exact accounting, no arithmetic), ``"cpu"`` (accounting, real arithmetic) or a
    CUDA device (the allocator's peak). The model is moved to ``device`` (pass a copy to keep it).
    """
    method = as_choice("method", method, ("ep", "bptt"))
    batch = as_int("batch", batch, minimum=1)
    t_free = as_int("t_free", t_free, minimum=1)
    t_nudge = as_int("t_nudge", t_nudge, minimum=1 if method == "ep" else 0)
    beta = as_float("beta", beta, nonzero=method == "ep")  # the EP estimate divides by it
    device = _device(device)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = _batch(model, batch, device)
    # One untracked iteration first: momentum buffers exist from then on, as in training.
    _iteration(model, opt, x, y, method, 1, 1, beta, backend)
    tensors = [*model.parameters(), x, getattr(y, "labels", y), *(getattr(y, "features", None) or [])]
    tensors += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    opt.zero_grad(set_to_none=True)
    baseline = _nbytes(tensors)
    steps = t_free + (2 * t_nudge if method == "ep" else 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _iteration(model, opt, x, y, method, t_free, t_nudge, beta, backend)
        torch.cuda.synchronize(device)
        grown = torch.cuda.max_memory_allocated(device) - before
        return MemoryProfile(method, batch, steps, baseline, grown,
                             "torch.cuda.max_memory_allocated", str(device))
    with LiveTensorBytes() as tracker:
        _iteration(model, opt, x, y, method, t_free, t_nudge, beta, backend)
    return MemoryProfile(method, batch, steps, baseline, tracker.peak,
                         f"dispatcher accounting of live tensors ({device.type} tensors)", str(device))


_RSS_SCRIPT = r"""
import json, sys, torch
from eqkern.tools.memory import _batch, _iteration
from eqkern.training.build import build_model
from eqkern.training.presets import get_preset
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
p = get_preset(args["preset"], **args["overrides"])
model = build_model(p, args["input_shape"], args["num_classes"])
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
x, y = _batch(model, args["batch"], "cpu")
_iteration(model, opt, x, y, args["method"], 1, 1, args["beta"], "torch")
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # resets the high-water mark VmHWM to VmRSS
    f.write("5")
_iteration(model, opt, x, y, args["method"], args["t_free"], args["t_nudge"], args["beta"], "torch")
print(json.dumps({"rss_growth_bytes": status("VmHWM") - before}))
"""


def rss_check(preset: str, *, method: Method, batch: int, t_free: int, t_nudge: int, beta: float,
              input_shape, num_classes: int, overrides: dict | None = None) -> int:
    """Growth of the peak RSS of a fresh process over one iteration on real CPU tensors (Linux).

    The high-water mark ``VmHWM`` is reset after a warm-up iteration, so the result is what the
    iteration added on top of the resident set: live tensors, plus allocator slack and kernel
    scratch that the accounting does not see. Returns bytes.
    """
    args = dict(preset=preset, overrides=overrides or {}, method=method, batch=batch,
                t_free=t_free, t_nudge=t_nudge, beta=beta, input_shape=list(input_shape),
                num_classes=num_classes)
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, json.dumps(args)], check=True,
                         capture_output=True, text=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_bytes"])


# Lin Table 2: (network, dataset, EP variants as presets, the preset whose plain network BPTT
# trains). "STD" is the LE preset's network with the augmentation removed.
LIN_TABLE2 = [
    ("VGG-7", "CIFAR-10", {"STD": ("vgg7-le-cifar10", "none"), "LE": ("vgg7-le-cifar10", None),
                           "KD": ("vgg7-kd-cifar10", None), "KDW": ("vgg7-kdw-cifar10", None)},
     "vgg7-le-cifar10"),
    ("VGG-10 (11)", "CIFAR-100", {"STD": ("vgg11-le-cifar100", "none"),
                                  "LE": ("vgg11-le-cifar100", None),
                                  "KD": ("vgg10-kd-cifar100", None)}, "vgg11-le-cifar100"),
    ("VGG-12 (13)", "CIFAR-100", {"STD": ("vgg13-le-cifar100", "none"),
                                  "LE": ("vgg13-le-cifar100", None),
                                  "KD": ("vgg12-kd-cifar100", None)}, "vgg13-le-cifar100"),
]
LIN_PAPER_MB = {("VGG-7", "STD"): 711, ("VGG-7", "LE"): 791, ("VGG-7", "KD"): 855,
                ("VGG-7", "KDW"): 1176, ("VGG-7", "BPTT"): 8324,
                ("VGG-10 (11)", "STD"): 869, ("VGG-10 (11)", "LE"): 895, ("VGG-10 (11)", "KD"): 983,
                ("VGG-10 (11)", "BPTT"): 13726, ("VGG-12 (13)", "STD"): 1285,
                ("VGG-12 (13)", "LE"): 1351, ("VGG-12 (13)", "KD"): 1431,
                ("VGG-12 (13)", "BPTT"): 25954}


def preset_model(name: str, augment: str | None = None, **overrides) -> CRNN:
    """The CRNN of a preset on its dataset's input shape (``augment="none"`` drops LE/KD)."""
    from eqkern.training.presets import get_preset
    from eqkern.training.build import build_model

    if augment is not None:
        overrides = {"augment": augment, "augment_layers": (), **overrides}
    p = get_preset(name, **overrides)
    classes = 100 if "100" in p.dataset else 10
    shape = (1, 28, 28) if "mnist" in p.dataset else (3, 32, 32)
    return build_model(p, shape, classes), p


def memory_table(batch: int = 128, bptt_steps: int = 140, device: str = "meta") -> list[dict]:
    """Lin Table 2 measured here: one row per (network, variant), BPTT's ratio to the largest EP."""
    # Checked before the first of the eleven models is built.
    batch = as_int("batch", batch, minimum=1)
    bptt_steps = as_int("bptt_steps", bptt_steps, minimum=1)
    _device(device)
    rows = []
    for net, dataset, variants, bptt_preset in LIN_TABLE2:
        ep_peaks = []
        for variant, (preset, augment) in variants.items():
            model, p = preset_model(preset, augment)
            prof = profile_memory(model, method="ep", batch=batch, t_free=p.t_free,
                                  t_nudge=p.t_nudge, beta=p.beta, device=device)
            ep_peaks.append(prof.peak_mb)
            rows.append({"network": net, "dataset": dataset, "variant": variant, "preset": preset,
                         **prof.as_dict(), "paper_mb": LIN_PAPER_MB.get((net, variant))})
        model, p = preset_model(bptt_preset, "none")
        prof = profile_memory(model, method="bptt", batch=batch, t_free=bptt_steps, device=device)
        rows.append({"network": net, "dataset": dataset, "variant": "BPTT", "preset": bptt_preset,
                     **prof.as_dict(), "paper_mb": LIN_PAPER_MB.get((net, "BPTT")),
                     "ratio_to_max_ep": prof.peak_mb / max(ep_peaks)})
    return rows


def format_memory_table(rows: list[dict]) -> str:
    """Markdown: measured MB next to Lin Table 2's, and BPTT's ratio to the largest EP peak."""
    ram_mb = _machine_ram_mb()
    lines = ["| network | dataset | variant | steps | peak MB (eqkern) | Lin Table 2 MB | BPTT / max EP |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['ratio_to_max_ep']:.1f}×" if "ratio_to_max_ep" in r else ""
        paper = r["paper_mb"] if r["paper_mb"] is not None else "–"
        too_big = " †" if ram_mb and r["peak_mb"] > ram_mb else ""
        lines.append(f"| {r['network']} | {r['dataset']} | {r['variant']} | {r['steps']} | "
                     f"{r['peak_mb']:.0f}{too_big} | {paper} | {ratio} |")
    if rows:
        lines.append(f"\nmeasured with: {rows[0]['measured_with']}, batch {rows[0]['batch']}")
        lines.append(f"† more than this machine's {ram_mb:.0f} MB of memory: counted exactly on meta "
                     "tensors, not run with arithmetic")
    return "\n".join(lines)


def _machine_ram_mb() -> float:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return 0.0
