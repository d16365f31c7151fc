"""Bad-input battery: preset fields (Python overrides and ``--set`` strings), κ schedules, a teacher
given to a preset that does not distil, and ``eqkern memory``'s arguments.

Every field of every section of :mod:`eqkern.training.config` is refused, naming the field and the
value, when its type, range, finiteness or integer-ness is wrong; nothing is trained or loaded
first.
"""

from __future__ import annotations

import math

import pytest
import torch

from eqkern import CRNN, Conv, Linear
from eqkern.data.datasets import DataSplit
from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.tools.memory import memory_table, profile_memory
from eqkern.training.kappa import make_schedule
from eqkern.training.presets import get_preset, parse_overrides, scale_arch
from eqkern.training.train_preset import train_vgg
from probes import Probe, assert_probe, ids

nan, inf = math.nan, math.inf

# (field, bad value, regex of the message); each through get_preset("demo-mnist", field=value).
# demo-mnist: 3 weight layers, method ep, no augmentation.
BAD_FIELDS = [
    # data
    ("batch_size", 0, r"batch_size must be >= 1, got 0"),
    ("batch_size", 2.5, r"batch_size must be an int, got 2\.5"),
    ("eval_batch_size", -1, r"eval_batch_size must be >= 1, got -1"),
    ("train_size", 0, r"train_size must be >= 1, got 0"),
    ("test_size", 0, r"test_size must be >= 1, got 0"),
    ("crop_padding", -1, r"crop_padding must be >= 0, got -1"),
    ("dataset", "imagenet", r"dataset must be one of .*'imagenet'"),
    # model
    ("width", 0.0, r"width must be a finite number > 0, got 0\.0"),
    ("width", nan, r"width .*got nan"),
    ("width", -0.5, r"width .*got -0\.5"),
    ("width", inf, r"width .*got inf"),
    ("init_scale", 0, r"init_scale .*> 0, got 0"),
    ("skip_every", 1, r"skip_every must be >= 2, got 1"),
    ("skip_p", 1.5, r"skip_p must be a probability in \[0, 1\], got 1\.5"),
    ("skip_p", nan, r"skip_p .*got nan"),
    ("skip_seed", -1, r"skip_seed .*got -1"),
    # phases
    ("beta", 0.0, r"beta must be a finite number other than 0, got 0\.0"),
    ("beta", inf, r"beta .*got inf"),
    ("beta", nan, r"beta .*got nan"),
    ("t_free", 0, r"t_free must be >= 1, got 0"),
    ("t_free", 2.5, r"t_free must be an int, got 2\.5"),
    ("t_nudge", -1, r"t_nudge must be >= 1, got -1"),
    ("truncate", 0, r"truncate must be >= 1, got 0"),
    ("leakage", -1.0, r"leakage .*>= 0, got -1\.0"),
    ("leakage", inf, r"leakage .*got inf"),
    ("tol", 0.0, r"tol must be None or a finite number > 0, got 0\.0"),
    ("tol", nan, r"tol .*got nan"),
    ("check_every", 0, r"check_every .*got 0"),
    # optimiser
    ("lr", (-0.1,), r"lr must be a finite number > 0, got -0\.1"),
    ("lr", (0.0,), r"lr .*> 0, got 0\.0"),
    ("lr", (0.1, nan, 0.1), r"lr\[1\] .*got nan"),
    ("lr", (0.1, 0.1, inf), r"lr\[2\] .*got inf"),
    ("lr", "fast", r"lr must be a sequence of numbers, got 'fast'"),
    ("momentum", 1.0, r"momentum must be >= 0 and < 1, got 1\.0"),
    ("momentum", -0.1, r"momentum must be >= 0 and < 1, got -0\.1"),
    ("momentum", nan, r"momentum .*got nan"),
    ("weight_decay", -1e-4, r"weight_decay .*>= 0, got -0\.0001"),
    ("weight_decay", inf, r"weight_decay .*got inf"),
    ("lr_min", -1.0, r"lr_min .*>= 0, got -1\.0"),
    ("cosine_epochs", 0, r"cosine_epochs must be >= 1, got 0"),
    ("cosine", "on", r"cosine must be a bool, got 'on'"),
    ("optimizer", "rmsprop", r"optimizer must be one of .*'rmsprop'"),
    # augmentation / κ
    ("tau", 0.0, r"tau .*> 0, got 0\.0"),
    ("tau", nan, r"tau .*got nan"),
    ("kappa", -0.5, r"kappa .*>= 0, got -0\.5"),
    ("kappa", nan, r"kappa .*got nan"),
    ("kappa_min", -1.0, r"kappa_min .*>= 0, got -1\.0"),
    ("kappa_gamma", -0.1, r"kappa_gamma .*>= 0, got -0\.1"),
    ("kappa_gamma", inf, r"kappa_gamma .*got inf"),
    ("kappa_epochs", 0, r"kappa_epochs must be >= 1, got 0"),
    ("teacher_path", "teacher.pt", r"teacher_path='teacher\.pt' is set but augment='none' does not distil"),
    ("augment_layers", (5,), r"augment_layers \(5,\) must name state layers 0\.\.1"),
    # run
    ("epochs", 0, r"epochs must be >= 1, got 0"),
    ("epochs", 2.5, r"epochs must be an int, got 2\.5"),
    ("epochs", True, r"epochs must be an int, got True"),
    ("seed", -1, r"seed .*>= 0.*got -1"),
    ("seed", 2**60, r"seed .*got 1152921504606846976"),
    ("seed", "0", r"seed must be an int, got '0'"),
    ("backend", "cuda", r"backend must be one of .*'cuda'"),
    # label
    ("source", 3, r"source must be a string, got 3"),
    ("notes", None, r"notes must be a string, got None"),
]

# (--set items, regex): parsed by parse_overrides, then applied with get_preset("demo-mnist").
BAD_SETS = [
    (["cosine=on"], r"--set cosine='on': expected a bool"),
    (["batch_size=2.5"], r"--set batch_size='2\.5': expected an int"),
    (["epochs=1e3"], r"--set epochs='1e3': expected an int"),
    (["batch_size="], r"--set batch_size='': expected an int"),
    (["seed=abc"], r"--set seed='abc': expected an int"),
    (["lr=nan"], r"lr .*got nan"),
    (["lr=0.1,-0.1,0.1"], r"lr\[1\] .*got -0\.1"),
    (["t_free=-5"], r"t_free must be >= 1, got -5"),
    (["width=0"], r"width .*got 0\.0"),
    (["width=1/0"], r"--set width='1/0': expected a number"),
    (["beta=0"], r"beta .*other than 0, got 0\.0"),
    (["momentum=1"], r"momentum must be >= 0 and < 1, got 1\.0"),
    (["batch_size"], r"--set expects key=value, got 'batch_size'"),
    (["batchsize=8"], r"unknown preset field 'batchsize'; did you mean batch_size"),
    (["teacher_path=t.pt"], r"teacher_path='t\.pt' is set but augment='none'"),
]


def _preset(field: str, value):
    return lambda folder: get_preset("demo-mnist", **{field: value})


def _set(items):
    return lambda folder: get_preset("demo-mnist", **parse_overrides(items))


def _label(value) -> str:
    return repr(value).replace(" ", "")


def _tiny_mnist() -> DataSplit:
    g = torch.Generator().manual_seed(0)
    return DataSplit(torch.randn(8, 1, 28, 28, generator=g), torch.arange(8) % 10,
                     torch.randn(4, 1, 28, 28, generator=g), torch.arange(4) % 10,
                     tuple(map(str, range(10))), (1, 28, 28), 10)


def _train_with_teacher(preset: str, folder):
    return train_vgg(preset, data=_tiny_mnist(), teacher=str(folder / "teacher.pt"), epochs=1,
                     batch_size=4, t_free=1, t_nudge=1, width=1 / 16, backend="torch",
                     progress=False, log=lambda s: None)


def _small_model() -> CRNN:
    return CRNN((1, 8, 8), [Conv(2), Linear(4)], 3)


PROBES: list[Probe] = [
    *(Probe(f"field-{field}={_label(value)}", _preset(field, value), ArgumentError, match)
      for field, value, match in BAD_FIELDS),
    *(Probe(f"set-{' '.join(items) or 'empty'}", _set(items), ArgumentError, match)
      for items, match in BAD_SETS),
    # what must keep working
    Probe("set-valid-values-apply",
          _set(["lr=0.03,0.05,0.1", "batch_size=16", "width=1/8", "cosine=false", "seed=7"]),
          check=lambda p, f: (p.lr, p.batch_size, p.width, p.cosine, p.seed) == (
              (0.03, 0.05, 0.1), 16, 0.125, False, 7)),
    Probe("beta-zero-without-ep", _set(["method=bp", "beta=0"]),
          check=lambda p, f: p.beta == 0.0 and p.method == "bp"),
    Probe("set-items-one-string", lambda f: parse_overrides("batch_size=8"), ArgumentTypeError,
          r"items must be a list of 'key=value' strings, got 'batch_size=8'"),
    Probe("scale-arch-width-nan", lambda f: scale_arch((Conv(4),), nan), ArgumentError,
          r"width .*got nan"),
    # κ schedules built directly
    Probe("kappa-step-every-zero", lambda f: make_schedule("step", 0.5, every=0), ArgumentError,
          r"every must be an integer >= 1, got 0"),
    Probe("kappa-init-nan", lambda f: make_schedule("constant", nan), ArgumentError,
          r"kappa_init .*got nan"),
    Probe("kappa-cosine-total-epochs-float", lambda f: make_schedule("cosine", 0.5, total_epochs=2.5),
          ArgumentTypeError, r"total_epochs .*2\.5"),
    # a teacher given where no preset reads one
    Probe("teacher-on-non-kd-preset", lambda f: _train_with_teacher("demo-mnist", f), ArgumentError,
          r"teacher.*demo-mnist does not distil"),
    # eqkern memory
    Probe("memory-batch-zero", lambda f: profile_memory(_small_model(), batch=0), ArgumentError,
          r"batch must be an integer >= 1, got 0"),
    Probe("memory-t-free-float", lambda f: profile_memory(_small_model(), t_free=2.5),
          ArgumentTypeError, r"t_free .*2\.5"),
    Probe("memory-unknown-device", lambda f: profile_memory(_small_model(), device="gpu0"),
          ArgumentError, r"device .*'gpu0'"),
    Probe("memory-table-batch-zero", lambda f: memory_table(batch=0), ArgumentError,
          r"batch must be an integer >= 1, got 0"),
    Probe("memory-table-bptt-steps-zero", lambda f: memory_table(bptt_steps=0), ArgumentError,
          r"bptt_steps must be an integer >= 1, got 0"),
    Probe("memory-small-model-profiles", lambda f: profile_memory(_small_model(), batch=2, t_free=2,
                                                                   t_nudge=1),
          check=lambda prof, f: prof.peak_bytes > 0 and prof.steps == 4),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
