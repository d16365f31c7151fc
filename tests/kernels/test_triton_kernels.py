"""The three Triton ops against their ATen references, one launch each, plus ``opcheck``.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` from conftest.py): shapes
are small and odd (one or two programs per launch), with padding 0, 1 and 2, batch 1, pooled and
unpooled maps and the 1×1-on-1×1 form that fully connected layers use. fp32 and fp64 are compared
tightly; fp16 and bf16 storage against an fp64 computation on the same (rounded) inputs with a
tolerance of a few storage ulps (the bf16 ``tl.dot`` itself is exercised on GPU only). The dot
paths (fp32 ieee/tf32/tf32x3, 16-bit operands) are selected by the ops' ``precision`` argument
and the storage dtype; the launch tiles (one in the interpreter, autotuned on a GPU) are plain
functions tested here too.
"""

from __future__ import annotations

import contextlib

import os

import pytest
import torch
from conftest import rel_rms, require_triton

from eqkern.model.activations import ACTIVATION_CODES

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:  # without triton every test below fails through require_backend, with the import error
    from eqkern.kernels.triton._common import device_guard
    from eqkern.kernels.triton.feedback_settle import (
        feedback_settle_ref,
        feedback_settle_triton,
    )
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


# -- dot paths: the fp32 input precision and the 16-bit operands, chosen by argument ----------

def test_dot_operand_dtype_and_precision():
    """bf16/fp16 storage feed 16-bit tiles to ``tl.dot`` on a GPU; the interpreter upcasts bf16
    (triton#11584). The fp32 precision is the launcher's argument, else the policy."""
    import triton.language as tl

    from eqkern.errors import ArgumentError
    from eqkern.kernels.precision import TRITON_FP32_DOT
    from eqkern.kernels.triton._common import dot_dtype, dot_precision

    assert dot_dtype(torch.bfloat16, interpret=False) == tl.bfloat16
    assert dot_dtype(torch.bfloat16, interpret=True) == tl.float32
    assert dot_dtype(torch.float16, interpret=True) == tl.float16
    assert dot_dtype(torch.float32, interpret=False) == tl.float32
    assert dot_dtype(torch.float64, interpret=False) == tl.float64
    assert dot_precision(torch.float32) == TRITON_FP32_DOT
    assert dot_precision(torch.float32, "tf32") == "tf32"
    assert dot_precision(torch.float64, "tf32") == "ieee"  # fp64 has no tf32 form
    with pytest.raises(ArgumentError, match="'tf16'"):
        dot_precision(torch.float32, "tf32".replace("32", "16"))


# (storage, precision): in the interpreter numpy computes a tf32 dot in fp32, so tf32/tf32x3
# are held to fp32 bounds here; on a GPU tf32 (10-bit mantissa products) is ~1e-3 (gpu test).
DOT_PATHS = [pytest.param(torch.float32, p, id=f"fp32-{p}") for p in ("ieee", "tf32", "tf32x3")] + [
    pytest.param(torch.bfloat16, None, id="bf16"), pytest.param(torch.float16, None, id="fp16")]


def _path_tol(dtype, precision, device) -> float:
    if dtype == torch.float32 and precision != "ieee" and device != "cpu":
        return 3e-3
    return 1e-5 if dtype == torch.float32 else TOL[dtype]


@pytest.mark.parametrize("dtype, precision", DOT_PATHS)
def test_dot_paths_track_fp64(dtype, precision):
    """All three ops with the dot path selected by argument, against fp64 on the same inputs."""
    _check_dot_path(dtype, precision, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, precision", DOT_PATHS)
def test_dot_paths_track_fp64_on_gpu(dtype, precision):
    """The same compiled: tf32 tensor cores (~1e-3), bf16/fp16 tiles with fp32 accumulation."""
    _check_dot_path(dtype, precision, "cuda")


def _check_dot_path(dtype, precision, device):
    b, _, h, w, co, k, pad, pool = SHAPES["odd11-pad1-pool"]
    x, weight, bias = (t.to(device) for t in _data((b, 3, h, w, co, k, pad, pool), dtype))
    y, idx = forward_pool_triton(x, weight, bias, pad, pool, precision=precision)
    y_ref, _ = forward_pool_ref(x.double(), weight.double(), bias.double(), pad, pool)
    u, s_up = torch.randn_like(x), torch.rand_like(y)
    state = torch.empty_like(x)
    feedback_settle_triton(state, u, None, s_up, idx, weight, pad, 0.8, 0.6, 4, precision=precision)
    s_ref = feedback_settle_ref(state, u.double(), None, s_up.double(), idx, weight.double(), pad,
                                0.8, 0.6, "tanh")
    x_b = torch.rand_like(x)
    gw, gb = hebbian_triton(x, x_b, y, s_up, idx, idx, k, pad, -0.37, False, precision=precision)
    gw_ref, gb_ref = hebbian_ref(x.double(), x_b.double(), y.double(), s_up.double(), idx, idx, k,
                                 pad, -0.37)
    tol = _path_tol(dtype, precision, device)
    errs = {"forward": rel_rms(y_ref, y), "feedback": rel_rms(s_ref, state),
            "hebbian gW": rel_rms(gw_ref, gw), "hebbian gb": rel_rms(gb_ref, gb)}
    print(f"{device} {dtype} precision={precision}: "
          + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()) + f" (bound {tol:.0e})")
    assert all(e <= tol for e in errs.values())


def test_precision_argument_is_checked():
    from eqkern.errors import ArgumentError

    x, weight, bias = _data(SHAPES["fc-as-1x1"], torch.float32)
    with pytest.raises(ArgumentError, match="precision .*'fp32'"):
        forward_pool_triton(x, weight, bias, 0, False, precision="fp32")


# -- launch tiles: one in the interpreter, the autotune list on a GPU ---------------------------

def test_one_tile_in_the_interpreter_autotune_list_on_gpu():
    from eqkern.kernels.triton import feedback_settle, forward_pool, hebbian
    from eqkern.kernels.triton._common import (
        OPS,
        Tile,
        autotune_configs,
        gpu_tiles,
        launch_tiles,
        pick_configs,
    )

    for op in OPS:
        for dtype in DTYPES:
            one = launch_tiles(op, dtype, True, 363, 4, 9, interpret=True)
            gpu = launch_tiles(op, dtype, True, 363, 4, 9, interpret=False)
            assert len(one) == 1 and one[0].block_m == 512  # the problem's rows, one program
            assert gpu == gpu_tiles(op, dtype, True) and len(gpu) >= 2
    # What the GPU autotuner is given and keeps per launch: exactly the table's tiles.
    for op in OPS:
        configs = autotune_configs(op)
        for dtype in DTYPES:
            for pool in (True, False):
                kept = {Tile.of(c) for c in pick_configs(op, configs, dtype, pool)}
                assert kept == set(gpu_tiles(op, dtype, pool)), (op, dtype, pool)
    # In the interpreter the ops launch the plain kernel (autotune would run every config).
    assert INTERPRET
    assert forward_pool._forward_pool_tuned is forward_pool._forward_pool_kernel
    assert feedback_settle._feedback_settle_tuned is feedback_settle._feedback_settle_kernel
    assert hebbian._hebbian_tuned is hebbian._hebbian_kernel


def test_hebbian_split_rows():
    """GPU split: rows per program a multiple of every candidate BLOCK_M, about 264 programs;
    interpreted, a forced split cuts the rows into that many parts."""
    from eqkern.kernels.triton._common import gpu_tiles
    from eqkern.kernels.triton.hebbian import split_rows

    m, co, k = 32 * 16 * 16, 256, 128 * 9
    for dtype in DTYPES:
        rows = split_rows(m, co, k, dtype, True, None, interpret=False)
        tiles = gpu_tiles("hebbian", dtype, True)
        assert all(rows % t.block_m == 0 for t in tiles)
        first = tiles[0]
        programs = -(-co // first.block_n) * -(-k // first.block_k) * -(-m // rows)
        print(dtype, rows, programs)
        assert 264 <= programs < 2 * 264
    assert split_rows(363, 4, 9, torch.float32, True, 3, interpret=True) == 121
    assert split_rows(363, 4, 9, torch.float32, True, None, interpret=True) == 363


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


# --- the device guard: Triton launches on the *current* CUDA device, so without a guard a model
# on cuda:1 would run its kernels on cuda:0; each op enters torch.cuda.device(t.device) on CUDA.

def _run_all(device: str, dtype: torch.dtype = torch.float64):
    """Each op once on tiny shapes on ``device``, with its ATen reference: [(name, out, ref)]."""
    x = torch.rand(2, 2, 6, 7, dtype=dtype, device=device)
    weight = torch.randn(3, 2, 3, 3, dtype=dtype, device=device)
    bias = torch.randn(3, dtype=dtype, device=device)
    y, idx = forward_pool_triton(x, weight, bias, 1, True)
    y_ref, idx_ref = forward_pool_ref(x, weight, bias, 1, True)
    u, s_up = torch.randn_like(x), torch.rand_like(y)
    state = torch.empty_like(x)
    feedback_settle_triton(state, u, None, s_up, idx_ref, weight, 1, 0.8, 0.5, 0)
    s_ref = feedback_settle_ref(state, u, None, s_up, idx_ref, weight, 1, 0.8, 0.5, "hard_sigmoid")
    gw, gb = hebbian_triton(x, x, y_ref, s_up, idx_ref, idx_ref, 3, 1, -0.3, True)
    gw_ref, gb_ref = hebbian_ref(x, x, y_ref, s_up, idx_ref, idx_ref, 3, 1, -0.3)
    return [("forward_pool", y, y_ref), ("forward_pool idx", idx.double(), idx_ref.double()),
            ("feedback_settle", state, s_ref), ("hebbian gW", gw, gw_ref),
            ("hebbian gb", gb, gb_ref)]


def test_guard_is_a_no_op_on_cpu(monkeypatch):
    """On CPU tensors the guard never touches torch.cuda (made to raise here) and the results
    are those of the references."""
    assert isinstance(device_guard(torch.zeros(1)), contextlib.nullcontext)

    def no_cuda(*args, **kwargs):
        raise AssertionError("torch.cuda.device entered for a CPU tensor")

    monkeypatch.setattr(torch.cuda, "device", no_cuda)
    for name, out, ref in _run_all("cpu"):
        err = rel_rms(ref, out)
        print(f"{name} on cpu: rel RMS {err:.2e}")
        assert out.device.type == "cpu" and err <= 1e-13


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a CUDA GPU (two of them)")
def test_ops_run_on_the_tensors_device():
    """Tensors on ``cuda:1`` while ``cuda:0`` is current: every op computes on ``cuda:1`` (the
    references agree) and leaves ``cuda:0`` current."""
    torch.cuda.set_device(0)
    for name, out, ref in _run_all("cuda:1"):
        err = rel_rms(ref, out)
        print(f"{name} on cuda:1: rel RMS {err:.2e}")
        assert out.device == torch.device("cuda:1") and err <= 1e-12
    assert torch.cuda.current_device() == 0
