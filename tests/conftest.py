"""Shared test set-up: seeds, the comparison metric, backend availability and the ``backend`` fixture.

``backend`` runs a test once per registered backend (``eqkern.backends.BACKENDS``, ids = names). A
backend that CI builds and that cannot run here fails the test (EQKERN_CPP=0 opts out of cpp).
Two markers narrow the list at collection (a backend left out is not a test, so nothing skips):

* ``vs_reference``: the test compares a backend with ``reference``, so ``reference`` itself is
  left out;
* ``slow_in_interpreter``: full-length phases, which the Triton interpreter would take minutes
  over on CPU; triton is left out when TRITON_INTERPRET=1 (its short-phase versions of the same
  checks are in tests/backends/test_triton_backend.py).

TRITON_INTERPRET defaults to 1 only where no CUDA device is visible (tests/interpret_default.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from interpret_default import apply as _apply_interpret_default

# eqkern only looks for data in root= or $EQKERN_DATA (a user has no folder beside the checkout);
# the developers' real data (mnist.npz, cifar10.npz, ...) is in shared/data beside it, so the
# tests read it from there unless EQKERN_DATA already says otherwise.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("EQKERN_DATA", str(_SHARED_DATA))

# Read at @triton.jit decoration time, so it must be set before anything imports eqkern: the
# interpreter where no CUDA device is visible, compiled kernels where one is, unless the
# environment says otherwise (tests/interpret_default.py, shared with bench/conftest.py).
_apply_interpret_default()

import pytest  # noqa: E402
import torch  # noqa: E402


from eqkern.backends import BACKENDS  # noqa: E402  (after TRITON_INTERPRET is set)


def pytest_configure(config):
    config.addinivalue_line("markers", "vs_reference: compares each backend with reference")
    config.addinivalue_line("markers", "slow_in_interpreter: too slow for the Triton interpreter")


def pytest_generate_tests(metafunc):
    """Parametrise ``backend`` over the registry, less what the markers leave out."""
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):  # a test that names its own
        names = mark.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    marked = metafunc.definition.get_closest_marker
    names = [n for n in BACKENDS
             if not (n == "reference" and marked("vs_reference"))
             and not (n == "triton" and marked("slow_in_interpreter") and _interpreting())]
    metafunc.parametrize("backend", names, ids=str, indirect=True)


def _interpreting() -> bool:
    """Whether this run's Triton kernels are interpreted (set above, before eqkern's import)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def backend(request) -> str:
    """The name of each registered backend in turn (see the module docstring)."""
    name = request.param
    if name == "triton":
        require_triton(request)
    else:
        require_backend(name)
    return name


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Scale-free relative RMS error ``‖out − ref‖ / ‖ref‖`` (fla's metric), in fp64."""
    ref, out = ref.detach().double(), out.detach().double()
    assert not torch.isnan(out).any(), "NaN in output"
    assert not torch.isnan(ref).any(), "NaN in reference"
    den = ref.norm()
    return (out - ref).norm().item() / den.item() if den > 0 else (out - ref).norm().item()


def require_backend(name: str, device: str = "cpu") -> None:
    """Fail (not skip) when a backend that CI builds is missing; EQKERN_CPP=0 opts out of cpp."""
    from eqkern.backends import unavailable_reason

    reason = unavailable_reason(name, torch.device(device))
    if reason is None:
        return
    if name == "cpp" and os.environ.get("EQKERN_CPP") == "0":
        pytest.skip("EQKERN_CPP=0: built without native code")
    pytest.fail(f"backend {name} unavailable: {reason}")


# EQKERN_TEST_DEVICE=cuda (make gpu-check): the backend-agreement tests (marker vs_reference)
# run with CUDA as torch's default device, so the tensors and models they make are on the GPU
# and every backend, triton compiled, is compared with reference there.
TEST_DEVICE = os.environ.get("EQKERN_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _test_device(request):
    if TEST_DEVICE == "cpu" or not request.node.get_closest_marker("vs_reference"):
        yield
        return
    if not torch.cuda.is_available():
        pytest.fail(f"EQKERN_TEST_DEVICE={TEST_DEVICE!r} but no CUDA GPU is visible")
    torch.set_default_device(TEST_DEVICE)
    try:
        yield
    finally:
        torch.set_default_device("cpu")


def require_triton(request) -> None:
    """CPU tests need the interpreter (fail, not skip, when it is broken); ``gpu`` tests need CUDA.
    A GPU machine runs the compiled kernels with TRITON_INTERPRET=0: the CPU tests skip there,
    except the agreement tests under EQKERN_TEST_DEVICE=cuda, which then run on the GPU."""
    on_gpu_device = TEST_DEVICE != "cpu" and request.node.get_closest_marker("vs_reference")
    if request.node.get_closest_marker("gpu") or on_gpu_device:
        if torch.cuda.is_available():
            require_backend("triton", "cuda")
        return
    if not _interpreting() and torch.cuda.is_available():
        # The default on a GPU machine (tests/interpret_default.py): compiled kernels cannot run
        # on CPU tensors, so these run on CPU machines; TRITON_INTERPRET=1 runs them here too.
        pytest.skip(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} on a GPU machine: "
                    "the interpreter tests run on CPU machines (or set TRITON_INTERPRET=1)")
    require_backend("triton")
