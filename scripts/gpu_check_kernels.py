"""A small CUDA workload for compute-sanitizer (memcheck, racecheck), run by scripts/gpu_check.py.

    TRITON_INTERPRET=0 compute-sanitizer --tool memcheck python scripts/gpu_check_kernels.py

Per backend (``cpp``, ``triton``; ``--backends`` picks others) on a tiny conv + pool + FC model:
one settle of a few nudged steps and one Hebbian update (``eqkern.ep_gradients``), each compared
with the ``reference`` backend on the same inputs so a kernel that reads the wrong memory shows
as a wrong number even where the sanitizer stays quiet. Shapes are tiny on purpose: the
sanitizers slow kernels down by 10-100×. Exit status 0 if every result is finite and agrees, 1 if
not, 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "0")  # compiled kernels: the interpreter runs none

import torch  # noqa: E402

# Agreement of fp32 backends over a few steps (exact fp32 policy): loose enough for summation
# order, tight enough to catch a wrong index.
TOL = 1e-4


def _model():
    from eqkern import CRNN, Conv, Linear

    # A pooled padded conv, an unpooled unpadded one and an FC layer: each kernel variant runs.
    return CRNN((3, 8, 8), [Conv(8), Conv(8, padding=0, pool=False), Linear(16)], 10)


def _rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _run(backend: str, model, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
    """The settled state and the EP gradients of ``model`` on ``backend``."""
    import eqkern

    state = model.init_state(x.shape[0])
    eqkern.settle(model, x, state, 0.5, 4, y, backend=backend)
    model.zero_grad(set_to_none=True)
    eqkern.ep_gradients(model, x, y, beta=0.5, t_free=4, t_nudge=2, backend=backend)
    grads = [p.grad.clone() for p in model.parameters()]
    if x.is_cuda:
        torch.cuda.synchronize()  # a kernel fault surfaces here, inside this backend's run
    return state, grads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="cpp,triton")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check_kernels: no CUDA GPU visible: nothing to check", file=sys.stderr)
        return 2
    from eqkern.kernels import precision

    torch.manual_seed(0)
    model = _model().cuda()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    y = torch.randint(0, 10, (4,), device="cuda")
    bad = 0
    with precision.tf32_policy("cuda"):
        ref_state, ref_grads = _run("reference", model, x, y)
        for backend in args.backends.split(","):
            state, grads = _run(backend, model, x, y)
            errs = [_rel(r, o) for r, o in zip(ref_state + ref_grads, state + grads)]
            finite = all(torch.isfinite(t).all().item() for t in state + grads)
            ok = finite and max(errs) <= TOL
            bad += not ok
            print(f"{'OK ' if ok else 'BAD'} {backend}: settle + ep_gradients on cuda, finite "
                  f"{finite}, max rel. error vs reference {max(errs):.2e} (tolerance {TOL:g})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
