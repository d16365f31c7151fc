"""Memory accounting: exact on known allocations, EP flat in T, BPTT linear in T, meta == cpu."""

from __future__ import annotations

import torch

from eqkern import CRNN, Conv, Linear
from eqkern.cli import main
from eqkern.tools.memory import LiveTensorBytes, profile_memory


def small_model() -> CRNN:
    return CRNN((3, 16, 16), [Conv(8), Conv(16), Linear(12)], 10)


def test_tracker_counts_storages_once_and_frees_them():
    with LiveTensorBytes() as t:
        a = torch.empty(1000)                  # 4000 bytes
        v = a.view(10, 100)                    # same storage: nothing more
        b = torch.empty(250, dtype=torch.float64)  # 2000 bytes
        assert t.live == 6000
        del a
        assert t.live == 6000                  # the view still holds the storage
        del v
        assert t.live == 2000
        b.add_(1)                              # in place: same storage
        del b
    print("peak", t.peak, "live", t.live)
    assert t.peak == 6000 and t.live == 0


def test_autograd_saved_tensors_are_counted():
    w = torch.randn(100, 100, requires_grad=True)
    with LiveTensorBytes() as t:
        y = torch.tanh(torch.randn(100, 100) @ w)  # tanh saves its output for backward
        loss = y.sum()
        del y
        held = t.live
        loss.backward()
        del loss
    print("held by the graph:", held)
    assert held >= 100 * 100 * 4  # the saved tanh output is still alive


def test_ep_peak_does_not_grow_with_steps():
    """On meta tensors (the accounting equals the cpu one: see the BPTT test below)."""
    peaks = [profile_memory(small_model(), method="ep", batch=8, t_free=t, t_nudge=t // 5,
                            device="meta").peak_bytes for t in (10, 100)]
    print("EP peak at T=10, T=100:", peaks)
    assert abs(peaks[1] - peaks[0]) <= 0.03 * peaks[0]


def test_bptt_grows_linearly_and_meta_equals_cpu():
    meta = [profile_memory(small_model(), method="bptt", batch=8, t_free=t, device="meta").peak_bytes
            for t in (4, 8, 12)]
    cpu = profile_memory(small_model(), method="bptt", batch=8, t_free=8, device="cpu").peak_bytes
    print("BPTT peaks at T=4, 8, 12 (meta):", meta, "T=8 (cpu):", cpu)
    assert meta[1] == cpu
    assert meta[2] - meta[1] == meta[1] - meta[0] > 0


def test_bptt_needs_more_than_ep():
    ep = profile_memory(small_model(), method="ep", batch=8, t_free=20, t_nudge=5)
    bptt = profile_memory(small_model(), method="bptt", batch=8, t_free=20)
    print(f"EP {ep.peak_bytes} B, BPTT {bptt.peak_bytes} B, ratio {bptt.peak_bytes / ep.peak_bytes:.1f}")
    assert bptt.peak_bytes > 3 * ep.peak_bytes
    assert "accounting" in ep.measured_with


def test_cli_memory(capsys):
    assert main(["memory", "--preset", "vgg5-ce-cifar10", "--batch", "2", "--bptt-steps", "3"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "EP" in out and "BPTT" in out and "meta" in out
    assert main(["memory"]) == 2
