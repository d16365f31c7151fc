"""Bad-input battery of the native ops: the wrappers of ``eqkern.kernels.ops`` and the registered
``torch.ops.eqkern.*`` themselves (a tensor on another device, aliased outputs, bad scalars).

A mix of devices is dispatched by the highest one (``meta`` beats ``cpu``) to that device's kernel
before any C++ check can run, so these probes use ``meta`` as the other device; an op whose every
tensor is on ``meta`` must still run (memory profiles trace the step that way).
"""

from __future__ import annotations

import pytest
import torch

from probes import Probe, assert_probe, ids
from eqkern import CRNN, Conv, Linear
from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.kernels import native

if native.cpp_available():
    from eqkern.kernels import ops

    E = torch.ops.eqkern


def cnn():
    torch.manual_seed(0)
    model = CRNN((1, 8, 8), [Conv(4), Conv(8)], 10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    return model, x, y, ops.network_args(model), model.init_state(4)


def mlp():
    """Two state layers of one shape, so that aliased states fit the op's shape checks."""
    torch.manual_seed(0)
    model = CRNN((8,), [Linear(8), Linear(8)], 10)
    return model, torch.rand(4, 8), torch.randint(0, 10, (4,)), ops.network_args(model)


def meta(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("meta")


def epilogue(state=None, bottom_up=None, top_down=None, nudge=None, alpha=1.0, gamma=1.0,
             activation="hard_sigmoid", raw=False):
    state = torch.zeros(4, 8) if state is None else state
    bottom_up = torch.rand(4, 8) if bottom_up is None else bottom_up
    if raw:
        return E.settle_epilogue_(state, bottom_up, top_down, nudge, alpha, gamma, 0)
    return ops.settle_epilogue_(state, bottom_up, top_down, nudge, alpha, gamma, activation)


def epilogue_partial_overlap(_):
    buf = torch.rand(5, 8)
    return epilogue(state=buf[:4], bottom_up=buf[1:])


def epilogue_in_place(_):
    s = 2 * torch.randn(4, 8)
    ref = ops.settle_epilogue_ref(s, s, None, None, 0.7, 1.0, "clamp01")
    epilogue(state=s, bottom_up=s, alpha=0.7, activation="clamp01")
    return torch.equal(s, ref)


def all_meta_epilogue(_):
    return epilogue(state=torch.zeros(4, 8, device="meta"), bottom_up=torch.rand(4, 8, device="meta"))


def settle_op(*, net_edit=None, state_edit=None, x_edit=None, beta=0.5, steps=2, y_edit=None, raw=False):
    _, x, y, net, state = cnn()
    net = net if net_edit is None else net_edit(net)
    state = state if state_edit is None else state_edit(state)
    x = x if x_edit is None else x_edit(x)
    y = y if y_edit is None else y_edit(y)
    with torch.no_grad():
        if raw:
            return E.settle.default(*ops.settle_op_args(x, net, state, beta, steps, y))
        return ops.settle(x, net, state, beta, steps, y)


def meta_bias(net):
    return net._replace(biases=[meta(net.biases[0]), net.biases[1]])


def all_meta_settle(_):
    model, x, y, _, state = cnn()
    model = model.to("meta")
    with torch.no_grad():
        return ops.settle(meta(x), ops.network_args(model), [meta(s) for s in state], 0.5, 2, meta(y))


def settle_mlp(state_fn):
    _, x, y, net = mlp()
    with torch.no_grad():
        return ops.settle(x, net, state_fn(x), 0.5, 2, y)


def same_state_int16(_):
    _, x, y, net, a = cnn()
    b = [s.clone() for s in a]
    with torch.no_grad():
        ops.settle(x, net, a, 0.5, 3, y)
        ops.settle(x, net, b, 0.5, 3, y.to(torch.int16))
    return all(torch.equal(s, t) for s, t in zip(a, b))


def hebbian(*, grads_edit=None, net_edit=None, beta_a=0.5, beta_b=-0.5, raw=False):
    model, x, y, net, state = cnn()
    net = net if net_edit is None else net_edit(net)
    grads = [torch.zeros_like(p).detach() for p in model.ep_parameters()]
    grads = grads if grads_edit is None else grads_edit(grads)
    sa, sb = [torch.rand_like(s) for s in state], [torch.rand_like(s) for s in state]
    with torch.no_grad():
        if raw:
            return E.hebbian_update.default(x, net.weights, net.biases, net.kinds, net.paddings, net.pools,
                                            net.out_weight, net.out_bias, y, sa, beta_a, sb, beta_b, grads)
        return ops.hebbian_update(x, net, y, sa, beta_a, sb, beta_b, grads)


def hebbian_mlp(grads_fn):
    model, x, y, net = mlp()
    sa, sb = [torch.rand(4, 8), torch.rand(4, 8)], [torch.rand(4, 8), torch.rand(4, 8)]
    grads = grads_fn([torch.zeros_like(p) for p in model.ep_parameters()], sa)
    with torch.no_grad():
        return ops.hebbian_update(x, net, y, sa, 0.5, sb, -0.5, grads)


PROBES: list[Probe] = [] if not native.cpp_available() else [
    # -- settle_epilogue_ ---------------------------------------------------------------------------
    Probe("epilogue/op bottom_up on meta", lambda _: epilogue(bottom_up=torch.rand(4, 8, device="meta"),
                                                             raw=True),
          ArgumentError, r"bottom_up is on meta but state is on cpu"),
    Probe("epilogue/op state on meta", lambda _: epilogue(state=torch.zeros(4, 8, device="meta"), raw=True),
          ArgumentError, r"bottom_up is on cpu but state is on meta"),
    Probe("epilogue/op nudge on meta", lambda _: epilogue(nudge=torch.rand(4, 8, device="meta"), raw=True),
          ArgumentError, r"nudge is on meta"),
    Probe("epilogue/bottom_up on meta", lambda _: epilogue(bottom_up=torch.rand(4, 8, device="meta")),
          ArgumentError, r"bottom_up is on meta but state is on cpu"),
    Probe("epilogue/all on meta", all_meta_epilogue, check=lambda out, _: out is None),
    Probe("epilogue/state partly overlaps bottom_up", epilogue_partial_overlap, ArgumentError,
          r"bottom_up.*state.*overlap|state.*bottom_up.*overlap"),
    Probe("epilogue/state is bottom_up (in place)", epilogue_in_place, check=lambda ok, _: ok),
    Probe("epilogue/shape mismatch", lambda _: epilogue(bottom_up=torch.rand(2, 8)), ArgumentError,
          r"bottom_up has shape \[2, 8\]"),
    Probe("epilogue/dtype mismatch", lambda _: epilogue(top_down=torch.rand(4, 8, dtype=torch.float64)),
          ArgumentError, r"top_down has dtype Double"),
    Probe("epilogue/alpha nan", lambda _: epilogue(alpha=float("nan")), ArgumentError, r"alpha.*nan"),
    Probe("epilogue/gamma 'a'", lambda _: epilogue(gamma="a"), ArgumentTypeError, r"gamma.*'a'"),
    Probe("epilogue/state not a tensor", lambda _: epilogue(state=[0.0] * 8), ArgumentTypeError,
          r"state.*list"),
    # -- settle -------------------------------------------------------------------------------------
    Probe("settle/biases[0] on meta", lambda _: settle_op(net_edit=meta_bias), ArgumentError,
          r"biases\[0\] is on meta"),
    Probe("settle/op biases[0] on meta", lambda _: settle_op(net_edit=meta_bias, raw=True), ArgumentError,
          r"biases\[0\] is on meta"),
    Probe("settle/op x on meta", lambda _: settle_op(x_edit=meta, raw=True), ArgumentError,
          r"is on cpu but x is on meta"),
    Probe("settle/op state[1] on meta", lambda _: settle_op(state_edit=lambda s: [s[0], meta(s[1])],
                                                           raw=True),
          ArgumentError, r"state\[1\] is on meta"),
    Probe("settle/out_bias on meta", lambda _: settle_op(net_edit=lambda n: n._replace(out_bias=meta(n.out_bias))),
          ArgumentError, r"out_bias is on meta"),
    Probe("settle/all on meta", all_meta_settle, check=lambda out, _: out is None),
    Probe("settle/steps=2.5", lambda _: settle_op(steps=2.5), ArgumentError, r"steps.*2\.5"),
    Probe("settle/steps=-1", lambda _: settle_op(steps=-1), ArgumentError, r"steps.*-1"),
    Probe("settle/beta nan", lambda _: settle_op(beta=float("nan")), ArgumentError, r"beta.*nan"),
    Probe("settle/state one short", lambda _: settle_op(state_edit=lambda s: s[:1]), ArgumentError,
          r"state has 1 tensors"),
    Probe("settle/targets float", lambda _: settle_op(y_edit=lambda y: y.float()), ArgumentError,
          r"targets must be integer"),
    Probe("settle/states share memory", lambda _: settle_mlp(lambda x: [z := torch.zeros(4, 8), z]),
          ArgumentError, r"state\[0\] and state\[1\]"),
    Probe("settle/state is x", lambda _: settle_mlp(lambda x: [x, torch.zeros(4, 8)]), ArgumentError,
          r"state\[0\].*x|x.*state\[0\]"),
    Probe("settle/targets int16", same_state_int16, check=lambda ok, _: ok),
    # -- hebbian_update -------------------------------------------------------------------------------
    Probe("hebbian/biases[0] on meta", lambda _: hebbian(net_edit=meta_bias), ArgumentError,
          r"biases\[0\] is on meta"),
    Probe("hebbian/op grads[0] on meta", lambda _: hebbian(grads_edit=lambda g: [meta(g[0]), *g[1:]], raw=True),
          ArgumentError, r"grads\[0\] is on meta"),
    Probe("hebbian/op biases[0] on meta", lambda _: hebbian(net_edit=meta_bias, raw=True), ArgumentError,
          r"biases\[0\] is on meta"),
    Probe("hebbian/grads share memory", lambda _: hebbian_mlp(lambda g, s: [g[0], g[1], g[0], *g[3:]]),
          ArgumentError, r"grads\[0\] and grads\[2\]"),
    Probe("hebbian/grads alias a state", lambda _: hebbian_mlp(lambda g, s: [g[0], s[0][0], *g[2:]]),
          ArgumentError, r"grads\[1\].*state_a\[0\]|state_a\[0\].*grads\[1\]"),
    Probe("hebbian/beta_a nan", lambda _: hebbian(beta_a=float("nan")), ArgumentError, r"beta_a.*nan"),
    Probe("hebbian/beta_a == beta_b", lambda _: hebbian(beta_b=0.5), ArgumentError, r"beta_a and beta_b must differ"),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
