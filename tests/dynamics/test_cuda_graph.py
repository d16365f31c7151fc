"""``cuda_graph=True``: a settle phase captured as a CUDA graph and replayed (eqkern/dynamics/cuda_graph.py).

* CPU (every backend): the option is a no-op, bit for bit, with one warning per process;
  ``ep_gradients`` gives the eager gradients; a bad value is an error naming ``cuda_graph``;
* the cache key and the cache itself, on plain tensors and objects (no CUDA needed);
* the capture / replay bookkeeping on CPU with a stand-in for ``torch.cuda.graph`` (it reruns the
  chunk on the static buffers): copies in and out, one capture per key, recapture when a
  parameter is replaced, the ``tol`` chunks, a failing capture running eagerly;
* ``gpu``: on CUDA, the captured phase equals the eager one for cpp and triton (fp32, fp64), a
  second call replays, an in-place weight update is seen, a failing capture falls back.
"""

from __future__ import annotations

import gc
import os
import warnings
from types import SimpleNamespace

import pytest
import torch

from conftest import require_backend
from eqkern import CRNN, Conv, Linear, ep_gradients, free_phase, settle
from eqkern.backends.base import PhaseInputs
from eqkern.backends.cpp_backend import CppBackend
from eqkern.dynamics import cuda_graph
from eqkern.errors import ArgumentTypeError

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
STEPS = 3  # the Triton interpreter costs ~30 ms per launch


def tiny(dtype=torch.float32, device="cpu", batch=2):
    """A conv-pool + FC model with its input and labels."""
    model = CRNN((1, 6, 6), [Conv(3), Linear(4)], 3).to(dtype=dtype, device=device)
    x = torch.rand(batch, 1, 6, 6, dtype=dtype, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    return model, x, y


def run_settle(model, x, y, backend, beta=0.5, **options):
    """A free phase then a nudged one from the same seeded state; returns both end states."""
    torch.manual_seed(7)
    state = model.init_state(x.shape[0], like=x)
    settle(model, x, state, 0.0, STEPS, backend=backend, **options)
    free = [s.clone() for s in state]
    settle(model, x, state, beta, STEPS, y, backend=backend, **options)
    return free + state


def ep_grads(model, x, y, backend, **options):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, beta=0.5, t_free=STEPS, t_nudge=2, backend=backend, **options)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_identical(label, ref, out):
    """Bit-for-bit equality, with the largest difference printed first."""
    pairs = ref.items() if isinstance(ref, dict) else enumerate(ref)
    out = out if isinstance(out, dict) else dict(enumerate(out))
    for k, r in pairs:
        err = (r.double() - out[k].double()).abs().max().item()
        print(f"{label} [{k}] max |eager - graph| = {err:.3g}")
        assert torch.equal(r, out[k])


def fallback_warnings(caught):
    return [w for w in caught if "cuda_graph=True falls back" in str(w.message)]


@pytest.fixture
def fresh(monkeypatch):
    """Forget the warnings already given and the graphs already captured."""
    monkeypatch.setattr(cuda_graph, "_WARNED", set())
    monkeypatch.setattr(cuda_graph, "GRAPHS", cuda_graph.PhaseGraphs())


def graphs() -> cuda_graph.PhaseGraphs:
    return cuda_graph.GRAPHS


# -- CPU: the option is a no-op ------------------------------------------------------------------


def test_cpu_settle_is_identical_and_warns_once(backend, fresh):
    model, x, y = tiny()
    ref = run_settle(model, x, y, backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_settle(model, x, y, backend, cuda_graph=True)
        out_tol = run_settle(model, x, y, backend, cuda_graph=True, tol=1e-12, check_every=2)
    assert_identical(f"{backend} cpu", ref, out)
    assert_identical(f"{backend} cpu tol", ref, out_tol)  # 1e-12 never stops 3 steps early
    got = fallback_warnings(caught)
    print([str(w.message) for w in got])
    assert len(got) == 1 and "cpu" in str(got[0].message)
    assert graphs().captures == 0


def test_cpu_free_phase_and_ep_gradients_are_identical(backend, fresh):
    model, x, y = tiny()
    torch.manual_seed(3)
    ref_free = free_phase(model, x, STEPS, backend=backend)
    ref = ep_grads(model, x, y, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counted in the test above
        torch.manual_seed(3)
        out_free = free_phase(model, x, STEPS, backend=backend, cuda_graph=True)
        out = ep_grads(model, x, y, backend, cuda_graph=True)
    assert_identical(f"{backend} free_phase", ref_free, out_free)
    assert_identical(f"{backend} ep_gradients", ref, out)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_cuda_graph_values_are_errors(bad):
    model, x, y = tiny()
    calls = [
        lambda: settle(model, x, model.init_state(2, like=x), 0.0, 1, cuda_graph=bad),
        lambda: free_phase(model, x, 1, cuda_graph=bad),
        lambda: ep_gradients(model, x, y, beta=0.5, t_free=1, t_nudge=1, cuda_graph=bad),
    ]
    for call in calls:
        with pytest.raises(ArgumentTypeError) as err:
            call()
        print(err.value)
        assert "cuda_graph must be True or False" in str(err.value) and repr(bad) in str(err.value)


# -- the key and the cache, without CUDA ----------------------------------------------------------


def key_of(model, x, state, beta=0.0, targets=None, steps=4, track=False, backend="cpp"):
    phase = PhaseInputs(x, state, beta, steps, targets)
    return cuda_graph.phase_key(backend, phase, track, cuda_graph.model_signature(model))


def test_key_follows_what_the_graph_bakes_in():
    model, x, y = tiny()
    state = model.init_state(2, like=x)
    base = key_of(model, x, state)
    assert key_of(model, x.clone(), [s.clone() for s in state]) == base  # values are copied in
    with torch.no_grad():
        model.connections[0].weight.add_(1.0)  # an optimizer step: read by address, same key
    assert key_of(model, x, state) == base
    differing = {
        "steps": key_of(model, x, state, steps=5),
        "track": key_of(model, x, state, track=True),
        "backend": key_of(model, x, state, backend="triton"),
        "float beta": key_of(model, x, state, beta=0.5, targets=y),
        "batch": key_of(model, x[:1], [s[:1] for s in state]),
        "dtype": key_of(model, x.double(), [s.double() for s in state]),
        "strides": key_of(model, x, [state[0].transpose(2, 3), state[1]]),
    }
    beta_t = torch.full((2,), 0.5)
    assert key_of(model, x, state, beta=beta_t, targets=y) == \
        key_of(model, x, state, beta=-beta_t, targets=y)  # a β tensor is copied in
    model.kappa = 0.5  # the κ schedule: a kernel argument
    differing["kappa"] = key_of(model, x, state)
    model.kappa = 1.0
    assert key_of(model, x, state) == base
    model.connections[0].weight = torch.nn.Parameter(model.connections[0].weight.detach().clone())
    differing["replaced parameter"] = key_of(model, x, state)
    for what, key in differing.items():
        print(what, key == base)
        assert key != base, what


def test_key_of_a_model_with_skips_and_separate_feedback_is_hashable():
    model = CRNN((1, 6, 6), [Conv(3, pool=False), Conv(3, pool=False), Conv(3, pool=False)], 3,
                 skips=[(0, 2)], feedback="separate")
    x = torch.rand(2, 1, 6, 6)
    key = key_of(model, x, model.init_state(2, like=x))
    print(hash(key))
    assert key == key_of(model, x, model.init_state(2, like=x))
    with torch.no_grad():
        model.feedback_weights["1"] = torch.nn.Parameter(model.feedback_weights["1"].clone())
    assert key != key_of(model, x, model.init_state(2, like=x))  # B_1 replaced


def test_fallback_reasons():
    model, x, y = tiny()
    state = model.init_state(2, like=x)
    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # only its device is read
    reasons = {
        "cpu": cuda_graph.fallback_reason("cpp", PhaseInputs(x, state, 0.5, 2, y)),
        "torch": cuda_graph.fallback_reason("torch", PhaseInputs(on_cuda, state, 0.0, 2)),
        "list targets": cuda_graph.fallback_reason("cpp", PhaseInputs(on_cuda, state, 0.5, 2, [0, 1])),
        "capturable": cuda_graph.fallback_reason("triton", PhaseInputs(on_cuda, state, 0.5, 2, y)),
    }
    print(reasons)
    assert reasons["cpu"][0] == "device" and "cpu" in reasons["cpu"][1]
    assert reasons["torch"][0] == "backend:torch" and "'torch'" in reasons["torch"][1]
    assert reasons["list targets"][0] == "targets" and "list" in reasons["list targets"][1]
    assert reasons["capturable"] is None


class Owner:
    """A weakly referenceable stand-in for a model."""


def test_cache_is_lru_bounded_and_weak():
    cache = cuda_graph.GraphCache(max_entries=2)
    a, b = Owner(), Owner()
    cache.put(a, "k1", 1)
    cache.put(a, "k2", 2)
    assert cache.get(a, "k1") == 1  # now the most recent: k2 goes first
    cache.put(b, "k1", 3)
    print(len(cache), cache.get(a, "k1"), cache.get(a, "k2"), cache.get(b, "k1"))
    assert (len(cache), cache.get(a, "k2"), cache.get(a, "k1"), cache.get(b, "k1")) == (2, None, 1, 3)
    del b
    gc.collect()
    assert len(cache) == 1 and cache.get(a, "k1") == 1
    assert cache.get(Owner(), "k1") is None


# -- capture and replay on CPU, with a stand-in graph ---------------------------------------------


class RerunGraph:
    """Stands in for a captured graph: ``replay`` reruns the chunk on the static buffers and
    writes its change into the tensor the capture returned, as a graph would."""

    def __init__(self, chunk, static, last):
        self._run = lambda: chunk(static, last)
        self.change = self._run()

    def replay(self):
        change = self._run()
        if change is not None:
            self.change.copy_(change)


@pytest.fixture
def rerun_graphs(monkeypatch, fresh):
    """Capture on CPU: ``fallback_reason`` without the device check, ``record`` = RerunGraph."""
    real = cuda_graph.fallback_reason
    monkeypatch.setattr(cuda_graph, "fallback_reason",
                        lambda be, phase: None if be in cuda_graph.CAPTURE_BACKENDS else real(be, phase))

    def record(chunk, static, last):
        graph = RerunGraph(chunk, static, last)
        return graph, graph.change

    monkeypatch.setattr(cuda_graph, "record", record)
    return cuda_graph.GRAPHS


def test_replays_are_the_eager_phases(rerun_graphs):
    model, x, y = tiny()
    ref = ep_grads(model, x, y, "cpp")
    out = ep_grads(model, x, y, "cpp", cuda_graph=True)
    assert_identical("cpp ep (stand-in graphs)", ref, out)
    print("captures", rerun_graphs.captures, "replays", rerun_graphs.replays)
    assert (rerun_graphs.captures, rerun_graphs.replays) == (3, 3)  # free, +β, −β
    assert_identical("cpp ep again", ref, ep_grads(model, x, y, "cpp", cuda_graph=True))
    assert (rerun_graphs.captures, rerun_graphs.replays) == (3, 6)
    x2, y2 = torch.rand_like(x), (y + 1) % 3  # new values, same keys: copied into the buffers
    assert_identical("cpp ep new batch", ep_grads(model, x2, y2, "cpp"),
                     ep_grads(model, x2, y2, "cpp", cuda_graph=True))
    assert rerun_graphs.captures == 3
    with torch.no_grad():  # an optimizer step: the same graphs
        for p in model.parameters():
            p.mul_(0.9)
    ref = ep_grads(model, x, y, "cpp")
    assert_identical("cpp ep after an update", ref, ep_grads(model, x, y, "cpp", cuda_graph=True))
    assert rerun_graphs.captures == 3
    model.double()  # replaced parameters: captured again
    x = x.double()
    ref = ep_grads(model, x, y, "cpp")
    assert_identical("cpp ep fp64", ref, ep_grads(model, x, y, "cpp", cuda_graph=True))
    assert rerun_graphs.captures == 6


def test_replays_with_tol_and_batched_nudge(rerun_graphs):
    model, x, y = tiny()
    opts = {"tol": 1e-3, "check_every": 2, "batched_nudge": True}
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ref_res = ep_gradients(model, x, y, beta=0.5, t_free=7, t_nudge=5, backend="cpp", **opts)
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    out_res = ep_gradients(model, x, y, beta=0.5, t_free=7, t_nudge=5, backend="cpp",
                           cuda_graph=True, **opts)
    print("steps eager", ref_res.settle_steps, "graph", out_res.settle_steps,
          "captures", rerun_graphs.captures)
    assert out_res.settle_steps == ref_res.settle_steps
    assert_identical("cpp ep tol batched", ref, {n: p.grad for n, p in model.named_parameters()})
    assert rerun_graphs.captures >= 2  # a check_every chunk per phase, and a tail chunk of 1


def test_failing_capture_runs_eagerly_and_warns_once(rerun_graphs, monkeypatch):
    def record(chunk, static, last):
        raise RuntimeError("operation not permitted when stream is capturing\nmore text")

    monkeypatch.setattr(cuda_graph, "record", record)
    model, x, y = tiny()
    ref = run_settle(model, x, y, "cpp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_settle(model, x, y, "cpp", cuda_graph=True)
        out2 = run_settle(model, x, y, "cpp", cuda_graph=True)
    assert_identical("cpp failed capture", ref, out)
    assert_identical("cpp failed capture again", ref, out2)
    got = [str(w.message) for w in fallback_warnings(caught)]
    print(got, rerun_graphs.failures)
    assert len(got) == 1 and "RuntimeError: operation not permitted" in got[0]
    assert rerun_graphs.failures == 2 and rerun_graphs.captures == 0  # one per key, not per call


def test_a_thrashing_cache_warns_once(rerun_graphs, monkeypatch):
    monkeypatch.setattr(cuda_graph, "GRAPHS", cuda_graph.PhaseGraphs(max_entries=1))
    model, x, _ = tiny()
    state = model.init_state(2, like=x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for steps in range(1, 9):  # a new key each time: the one slot is evicted every time
            settle(model, x, state, 0.0, steps, backend="cpp", cuda_graph=True)
    got = [str(w.message) for w in caught if "cuda_graph=True is slower" in str(w.message)]
    print(got, cuda_graph.GRAPHS.cache.evictions)
    # captures 2..6 each evict one: after the 6th, 5 > 4 × 1 evictions
    assert len(got) == 1 and "6 captures" in got[0]


# -- on a GPU -------------------------------------------------------------------------------------


def gpu_backend(name: str) -> None:
    require_backend(name, "cuda")
    if name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the interpreter runs the kernels through the host")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", ["cpp", "triton"])
@pytest.mark.gpu
@needs_gpu
def test_gpu_captured_phase_equals_eager(name, dtype, fresh):
    gpu_backend(name)
    model, x, y = tiny(dtype, "cuda", batch=4)
    ref = run_settle(model, x, y, name)
    out = run_settle(model, x, y, name, cuda_graph=True)
    assert_identical(f"{name} {dtype} cuda", ref, out)
    assert graphs().captures == 2  # free and nudged
    again = run_settle(model, x, y, name, cuda_graph=True)
    assert_identical(f"{name} {dtype} cuda replay", ref, again)
    assert graphs().captures == 2 and graphs().replays == 4
    with torch.no_grad():  # in place, as an optimizer: the replay must read the new weights
        model.connections[0].weight.mul_(-1.5)
    ref2 = run_settle(model, x, y, name)
    assert not torch.equal(ref2[0], ref[0])
    assert_identical(f"{name} {dtype} cuda after update", ref2,
                     run_settle(model, x, y, name, cuda_graph=True))
    assert graphs().captures == 2
    ref_tol = run_settle(model, x, y, name, tol=1e-12, check_every=2)
    assert_identical(f"{name} {dtype} cuda tol", ref_tol,
                     run_settle(model, x, y, name, cuda_graph=True, tol=1e-12, check_every=2))
    ref_ep = ep_grads(model, x, y, name, batched_nudge=True)
    assert_identical(f"{name} {dtype} cuda ep", ref_ep,
                     ep_grads(model, x, y, name, batched_nudge=True, cuda_graph=True))


@pytest.mark.gpu
@needs_gpu
def test_gpu_failing_capture_falls_back(fresh, monkeypatch):
    gpu_backend("cpp")
    real = CppBackend.settle

    def syncing_settle(self, model, phase):  # a host sync: not allowed while capturing
        phase.state[0].sum().item()
        real(self, model, phase)

    monkeypatch.setattr(CppBackend, "settle", syncing_settle)
    model, x, y = tiny(torch.float32, "cuda")
    ref = run_settle(model, x, y, "cpp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_settle(model, x, y, "cpp", cuda_graph=True)
    assert_identical("cpp cuda failed capture", ref, out)
    got = [str(w.message) for w in fallback_warnings(caught)]
    print(got)
    assert len(got) == 1 and "capturing the cpp phase raised" in got[0]
    assert graphs().failures == 2 and graphs().captures == 0
    # the device is usable after the failed captures
    assert_identical("cpp cuda after failure", ref, run_settle(model, x, y, "cpp"))
