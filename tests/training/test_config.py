"""Typed configuration: the sections of a Preset, their checks, `--set` parsed by declared type."""

from __future__ import annotations

import dataclasses

import pytest

import eqkern
from eqkern.cli import main
from eqkern.model.crnn import Conv, Linear
from eqkern.training import presets
from eqkern.training.config import (SECTIONS, AugmentSection, DataSection, LabelSection,
                                    ModelSection, OptimSection, PhaseSection, RunSection)
from eqkern.training.presets import PRESETS, Preset, TrainConfig, get_preset, parse_overrides


# --- `--set` at parse time -------------------------------------------------------------------

@pytest.mark.parametrize("item,message", [
    ("cosine=on", r"--set cosine='on': expected a bool \(true/false or 1/0\)"),
    ("beta=abc", r"--set beta='abc': expected a number"),
    ("t_free=2.5", r"--set t_free='2.5': expected an int"),
    ("train_size=all", r"--set train_size='all': expected an int or none"),
    ("lr=0.1,fast", r"--set lr='0.1,fast': expected comma-separated numbers"),
    ("augment_layers=1.5", r"--set augment_layers='1.5': expected comma-separated ints"),
    ("readout=hinge", r"--set readout='hinge': expected one of ce, mse"),
    ("rule=hebb", r"--set rule='hebb': expected one of ep, fre, vf, kp-vf or none"),
    ("kappa_schedule=none", r"--set kappa_schedule='none': expected one of constant, linear"),
    ("width=1/0", r"--set width='1/0': expected a number"),
])
def test_bad_set_values_fail_naming_field_value_and_type(item, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([item])


def test_set_values_read_by_declared_type():
    got = parse_overrides([
        "cosine=false", "le_learn=TRUE", "batched_nudge=1", "t_free=12", "beta=1", "width=1/8",
        "tol=1e-4", "truncate=none", "teacher_path=None", "teacher_arch=vgg16", "rule=none",
        "lr=0.03, 0.05", "augment_layers=(1, 3)", "skips=residual", "backend=torch",
        "dataset=cifar10_subset", "notes=a b"])
    assert got == {"cosine": False, "le_learn": True, "batched_nudge": True, "t_free": 12,
                   "beta": 1.0, "width": 0.125, "tol": 1e-4, "truncate": None,
                   "teacher_path": None, "teacher_arch": "vgg16", "rule": None,
                   "lr": (0.03, 0.05), "augment_layers": (1, 3), "skips": "residual",
                   "backend": "torch", "dataset": "cifar10_subset", "notes": "a b"}
    assert type(got["beta"]) is float and type(got["t_free"]) is int
    assert parse_overrides(["augment_layers="]) == {"augment_layers": ()}  # README: LE off
    assert parse_overrides(["lr=0.1"]) == {"lr": (0.1,)}


def test_set_errors_other_than_types():
    with pytest.raises(ValueError, match="--set expects key=value, got 'beta'"):
        parse_overrides(["beta"])
    with pytest.raises(ValueError, match="unknown preset field 'cosin'; did you mean cosine"):
        parse_overrides(["cosin=true"])
    with pytest.raises(ValueError, match="unknown preset field 'zzz'; fields: name, "):
        parse_overrides(["zzz=1"])
    with pytest.raises(ValueError, match="arch.*cannot be set from the command line"):
        parse_overrides(["arch=conv3-16"])


@pytest.mark.parametrize("item,expected", [("cosine=on", "a bool"), ("beta=abc", "a number")])
def test_cli_train_rejects_bad_set_before_loading_data(item, expected, tmp_path, capsys,
                                                       monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("training (and so data loading) started")

    monkeypatch.setattr("eqkern.training.train_preset.train_vgg", boom)
    out = tmp_path / "run"
    code = main(["train", "--preset", "demo-mnist", "--epochs", "1", "--out", str(out),
                 "--no-progress", "--set", "train_size=8", "--set", item])
    cap = capsys.readouterr()
    field, value = item.split("=")
    assert code == 2
    assert f"eqkern train: error: --set {field}={value!r}: expected {expected}" in cap.err
    assert cap.out == "" and not out.exists()


# --- Python values ---------------------------------------------------------------------------

def test_get_preset_checks_python_types():
    with pytest.raises(ValueError, match=r"beta must be a number, got 'abc'"):
        get_preset("demo-mnist", beta="abc")
    with pytest.raises(ValueError, match=r"t_free must be an int, got 2.5"):
        get_preset("demo-mnist", t_free=2.5)
    with pytest.raises(ValueError, match=r"cosine must be a bool, got 'on'"):
        get_preset("demo-mnist", cosine="on")
    with pytest.raises(ValueError, match=r"epochs must be an int, got True"):
        get_preset("demo-mnist", epochs=True)
    with pytest.raises(ValueError, match=r"lr must be a sequence of numbers, got \[0.1, 'x'\]"):
        get_preset("demo-mnist", lr=[0.1, "x"])
    with pytest.raises(ValueError, match=r"arch must be a tuple of Conv or Linear"):
        get_preset("demo-mnist", arch=["conv3-16"])
    with pytest.raises(ValueError, match=r"readout must be one of \('ce', 'mse'\), got 'hinge'"):
        get_preset("demo-mnist", readout="hinge")
    with pytest.raises(ValueError, match="unknown preset field 't_fre'; did you mean t_free"):
        get_preset("demo-mnist", t_fre=3)
    p = get_preset("demo-mnist", beta=1, lr=0.1, augment_layers=[0], arch=[Conv(4), Linear(5)])
    assert type(p.beta) is float and p.lr == (0.1,) and p.augment_layers == (0,)
    assert p.arch == (Conv(4), Linear(5))


# --- the sections ----------------------------------------------------------------------------

def test_preset_is_exactly_its_sections():
    names = [f.name for s in SECTIONS for f in dataclasses.fields(s)]
    assert len(names) == len(set(names))  # each field in one section
    assert names == [f.name for f in dataclasses.fields(Preset)]
    p = PRESETS["vgg7-le-cifar10"]
    secs = p.sections()
    assert list(secs) == ["label", "data", "model", "phase", "optim", "augment", "run"]
    assert secs["phase"] == PhaseSection(beta=0.25, t_free=250, t_nudge=50)
    merged = {k: v for s in secs.values() for k, v in dataclasses.asdict(s).items()}
    assert Preset(**{**merged, "arch": p.arch}) == p
    for s in secs.values():
        s.validate()


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_registered_preset_validates(name):
    PRESETS[name].validate()
    assert get_preset(name) == PRESETS[name]


@pytest.mark.parametrize("section,kwargs,message", [
    (LabelSection, dict(name="x", source=3), "source must be a string"),
    (DataSection, dict(dataset="mnist", batch_size=0), "batch_size must be >= 1"),
    (DataSection, dict(dataset="svhn"), "dataset must be one of"),
    (DataSection, dict(dataset="mnist", data_augmentation="mixup"), "data_augmentation must be one of"),
    (ModelSection, dict(arch=(Conv(4),), width=0.0), "width must be a finite number > 0"),
    (ModelSection, dict(arch=()), "arch must have at least one layer"),
    (ModelSection, dict(arch=(Linear(4),) * 3, skips="random", skip_p=2.0), "p must be a probability"),
    (ModelSection, dict(arch=(Conv(4),), state_init="ones"), "state_init must be one of"),
    (PhaseSection, dict(t_nudge=0), "t_nudge must be >= 1"),
    (PhaseSection, dict(beta=float("nan")), "beta must be a finite number"),
    (PhaseSection, dict(tol=0.0), "tol must be None or a finite number > 0"),
    (PhaseSection, dict(check_every=0), "check_every must be an int >= 1"),
    (PhaseSection, dict(schedule="jacobi"), "schedule must be one of"),
    (PhaseSection, dict(estimator="two_sided"), "estimator must be one of"),
    (PhaseSection, dict(leakage=-1.0), "leakage must be a finite number >= 0"),
    (OptimSection, dict(lr=()), "lr must give at least one rate"),
    (OptimSection, dict(momentum=-0.1), "momentum must be >= 0"),
    (OptimSection, dict(optimizer="rmsprop"), "optimizer must be one of"),
    (AugmentSection, dict(augment="le"), "augment='le' needs augment_layers"),
    (AugmentSection, dict(kappa_schedule="nope"), "kappa_schedule must be one of"),
    (AugmentSection, dict(teacher_arch="resnet18"), "teacher_arch must be one of"),
    (RunSection, dict(epochs=0), "epochs must be >= 1"),
    (RunSection, dict(backend="cuda"), "backend must be one of"),
])
def test_each_section_validates_its_fields(section, kwargs, message):
    with pytest.raises(ValueError, match=message):
        section(**kwargs).validate()


def test_sections_validate_with_their_defaults():
    for s in (LabelSection("x", "y"), DataSection("mnist"), ModelSection((Conv(4),)),
              PhaseSection(), OptimSection(), AugmentSection(), RunSection()):
        s.validate()


def test_checks_across_sections():
    with pytest.raises(ValueError, match="rule='vf' needs feedback='separate'"):
        get_preset("vgg5-ce-cifar10", rule="vf")
    with pytest.raises(ValueError, match="augment_layers"):
        get_preset("demo-mnist", augment="le", augment_layers=(2,))
    with pytest.raises(ValueError, match="lr has 2 rates.*3 weight layers"):
        get_preset("demo-mnist", lr=(0.1, 0.2))


# --- TrainConfig = the demo-mnist preset -----------------------------------------------------

OLD_TRAIN_CONFIG = dict(epochs=3, batch_size=64, method="ep", t_free=20, t_nudge=6, beta=0.5,
                        estimator="symmetric", lr=(0.05,), momentum=0.9, weight_decay=0.0,
                        cosine=True, backend=None, seed=0, eval_batch_size=500)


def test_train_config_keeps_the_old_defaults():
    cfg = TrainConfig()
    assert isinstance(cfg, Preset) and cfg == PRESETS["demo-mnist"]
    assert {k: getattr(cfg, k) for k in OLD_TRAIN_CONFIG} == OLD_TRAIN_CONFIG
    assert (cfg.lr_min, cfg.data_augmentation, cfg.dataset, cfg.readout) == (
        1e-5, "none", "mnist_subset", "ce")
    assert cfg.arch == (Conv(16), Conv(32))
    assert TrainConfig(lr=0.2).lr == (0.2,)
    assert TrainConfig(lr=[0.2, 0.1, 0.05], epochs=2).learning_rates() == [0.2, 0.1, 0.05]
    with pytest.raises(ValueError, match="beta must be a number"):
        TrainConfig(beta="abc")
    assert eqkern.TrainConfig is presets.TrainConfig


def test_cli_presets_lists_demo_and_fields(capsys):
    assert main(["presets"]) == 0
    assert "| demo-mnist | mnist_subset | conv3-16+pool conv3-32+pool |" in capsys.readouterr().out
    assert main(["presets", "--name", "demo-mnist"]) == 0
    out = capsys.readouterr().out
    assert "[phase]" in out and "[optim]" in out
    assert "cosine             True   [a bool (true/false or 1/0)]" in out
