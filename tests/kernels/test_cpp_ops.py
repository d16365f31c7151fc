"""eqkern::settle and eqkern::hebbian_update (C++/CUDA) at the op level: against ``reference`` and
the ``torch`` backend over whole phases, non-contiguous inputs, both layouts, opcheck, errors.

Every numerical case runs on ``cpu`` and on ``cuda`` (marked ``gpu``: it runs where a GPU is). The
expected values are always computed on CPU, in fp64 where the case is fp32, from the same inputs, so
that a GPU run is never checked against the GPU. fp32 op calls run under the TF32 policy, as the
backends do (torch's default, cuDNN at TF32, would miss these tolerances by ~1e-3)."""

from __future__ import annotations

import copy

import pytest
import torch
from cases import CASES
from conftest import rel_rms, require_backend
from test_ops import DEVICES

from eqkern import CRNN, Conv, Linear
from eqkern.backends import cpp_backend, reference, torch_backend
from eqkern.backends.base import Phase, PhaseInputs, accumulate_grads
from eqkern.kernels import native as _build
from eqkern.kernels import ops
from eqkern.kernels.precision import tf32_policy


@pytest.fixture(autouse=True)
def _needs_cpp(request):
    # fails when CI's build is missing; EQKERN_CPP=0 opts out; a gpu case checks the CUDA kernels
    require_backend("cpp", "cuda" if request.node.get_closest_marker("gpu") else "cpu")


# DEVICES (from test_ops): the one cpu / cuda (gpu-marked) parametrisation of the op tests.
STATE_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
BY_ID = {c.id: c for c in CASES}
# A case of our own: odd 13x13 map, a conv without pool after a pooled one, tie-prone zero input.
CASES_OP = ["conv-pool-odd11", "batch1-rgb9", "conv-nopool-mse", "fc-only", "activations-scales-uniform",
            "kernel5-pad2-tanh"]


def _on(device, model, x, y, dtype=None):
    """Copies of a CPU-built case on ``device`` (and in ``dtype``): the same values everywhere."""
    model = copy.deepcopy(model).to(device, dtype or x.dtype)
    return model, x.to(device, dtype or x.dtype), y.to(device)


def _phase(settle_fn, model, x, y, beta, steps, noncontig=False):
    torch.manual_seed(3)
    state = model.init_state(x.shape[0], like=x.cpu())  # drawn on CPU: the same state on every device
    state = [s.to(x.device) for s in state]
    if noncontig:  # every state a strided view (a transpose of a bigger buffer's slice)
        views = []
        for s in state:
            buf = torch.empty(*s.shape[:-1], s.shape[-1] + 3, dtype=s.dtype, device=s.device)[..., 1:-2]
            buf.copy_(s)
            views.append(buf)
        state = views
        assert not any(s.is_contiguous() for s in state if s.shape[-1] > 1)
    settle_fn(model, x, state, 0.0, 12, None)
    settle_fn(model, x, state, beta, steps, y)
    return state


def _ref(model, x, state, beta, steps, y):
    reference.BACKEND.settle(model, PhaseInputs(x, state, beta, steps, y))
    return state


def _cpp(model, x, state, beta, steps, y):
    with tf32_policy(x.device):
        ops.settle(x, ops.network_args(model), state, beta, steps, y if beta != 0.0 else None)
    return state


def _hebbian_op(model, x, y, a: Phase, b: Phase, grads):
    net = ops.network_args(model)
    with tf32_policy(x.device):
        ops.hebbian_update(x, net, y if net.out_weight is not None else None, a.state, a.beta, b.state, b.beta,
                           grads)


# fp64 has no oneDNN path, so the op keeps it NCHW unless told otherwise: test that layout only.
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "channels_last"), (torch.float32, "nchw"),
                                          (torch.float64, "nchw")], ids=["fp32-cl", "fp32-nchw", "fp64-nchw"])
@pytest.mark.parametrize("case", CASES_OP)
@pytest.mark.parametrize("device", DEVICES)
def test_settle_op_matches_reference(case, dtype, layout, device, monkeypatch):
    monkeypatch.setenv("EQKERN_CPP_CHANNELS_LAST", "1" if layout == "channels_last" else "0")
    model, x, y = BY_ID[case].build(dtype)
    ref = _phase(_ref, *_on("cpu", model, x, y, torch.float64), 0.5, 6)  # fp64 reference of the same values
    out = _phase(_cpp, *_on(device, model, x, y), 0.5, 6, noncontig=(case == "conv-pool-odd11"))
    for i, (r, o) in enumerate(zip(ref, out)):
        assert o.device.type == device and o.dtype == dtype
        err = rel_rms(r, o.cpu().double())
        print(f"{case} {dtype} {layout} {device} state[{i}] rel RMS {err:.2e}")
        assert err <= STATE_TOL[dtype]


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("device", DEVICES)
def test_settle_op_one_step_equals_torch_backend(layout, device, monkeypatch):
    # Zero input and zero state: every interior pool window ties (it sees only the bias), so this
    # checks that the fused pool takes ATen's argmax (first maximum) exactly.
    monkeypatch.setenv("EQKERN_CPP_CHANNELS_LAST", "1" if layout == "channels_last" else "0")
    model = CRNN((2, 13, 13), [Conv(5), Conv(6, padding=1), Conv(4, pool=False), Linear(7)], 3).double()
    x = torch.zeros(2, 2, 13, 13, dtype=torch.float64)
    y = torch.tensor([0, 2])
    for steps in (1, 3):
        a = model.init_state(2, like=x)
        b = model.init_state(2, like=x)
        torch_backend.BACKEND.settle(model, PhaseInputs(x, a, 0.7, steps, y))
        on_model, on_x, on_y = _on(device, model, x, y)
        b = [s.to(device) for s in b]
        _cpp(on_model, on_x, b, 0.7, steps, on_y)
        for i, (r, o) in enumerate(zip(a, b)):
            torch.testing.assert_close(o.cpu(), r, rtol=1e-13, atol=1e-13, msg=f"state[{i}] after {steps} steps")


@pytest.mark.parametrize("device", DEVICES)
def test_settle_op_zero_steps_and_batch1(device):
    model, x, y = _on(device, *BY_ID["batch1-rgb9"].build(torch.float32))
    state = model.init_state(1, like=x)
    before = [s.clone() for s in state]
    _cpp(model, x, state, 0.5, 0, y)
    for s, b in zip(state, before):
        assert torch.equal(s, b)


def _hebbian_phases(model, x, y):
    torch.manual_seed(5)
    free = _phase(_ref, model, x, y, 0.0, 0)
    plus = [s.clone() for s in free]
    minus = [s.clone() for s in free]
    _ref(model, x, plus, 0.5, 4, y)
    _ref(model, x, minus, -0.5, 4, y)
    return free, plus, minus


def _torch_backend_grads(model, x, y, a: Phase, b: Phase) -> list[torch.Tensor]:
    """The expected update: the torch backend on CPU, in fp64, of the same values."""
    model, x, y = _on("cpu", model, x, y, torch.float64)
    a, b = (Phase([s.cpu().double() for s in p.state], p.beta) for p in (a, b))
    accumulate_grads(torch_backend.BACKEND.hebbian_gradients(model, x, y, a, b))
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("case,layout", [(c, "nchw") for c in CASES_OP]
                         + [(c, "channels_last") for c in ("conv-pool-odd11", "batch1-rgb9", "kernel5-pad2-tanh")])
@pytest.mark.parametrize("device", DEVICES)
def test_hebbian_update_op_matches_torch_backend(case, layout, device, monkeypatch):
    monkeypatch.setenv("EQKERN_CPP_CHANNELS_LAST", "1" if layout == "channels_last" else "0")
    model, x, y = BY_ID[case].build(torch.float64)
    free, plus, minus = _hebbian_phases(model, x, y)
    on_model, on_x, on_y = _on(device, model, x, y)
    on = lambda p: Phase([s.to(device) for s in p.state], p.beta)
    for a, b in ((Phase(plus, 0.5), Phase(minus, -0.5)), (Phase(plus, 0.5), Phase(free, 0.0))):
        want = _torch_backend_grads(model, x, y, a, b)
        grads = [torch.full_like(p, 0.25) for p in on_model.parameters()]  # the op adds into them
        _hebbian_op(on_model, on_x, on_y, on(a), on(b), grads)
        for (name, _), g, w in zip(model.named_parameters(), grads, want):
            err = rel_rms(w, g.cpu() - 0.25)
            print(f"{case} {layout} {device} {name}: rel RMS {err:.2e}")
            assert err <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_hebbian_update_op_noncontiguous_fp32(device):
    model, x, y = BY_ID["conv-pool-odd11"].build(torch.float32)
    _, plus, minus = _hebbian_phases(model, x, y)
    want = _torch_backend_grads(model, x, y, Phase(plus, 0.5), Phase(minus, -0.5))
    model, x, y = _on(device, model, x, y)
    def t(s):  # the same values on device in a non-contiguous layout
        s = s.to(device)
        return s.transpose(-1, -2).contiguous().transpose(-1, -2) if s.dim() == 4 else s.t().contiguous().t()

    grads = [torch.zeros_like(p).t() .contiguous().t() if p.dim() == 2 else torch.zeros_like(p)
             for p in model.parameters()]
    _hebbian_op(model, t(x), y, Phase([t(s) for s in plus], 0.5), Phase([t(s) for s in minus], -0.5), grads)
    for (name, _), g, w in zip(model.named_parameters(), grads, want):
        err = rel_rms(w, g.cpu().double())
        print(f"{device} {name}: rel RMS {err:.2e}")
        assert err <= 1e-5  # fp32 against fp64 (layer 0 subtracts first, so no fp32 cancellation there)


# -- opcheck ------------------------------------------------------------------------------------

def _opcheck_settle_samples():
    from eqkern.model.auxiliary import LocalError

    samples = []
    for case, dtype, beta in (("conv-pool-odd11", torch.float32, 0.5), ("fc-only-mse", torch.float64, -0.3),
                              ("batch1-rgb9", torch.float32, 0.0)):
        model, x, y = BY_ID[case].build(dtype)
        state = model.init_state(x.shape[0], like=x)
        samples.append(ops.settle_op_args(x, ops.network_args(model), state, beta, 2, y if beta else None))
    # LE nudges, one beta per sample, alternating schedule
    model = CRNN((2, 9, 9), [Conv(3), Linear(5)], 4, augment=LocalError((0, 1)))
    x, y = torch.rand(4, 2, 9, 9), torch.tensor([0, 1, 2, 3])
    betas = torch.tensor([0.5, 0.5, -0.5, -0.5])
    samples.append(ops.settle_op_args(x, ops.network_args(model), model.init_state(4, like=x), betas, 2, y,
                                      cpp_backend.aux_nudge_args(model, y, x.dtype), "alternating"))
    return samples


def _detached_on(device, args: tuple) -> tuple:
    """An op's arguments with every tensor (alone or in a list) detached and moved to ``device``."""
    one = lambda t: t.detach().to(device) if isinstance(t, torch.Tensor) else t
    return tuple([one(t) for t in a] if isinstance(a, list) else one(a) for a in args)


@pytest.mark.parametrize("i", range(4))
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_settle(i, device):
    torch.library.opcheck(torch.ops.eqkern.settle.default, _detached_on(device, _opcheck_settle_samples()[i]))


@pytest.mark.parametrize("case", ["conv-pool-odd11", "conv-nopool-mse"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_hebbian_update(case, device):
    model, x, y = BY_ID[case].build(torch.float64)
    _, plus, minus = _hebbian_phases(model, x, y)
    net = ops.network_args(model)
    grads = [torch.zeros_like(p) for p in model.parameters()]
    args = _detached_on(device, (x, net.weights, net.biases, net.kinds, net.paddings, net.pools, net.out_weight,
                                 net.out_bias, y if net.out_weight is not None else None, plus, 0.5, minus, -0.5,
                                 grads))
    torch.library.opcheck(torch.ops.eqkern.hebbian_update.default, args)


@pytest.mark.gpu
# Marks apply bottom-up: without any GPU the skip reason is the standard one.
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ops_launch_on_their_inputs_device():
    """A model on cuda:1 runs on cuda:1 while cuda:0 is current (the ops' CUDAGuard): the states
    match the CPU run, and the caller's current device is left as it was."""
    model, x, y = BY_ID["conv-pool-odd11"].build(torch.float64)
    want = _phase(_ref, model, x, y, 0.5, 4)
    _, plus, minus = _hebbian_phases(model, x, y)
    want_grads = _torch_backend_grads(model, x, y, Phase(plus, 0.5), Phase(minus, -0.5))
    with torch.cuda.device(0):
        on_model, on_x, on_y = _on("cuda:1", model, x, y)
        out = _phase(_cpp, on_model, on_x, on_y, 0.5, 4)
        grads = [torch.zeros_like(p) for p in on_model.parameters()]
        on = lambda ss: [s.to("cuda:1") for s in ss]
        _hebbian_op(on_model, on_x, on_y, Phase(on(plus), 0.5), Phase(on(minus), -0.5), grads)
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0
    errs = [rel_rms(w, o.cpu()) for w, o in zip(want + want_grads, out + grads)]
    print("rel RMS of states and gradients on cuda:1:", [f"{e:.1e}" for e in errs])
    assert all(t.device == torch.device("cuda:1") for t in out + grads)
    assert max(errs) <= 1e-12


def test_compile_fullgraph_settle():
    model, x, y = BY_ID["fc-only"].build(torch.float32)
    net = ops.network_args(model)
    net = net._replace(weights=[w.detach() for w in net.weights], biases=[b.detach() for b in net.biases],
                       out_weight=net.out_weight.detach(), out_bias=net.out_bias.detach())

    def run(x, s0, s1):
        ops.settle(x, net, [s0, s1], 0.5, 3, y)
        return s0 + 1, s1 * 2

    s = model.init_state(x.shape[0], like=x)
    out = torch.compile(run, fullgraph=True, backend="aot_eager")(x, *[t.clone() for t in s])
    ref = [t.clone() for t in s]
    _cpp(model, x, ref, 0.5, 3, y)
    torch.testing.assert_close(out[0], ref[0] + 1)
    torch.testing.assert_close(out[1], ref[1] * 2)


# -- registration and errors ----------------------------------------------------------------------

def test_cuda_kernels_registered_iff_compiled():
    info = _build.build_info()
    for op in ("eqkern::settle", "eqkern::hebbian_update"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
        print(op, "CUDA kernel:", has_cuda, "cuda_compiled:", info.get("cuda_compiled"))
        assert has_cuda == bool(info.get("cuda_compiled"))


def _raw_settle_args(case="conv-pool-odd11", dtype=torch.float32):
    model, x, y = BY_ID[case].build(dtype)
    net = ops.network_args(model)
    state = model.init_state(x.shape[0], like=x)
    return model, x, y, net, state


def _raises(match, fn, *args):
    with pytest.raises(RuntimeError, match=match) as info:
        fn(*args)
    print("raised:", info.value)


def test_errors_name_the_tensor():
    with torch.no_grad():
        model, x, y, net, state = _raw_settle_args()
        bad = list(state)
        bad[1] = torch.zeros(3, 6, 4, 4)
        _raises(r"eqkern.settle: state\[1\] has shape \[3, 6, 4, 4\], expected \[3, 6, 1, 1\]",
                ops.settle, x, net, bad, 0.5, 2, y)
        _raises(r"eqkern.settle: weights\[2\] has dtype Double but x has dtype Float", ops.settle, x,
                net._replace(weights=[*net.weights[:2], net.weights[2].double()]), state, 0.5, 2, y)
        _raises("targets are needed", ops.settle, x, net, state, 0.5, 2, None)
        _raises(r"targets must be integer class ids", ops.settle, x, net, state, 0.5, 2, y.float())
        _raises(r"state has 2 tensors but the network has 3 layers", ops.settle, x, net, state[:2], 0.5, 2, y)
        _raises(r"steps must be >= 0", ops.settle, x, net, state, 0.5, -1, y)
        _raises(r"kinds\[1\] must be 0 \(conv\) or 1 \(linear\), got 5", ops.settle, x,
                net._replace(kinds=[0, 5, 1]), state, 0.5, 2, y)
        _raises(r"out_weight has shape \[5, 6\] but the last state layer has 7 features", ops.settle, x,
                net._replace(out_weight=net.out_weight[:, :6]), state, 0.5, 2, y)
        _raises(r"state\[0\] is on meta but x is on cpu", ops.settle, x, net,
                [state[0].to("meta"), *state[1:]], 0.5, 2, y)
        grads = [torch.zeros_like(p) for p in model.parameters()]
        _raises(r"grads has 7 tensors, expected 8", ops.hebbian_update, x, net, y, state, 0.5, state, -0.5,
                grads[:7])
        _raises(r"grads\[2\] has shape \[6\] but its parameter has shape \[6, 4, 3, 3\]", ops.hebbian_update, x,
                net, y, state, 0.5, state, -0.5, [grads[0], grads[1], grads[3], grads[3], *grads[4:]])
        _raises(r"beta_a and beta_b must differ", ops.hebbian_update, x, net, y, state, 0.5, state, 0.5, grads)


def test_nudge_argument_errors():
    from eqkern.model.auxiliary import LocalError

    model = CRNN((2, 9, 9), [Conv(3), Linear(5)], 4, augment=LocalError((0, 1)))
    x, y = torch.rand(4, 2, 9, 9), torch.tensor([0, 1, 2, 3])
    net, state = ops.network_args(model), model.init_state(4, like=x)
    aux = cpp_backend.aux_nudge_args(model, y, x.dtype)
    with torch.no_grad():
        _raises(r"sample_betas has shape \[3\], expected \(4\)", ops.settle, x, net, state,
                torch.ones(3), 2, y, aux)
        _raises(r"aux_layers\[1\] is 7 but the network has 2 layers", ops.settle, x, net, state, 0.5, 2, y,
                aux._replace(layers=[0, 7]))
        _raises(r"aux_targets\[0\] has shape \[4, 3\], expected \(4, 4\)", ops.settle, x, net, state, 0.5, 2,
                y, aux._replace(targets=[aux.targets[0][:, :3], aux.targets[1]]))
        _raises(r"aux_maps\[1\] has shape \[4, 4\] but layer 1 has 5 features", ops.settle, x, net, state, 0.5,
                2, y, aux._replace(maps=[aux.maps[0], aux.maps[1][:, :4]]))
        _raises(r"need one entry per augmented layer \(2\), got 2, 2, 1", ops.settle, x, net, state, 0.5, 2, y,
                aux._replace(scales=[1.0]))
        _raises(r"aux_tau must be > 0", ops.settle, x, net, state, 0.5, 2, y, aux._replace(tau=0.0))
    with pytest.raises(ValueError, match="schedule must be one of"):
        ops.settle(x, net, state, 0.5, 2, y, aux, "backwards")



@pytest.mark.parametrize("case", ["conv-pool-odd11", "fc-only-mse"])
@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_beta_equals_two_runs(case, device):
    """One 2B batch with β = (+β…, −β…) gives the states of the +β and the −β run (the ±β nudged phases of docs/model.md)."""
    model, x, y = _on(device, *BY_ID[case].build(torch.float64))
    free = _phase(_cpp, model, x, y, 0.0, 0)
    plus, minus = [s.clone() for s in free], [s.clone() for s in free]
    _cpp(model, x, plus, 0.4, 6, y)
    _cpp(model, x, minus, -0.4, 6, y)
    both = [torch.cat([s, s]) for s in free]
    betas = torch.tensor([0.4] * len(x) + [-0.4] * len(x), dtype=x.dtype, device=device)
    with torch.no_grad():
        ops.settle(torch.cat([x, x]), ops.network_args(model), both, betas, 6, torch.cat([y, y]))
    for i, (s, p, m) in enumerate(zip(both, plus, minus)):
        err = max(rel_rms(p, s[: len(x)]), rel_rms(m, s[len(x):]))
        print(f"state[{i}] rel RMS {err:.2e}")
        assert err <= 1e-12
    assert rel_rms(plus[-1], minus[-1]) > 1e-3  # the two halves really were nudged apart
