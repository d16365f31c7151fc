"""Data-parallel training on ``torch.distributed``: what the engine does differently per rank.

Launched under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`from_env` joins the
process group (NCCL on CUDA, gloo on CPU) and every rank runs the same loop over the same global
batches (one shuffle: the same seed everywhere), each on its contiguous share of every batch
(:meth:`Ranks.shard`). EP's gradients never pass through autograd, so ``DistributedDataParallel``'s
hooks would not see them: :meth:`Ranks.average_gradients` all-reduces the ``.grad`` of every
parameter by hand, in buckets, weighted by each rank's share so that the result is the
full-batch mean whatever the split. Before that, one small all-reduce per batch
(:meth:`Ranks.agree`) tells every rank whether another one failed (then all stop, naming the
rank and its error, instead of hanging in the next collective) or was asked to stop (Ctrl-C, so
that all stop after the same batch). Only rank 0 writes the run folder; a resume reads rank 0's
checkpoint and sends it to the others (:meth:`Ranks.broadcast_object`).

Without ``torchrun`` everything here is a no-op on one rank, and the loop is the same code.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from eqkern.errors import ArgumentError, EqkernError, first_line

__all__ = ["Ranks", "RankFailure", "from_env", "env_rank", "local_device", "BUCKET_BYTES"]

# Gradients are summed in buckets of about this size: few collectives for small nets, bounded
# extra memory for big ones (DDP's default bucket is 25 MiB).
BUCKET_BYTES = 25 * 2**20


class RankFailure(EqkernError, RuntimeError):
    """Another rank of a data-parallel run failed: this one stops too (the message names it)."""


def local_device(device: torch.device | str | None = None) -> torch.device:
    """The device of this process: ``cuda:$LOCAL_RANK`` under torchrun on a CUDA machine when
    ``device`` is None or a bare ``"cuda"``, else ``device`` (default: CUDA if available)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and _world_from_env() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def env_rank() -> int:
    """This process's ``RANK`` as torchrun sets it, before any process group exists (0 alone, or
    when it is not a number: then torchrun did not set it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ArgumentError(f"WORLD_SIZE must be a whole number (torchrun sets it), got "
                            f"{os.environ['WORLD_SIZE']!r}") from None


@dataclass
class Ranks:
    """This process's place in a data-parallel run: ``rank`` of ``world`` (0 of 1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs and writes the run folder."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    # --- data --------------------------------------------------------------------------------

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of a global batch (the first ``n % world`` ranks get one
        more example), as views. ``tensors``: each ``(n, ...)``."""
        if not self.parallel:
            return tensors
        lo, hi = self.bounds(len(tensors[0]))
        return tuple(t[lo:hi] for t in tensors)

    def bounds(self, n: int) -> tuple[int, int]:
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def check_batches(self, batch_size: int, num_examples: int | None) -> None:
        """Refuse a split where some rank would get an empty share of a batch: its step would
        draw nothing from the shared generator, and the ranks would drift apart."""
        if not self.parallel:
            return
        last = num_examples % batch_size if num_examples else 0
        if batch_size < self.world or 0 < last < self.world:
            small = batch_size if batch_size < self.world else last
            raise ArgumentError(
                f"a batch of {small} examples cannot be shared by {self.world} ranks (each needs "
                f"at least one): use batch_size >= {self.world}"
                + (f" and a training set whose size leaves a last batch of at least {self.world} "
                   f"(it has {num_examples} examples; batch_size {batch_size})" if last else ""))

    # --- collectives -------------------------------------------------------------------------

    def agree(self, error: BaseException | None, stop: bool, where: str) -> bool:
        """Whether any rank asked to stop; raises (on every rank) if any rank failed: the failed
        rank re-raises its own error, the others a :class:`RankFailure` naming it."""
        if not self.parallel:
            if error is not None:
                raise error
            return stop
        flags = torch.tensor([float(error is not None), float(stop)], device=self._device())
        dist.all_reduce(flags)
        failed, stops = flags.tolist()
        if failed:
            reasons: list[Any] = [None] * self.world
            dist.all_gather_object(reasons, None if error is None else first_line(error))
            if error is not None:
                raise error
            rank, why = next((r, w) for r, w in enumerate(reasons) if w is not None)
            raise RankFailure(f"rank {rank} of {self.world} failed at {where} ({why}); rank "
                              f"{self.rank} stops too")
        return bool(stops)

    def average_gradients(self, params: Iterable[nn.Parameter], share: float) -> None:
        """Make every ``.grad`` the mean over the global batch: each rank's gradient (a mean over
        its share) is weighted by ``share`` (its fraction of the batch) and summed, bucket by
        bucket. A parameter without a gradient on every rank stays without one."""
        if not self.parallel:
            return
        grads = [p.grad for p in params if p.grad is not None]
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket]).mul_(share)
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def sum(self, values: list[float] | torch.Tensor) -> list[float]:
        """Element-wise sum over ranks, in float64 (counts and sums of one epoch)."""
        t = torch.as_tensor(values, dtype=torch.float64).to(self._device())
        if self.parallel:
            dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a checkpoint read by rank 0, with its tensors on CPU)."""
        if not self.parallel:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (the same start, and one set of BatchNorm
        statistics for evaluation and the checkpoint)."""
        if not self.parallel:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def _device(self) -> torch.device:
        # NCCL reduces only CUDA tensors; gloo CPU ones.
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive gradients of one dtype and device, about :data:`BUCKET_BYTES` each."""
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if bucket and (size + g.numel() * g.element_size() > BUCKET_BYTES
                       or (g.dtype, g.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    if bucket:
        yield bucket


def from_env(device: torch.device) -> Ranks:
    """This process's :class:`Ranks`: joins the process group when launched with
    ``WORLD_SIZE`` > 1 (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) and it is not joined yet; one rank otherwise. ``device``: where this rank
    trains (NCCL for CUDA, gloo for CPU)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    world = _world_from_env()
    if world <= 1:
        return Ranks()
    if not dist.is_available():
        raise ArgumentError(f"WORLD_SIZE={world} asks for data-parallel training, but this torch "
                            f"build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # EP batches can take minutes each at the papers' sizes: a slow rank is not a dead one.
    timeout = datetime.timedelta(minutes=float(os.environ.get("EQKERN_DIST_TIMEOUT_MIN", "30")))
    dist.init_process_group(backend, timeout=timeout)
    return Ranks(dist.get_rank(), dist.get_world_size())
