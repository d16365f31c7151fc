"""``eqkern gdu --run``: the GDU check of a training run's network at its checkpoint."""

from __future__ import annotations

import pytest
import torch

from eqkern.cli import main
from eqkern.data.datasets import load_dataset
from eqkern.errors import ArgumentError
from eqkern.learning.gdu import check_gdu
from eqkern.model.crnn import CRNN
from eqkern.model.specs import Linear
from eqkern.dynamics.settle import free_phase
from eqkern.tools.run_gdu import gdu_of_run, layer_profile, state_profile, unsettled_images
from eqkern.training.build import build_model
from eqkern.training.train_preset import train_vgg

RUN = dict(train_size=32, test_size=16, epochs=1, batch_size=16, t_free=12, t_nudge=4,
           backend="torch", progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    res = train_vgg("demo-mnist", out_dir=out, **RUN)
    return out, res


def test_the_run_s_network_and_settings_are_checked(run):
    out, res = run
    check = gdu_of_run(out, batch=4)
    # Independently: the network train_vgg returned, on the same images, at the run's settings.
    data = load_dataset("mnist_subset", limit_train=4, limit_test=1)
    want = check_gdu(res.model, data.x_train[:4], data.y_train[:4].long(), beta=res.preset.beta,
                     t_free=12, t_nudge=4, backend="torch", tol=res.preset.tol)
    got = {r["name"]: r for r in check.rows}
    for w in want:
        print(w["name"], got[w["name"]]["cosine"], w["cosine"])
        assert got[w["name"]]["ep_norm"] == pytest.approx(w["ep_norm"], rel=1e-4)  # fp32, another order of summation
        assert got[w["name"]]["bptt_norm"] == pytest.approx(w["bptt_norm"], rel=1e-4)  # fp32, another order of summation
    assert (check.preset, check.epoch, check.t_free, check.t_nudge, check.batch) == (
        "demo-mnist", 1, 12, 4, 4)
    # One image further on is the batch's own row: the offset picks images, nothing else.
    one = gdu_of_run(out, batch=1, offset=3, tol=None)
    alone = check_gdu(res.model, data.x_train[3:4], data.y_train[3:4].long(),
                      beta=res.preset.beta, t_free=12, t_nudge=4, backend="torch")
    assert one.rows[0]["ep_norm"] == pytest.approx(alone[0]["ep_norm"], rel=1e-4)
    assert "training images 3-3" in one.header()
    assert check.beta == res.preset.beta and "demo-mnist" in check.header()


def test_small_beta_at_fixed_t_agrees_with_bptt(run):
    """EP's theorem on the trained network: a small β and a settled free phase give BPTT's
    gradient (fp32, so a looser bound than the fp64 tests of learning/)."""
    out, _ = run
    check = gdu_of_run(out / "checkpoint.pt", batch=8, beta=1e-2, t_free=60, t_nudge=20, tol=None)
    for r in check.rows:
        print(r)
        assert r["cosine"] == r["cosine"] and r["cosine"] > 0.99, r
    assert check.tol is None and "fixed T" in check.header()


def test_bad_runs_and_options_are_refused(run, tmp_path, capsys):
    out, _ = run
    with pytest.raises(ArgumentError, match="no checkpoint there"):
        gdu_of_run(tmp_path)
    with pytest.raises(ArgumentError, match="offset=99 .* the run trained on 32 images"):
        gdu_of_run(out, offset=99, batch=4)
    with pytest.raises(ArgumentError, match="takes beta, t_free"):
        gdu_of_run(out, lr=0.1)
    assert main(["gdu", "--kappa", "0"]) == 2
    assert "--kappa applies to a training run's network: add --run" in capsys.readouterr().err
    assert main(["gdu", "--run", str(out), "--dataset", "cifar10"]) == 2
    assert "drop --dataset" in capsys.readouterr().err


def test_cli_prints_the_run_s_table(run, capsys):
    out, _ = run
    assert main(["gdu", "--run", str(out), "--batch", "4", "--tol", "none", "--kappa", "0"]) == 0
    text = capsys.readouterr().out
    print(text)
    assert "GDU check of demo-mnist at its checkpoint (after epoch 1)" in text
    assert "fixed T" in text and "connections.0.weight" in text


def test_unsettled_images_are_those_that_still_move(run, capsys):
    """Independently: the free phase after T_free and after T_free + 100 steps, per image."""
    out, res = run
    data = load_dataset("mnist_subset", limit_train=8, limit_test=1)
    x = data.x_train[:8]
    with torch.no_grad():
        a = free_phase(res.model, x, 12, backend="torch")
        b = free_phase(res.model, x, 112, backend="torch")
    drift = torch.stack([(u - v).flatten(1).abs().amax(1) for u, v in zip(a, b)]).amax(0)
    found = dict(unsettled_images(out, images=8, threshold=0.0, backend="torch"))
    print(drift, found)
    assert sorted(found) == [i for i in range(8) if drift[i] > 0]
    for i, d in found.items():
        assert d == pytest.approx(drift[i].item(), rel=1e-4, abs=1e-6)
    assert unsettled_images(out, images=8, threshold=float(drift.max()) + 1.0) == []
    assert main(["gdu", "--run", str(out), "--unsettled", "4", "--offset", "2"]) == 0
    assert "of training images 2-5 move by more than 0.001 in 100 steps" in capsys.readouterr().out


def _profile_by_hand(state: list[torch.Tensor]) -> list[tuple[float, float, float, float]]:
    rows = []
    for s in state:
        flat = s.double().flatten(1)  # (images, units)
        centred = flat - flat.mean(0)
        std = (centred.pow(2).sum(0) / len(flat)).sqrt()  # over these images: no correction
        rows.append((flat.abs().mean().item(), (flat == 0).double().mean().item(),
                     (flat == 1).double().mean().item(), std.mean().item()))
    return rows


def test_layer_profile_of_the_checkpoint_and_of_a_fresh_init(run, capsys):
    """Independently: the free phase of the returned network (and of a fresh one from the same
    seed) on the same images, its statistics computed in float64 by hand."""
    out, res = run
    data = load_dataset("mnist_subset", limit_train=10, limit_test=1)
    x = data.x_train[2:10]
    torch.manual_seed(5)
    fresh = build_model(res.preset, tuple(x.shape[1:]), 10)
    for model, at_init in ((res.model, False), (fresh, True)):
        with torch.no_grad():
            want = _profile_by_hand(free_phase(model, x, 12, backend="torch", tol=res.preset.tol))
        torch.manual_seed(5)
        got = layer_profile(out, images=8, offset=2, at_init=at_init, backend="torch")
        print(at_init, want, got)
        assert [r["layer"] for r in got] == list(range(1, len(want) + 1))
        for r, w in zip(got, want):
            assert all(v == v for v in r.values())
            assert (r["mean_abs"], r["at_low"], r["at_high"], r["spread"]) == pytest.approx(w, rel=1e-4, abs=1e-6)
    assert got[0]["spread"] > 0
    with pytest.raises(ArgumentError, match=r"images=1 \(--layers\)"):
        layer_profile(out, images=1)
    assert main(["gdu", "--run", str(out), "--layers", "4", "--at-init"]) == 0
    text = capsys.readouterr().out
    assert "at a fresh initialisation of the run's network, training images 0-3" in text
    assert main(["gdu", "--at-init"]) == 2
    assert "--at-init applies to a training run's network" in capsys.readouterr().err


def test_state_profile_counts_clamped_units_at_each_activations_bounds():
    """The bounds are the layer's activation's: [0, 1] for clamp01, [-1, 1] for tanh, none above
    for relu; a state written by hand, its fractions counted here."""
    model = CRNN((3,), [Linear(4, activation="clamp01"), Linear(4, activation="tanh"),
                        Linear(4, activation="relu")], 2)
    state = [torch.tensor([[0.0, 1.0, 0.5, 1.0], [0.0, 0.2, 1.0, 0.3]]),
             torch.tensor([[-1.0, 0.0, 1.0, 0.5], [-1.0, 1.0, 0.0, 0.0]]),
             torch.tensor([[0.0, 7.0, 9.0, 0.0], [3.0, 0.0, 0.0, 0.0]])]
    got = [(r["at_low"], r["at_high"]) for r in state_profile(model, state)]
    print(got)
    assert got == [(2 / 8, 3 / 8), (2 / 8, 2 / 8), (5 / 8, 0.0)]
    spread = [r["spread"] for r in state_profile(model, state)]
    assert spread[0] == pytest.approx(torch.tensor([0.0, 0.8, 0.5, 0.7]).div(2).mean().item())


@pytest.mark.parametrize("method", ["ep", "bp"])
def test_kappa_is_the_schedule_s_at_the_last_epoch(tmp_path, method):
    """An LE run's κ by default: its cosine schedule's at the last epoch run, also for a bp run,
    which logs no κ (it raised KeyError)."""
    out = tmp_path / method
    res = train_vgg("demo-mnist", out_dir=out, augment="le", augment_layers=(0,), kappa=0.5,
                    kappa_schedule="cosine", method=method, **{**RUN, "epochs": 2})
    check = gdu_of_run(out, batch=4)
    print(method, [h.get("kappa") for h in res.history], check.kappa)
    assert check.kappa == pytest.approx(0.25)  # 0.5 · (1 + cos(π · 1/2)) / 2
    if method == "ep":
        assert check.kappa == res.history[-1]["kappa"]
