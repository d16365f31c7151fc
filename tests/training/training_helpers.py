"""Shared by the training tests: tiny fake data and one thread per test."""

from __future__ import annotations

import pytest
import torch

from eqkern.data.datasets import DataSplit

# backend "torch": these files test the training code; the backends are checked against each other
# in tests/backends (and the cpp settle loop asserts on 1×1 pooled maps at the time of writing).
TINY = dict(width=1 / 32, t_free=2, t_nudge=1, batch_size=8, epochs=1, backend="torch")


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine is shared: with two threads tiny convs spend their time in OpenMP waits.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_data(shape=(3, 32, 32), n=16, classes=10, seed=0) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    return DataSplit(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g),
                     torch.randn(n // 2, *shape, generator=g),
                     torch.randint(0, classes, (n // 2,), generator=g),
                     tuple(map(str, range(classes))), shape, classes)
