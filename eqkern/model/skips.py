"""Residual / skip links inside the energy (Liu & Chen, FRE-RNN §3.3, Fig. 3, Algorithm S3).

A skip link ``(i, j)`` with ``j > i + 1`` couples state layers ``s_i`` and ``s_j`` (0-based state
indices: ``state[i]``) through a learned linear map ``R_ij``; Φ gains ``⟨s_j, R_ij(s_i)⟩``, so the
dynamics stay a gradient of one function: layer ``j`` receives ``R_ij s_i`` bottom-up and layer
``i`` receives ``R_ijᵀ s_j`` top-down, and EP trains ``R_ij`` with the same contrastive Hebbian
rule as every ``W_l``. With FRE-RNN scales the bottom-up skip term joins the forward drive of
``s_j`` (times ``α_j``) and the top-down one joins the feedback of ``s_i`` (times ``γ_i``), as the
paper's code scales every upper-triangular (forward) block by ``fsc`` and every lower-triangular
(feedback) block by ``bsc``.

``R_ij`` has no bias: ``s_j`` already has the bias of its own connection, a second one would only
re-parametrise it (the paper's residual models have no biases at all). Its form depends on the
two layers' shapes:

* target FC (``(features,)``): ``R = W_ij · flat(s_i)``, a bias-free linear map;
* target conv (``(C, H, W)``), source conv: ``R = conv1x1(avgpool_f(s_i))`` with ``f = H_i // H_j``
  (``f = 1``: same resolution, a plain 1×1 conv; ``f > 1``: an f×f stride-f average pool, which
  drops the last rows/columns as the max-pools of the stack do). Both maps are linear and commute,
  so this is the "1×1 conv then average pool" projection, computed on the smaller map. Its
  transpose spreads each value over its f×f window (divided by f²) after the 1×1 conv's transpose.
  Average (not max) pooling keeps Φ bilinear in ``(s_i, s_j)``, so the energy stays exact.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.validate import as_float, as_int, describe

SkipPairs = tuple[tuple[int, int], ...]


def residual_skips(num_layers: int, every: int = 3, start: int = 0) -> SkipPairs:
    """The paper's residual topology: ``(start, start+every), (start+every, start+2·every), …``.

    Liu & Chen's 10-layer net (Fig. 3a, ``make_W_conn(startres=1, block_size=3)`` of their code)
    links hidden layers 1→4, 4→7, 7→10, i.e. state layers ``(0, 3), (3, 6), (6, 9)``.
    """
    num_layers = as_int("num_layers", num_layers, minimum=0)
    every = as_int("every", every, minimum=2)  # a skip spans at least two layers
    start = as_int("start", start, minimum=0)
    return tuple((i, i + every) for i in range(start, num_layers - every, every))


def random_skips(num_layers: int, p: float, seed: int = 0) -> SkipPairs:
    """Arbitrary graph topology (AGT, Fig. 3c): each pair ``(i, j)``, ``j > i + 1``, is linked with
    probability ``p``, drawn from a ``torch.Generator`` seeded with ``seed`` (reproducible)."""
    num_layers = as_int("num_layers", num_layers, minimum=0)
    p = as_float("p", p)
    if not 0.0 <= p <= 1.0:
        raise ArgumentError(f"p must be a probability in [0, 1], got {p}")
    gen = torch.Generator().manual_seed(as_int("seed", seed))
    pairs = [(i, j) for i in range(num_layers) for j in range(i + 2, num_layers)]
    draws = torch.rand(len(pairs), generator=gen, dtype=torch.float64)
    return tuple(pair for pair, u in zip(pairs, draws.tolist()) if u < p)


def check_skips(skips: Sequence[Sequence[int]], shapes: Sequence[tuple[int, ...]]) -> SkipPairs:
    """Validate ``skips`` against the state shapes; returns them as a sorted tuple of pairs."""
    out = []
    if isinstance(skips, (str, bytes)) or not isinstance(skips, Sequence):
        raise ArgumentTypeError(f"skips must be a list of (source, target) pairs, got {describe(skips)}")
    for pair in skips:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence):
            raise ArgumentTypeError(f"skips must be (source, target) pairs, got {describe(pair)}")
        if len(pair) != 2:
            raise ArgumentError(f"skips must be (source, target) pairs, got {pair!r}")
        i, j = (as_int(f"skips: {tuple(pair)!r}: {end}", v) for end, v in zip(("source", "target"), pair))
        if not (0 <= i < len(shapes) and 0 <= j < len(shapes)):
            raise ArgumentError(f"skips: ({i}, {j}) must name state layers 0..{len(shapes) - 1}")
        if j <= i + 1:
            raise ArgumentError(f"skips: ({i}, {j}) must go from a lower to a higher, non-adjacent "
                             f"layer (target > source + 1)")
        _pool_factor(shapes[i], shapes[j])  # raises for shapes no projection connects
        out.append((i, j))
    if len(set(out)) != len(out):
        raise ArgumentError(f"skips: a pair is given twice in {list(out)}")
    return tuple(sorted(out))


def _pool_factor(src: tuple[int, ...], dst: tuple[int, ...]) -> int:
    """The average-pool factor of a conv→conv link (0 for a link into an FC layer)."""
    if len(dst) == 1:
        return 0
    if len(src) != 3:
        raise ArgumentError(f"skips: a link from an FC layer {src} into a conv layer {dst} is not supported")
    f = src[1] // dst[1] if dst[1] else 0
    if f < 1 or src[1] // f != dst[1] or src[2] // f != dst[2]:
        raise ArgumentError(f"skips: no average pool maps a {src[1]}×{src[2]} map onto {dst[1]}×{dst[2]}")
    return f


class SkipLink(nn.Module):
    """The map ``R_ij`` of one skip link: ``forward`` is the bottom-up drive of ``s_j``,
    :meth:`transpose` the top-down term of ``s_i``, :meth:`weight_grad` the Hebbian product."""

    def __init__(self, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.src_shape, self.dst_shape = tuple(src_shape), tuple(dst_shape)
        self.factor = _pool_factor(self.src_shape, self.dst_shape)
        if self.factor == 0:
            self.map: nn.Module = nn.Linear(math.prod(src_shape), dst_shape[0], bias=False)
        else:
            self.map = nn.Conv2d(src_shape[0], dst_shape[0], 1, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.map.weight

    def reset_parameters(self, scale: float = 1.0) -> None:
        """PyTorch's default Kaiming-uniform init, times ``scale`` (the model's ``init_scale``)."""
        self.map.reset_parameters()
        with torch.no_grad():
            self.map.weight.mul_(scale)

    def _pool(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.factor == 1 else F.avg_pool2d(s, self.factor, self.factor)

    def forward(self, s_src: torch.Tensor) -> torch.Tensor:
        """``R s_i``: ``s_src: (batch, *src_shape)`` → ``(batch, *dst_shape)``."""
        if self.factor == 0:
            return F.linear(s_src.flatten(1), self.map.weight)
        return F.conv2d(self._pool(s_src), self.map.weight)

    def transpose(self, s_dst: torch.Tensor) -> torch.Tensor:
        """``Rᵀ s_j``: ``s_dst: (batch, *dst_shape)`` → ``(batch, *src_shape)``."""
        if self.factor == 0:
            return (s_dst @ self.map.weight).view(-1, *self.src_shape)
        t = F.conv_transpose2d(s_dst, self.map.weight)
        f = self.factor
        if f == 1:
            return t
        t = t.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3) / (f * f)
        # rows/columns the pool dropped (odd sizes) get nothing back
        return F.pad(t, (0, self.src_shape[2] - t.shape[3], 0, self.src_shape[1] - t.shape[2]))

    def weight_grad(self, s_dst: torch.Tensor, s_src: torch.Tensor) -> torch.Tensor:
        """``∂/∂R Σ_batch ⟨s_dst, R s_src⟩``, the shape of :attr:`weight`."""
        if self.factor == 0:
            return s_dst.flatten(1).t() @ s_src.flatten(1)
        g = torch.einsum("bohw,bihw->oi", s_dst, self._pool(s_src))
        return g.view_as(self.map.weight)
