"""Data augmentation on whole batches: random crop with zero padding and horizontal flip.

As in the papers (Laborieux App. E.1, Lin §4: torchvision's ``RandomCrop(32, padding=4)`` and
``RandomHorizontalFlip()``), but for a whole ``(B, C, H, W)`` batch at once on any device: one
pad and one gather, no Python loop over samples. The random numbers come from a
``torch.Generator`` (so an epoch is reproducible and resumable); they are drawn on the
generator's device and moved to the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqkern.errors import ArgumentError
from eqkern.validate import as_bool, as_int

__all__ = ["crop_flip", "crop_flip_with", "random_crop", "random_flip"]


def crop_flip_with(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                   padding: int = 4) -> torch.Tensor:
    """Deterministic core of :func:`crop_flip`.

    ``x: (B, C, H, W)``; ``dy, dx: (B,)`` integer offsets in ``[0, 2·padding]`` of the crop
    window inside the zero-padded image (``padding`` = no shift); ``flip: (B,)`` bool, mirror
    left-right after cropping. Returns a new ``(B, C, H, W)`` tensor.
    """
    if x.dim() != 4:
        raise ArgumentError(f"x must be a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    padding = as_int("padding", padding, minimum=0)
    b, _, h, w = x.shape
    dy, dx, flip = dy.to(x.device).long(), dx.to(x.device).long(), flip.to(x.device).bool()
    if dy.shape != (b,) or dx.shape != (b,) or flip.shape != (b,):
        raise ArgumentError(f"dy, dx and flip must have shape ({b},)")
    if len(dy) and (int(dy.min()) < 0 or int(dy.max()) > 2 * padding
                    or int(dx.min()) < 0 or int(dx.max()) > 2 * padding):
        raise ArgumentError(f"offsets dy, dx must lie in [0, {2 * padding}] (2 * padding), got "
                            f"dy in [{int(dy.min())}, {int(dy.max())}], dx in "
                            f"[{int(dx.min())}, {int(dx.max())}]")
    xp = F.pad(x, (padding, padding, padding, padding)) if padding else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h[None, :]                                   # (B, H)
    cols = torch.where(flip[:, None], (w - 1 - ar_w)[None, :], ar_w[None, :]) + dx[:, None]  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice: the broadcast (B, H, W) dims come first, channels last.
    out = xp[bidx, :, rows[:, :, None], cols[:, None, :]]               # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _draw(b: int, generator: torch.Generator | None, padding: int, flip: bool, crop: bool):
    dev = generator.device if generator is not None else torch.device("cpu")
    if crop and padding > 0:
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=dev)
    else:
        off = torch.zeros((2, b), dtype=torch.long, device=dev)
    if flip:
        mirror = torch.randint(0, 2, (b,), generator=generator, device=dev).bool()
    else:
        mirror = torch.zeros(b, dtype=torch.bool, device=dev)
    return off[0], off[1], mirror


def crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, *, padding: int = 4,
              flip: bool = True, crop: bool = True) -> torch.Tensor:
    """Random crop of size ``(H, W)`` from the image zero-padded by ``padding`` on every side,
    then a horizontal flip with probability ½, independently per sample. ``x: (B, C, H, W)``."""
    # Checked here, before drawing: randint with a bad bound fails with torch's own text.
    padding = as_int("padding", padding, minimum=0)
    flip, crop = as_bool("flip", flip), as_bool("crop", crop)
    dy, dx, mirror = _draw(x.shape[0], generator, padding, flip, crop)
    return crop_flip_with(x, dy, dx, mirror, padding if crop else 0) if (crop or flip) else x.clone()


def random_crop(x: torch.Tensor, generator: torch.Generator | None = None, *,
                padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding only (see :func:`crop_flip`)."""
    return crop_flip(x, generator, padding=padding, flip=False)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip of each sample with probability ½."""
    return crop_flip(x, generator, padding=0, crop=False)
