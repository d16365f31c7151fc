"""Compile the Triton kernels for a GPU target without a GPU, and report registers and spills.

    TRITON_INTERPRET=0 python -m eqkern.kernels.triton.compile_check [--arch 90] [--dtypes fp32,bf16]

The interpreter cannot see errors of the compiled path (scalar argument types, lowering of fp64 or
bf16 dots, register pressure). This compiles every kernel with the launch configuration the
launchers use on a GPU (``NUM_WARPS``, the GPU block sizes) through Triton's own pipeline to
PTX, then runs the ptxas bundled with Triton with ``-v``. Exit status 1 if a kernel fails to
compile or spills. About 5-70 s per kernel on a 2-core machine: a CI / GPU-machine tool, not a
unit test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _configs(dtype: str):
    import triton.language as tl

    from eqkern.kernels.triton._common import NUM_WARPS

    acc = tl.float64 if dtype == "fp64" else tl.float32
    dot = {"fp32": tl.float32, "fp64": tl.float64, "fp16": tl.float16, "bf16": tl.bfloat16}[dtype]
    ptr, gptr = f"*{dtype}", ("*fp64" if dtype == "fp64" else "*fp32")
    common = dict(PAD=1, KS=3, ACC=acc, DOT=dot, IDX=tl.int32, PRECISION="ieee")
    for pool in (True, False):
        bm_pool = (16 if dtype == "fp64" else 32) if pool else 64
        yield ("forward_pool", pool, NUM_WARPS,
               {"Y_ptr": ptr, "IDX_ptr": "*i64", "X_ptr": ptr, "W_ptr": ptr, "B_ptr": ptr},
               dict(common, POOL=pool, BLOCK_M=bm_pool, BLOCK_N=64, BLOCK_K=32))
        yield ("feedback_settle", pool, NUM_WARPS,
               {"S_ptr": ptr, "U_ptr": ptr, "N_ptr": ptr, "SUP_ptr": ptr, "IDX_ptr": "*i64",
                "W_ptr": ptr, "alpha_hi": "fp32", "alpha_lo": "fp32", "gamma_hi": "fp32",
                "gamma_lo": "fp32"},
               dict(common, POOL=pool, HAS_D=True, HAS_N=True, ACT=4, BLOCK_M=64, BLOCK_N=64,
                    BLOCK_K=32))
        yield ("hebbian", pool, NUM_WARPS,
               {"GW_ptr": gptr, "GB_ptr": gptr, "INA_ptr": ptr, "INB_ptr": ptr, "OA_ptr": ptr,
                "OB_ptr": ptr, "IA_ptr": "*i64", "IB_ptr": "*i64", "scale_hi": "fp32",
                "scale_lo": "fp32"},
               dict(common, POOL=pool, SAME_INPUT=not pool, ATOMIC=True, BLOCK_M=32, BLOCK_N=64,
                    BLOCK_K=64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16,fp64")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("set TRITON_INTERPRET=0: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from eqkern.kernels.triton.feedback_settle import _feedback_settle_kernel
    from eqkern.kernels.triton.forward_pool import _forward_pool_kernel
    from eqkern.kernels.triton.hebbian import _hebbian_kernel

    kernels = {"forward_pool": _forward_pool_kernel, "feedback_settle": _feedback_settle_kernel,
               "hebbian": _hebbian_kernel}
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    target = GPUTarget("cuda", args.arch, 32)
    bad = 0
    for dtype in args.dtypes.split(","):
        for name, pool, warps, types, consts in _configs(dtype):
            fn = kernels[name]
            signature = {p: ("constexpr" if p in consts else types.get(p, "i32")) for p in fn.arg_names}
            src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v
                                                       for k, v in consts.items()})
            label = f"{name:<16} {dtype:<5} pool={pool!s:<5} warps={warps}"
            try:
                ptx = triton.compile(src, target=target, options={"num_warps": warps}).asm["ptx"]
            except Exception as exc:  # noqa: BLE001 - report every failure, keep going
                print(f"FAIL {label}: {type(exc).__name__}: {str(exc)[:400]}")
                bad += 1
                continue
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "k.ptx").write_text(ptx)
                res = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{args.arch}a",
                                      str(Path(tmp) / "k.ptx"), "-o", str(Path(tmp) / "k.cubin")],
                                     capture_output=True, text=True)
            regs = re.search(r"Used (\d+) registers", res.stderr)
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
            spills = (int(spill.group(1)), int(spill.group(2))) if spill else None
            ok = res.returncode == 0 and spills == (0, 0)
            bad += not ok
            print(f"{'OK  ' if ok else 'BAD '} {label}: registers {regs.group(1) if regs else '?'}, "
                  f"spill stores/loads {spills}" + ("" if res.returncode == 0 else f" {res.stderr}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
