"""Batched random crop (zero padding) + horizontal flip, checked against a per-sample reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqkern.data.crop_flip import crop_flip, crop_flip_with, random_crop, random_flip


def _reference(x, dy, dx, flip, p):
    """One sample at a time, by slicing a padded copy: an independent spelling of the op."""
    out = []
    for i in range(len(x)):
        padded = torch.zeros(x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p, dtype=x.dtype)
        padded[:, p:p + x.shape[2], p:p + x.shape[3]] = x[i]
        crop = padded[:, int(dy[i]):int(dy[i]) + x.shape[2], int(dx[i]):int(dx[i]) + x.shape[3]]
        out.append(torch.flip(crop, dims=[2]) if flip[i] else crop)
    return torch.stack(out)


def test_known_tensor_crop_and_flip():
    x = torch.arange(1, 1 + 2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    # sample 0: window shifted one down and one right inside the 1-padded image, no flip
    # sample 1: no shift, flipped left-right
    y = crop_flip_with(x, torch.tensor([2, 1]), torch.tensor([2, 1]), torch.tensor([False, True]), 1)
    assert y[0, 0].tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]
    assert y[1, 0].tolist() == [[12, 11, 10], [15, 14, 13], [18, 17, 16]]


def test_matches_per_sample_reference_and_keeps_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 10, generator=g)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    y = crop_flip_with(x, dy, dx, flip, 4)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, _reference(x, dy, dx, flip, 4))


def test_random_draws_are_seeded_and_varied():
    x = torch.randn(64, 3, 32, 32)
    a = crop_flip(x, torch.Generator().manual_seed(3))
    b = crop_flip(x, torch.Generator().manual_seed(3))
    c = crop_flip(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # Every output is exactly one crop (offset, flip) of the zero-padded input, and over the
    # batch both flip states and many offsets occur.
    xp = F.pad(x, (4, 4, 4, 4))
    found = []
    for i in range(64):
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                if torch.equal(a[i], xp[i, :, dy:dy + 32, dx:dx + 32].flip(-1) if f
                               else xp[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(hits) == 1, i
        found.append(hits[0])
    assert {f for _, _, f in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 20


def test_flip_only_and_crop_only():
    x = torch.randn(32, 2, 5, 5)
    f = random_flip(x, torch.Generator().manual_seed(1))
    for i in range(32):
        assert torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1))
    c = random_crop(x, torch.Generator().manual_seed(1), padding=2)
    assert c.shape == x.shape
    # no flip: the centre column of each output is a shifted centre column, never mirrored
    assert not torch.equal(c, x)
