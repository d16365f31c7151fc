"""compile_check's variant enumeration and resource check on CPU, plus a real sm_90 compile.

The enumeration must cover every constexpr combination a launcher can launch (it reads the same
``VARIANTS`` tables the launchers validate their flags against), and every GPU tile must fit
sm_90's shared memory. The compile test runs ``compile_check --subset heaviest`` (per op, dtype
and precision the variant with the most loads, every tile: 36 kernels, about 75 s cold on an
idle 2-core machine, seconds with Triton's cache warm) in a subprocess with ``TRITON_INTERPRET=0``: no GPU is needed to compile for one.
The full set (840 kernels, about half an hour here) is ``python -m
eqkern.kernels.triton.compile_check``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqkern.errors import ArgumentError
from eqkern.kernels.triton import _common
from eqkern.kernels.triton._common import (
    DOT_VARIANTS,
    OPS,
    SM90_SMEM_LIMIT,
    SUPPORTED_DTYPES,
    Tile,
    gpu_tiles,
    smem_estimate,
)
from eqkern.kernels.triton.compile_check import Resources, check_resources, variants
from eqkern.kernels.triton.feedback_settle import VARIANTS as FEEDBACK
from eqkern.kernels.triton.feedback_settle import feedback_settle_triton
from eqkern.model.activations import ACTIVATION_CODES

ROOT = Path(__file__).resolve().parents[2]


def _flags(v) -> dict:
    return dict(v.flags)


def test_enumeration_covers_every_launchable_variant():
    every = list(variants())
    print(f"{len(every)} variants")
    for op in OPS:
        mine = [v for v in every if v.op == op]
        # every dtype and, for fp32, every dot precision (tf32 included)
        assert {(v.dtype, _flags(v)["PRECISION"]) for v in mine} == set(DOT_VARIANTS)
        assert ("fp32", "tf32") in {(_common.DTYPE_NAMES[v.dtype], _flags(v)["PRECISION"])
                                    for v in mine}
        # the FC 1×1 form and the 3×3 conv
        assert {_flags(v)["KS"] for v in mine} == {1, 3}
        # every tile of every dtype, pooled and not
        for dtype in SUPPORTED_DTYPES:
            for pool in (True, False):
                got = {v.tile for v in mine if v.dtype == dtype and _flags(v)["POOL"] == pool}
                assert got == set(gpu_tiles(op, dtype, pool)), (op, dtype, pool)
    fb = [_flags(v) for v in every if v.op == "feedback_settle"]
    top = [f for f in fb if not f["HAS_D"]]
    # the top-layer epilogue: every activation, with and without nudge, never pooled, KS=1
    assert {(f["ACT"], f["HAS_N"]) for f in top} == {(a, n) for a in ACTIVATION_CODES.values()
                                                     for n in (True, False)}
    assert all(not f["POOL"] and f["KS"] == 1 for f in top)
    heb = {(_flags(v)["SAME_INPUT"], _flags(v)["ATOMIC"]) for v in every if v.op == "hebbian"}
    assert heb == {(s, a) for s in (True, False) for a in (True, False)}
    assert len({(v.op, v.dtype, v.flags, v.tile) for v in every}) == len(every)  # no duplicates


def test_subsets_are_parts_of_the_full_set():
    every = set(variants())
    for subset in ("representative", "heaviest"):
        part = set(variants(subset=subset))
        assert part and part < every, subset
    with pytest.raises(ArgumentError, match="subset"):
        list(variants(subset="most"))


def test_launchers_validate_against_the_same_table():
    """A flag value outside the table (here an unknown activation code) is refused by the
    launcher, with the flag and value named: the launcher cannot launch what is not enumerated."""
    with pytest.raises(ArgumentError, match="ACT=9"):
        FEEDBACK.flags(POOL=False, HAS_D=False, HAS_N=False, ACT=9)
    with pytest.raises(ArgumentError, match="differ from the variant table"):
        FEEDBACK.flags(POOL=False, HAS_D=False, HAS_N=False, ACT=0, EXTRA=1)
    u = torch.rand(1, 2, 3, 3)
    with pytest.raises(ArgumentError, match="ACT=9"):
        feedback_settle_triton(torch.empty_like(u), u, None, None, None, None, 0, 1.0, 1.0, 9)


def test_resource_check_flags_oversize_spills_and_errors():
    assert check_resources(Resources(smem=SM90_SMEM_LIMIT, registers=255)) == []
    over = check_resources(Resources(smem=SM90_SMEM_LIMIT + 1))
    print(over)
    assert len(over) == 1 and "232449 B > 232448 B" in over[0]
    assert "spills" in check_resources(Resources(smem=1024, spill_stores=8))[0]
    assert "compile failed" in check_resources(Resources(error="boom"))[0]


@pytest.mark.parametrize("op", OPS)
def test_every_gpu_tile_fits_shared_memory(op):
    """The table's tiles against the upper-bound estimate, every dtype, pool and input form; a
    fake oversized tile is flagged by the same check."""
    for dtype in SUPPORTED_DTYPES:
        for pool in (True, False):
            for tile in gpu_tiles(op, dtype, pool):
                est = max(smem_estimate(op, tile, dtype, pool, same) for same in (True, False))
                print(f"{op} {dtype} pool={pool} {tile}: estimate {est} B")
                assert est <= SM90_SMEM_LIMIT
                assert tile.num_stages >= 2 and tile.num_warps in (4, 8)
    fake = Tile(256, 256, 128, 8, 4)
    est = smem_estimate(op, fake, torch.float64, True)
    assert check_resources(Resources(smem=est)), est


def _compile_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.run([sys.executable, "-m", "eqkern.kernels.triton.compile_check", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=900)


def test_compile_check_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "eqkern.kernels.triton.compile_check"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 2 and "TRITON_INTERPRET=0" in res.stderr


def test_heaviest_variants_compile_for_sm90_within_limits():
    """A real compile for sm_90 (no GPU needed): no variant over 232448 B, none spilling."""
    res = _compile_check("--arch", "90", "--subset", "heaviest")
    print(res.stdout[-6000:], res.stderr[-3000:])
    assert res.returncode == 0, "compile_check flagged a variant (BAD lines above)"
    assert "36 variants" in res.stdout and "36 OK, 0 BAD" in res.stdout
    # every line reports shared memory, registers and spills, within the estimate of the table
    ok = [line for line in res.stdout.splitlines() if line.startswith("OK")]
    assert len(ok) == 36 and all("smem" in s and "registers" in s and "spills 0/0" in s for s in ok)
