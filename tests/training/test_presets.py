"""Paper presets: names, fields, overrides, layer-wise rates and the teacher/student shape match."""

from __future__ import annotations

import pytest

import torch

from eqkern import CRNN, ep_gradients
from eqkern.training.presets import PRESETS, format_presets, get_preset, list_presets, parse_overrides
from eqkern.training.teacher import VGG_ARCHS, build_teacher, match_features

EXPECTED = ["vgg7-le-cifar10", "vgg7-kd-cifar10", "vgg7-kdw-cifar10", "vgg11-le-cifar100",
            "vgg13-le-cifar100", "vgg10-kd-cifar100", "vgg12-kd-cifar100", "vgg5-ce-cifar10",
            "vgg5-mse-cifar10", "frernn-conv-mnist", "frernn-mlp2-mnist", "frernn-mlp3-mnist",
            "frernn-mlp5-mnist", "frernn-mlp10-mnist", "frernn-mlp10-res-mnist",
            "frernn-mlp20-res-mnist", "frernn-mlp10-agt-mnist"]
FRE = [n for n in EXPECTED if n.startswith("frernn")]


def test_every_paper_configuration_is_there():
    assert list_presets() == EXPECTED + ["demo-mnist"]  # and the `make demo` network
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


def test_liu_table_values():
    """Liu & Chen Table 1 / S3 (conv, 2HL, 3HL) and Table 2 (5/10/20 layers, residual links)."""
    p = get_preset("frernn-conv-mnist")
    assert (p.t_free, p.t_nudge, p.beta, p.batch_size, p.epochs, p.lr, p.weight_decay, p.rule) == (
        20, 10, 0.25, 128, 40, (0.15, 0.35, 0.9), 1e-5, "fre")
    assert [(s.out_channels, s.kernel_size, s.padding, s.pool, s.activation) for s in p.arch] == [
        (32, 5, 0, True, "clamp01"), (64, 5, 0, True, "clamp01")]
    for name, depth, width, gamma, t in [("frernn-mlp2-mnist", 2, 512, 0.01, (10, 10)),
                                         ("frernn-mlp3-mnist", 3, 512, 0.01, (18, 10)),
                                         ("frernn-mlp5-mnist", 5, 64, 0.1, (50, 25)),
                                         ("frernn-mlp10-mnist", 10, 64, 0.1, (100, 50)),
                                         ("frernn-mlp20-res-mnist", 20, 64, 0.1, (200, 100))]:
        p = get_preset(name)
        assert len(p.arch) == depth and {s.out_features for s in p.arch} == {width}
        assert [s.gamma for s in p.arch] == [gamma] * (depth - 1) + [1.0]
        assert (p.t_free, p.t_nudge) == t and (p.optimizer, p.lr, p.batch_size, p.epochs) == (
            "adam", (1e-3,), 500, 50)
        assert p.rule == "fre" and p.estimator == "one_sided" and p.beta == 0.1
    assert get_preset("frernn-mlp10-res-mnist").skip_pairs() == ((0, 3), (3, 6), (6, 9))
    assert get_preset("frernn-mlp10-mnist").skip_pairs() == ()
    agt = get_preset("frernn-mlp10-agt-mnist")
    assert agt.skip_pairs() == get_preset(agt, skip_seed=0).skip_pairs() != get_preset(
        agt, skip_seed=1).skip_pairs()


@pytest.mark.parametrize("name", FRE)
def test_fre_presets_build_and_train_a_step(name):
    """The model of the preset (skip links included) and one EP step of its rule on a tiny batch:
    every parameter gets a finite gradient, the skip links too."""
    from eqkern.training.build import build_model
    from eqkern.training.optim import make_optimizer

    p = get_preset(name, width=1 / 16, t_free=3, t_nudge=2)
    model = build_model(p, (1, 28, 28), 10)
    assert model.skips == p.skip_pairs() and len(model.skip_links) == len(model.skips)
    opt = make_optimizer(model, p)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 9, 1])
    before = [q.detach().clone() for q in model.parameters()]
    opt.zero_grad()
    ep_gradients(model, x, y, beta=p.beta, t_free=p.t_free, t_nudge=p.t_nudge,
                 estimator=p.estimator, rule=p.rule)
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in model.parameters())
    opt.step()
    moved = {n for (n, q), b in zip(model.named_parameters(), before) if not torch.equal(q, b)}
    print(name, "moved:", sorted(moved))
    assert "out.weight" in moved and "connections.0.weight" in moved
