"""Compile every launchable Triton kernel variant for a GPU target without a GPU; report resources.

    TRITON_INTERPRET=0 python -m eqkern.kernels.triton.compile_check [--arch 90] [--dtypes fp32,bf16]
        [--ops hebbian] [--subset all|representative|heaviest] [--jobs 2]

The interpreter cannot see errors of the compiled path (scalar argument types, lowering of fp64 or
bf16 dots, register pressure, shared memory). This enumerates every variant the launchers can
launch, from the same tables they use (each op's ``VARIANTS`` flags × the shape constexprs ×
dtype and dot precision, :data:`eqkern.kernels.triton._common.DOT_VARIANTS`) × every autotune
tile of the dtype (:func:`eqkern.kernels.triton._common.gpu_tiles`), compiles each through
Triton's pipeline (``triton.compile`` to a cubin: shared memory from the kernel's metadata) and
runs the ptxas bundled with Triton with ``-v`` on its PTX (registers, spills). A variant over
sm_90's 232448 B of shared memory, spilling, or failing to compile is flagged ``BAD``; exit status
1 if any. ``--subset`` picks a quicker subset (:func:`variants`; the tests compile ``heaviest``).
About 2 s per variant on a 2-core machine: the full set (840) takes about half an hour.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eqkern.errors import ArgumentError
from eqkern.kernels.triton._common import (
    DTYPE_NAMES,
    OPS,
    SM90_SMEM_LIMIT,
    Tile,
    acc_dtype,
    dot_dtype,
    gpu_tiles,
)


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: an op, its constexprs (flags, KS/PAD, PRECISION), dtype and tile."""

    op: str
    dtype: torch.dtype
    flags: tuple[tuple[str, object], ...]
    tile: Tile

    @property
    def label(self) -> str:
        flags = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.flags)
        t = self.tile
        return (f"{self.op:<15} {DTYPE_NAMES[self.dtype]:<4} {flags} | tile {t.block_m}x{t.block_n}"
                f"x{t.block_k} w{t.num_warps} s{t.num_stages}")


@dataclass
class Resources:
    """What one compile reports: shared memory (bytes), registers, spilled bytes, an error."""

    smem: int = 0
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    error: str = ""
    seconds: float = field(default=0.0, compare=False)


def op_variants(op: str):
    """The :class:`OpVariants` table of ``op`` (the one its launcher validates against)."""
    from eqkern.kernels.triton import feedback_settle, forward_pool, hebbian

    return {"forward_pool": forward_pool.VARIANTS, "feedback_settle": feedback_settle.VARIANTS,
            "hebbian": hebbian.VARIANTS}[op].enumerate()


# The flag values with the most loads per step (and the longest epilogue): the "heaviest" subset.
_HEAVIEST = {"POOL": True, "SAME_INPUT": False, "HAS_D": True, "HAS_N": True, "ACT": 4,
             "ATOMIC": True, "KS": 3}
SUBSETS = ("all", "representative", "heaviest")


def variants(ops: Iterable[str] = OPS, dtypes: Iterable[torch.dtype] | None = None,
             subset: str = "all") -> Iterator[Variant]:
    """The variants the launchers can launch on a GPU (see the module docstring): ``all`` of
    them; ``representative``: the first tile, one value of the epilogue-only flags ACT and HAS_N
    (tanh, nudged) except on the top-layer variant; ``heaviest``: per op, dtype and precision the
    3×3 variant with the most loads (pooled, two inputs, nudge, tanh, atomics), every tile."""
    if subset not in SUBSETS:
        raise ArgumentError(f"subset must be one of {SUBSETS}, got {subset!r}")
    wanted = set(dtypes) if dtypes is not None else None
    for op in ops:
        for v in op_variants(op):
            dtype = v.pop("dtype")
            if wanted is not None and dtype not in wanted:
                continue
            if subset == "representative" and not _is_representative(v):
                continue
            if subset == "heaviest" and any(v[k] != x for k, x in _HEAVIEST.items() if k in v):
                continue
            tiles = gpu_tiles(op, dtype, bool(v.get("POOL")))
            for tile in tiles[:1] if subset == "representative" else tiles:
                yield Variant(op, dtype, tuple(v.items()), tile)


def _is_representative(v: dict) -> bool:
    """ACT and HAS_N only change the epilogue: tanh (the longest) with a nudge stands for all,
    except on the top-layer (epilogue-only) variant, where every activation is kept."""
    if "ACT" not in v:
        return True
    return v["HAS_N"] and (v["ACT"] == 4 or not v["HAS_D"])


def check_resources(res: Resources, limit: int = SM90_SMEM_LIMIT) -> list[str]:
    """Why a compiled variant is bad (empty: fine): a compile error, shared memory over ``limit``
    (sm_90: 232448 B per block), register spills."""
    problems = []
    if res.error:
        problems.append(f"compile failed: {res.error}")
    if res.smem > limit:
        problems.append(f"shared memory {res.smem} B > {limit} B")
    if res.spill_stores or res.spill_loads:
        problems.append(f"spills {res.spill_stores} B stored / {res.spill_loads} B loaded")
    return problems


_POINTERS = {  # pointer arguments of each kernel: s = storage dtype, a = accumulator, i = int64
    "forward_pool": {"Y_ptr": "s", "IDX_ptr": "i", "X_ptr": "s", "W_ptr": "s", "B_ptr": "s"},
    "feedback_settle": {"S_ptr": "s", "U_ptr": "s", "N_ptr": "s", "SUP_ptr": "s", "IDX_ptr": "i",
                        "W_ptr": "s"},
    "hebbian": {"GW_ptr": "a", "GB_ptr": "a", "INA_ptr": "s", "INB_ptr": "s", "OA_ptr": "s",
                "OB_ptr": "s", "IA_ptr": "i", "IB_ptr": "i"},
}
_FLOATS = ("alpha_hi", "alpha_lo", "gamma_hi", "gamma_lo", "scale_hi", "scale_lo")


def _kernel(op: str):
    from eqkern.kernels.triton.feedback_settle import _feedback_settle_kernel
    from eqkern.kernels.triton.forward_pool import _forward_pool_kernel
    from eqkern.kernels.triton.hebbian import _hebbian_kernel

    return {"forward_pool": _forward_pool_kernel, "feedback_settle": _feedback_settle_kernel,
            "hebbian": _hebbian_kernel}[op]


def compile_variant(variant: Variant, arch: int) -> Resources:
    """Compile one variant for ``sm_<arch>`` (needs ``TRITON_INTERPRET=0``, no GPU)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    fn = _kernel(variant.op)
    name = DTYPE_NAMES[variant.dtype]
    kinds = {"s": f"*{name}", "a": "*fp64" if name == "fp64" else "*fp32", "i": "*i64"}
    consts = {**dict(variant.flags), "ACC": acc_dtype(variant.dtype),
              "DOT": dot_dtype(variant.dtype, interpret=False), "IDX": tl.int32,
              **variant.tile.constexprs()}
    pointers = _POINTERS[variant.op]
    signature = {p: "constexpr" if p in consts else kinds[pointers[p]] if p in pointers
                 else "fp32" if p in _FLOATS else "i32" for p in fn.arg_names}
    src = ASTSource(fn, signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": variant.tile.num_warps,
                                           "num_stages": variant.tile.num_stages})
    except Exception as exc:  # noqa: BLE001 - report every failure, keep going
        return Resources(error=f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                         seconds=time.perf_counter() - start)
    res = Resources(smem=int(compiled.metadata.shared))
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(compiled.asm["ptx"])
        out = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}a", str(Path(tmp) / "k.ptx"),
                              "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True, check=False)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
    if out.returncode != 0 or not regs or not spill:
        res.error = f"ptxas -v: {out.stderr.strip()[:300]}"
    else:
        res.registers = int(regs.group(1))
        res.spill_stores, res.spill_loads = int(spill.group(1)), int(spill.group(2))
    res.seconds = time.perf_counter() - start
    return res


def _compile_job(job: tuple[Variant, int]) -> Resources:
    return compile_variant(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16,fp64")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--subset", choices=SUBSETS, default="all",
                        help="all variants (default) or a quicker subset (see variants())")
    parser.add_argument("--representative", dest="subset", action="store_const",
                        const="representative", help="the same as --subset representative")
    parser.add_argument("--jobs", type=int, default=1, help="compiles in parallel")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("set TRITON_INTERPRET=0: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    by_name = {v: k for k, v in DTYPE_NAMES.items()}
    unknown = [d for d in args.dtypes.split(",") if d not in by_name]
    bad_ops = [o for o in args.ops.split(",") if o not in OPS]
    if unknown or bad_ops:
        print(f"--dtypes takes {sorted(by_name)} (got {unknown}); "
              f"--ops takes {OPS} (got {bad_ops})", file=sys.stderr)
        return 2
    todo = list(variants(args.ops.split(","), [by_name[d] for d in args.dtypes.split(",")],
                         args.subset))
    print(f"{len(todo)} variants for sm_{args.arch} (shared memory limit {SM90_SMEM_LIMIT} B)",
          flush=True)
    jobs = [(v, args.arch) for v in todo]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = pool.map(_compile_job, jobs)
            bad = _report(todo, results)
    else:
        bad = _report(todo, map(_compile_job, jobs))
    print(f"{len(todo) - bad} OK, {bad} BAD")
    return 1 if bad else 0


def _report(todo: list[Variant], results: Iterable[Resources]) -> int:
    bad, worst = 0, (0, "")
    for variant, res in zip(todo, results):
        problems = check_resources(res)
        bad += bool(problems)
        worst = max(worst, (res.smem, variant.label))
        print(f"{'BAD ' if problems else 'OK  '} {variant.label}: smem {res.smem} B, "
              f"registers {res.registers}, spills {res.spill_stores}/{res.spill_loads} B "
              f"({res.seconds:.1f} s)" + (f" -- {'; '.join(problems)}" if problems else ""),
              flush=True)
    print(f"largest shared memory: {worst[0]} B ({worst[1]})")
    return bad


if __name__ == "__main__":
    sys.exit(main())
