"""The three Triton ops against their ATen references, one launch each, plus ``opcheck``.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` from conftest.py): shapes
are small and odd (one or two programs per launch), with padding 0, 1 and 2, batch 1, pooled and
unpooled maps and the 1×1-on-1×1 form that fully connected layers use. fp32 and fp64 are compared
tightly; fp16 and bf16 storage against an fp64 computation on the same (rounded) inputs with a
tolerance of a few storage ulps (the bf16 ``tl.dot`` itself is exercised on GPU only).
"""

from __future__ import annotations


import pytest
import torch

from conftest import rel_rms, require_triton
from eqkern.model.activations import ACTIVATION_CODES

try:  # without triton every test below fails through require_backend, with the import error
    from eqkern.kernels.triton.feedback_settle import feedback_settle_ref, feedback_settle_triton
    from eqkern.kernels.triton.forward_pool import forward_pool_ref, forward_pool_triton
    from eqkern.kernels.triton.hebbian import hebbian_ref, hebbian_triton
except ImportError:
    pass


@pytest.fixture(autouse=True)
def _triton_available(request):
    require_triton(request)

# rel RMS bound per storage dtype (the result is rounded once to the storage dtype)
TOL = {torch.float32: 1e-6, torch.float64: 1e-14, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DT_IDS = ["fp32", "fp64", "fp16", "bf16"]

# (B, C, H, W, CO, k, padding, pool)
SHAPES = {
    "odd11-pad1-pool": (3, 1, 11, 11, 4, 3, 1, True),
    "batch1-pad0-pool": (1, 3, 9, 9, 5, 3, 0, True),
    "5x6-pad1-nopool": (2, 4, 5, 6, 5, 3, 1, False),
    "fc-as-1x1": (4, 13, 1, 1, 9, 1, 0, False),
    "k5-pad2-pool-odd": (2, 2, 11, 12, 3, 5, 2, True),
}


def _data(shape, dtype):
    b, c, h, w, co, k, p, pool = shape
    x = torch.randn(b, c, h, w, dtype=torch.float64).to(dtype)
    weight = (torch.randn(co, c, k, k, dtype=torch.float64) / k).to(dtype)
    bias = torch.randn(co, dtype=torch.float64).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_pool(name, dtype):
    shape = SHAPES[name]
    pad, pool = shape[6], shape[7]
    x, weight, bias = _data(shape, dtype)
    y, idx = forward_pool_triton(x, weight, bias, pad, pool)
    y_ref, idx_ref = forward_pool_ref(x.double(), weight.double(), bias.double(), pad, pool)
    err = rel_rms(y_ref, y)
    print(f"forward_pool {name} {dtype}: rel RMS {err:.2e}")
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert err <= TOL[dtype]
    if pool:
        assert idx.dtype == torch.int64 and idx.shape == y.shape
        if dtype in (torch.float32, torch.float64):
            assert torch.equal(idx, idx_ref)
        # Always: the index points at the pre-pool value that was kept.
        pre = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=pad)
        kept = pre.flatten(2).gather(2, idx.flatten(2)).view_as(y)
        assert rel_rms(kept, y) <= TOL[dtype]
    else:
        assert idx.numel() == 0


def test_forward_pool_ties_pick_the_first_maximum():
    """Equal window values (zero input: every output is the bias) give torch's index, the first."""
    x = torch.zeros(2, 2, 6, 7)
    weight, bias = torch.randn(3, 2, 3, 3), torch.randn(3)
    y, idx = forward_pool_triton(x, weight, bias, 1, True)
    y_ref, idx_ref = forward_pool_ref(x, weight, bias, 1, True)
    assert torch.equal(idx, idx_ref) and torch.equal(y, y_ref)


def test_forward_pool_strided_input():
    """A non-contiguous input (a slice of a bigger tensor) gives the same result."""
    big = torch.randn(3, 4, 11, 13)
    x = big[:, 1:3, 1:10, 2:11]
    weight, bias = torch.randn(5, 2, 3, 3), torch.randn(5)
    y, idx = forward_pool_triton(x, weight, bias, 1, True)
    y_ref, idx_ref = forward_pool_ref(x, weight, bias, 1, True)
    assert rel_rms(y_ref, y) <= 1e-6 and torch.equal(idx, idx_ref)


def _feedback_inputs(shape, dtype, with_d=True):
    b, c, h, w, co, k, p, pool = shape
    u = torch.randn(b, c, h, w, dtype=torch.float64).to(dtype)
    nudge = (0.3 * torch.randn(b, c, h, w, dtype=torch.float64)).to(dtype)
    if not with_d:
        return u, nudge, None, None, None
    weight = (torch.randn(co, c, k, k, dtype=torch.float64) / k).to(dtype)
    # Real pool indices: those of a forward pass of some state of s's shape.
    pre_in = torch.rand(b, c, h, w, dtype=torch.float64)
    y, idx = forward_pool_ref(pre_in, weight.double(), torch.zeros(co, dtype=torch.float64), p, pool)
    s_up = torch.rand_like(y).to(dtype)
    return u, nudge, s_up, (idx if pool else None), weight


ACT_FOR = {"odd11-pad1-pool": "hard_sigmoid", "batch1-pad0-pool": "relu", "5x6-pad1-nopool": "tanh",
           "fc-as-1x1": "clamp01", "k5-pad2-pool-odd": "hard_sigmoid_courbariaux"}


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_feedback_settle(name, dtype):
    shape = SHAPES[name]
    pad, act = shape[6], ACT_FOR[name]
    u, nudge, s_up, idx, weight = _feedback_inputs(shape, dtype)
    state = torch.full_like(u, float("nan"))  # never read: the kernel only writes it
    alpha, gamma = 0.8, 0.6
    feedback_settle_triton(state, u, nudge, s_up, idx, weight, pad, alpha, gamma,
                           ACTIVATION_CODES[act])
    ref = feedback_settle_ref(state, u.double(), nudge.double(), s_up.double(), idx,
                              weight.double(), pad, alpha, gamma, act)
    err = rel_rms(ref, state)
    print(f"feedback_settle {name} {act} {dtype}: rel RMS {err:.2e}")
    assert err <= TOL[dtype]


@pytest.mark.parametrize("act", list(ACTIVATION_CODES))
def test_feedback_settle_top_layer_epilogue_only(act):
    """No layer above (``s_up=None``): ``ρ(α·u + n)``, every activation, fp64."""
    u, nudge, *_ = _feedback_inputs((2, 3, 5, 7, 0, 1, 0, False), torch.float64, with_d=False)
    u = 3 * u
    state = torch.empty_like(u)
    feedback_settle_triton(state, u, nudge, None, None, None, 0, 0.7, 1.0, ACTIVATION_CODES[act])
    ref = feedback_settle_ref(state, u, nudge, None, None, None, 0, 0.7, 1.0, act)
    assert rel_rms(ref, state) <= 1e-14


# The split (atomic) path accumulates in fp32/fp64 buffers whatever the storage: fp32 and fp64 only.
HEBBIAN_MODES = [pytest.param(dt, None, id=f"{i}-one-pass") for dt, i in zip(DTYPES, DT_IDS)] + [
    pytest.param(dt, 3, id=f"{i}-split-atomic") for dt, i in zip(DTYPES, DT_IDS)
    if dt in (torch.float32, torch.float64)]


@pytest.mark.parametrize("dtype, split", HEBBIAN_MODES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_hebbian(name, dtype, split):
    b, c, h, w, co, k, pad, pool = SHAPES[name]
    same = name in ("odd11-pad1-pool", "fc-as-1x1")  # layer-0 form: both phases share the input
    in_a = torch.rand(b, c, h, w, dtype=torch.float64).to(dtype)
    in_b = in_a if same else torch.rand(b, c, h, w, dtype=torch.float64).to(dtype)
    weight = torch.randn(co, c, k, k, dtype=torch.float64)
    zeros = torch.zeros(co, dtype=torch.float64)
    ya, ia = forward_pool_ref(in_a.double(), weight, zeros, pad, pool)
    yb, ib = forward_pool_ref(in_b.double(), weight, zeros, pad, pool)
    out_a, out_b = torch.rand_like(ya).to(dtype), torch.rand_like(yb).to(dtype)
    ia, ib = (ia, ib) if pool else (None, None)
    gw, gb = hebbian_triton(in_a, in_b, out_a, out_b, ia, ib, k, pad, -0.37, same, split=split)
    gw_ref, gb_ref = hebbian_ref(in_a.double(), in_b.double(), out_a.double(), out_b.double(),
                                 ia, ib, k, pad, -0.37)
    e_w, e_b = rel_rms(gw_ref, gw), rel_rms(gb_ref, gb)
    print(f"hebbian {name} {dtype} split={split}: rel RMS weight {e_w:.2e} bias {e_b:.2e}")
    assert gw.dtype == dtype and gw.shape == (co, c, k, k) and gb.shape == (co,)
    # fp32: a reduction over up to a few hundred terms of either sign.
    tol = 1e-5 if dtype == torch.float32 else TOL[dtype]
    assert e_w <= tol and e_b <= tol


def test_scalars_survive_fp32_kernel_arguments():
    """A compiled kernel gets Python floats as fp32: α, γ and the Hebbian scale travel as two fp32
    halves that the kernel adds in its accumulator dtype (fp64 runs keep ~15 digits)."""
    from eqkern.kernels.triton._common import split_scalar

    for x in (0.3, -1.0 / (1.0 * 3), 0.8, 1.0, -2.5e-4, 1.0 / 3.0e5):
        hi, lo = split_scalar(x)
        for half in (hi, lo):
            assert torch.tensor(half, dtype=torch.float32).item() == half
        assert abs((hi + lo) - x) <= 1e-14 * abs(x)


# -- opcheck: schema, fake tensor, autograd registration and AOT dispatch of each op -------------


def test_opcheck_forward_pool():
    x, weight, bias = _data(SHAPES["batch1-pad0-pool"], torch.float32)
    torch.library.opcheck(forward_pool_triton, (x, weight, bias, 0, True))
    x, weight, bias = _data(SHAPES["fc-as-1x1"], torch.float32)
    torch.library.opcheck(forward_pool_triton, (x, weight, bias, 0, False))


def test_opcheck_feedback_settle():
    shape = SHAPES["batch1-pad0-pool"]
    u, nudge, s_up, idx, weight = _feedback_inputs(shape, torch.float32)
    state = torch.empty_like(u)
    torch.library.opcheck(feedback_settle_triton,
                          (state, u, None, s_up, idx, weight, 0, 1.0, 0.5, 0))
    torch.library.opcheck(feedback_settle_triton,
                          (state, u, nudge, None, None, None, 0, 1.0, 1.0, 3))


def test_opcheck_hebbian():
    b, c, h, w, co, k, pad, pool = SHAPES["batch1-pad0-pool"]
    in_a, in_b = torch.rand(b, c, h, w), torch.rand(b, c, h, w)
    weight = torch.randn(co, c, k, k)
    ya, ia = forward_pool_ref(in_a, weight, torch.zeros(co), pad, pool)
    yb, ib = forward_pool_ref(in_b, weight, torch.zeros(co), pad, pool)
    torch.library.opcheck(hebbian_triton, (in_a, in_b, ya, yb, ia, ib, k, pad, -0.5, False))


def test_ops_compile_fullgraph():
    """The custom ops are opaque to Dynamo (register_fake gives the shapes): no graph break."""
    x, weight, bias = _data(SHAPES["batch1-pad0-pool"], torch.float32)
    s_in = torch.rand_like(x)

    def fn(x, s_in, weight, bias):
        u, idx = forward_pool_triton(x, weight, bias, 0, True)
        state = torch.empty_like(s_in)
        feedback_settle_triton(state, s_in, None, u, idx, weight, 0, 1.0, 0.5, 0)
        return state

    expected = fn(x, s_in, weight, bias)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, s_in, weight, bias), expected)


# -- GPU only: large shapes and the bf16 tensor-core dot ------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
def test_large_shapes_on_gpu(pool, dtype):
    """bf16 and fp16 here go through the tensor-core ``tl.dot`` (fp32 accumulation)."""
    # VGG-5's second layer at batch 32: 128 → 256 channels on 16×16.
    dev = "cuda"
    x = torch.rand(32, 128, 16, 16, device=dev).to(dtype)
    weight = (torch.randn(256, 128, 3, 3, device=dev) / 34).to(dtype)
    bias = torch.randn(256, device=dev).to(dtype)
    y, idx = forward_pool_triton(x, weight, bias, 1, pool)
    y_ref, _ = forward_pool_ref(x.double(), weight.double(), bias.double(), 1, pool)
    tol = TOL
    assert rel_rms(y_ref, y) <= tol[dtype]
    u, s_up = torch.randn_like(x), torch.rand_like(y)
    state = torch.empty_like(x)
    feedback_settle_triton(state, u, None, s_up, idx if pool else None, weight, 1, 1.0, 0.5, 0)
    ref = feedback_settle_ref(state, u.double(), None, s_up.double(), idx if pool else None,
                              weight.double(), 1, 1.0, 0.5, "hard_sigmoid")
    assert rel_rms(ref, state) <= tol[dtype]
    gw, gb = hebbian_triton(x, x, y, s_up, idx if pool else None, idx if pool else None,
                            3, 1, -0.1, True)
    gw_ref, gb_ref = hebbian_ref(x.double(), x.double(), y.double(), s_up.double(),
                                 idx if pool else None, idx if pool else None, 3, 1, -0.1)
    hb_tol = max(tol[dtype], 1e-5)
    assert rel_rms(gw_ref, gw) <= hb_tol and rel_rms(gb_ref, gb) <= hb_tol
