"""Bad-input battery: teacher checkpoints (``load_teacher``), the VGG teacher's arguments and
``train_teacher``'s.

A teacher file is untrusted input: its stored config is checked before any network is built (a
1 KB file must not be able to ask for hundreds of GB), then its state dict against the network
that config describes, then every weight for NaN/inf. Each refusal is a :class:`CheckpointError`
that starts with eqkern's own sentence, names the file and fits on one line.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from eqkern.data.datasets import DataSplit
from eqkern.errors import ArgumentError, ArgumentTypeError, CheckpointError, MissingFileError
from eqkern.model.vgg import VGG, vgg_state_size
from eqkern.training.teacher import load_teacher, train_teacher
from probes import Probe, assert_probe, ids

ONE_LINE = r"^[^\n]*t\.pt[^\n]*"    # the file named, and nothing after a newline
TINY = dict(arch="vgg7", num_classes=10, input_shape=[3, 32, 32], width=1 / 16)


def _state(**cfg) -> dict:
    c = {**TINY, **cfg}
    return VGG(c["arch"], c["num_classes"], tuple(c["input_shape"]), c["width"]).state_dict()


def _save(folder: Path, obj) -> Path:
    path = folder / "t.pt"
    torch.save(obj, path)
    return path


def _load_with(folder: Path, cfg: dict | None = None, state: dict | None = None) -> VGG:
    """Save ``{"teacher": cfg, "model": state}`` (defaults: a valid tiny vgg7) and load it."""
    cfg = {**TINY, **(cfg or {})}
    return load_teacher(_save(folder, {"teacher": cfg, "model": _state() if state is None else state}))


def _edited(edit) -> dict:
    state = _state()
    edit(state)
    return state


def _fast(call, seconds: float = 1.0):
    """``call()``, which must fail within ``seconds`` (no big allocation before the check)."""
    def run(folder: Path):
        start = time.perf_counter()
        try:
            return call(folder)
        finally:
            took = time.perf_counter() - start
            if took > seconds:
                raise RuntimeError(f"took {took:.1f} s: something big was built before the check")
    return run


def _raw(folder: Path, data: bytes) -> VGG:
    path = folder / "t.pt"
    path.write_bytes(data)
    return load_teacher(path)


def _fake_data(n: int = 32) -> DataSplit:
    g = torch.Generator().manual_seed(0)
    return DataSplit(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10,
                     torch.randn(n // 2, 3, 32, 32, generator=g), torch.arange(n // 2) % 10,
                     tuple(map(str, range(10))), (3, 32, 32), 10)


def _train(folder: Path, arch: str = "vgg7", **kw):
    """One epoch of a tiny teacher on fake CIFAR-shaped data (vgg needs >= 32×32 inputs)."""
    args = dict(epochs=1, out=folder / "t.pt", width=1 / 16, batch_size=16, progress=False,
                log=lambda s: None, device="cpu")
    return train_teacher(arch, _fake_data(), **{**args, **kw})


def _written_and_loaded(folder: Path) -> VGG:
    _train(folder)
    return load_teacher(folder / "t.pt")


def _usable(t: VGG, folder) -> bool:
    out = t(torch.zeros(2, 3, 32, 32))
    return isinstance(t, VGG) and not t.training and out.shape == (2, 10) and bool(out.isfinite().all())


def _counts_match(_, folder) -> bool:
    for arch, classes, shape, width in (("vgg7", 10, (3, 32, 32), 1 / 16),
                                        ("vgg19", 100, (3, 40, 36), 0.1), ("vgg15", 3, (1, 32, 32), 1 / 8)):
        net = VGG(arch, classes, shape, width)
        if vgg_state_size(arch, classes, shape, width) != sum(t.numel() for t in net.state_dict().values()):
            return False
    return True


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


def _poison(key, value):
    return lambda s: s[key].view(-1).__setitem__(0, value)


PROBES: list[Probe] = [
    # unreadable files
    Probe("teacher-missing-file", lambda f: load_teacher(f / "none.pt"), MissingFileError, r"none\.pt"),
    Probe("teacher-random-bytes", lambda f: _raw(f, bytes(range(256)) * 4), CheckpointError,
          ONE_LINE + r"$"),
    Probe("teacher-empty-file", lambda f: _raw(f, b""), CheckpointError, ONE_LINE + "$"),
    Probe("teacher-truncated", lambda f: _raw(f, (_save(f, {"teacher": TINY, "model": _state()})
                                                  .read_bytes()[:3000])),
          CheckpointError, ONE_LINE + "$"),
    Probe("teacher-not-a-dict", lambda f: load_teacher(_save(f, torch.zeros(3))), CheckpointError,
          r"t\.pt.*(dict|Tensor)"),
    Probe("teacher-student-checkpoint", lambda f: load_teacher(_save(f, {"model": {}, "epoch": 1})),
          CheckpointError, r"t\.pt.*teacher"),
    Probe("teacher-config-not-a-dict", lambda f: load_teacher(_save(f, {"teacher": [1, 2],
                                                                         "model": {}})),
          CheckpointError, r"t\.pt.*config"),
    Probe("teacher-config-missing-width",
          lambda f: load_teacher(_save(f, {"teacher": {k: v for k, v in TINY.items() if k != "width"},
                                           "model": _state()})),
          CheckpointError, r"t\.pt.*width"),
    # a tiny file asking for a huge network: refused from the config alone, fast
    Probe("teacher-huge-width", _fast(lambda f: _load_with(f, {"arch": "vgg19", "width": 1000.0}, {})),
          CheckpointError, r"t\.pt.*width.*1000"),
    Probe("teacher-huge-input", _fast(lambda f: _load_with(f, {"input_shape": [3, 10**6, 10**6]}, {})),
          CheckpointError, r"t\.pt.*input_shape.*1000000"),
    Probe("teacher-huge-parameter-count",
          _fast(lambda f: _load_with(f, {"arch": "vgg19", "width": 4.0,
                                         "input_shape": [3, 4096, 4096]}, {})),
          CheckpointError, r"t\.pt.*parameters"),
    Probe("teacher-huge-num-classes", _fast(lambda f: _load_with(f, {"num_classes": 10**12}, {})),
          CheckpointError, r"t\.pt.*num_classes"),
    # configs that describe no teacher
    Probe("teacher-unknown-arch", lambda f: _load_with(f, {"arch": "resnet50"}), CheckpointError,
          r"t\.pt.*arch.*resnet50"),
    Probe("teacher-width-zero", lambda f: _load_with(f, {"width": 0.0}), CheckpointError,
          r"t\.pt.*width.*0"),
    Probe("teacher-width-nan", lambda f: _load_with(f, {"width": math.nan}), CheckpointError,
          r"t\.pt.*width.*nan"),
    Probe("teacher-width-negative", lambda f: _load_with(f, {"width": -0.5}), CheckpointError,
          r"t\.pt.*width.*-0\.5"),
    Probe("teacher-width-string", lambda f: _load_with(f, {"width": "1"}), CheckpointError,
          r"t\.pt.*width.*'1'"),
    Probe("teacher-num-classes-zero", lambda f: _load_with(f, {"num_classes": 0}), CheckpointError,
          r"t\.pt.*num_classes.*0"),
    Probe("teacher-input-shape-2d", lambda f: _load_with(f, {"input_shape": [32, 32]}),
          CheckpointError, r"t\.pt.*input_shape"),
    Probe("teacher-input-too-small", lambda f: _load_with(f, {"input_shape": [3, 16, 16]}),
          CheckpointError, r"t\.pt.*32×32"),
    # state dicts that do not fit the config
    Probe("teacher-wrong-shapes", lambda f: _load_with(f, state=_state(width=1 / 8)), CheckpointError,
          r"t\.pt.*blocks\.0\.0\.weight.*shape"),
    Probe("teacher-missing-keys", lambda f: _load_with(f, state=_edited(lambda s: s.pop("classifier.2.bias"))),
          CheckpointError, r"t\.pt.*missing.*classifier\.2\.bias"),
    Probe("teacher-unexpected-key",
          lambda f: _load_with(f, state=_edited(_set("extra.weight", torch.zeros(2)))),
          CheckpointError, r"t\.pt.*unexpected.*extra\.weight"),
    Probe("teacher-state-not-a-tensor",
          lambda f: _load_with(f, state=_edited(_set("blocks.0.0.bias", [0.0] * 4))),
          CheckpointError, r"t\.pt.*blocks\.0\.0\.bias"),
    Probe("teacher-integer-weights",
          lambda f: _load_with(f, state=_edited(lambda s: s.__setitem__(
              "blocks.0.0.weight", s["blocks.0.0.weight"].long()))),
          CheckpointError, r"t\.pt.*blocks\.0\.0\.weight.*int64"),
    Probe("teacher-nan-weights", lambda f: _load_with(f, state=_edited(_poison("blocks.0.0.weight", math.nan))),
          CheckpointError, r"t\.pt.*blocks\.0\.0\.weight.*NaN"),
    Probe("teacher-inf-running-var",
          lambda f: _load_with(f, state=_edited(_poison("blocks.2.1.running_var", math.inf))),
          CheckpointError, r"t\.pt.*blocks\.2\.1\.running_var.*inf"),
    # what must keep working
    Probe("teacher-valid-file-loads", _written_and_loaded, check=_usable),
    Probe("teacher-old-format-loads",
          lambda f: load_teacher(_save(f, {"config": TINY, "state_dict": _state()})), check=_usable),
    Probe("teacher-state-size-is-exact", lambda f: None, check=_counts_match),
    # the network's and train_teacher's own arguments
    Probe("vgg-width-zero", lambda f: VGG("vgg7", width=0), ArgumentError, r"width.*got 0"),
    Probe("vgg-width-nan", lambda f: VGG("vgg7", width=math.nan), ArgumentError, r"width.*nan"),
    Probe("vgg-num-classes-float", lambda f: VGG("vgg7", num_classes=2.5), ArgumentTypeError,
          r"num_classes.*2\.5"),
    Probe("train-teacher-width-negative", lambda f: _train(f, width=-1.0), ArgumentError,
          r"width.*-1"),
    Probe("train-teacher-width-inf", lambda f: _train(f, width=math.inf), ArgumentError,
          r"width.*inf"),
    Probe("train-teacher-batch-size-zero", lambda f: _train(f, batch_size=0), ArgumentError,
          r"batch_size.*0"),
    Probe("train-teacher-lr-string", lambda f: _train(f, lr="fast"), ArgumentTypeError, r"lr.*fast"),
    Probe("train-teacher-unknown-arch", lambda f: _train(f, arch="vgg99"), ArgumentError,
          r"arch.*vgg99"),
    Probe("train-teacher-epochs-float", lambda f: _train(f, epochs=1.5), ArgumentError,
          r"epochs.*1\.5"),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
