"""Paper presets: names, fields, overrides, layer-wise rates and the teacher/student shape match."""

from __future__ import annotations

import pytest

from eqkern import CRNN
from eqkern.presets import PRESETS, format_presets, get_preset, list_presets, parse_overrides
from eqkern.teacher import VGG_ARCHS, build_teacher, match_features

EXPECTED = ["vgg7-le-cifar10", "vgg7-kd-cifar10", "vgg7-kdw-cifar10", "vgg11-le-cifar100",
            "vgg13-le-cifar100", "vgg10-kd-cifar100", "vgg12-kd-cifar100", "vgg5-ce-cifar10",
            "vgg5-mse-cifar10", "frernn-conv-mnist"]


def test_every_paper_configuration_is_there():
    assert list_presets() == EXPECTED
    table = format_presets()
    assert all(name in table for name in EXPECTED)
    assert all(PRESETS[n].notes and PRESETS[n].source for n in EXPECTED)


@pytest.mark.parametrize("name,depth", [("vgg7-le-cifar10", 7), ("vgg7-kd-cifar10", 7),
                                        ("vgg7-kdw-cifar10", 7), ("vgg11-le-cifar100", 11),
                                        ("vgg13-le-cifar100", 13), ("vgg10-kd-cifar100", 10),
                                        ("vgg12-kd-cifar100", 12)])
def test_lin_depth_equals_number_of_learning_rates(name, depth):
    p = get_preset(name)
    assert len(p.arch) + 1 == depth == len(p.learning_rates()) == len(p.lr)
    assert sum(type(s).__name__ == "Conv" for s in p.arch) == {7: 5, 10: 8, 11: 8, 12: 10, 13: 10}[depth]


def test_table_values():
    p = get_preset("vgg7-kd-cifar10")
    assert (p.beta, p.t_free, p.t_nudge, p.kappa, p.batch_size, p.state_init, p.teacher_arch) == (
        0.15, 250, 60, 0.65, 64, "uniform", "vgg19")
    p = get_preset("vgg12-kd-cifar100")
    assert p.kappa_schedule == "linear" and p.init_scale == 0.5 and p.batch_size == 256
    assert {s.activation for s in p.arch[:-1]} == {"relu"} and p.arch[-1].activation == "hard_sigmoid"
    p = get_preset("vgg5-mse-cifar10")
    assert (p.readout, p.beta, p.t_free, p.t_nudge, p.cosine_epochs, p.epochs) == ("mse", 0.5, 250, 30, 100, 120)
    assert get_preset("frernn-conv-mnist").arch[0].gamma == 0.01


def test_overrides_and_errors():
    p = get_preset("vgg7-le-cifar10", width=0.125, t_free=10, lr=[0.1])
    assert p.t_free == 10 and p.lr == (0.1,) and p.learning_rates() == [0.1] * 7
    assert [s.out_channels for s in p.layers()[:5]] == [8, 16, 32, 64, 64]
    assert PRESETS["vgg7-le-cifar10"].t_free == 250  # the registry is untouched
    with pytest.raises(ValueError, match="unknown preset 'vgg99'.*vgg7-le-cifar10"):
        get_preset("vgg99")
    with pytest.raises(ValueError, match="unknown preset field.*t_fre\\b.*t_free"):
        get_preset("vgg7-le-cifar10", t_fre=3)
    with pytest.raises(ValueError, match="lr has 3 rates.*7 weight layers"):
        get_preset("vgg7-le-cifar10", lr=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="augment_layers"):
        get_preset("vgg7-le-cifar10", augment_layers=(9,))
    base = PRESETS["vgg7-le-cifar10"]
    got = parse_overrides(["width=1/8", "t_free=12", "lr=0.03,0.05,0.05,0.05,0.05,0.05,0.025",
                           "kappa_schedule=linear", "beta=1", "le_learn=false", "teacher_path=None"], base)
    assert got == {"width": 0.125, "t_free": 12, "lr": (0.03, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025),
                   "kappa_schedule": "linear", "beta": 1.0, "le_learn": False, "teacher_path": None}
    with pytest.raises(ValueError, match="unknown preset field 'foo'"):
        parse_overrides(["foo=1"])


@pytest.mark.parametrize("name", [n for n in EXPECTED if PRESETS[n].teacher_arch])
def test_teacher_blocks_line_up_with_kd_layers(name):
    p = get_preset(name, width=1 / 16)
    classes = 100 if p.dataset == "cifar100" else 10
    model = CRNN((3, 32, 32), p.layers(), classes, state_init=p.state_init)
    teacher = build_teacher(p.teacher_arch, classes, width=p.width)
    assert match_features(teacher, model.state_shapes, p.augment_layers) == [0, 1, 2, 3, 4]
    assert p.teacher_arch in VGG_ARCHS
