"""Bad-input battery of the Python API: ``CRNN`` and its layer specs, ``settle``/``free_phase``,
``ep_gradients`` (every estimator and rule), ``bptt_gradients`` and ``check_gdu``.

Each probe does one bad thing on a tiny network and data made in memory. The probes of what a
backend runs (negative or fractional steps, numpy-int steps, integer target dtypes, β that overflows,
NaN inputs) run on every backend available here; triton (the interpreter on CPU) only with phases
of a few steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes import Probe, assert_probe, ids
from eqkern import CRNN, Conv, Linear, bptt_gradients, check_gdu, ep_gradients, free_phase, settle
from eqkern.backends import available_backends
from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model.skips import random_skips, residual_skips

BACKENDS = available_backends()
T_FREE, T_NUDGE = 3, 2  # short enough for the Triton interpreter


def net(seed: int = 0, **kwargs) -> CRNN:
    """The tiny CNN of every probe: 1×8×8 input, two pooled convs, a soft-max read-out of 10."""
    torch.manual_seed(seed)
    return CRNN((1, 8, 8), [Conv(4), Conv(8)], 10, **kwargs)


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def ep(backend: str | None = "torch", *, x=None, y=None, model=None, **kwargs):
    """``ep_gradients`` on the tiny net; ``kwargs`` replace beta/t_free/t_nudge or add options."""
    model = net() if model is None else model
    bx, by = batch()
    args = dict(beta=0.5, t_free=T_FREE, t_nudge=T_NUDGE, backend=backend)
    args.update(kwargs)
    return ep_gradients(model, bx if x is None else x, by if y is None else y, **args), model


def grads_of(backend: str, **kwargs) -> list[torch.Tensor]:
    _, model = ep(backend, **kwargs)
    return [p.grad.clone() for p in model.parameters()]


def same_grads(backend: str, **kwargs):
    """A check: ``ep(backend, **kwargs)`` writes the gradients of the plain int-step, int64 call."""
    ref = grads_of(backend)
    got = grads_of(backend, **kwargs)
    return all(torch.equal(a, b) for a, b in zip(ref, got))


def settle_tiny(backend: str | None = "torch", *, state=None, beta=0.0, steps=2, targets=None,
                x=None, **kwargs):
    model = net()
    x = batch()[0] if x is None else x
    state = model.init_state(x.shape[0]) if state is None else state
    return settle(model, x, state, beta, steps, targets, backend=backend, **kwargs)


def crnn(layers, shape=(1, 8, 8), classes=10, **kwargs):
    return lambda _: CRNN(shape, layers, classes, **kwargs)


def nan_x() -> torch.Tensor:
    x, _ = batch()
    x[1, 0, 2, 3] = float("nan")
    return x


def betas(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _backend_probes(b: str) -> list[Probe]:
    """What each backend runs: the entry checks hold before any backend is picked."""
    return [
        Probe(f"ep/{b}/t_free=-1", lambda _: ep(b, t_free=-1), ArgumentError, r"t_free.*>= 0.*-1"),
        Probe(f"ep/{b}/t_nudge=-1", lambda _: ep(b, t_nudge=-1), ArgumentError, r"t_nudge.*>= 0.*-1"),
        Probe(f"ep/{b}/t_free=2.5", lambda _: ep(b, t_free=2.5), ArgumentError, r"t_free.*int.*2\.5"),
        Probe(f"ep/{b}/t_free=np.int64", lambda _: same_grads(b, t_free=np.int64(T_FREE),
                                                            t_nudge=np.int32(T_NUDGE)),
              check=lambda ok, _: ok),
        Probe(f"ep/{b}/t_free=0 allowed", lambda _: ep(b, t_free=0)[0].free_steps,
              check=lambda steps, _: steps == 0),
        Probe(f"ep/{b}/targets int16", lambda _: same_grads(b, y=batch()[1].to(torch.int16)),
              check=lambda ok, _: ok),
        Probe(f"ep/{b}/targets int32", lambda _: same_grads(b, y=batch()[1].to(torch.int32)),
              check=lambda ok, _: ok),
        Probe(f"ep/{b}/beta=1e300", lambda _: ep(b, beta=1e300), ArgumentError, r"beta.*1e\+300"),
        Probe(f"ep/{b}/x has a NaN", lambda _: ep(b, x=nan_x()), ArgumentError, r"x must be finite"),
        Probe(f"settle/{b}/per-sample beta NaN",
              lambda _: settle_tiny(b, beta=betas(0.5, float("nan"), 0.5, 0.5), targets=batch()[1]),
              ArgumentError, r"beta.*nan"),
        Probe(f"settle/{b}/steps=-1", lambda _: settle_tiny(b, steps=-1), ArgumentError, r"steps.*-1"),
        Probe(f"settle/{b}/steps=2.5", lambda _: settle_tiny(b, steps=2.5), ArgumentError, r"steps.*2\.5"),
    ]


def aliased_state(_):
    model = CRNN((8,), [Linear(6), Linear(6)], 3)
    s = torch.zeros(2, 6)
    return settle(model, torch.rand(2, 8), [s, s], 0.0, 2, backend="torch")


def state_is_x(_):
    model = CRNN((6,), [Linear(6), Linear(6)], 3)
    x = torch.rand(2, 6)
    return settle(model, x, [x, torch.zeros(2, 6)], 0.0, 2, backend="torch")


def disjoint_views_of_one_buffer(_):
    """Two states that are disjoint views of one buffer are fine (not aliased)."""
    model = CRNN((8,), [Linear(6), Linear(6)], 3)
    x = torch.rand(2, 8)
    buf = torch.zeros(2, 2, 6)
    state = settle(model, x, [buf[0], buf[1]], 0.0, 3, backend="torch")
    ref = settle(model, x, model.init_state(2), 0.0, 3, backend="torch")
    return all(torch.equal(a, b) for a, b in zip(state, ref))


def nan_state(_):
    model = net()
    state = model.init_state(4)
    state[1][0, 0, 0, 0] = float("inf")
    return settle(model, batch()[0], state, 0.0, 2, backend="torch")


def np_steps(_):
    model = net()
    x = batch()[0]
    a = settle(model, x, model.init_state(4), 0.0, np.int32(3), backend="torch")
    b = settle(model, x, model.init_state(4), 0.0, 3, backend="torch")
    return all(torch.equal(s, t) for s, t in zip(a, b))


def gdu(**kwargs):
    model = net().double()
    x, y = batch()
    args = dict(beta=1e-3, t_free=4, t_nudge=2)
    args.update(kwargs)
    return check_gdu(model, x.double(), y, **args)


def bptt(**kwargs):
    x, y = batch()
    args = dict(x=x, y=y, t_free=3)
    args.update(kwargs)
    return bptt_gradients(net(), args.pop("x"), args.pop("y"), **args)


PROBES: list[Probe] = [p for b in BACKENDS for p in _backend_probes(b)] + [
    # -- ep_gradients: targets --------------------------------------------------------------
    Probe("ep/targets float", lambda _: ep(y=batch()[1].float()), ArgumentError, r"targets.*float32"),
    Probe("ep/targets bool", lambda _: ep(y=batch()[1] > 4), ArgumentError, r"targets.*bool"),
    Probe("ep/targets = num_classes", lambda _: ep(y=torch.tensor([0, 1, 10, 2])), ArgumentError,
          r"targets.*0\.\.9.*10"),
    Probe("ep/targets negative", lambda _: ep(y=torch.tensor([0, -1, 3, 2])), ArgumentError,
          r"targets.*0\.\.9.*-1"),
    Probe("ep/targets wrong batch", lambda _: ep(y=batch()[1][:3]), ArgumentError, r"targets.*\(4,\)"),
    Probe("ep/targets uint8", lambda _: same_grads("torch", y=batch()[1].to(torch.uint8)),
          check=lambda ok, _: ok),
    # -- ep_gradients: beta and options -------------------------------------------------------
    Probe("ep/beta=nan", lambda _: ep(beta=float("nan")), ArgumentError, r"beta.*nan"),
    Probe("ep/beta='a'", lambda _: ep(beta="a"), ArgumentTypeError, r"beta.*'a'"),
    Probe("ep/beta=1e5", lambda _: ep(beta=-1e5), ArgumentError, r"beta.*-100000"),
    Probe("ep/beta=0", lambda _: ep(beta=0.0), ArgumentError, r"needs beta != 0"),
    Probe("ep/estimator unknown", lambda _: ep(estimator="two_sided"), ArgumentError,
          r"estimator.*'two_sided'"),
    Probe("ep/rule unknown", lambda _: ep(rule="hebb"), ArgumentError, r"rule.*'hebb'"),
    Probe("ep/schedule unknown", lambda _: ep(schedule="jacobi"), ArgumentError, r"schedule.*'jacobi'"),
    Probe("ep/tol=0", lambda _: ep(tol=0.0), ArgumentError, r"tol.*0"),
    Probe("ep/tol=nan", lambda _: ep(tol=float("nan")), ArgumentError, r"tol.*nan"),
    Probe("ep/tol='1e-3'", lambda _: ep(tol="1e-3"), ArgumentTypeError, r"tol.*'1e-3'"),
    Probe("ep/check_every=0", lambda _: ep(tol=1e-3, check_every=0), ArgumentError, r"check_every.*0"),
    Probe("ep/check_every=np.int64", lambda _: ep(tol=1e-9, check_every=np.int64(2))[0].free_steps,
          check=lambda steps, _: steps == T_FREE),
    Probe("ep/batched_nudge='yes'", lambda _: ep(batched_nudge="yes"), ArgumentTypeError,
          r"batched_nudge.*'yes'"),
    Probe("ep/leakage=-1", lambda _: ep(model=net(feedback="separate"), leakage=-1.0), ArgumentError,
          r"leakage.*-1"),
    Probe("ep/leakage='x'", lambda _: ep(model=net(feedback="separate"), leakage="x"),
          ArgumentTypeError, r"leakage.*'x'"),
    Probe("ep/generator=1", lambda _: ep(estimator="random_sign", generator=1), ArgumentTypeError,
          r"generator.*int"),
    Probe("ep/fre t_nudge=-1", lambda _: ep(rule="fre", estimator="one_sided", t_nudge=-1),
          ArgumentError, r"t_nudge.*-1"),
    Probe("ep/fre x NaN", lambda _: ep(rule="fre", estimator="one_sided", x=nan_x()), ArgumentError,
          r"x must be finite"),
    # -- ep_gradients: x ------------------------------------------------------------------------
    Probe("ep/x wrong shape", lambda _: ep(x=torch.rand(4, 1, 9, 8)), ArgumentError, r"x has shape"),
    Probe("ep/x float64", lambda _: ep(x=batch()[0].double()), ArgumentTypeError, r"x has dtype"),
    Probe("ep/x on meta", lambda _: ep(x=batch()[0].to("meta")), ArgumentError, r"x is on meta"),
    Probe("ep/x a list", lambda _: ep(x=batch()[0].tolist()), ArgumentTypeError, r"x must be a torch"),
    Probe("ep/x empty batch", lambda _: ep(x=batch()[0][:0], y=batch()[1][:0]), ArgumentError,
          r"x.*at least one sample"),
    Probe("ep/x inf", lambda _: ep(x=batch()[0].index_fill(0, torch.tensor([2]), math.inf)),
          ArgumentError, r"x must be finite"),
    # -- settle / free_phase / forward ---------------------------------------------------------
    Probe("settle/steps=np.int32", np_steps, check=lambda ok, _: ok),
    Probe("settle/per-sample beta 1e5", lambda _: settle_tiny(beta=betas(0.5, 1e5, 0.5, 0.5),
                                                             targets=batch()[1]),
          ArgumentError, r"beta.*100000"),
    Probe("settle/per-sample beta wrong shape", lambda _: settle_tiny(beta=betas(0.5, 0.5, 0.5),
                                                                     targets=batch()[1]),
          ArgumentError, r"beta.*\(4,\)"),
    Probe("settle/per-sample beta int", lambda _: settle_tiny(beta=torch.ones(4, dtype=torch.int64),
                                                             targets=batch()[1]),
          ArgumentTypeError, r"beta.*int64"),
    Probe("settle/beta without targets", lambda _: settle_tiny(beta=0.5), ArgumentError, r"needs targets"),
    Probe("settle/state one layer short", lambda _: settle_tiny(state=net().init_state(4)[:1]),
          ArgumentError, r"state has 1 layers.*2"),
    Probe("settle/state not tensors", lambda _: settle_tiny(state=[1, 2]), ArgumentTypeError,
          r"state\[0\].*int"),
    Probe("settle/state a tensor", lambda _: settle_tiny(state=torch.zeros(2, 4, 4, 4)),
          ArgumentTypeError, r"state must be a list"),
    Probe("settle/state on meta", lambda _: settle_tiny(state=[s.to("meta") for s in net().init_state(4)]),
          ArgumentError, r"state\[0\] is on meta"),
    Probe("settle/state float64", lambda _: settle_tiny(state=[s.double() for s in net().init_state(4)]),
          ArgumentTypeError, r"state\[0\].*float64"),
    Probe("settle/states share memory", aliased_state, ArgumentError, r"state\[0\] and state\[1\]"),
    Probe("settle/state is x", state_is_x, ArgumentError, r"x and state\[0\]|state\[0\] and x"),
    Probe("settle/disjoint views of one buffer", disjoint_views_of_one_buffer, check=lambda ok, _: ok),
    Probe("settle/state has inf", nan_state, ArgumentError, r"state\[1\] must be finite"),
    Probe("settle/tol=-1", lambda _: settle_tiny(tol=-1.0), ArgumentError, r"tol.*-1"),
    Probe("settle/check_every=0", lambda _: settle_tiny(tol=1e-3, check_every=0), ArgumentError,
          r"check_every.*0"),
    Probe("settle/schedule unknown", lambda _: settle_tiny(schedule="jacobi"), ArgumentError,
          r"schedule.*'jacobi'"),
    Probe("settle/return_steps='yes'", lambda _: settle_tiny(return_steps="yes"), ArgumentTypeError,
          r"return_steps.*'yes'"),
    Probe("settle/x has a NaN", lambda _: settle_tiny(x=nan_x()), ArgumentError, r"x must be finite"),
    Probe("free_phase/t_free=-1", lambda _: free_phase(net(), batch()[0], -1), ArgumentError,
          r"t_free.*-1"),
    Probe("free_phase/x has a NaN", lambda _: free_phase(net(), nan_x(), 2), ArgumentError,
          r"x must be finite"),
    Probe("free_phase/tol=nan", lambda _: free_phase(net(), batch()[0], 2, tol=float("nan")),
          ArgumentError, r"tol.*nan"),
    Probe("forward/steps=-1", lambda _: net()(batch()[0], steps=-1), ArgumentError, r"steps.*-1"),
    Probe("forward/x has a NaN", lambda _: net()(nan_x(), steps=2), ArgumentError, r"x must be finite"),
    # -- bptt_gradients / check_gdu ----------------------------------------------------------------
    Probe("bptt/t_free=-1", lambda _: bptt(t_free=-1), ArgumentError, r"t_free.*-1"),
    Probe("bptt/t_free=0", lambda _: bptt(t_free=0), ArgumentError, r"t_free.*>= 1.*0"),
    Probe("bptt/t_free=2.5", lambda _: bptt(t_free=2.5), ArgumentError, r"t_free.*2\.5"),
    Probe("bptt/truncate=0", lambda _: bptt(truncate=0), ArgumentError, r"truncate.*0"),
    Probe("bptt/truncate > t_free", lambda _: bptt(truncate=5), ArgumentError, r"truncate.*5"),
    Probe("bptt/truncate=np.int64", lambda _: bptt(truncate=np.int64(2)).loss,
          check=lambda loss, _: math.isfinite(loss)),
    Probe("bptt/x has a NaN", lambda _: bptt(x=nan_x()), ArgumentError, r"x must be finite"),
    Probe("bptt/targets float", lambda _: bptt(y=batch()[1].float()), ArgumentError,
          r"targets.*float32"),
    Probe("bptt/schedule unknown", lambda _: bptt(schedule="jacobi"), ArgumentError, r"schedule.*'jacobi'"),
    Probe("gdu/t_nudge > t_free", lambda _: gdu(t_nudge=5), ArgumentError, r"t_nudge.*t_free=4.*got 5"),
    Probe("gdu/t_free=-1", lambda _: gdu(t_free=-1), ArgumentError, r"t_free.*-1"),
    Probe("gdu/beta=0", lambda _: gdu(beta=0.0), ArgumentError, r"needs beta != 0"),
    Probe("gdu/estimator unknown", lambda _: gdu(estimator="two"), ArgumentError, r"estimator.*'two'"),
    # -- CRNN and its layer specs --------------------------------------------------------------------
    Probe("crnn/Conv(0)", crnn([Conv(0)]), ArgumentError, r"layer 0.*Conv.*out_channels.*>= 1.*0"),
    Probe("crnn/Conv(4.5)", crnn([Conv(4.5)]), ArgumentTypeError, r"layer 0.*out_channels.*4\.5"),
    Probe("crnn/Conv('4')", crnn([Conv("4")]), ArgumentTypeError, r"layer 0.*out_channels.*'4'"),
    Probe("crnn/Conv(True)", crnn([Conv(True)]), ArgumentTypeError, r"layer 0.*out_channels.*True"),
    Probe("crnn/Conv(np.int64)", lambda _: CRNN((1, 8, 8), [Conv(np.int64(4))], 10).state_shapes,
          check=lambda shapes, _: shapes == ((4, 4, 4),) and type(shapes[0][0]) is int),
    Probe("crnn/kernel_size=0", crnn([Conv(4, kernel_size=0)]), ArgumentError, r"layer 0.*kernel_size.*0"),
    Probe("crnn/kernel_size=2.5", crnn([Conv(4, kernel_size=2.5)]), ArgumentTypeError,
          r"layer 0.*kernel_size.*2\.5"),
    Probe("crnn/kernel larger than input", crnn([Conv(4), Conv(8, kernel_size=7, padding=0)]),
          ArgumentError, r"layer 1.*Conv.*kernel_size=7.*4×4|layer 1.*Conv.*empty"),
    Probe("crnn/padding=-1", crnn([Conv(4, padding=-1)]), ArgumentError, r"layer 0.*padding.*-1"),
    Probe("crnn/padding=1.5", crnn([Conv(4, padding=1.5)]), ArgumentTypeError, r"layer 0.*padding.*1\.5"),
    Probe("crnn/pool=2", crnn([Conv(4, pool=2)]), ArgumentTypeError, r"layer 0.*pool.*2"),
    Probe("crnn/pool='no'", crnn([Conv(4, pool="no")]), ArgumentTypeError, r"layer 0.*pool.*'no'"),
    Probe("crnn/pools to nothing", crnn([Conv(4), Conv(4), Conv(4), Conv(4)]), ArgumentError,
          r"layer 3.*Conv.*empty"),
    Probe("crnn/Linear(0)", crnn([Linear(0)], shape=(8,)), ArgumentError, r"layer 0.*Linear.*out_features.*0"),
    Probe("crnn/Linear(2.5)", crnn([Linear(2.5)], shape=(8,)), ArgumentTypeError,
          r"layer 0.*out_features.*2\.5"),
    Probe("crnn/Conv after Linear", crnn([Linear(8), Conv(4)]), ArgumentError, r"layer 1.*Conv needs"),
    Probe("crnn/layer not a spec", crnn([Conv(4), 8]), ArgumentTypeError, r"layer 1.*Conv or.*Linear.*8"),
    Probe("crnn/layers a single spec", crnn(Conv(4)), ArgumentTypeError, r"layers must be a list"),
    Probe("crnn/no layers", crnn([]), ArgumentError, r"at least one layer"),
    Probe("crnn/activation None", crnn([Conv(4, activation=None)]), ArgumentError, r"layer 0.*activation.*None"),
    Probe("crnn/alpha nan", crnn([Conv(4, alpha=float("nan"))]), ArgumentError, r"layer 0.*alpha.*nan"),
    Probe("crnn/gamma inf", crnn([Linear(4, gamma=float("inf"))], shape=(8,)), ArgumentError,
          r"layer 0.*gamma.*inf"),
    Probe("crnn/alpha '1'", crnn([Conv(4, alpha="1")]), ArgumentTypeError, r"layer 0.*alpha.*'1'"),
    Probe("crnn/num_classes=0", crnn([Conv(4)], classes=0), ArgumentError, r"num_classes.*>= 1.*0"),
    Probe("crnn/num_classes=2.5", crnn([Conv(4)], classes=2.5), ArgumentTypeError, r"num_classes.*2\.5"),
    Probe("crnn/num_classes=True", crnn([Conv(4)], classes=True), ArgumentTypeError, r"num_classes.*True"),
    Probe("crnn/input_shape zero", crnn([Conv(4)], shape=(0, 8, 8)), ArgumentError,
          r"input_shape\[0\].*>= 1.*0"),
    Probe("crnn/input_shape negative", crnn([Conv(4)], shape=(1, -8, 8)), ArgumentError,
          r"input_shape\[1\].*-8"),
    Probe("crnn/input_shape float", crnn([Linear(4)], shape=(8.5,)), ArgumentTypeError,
          r"input_shape\[0\].*8\.5"),
    Probe("crnn/input_shape an int", crnn([Linear(4)], shape=8), ArgumentTypeError,
          r"input_shape must be a sequence"),
    Probe("crnn/input_shape empty", crnn([Linear(4)], shape=()), ArgumentError, r"input_shape.*\(\)"),
    Probe("crnn/init_scale nan", crnn([Conv(4)], init_scale=float("nan")), ArgumentError,
          r"init_scale.*nan"),
    Probe("crnn/init_scale 'x'", crnn([Conv(4)], init_scale="x"), ArgumentTypeError, r"init_scale.*'x'"),
    Probe("crnn/readout unknown", crnn([Conv(4)], readout="hinge"), ArgumentError, r"readout.*'hinge'"),
    Probe("crnn/state_init unknown", crnn([Conv(4)], state_init="rand"), ArgumentError,
          r"state_init.*'rand'"),
    Probe("crnn/skip (0, 2.5)", crnn([Linear(4)] * 4, shape=(8,), skips=[(0, 2.5)]), ArgumentTypeError,
          r"skips.*2\.5"),
    Probe("crnn/skip not a pair", crnn([Linear(4)] * 4, shape=(8,), skips=[3]), ArgumentTypeError,
          r"skips.*pairs.*3"),
    Probe("crnn/init_state(-1)", lambda _: net().init_state(-1), ArgumentError, r"batch.*-1"),
    Probe("crnn/init_state(2.5)", lambda _: net().init_state(2.5), ArgumentTypeError, r"batch.*2\.5"),
    Probe("skips/random seed=1.5", lambda _: random_skips(5, 0.5, seed=1.5), ArgumentTypeError,
          r"seed.*1\.5"),
    Probe("skips/residual every=np.int64", lambda _: residual_skips(7, every=np.int64(3)),
          check=lambda pairs, _: pairs == ((0, 3), (3, 6))),
    Probe("skips/residual num_layers=-1", lambda _: residual_skips(-1), ArgumentError,
          r"num_layers.*-1"),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
