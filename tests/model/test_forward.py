"""``CRNN.forward``: ``model(x)`` is the read-out at the free-phase equilibrium, so the module works
with what expects ``nn.Module.__call__`` (forward hooks, wrappers)."""

from __future__ import annotations

import torch

from cases import CASES
from eqkern import free_phase


def test_model_call_equals_the_free_phase_readout(backend):
    for case in CASES:
        model, x, _ = case.build(torch.float64)
        torch.manual_seed(5)  # the same U(0,1) initial state for both (state_init="uniform" cases)
        logits = model(x, steps=12, backend=backend)
        torch.manual_seed(5)
        state = free_phase(model, x, 12, backend=backend)
        expected = model.logits(state[-1])
        err = (logits - expected).abs().max().item()
        print(f"{case.id} {backend}: max |model(x) - logits(free_phase)| = {err:.2e}")
        assert logits.shape == (x.shape[0], model.num_classes)
        assert torch.isfinite(logits).all()
        assert err == 0.0
        assert torch.equal(logits.argmax(1), model.predict(state))


def test_default_steps_and_forward_hooks():
    model, x, _ = CASES[0].build(torch.float32)
    model.default_steps = 7
    seen = []
    model.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    torch.manual_seed(0)
    out = model(x, backend="torch")
    torch.manual_seed(0)
    ref = model.logits(free_phase(model, x, 7, backend="torch")[-1])
    assert seen == [out.shape]
    assert torch.equal(out, ref)
    # 7 steps differ from a longer phase, so default_steps really was used
    assert not torch.equal(out, model(x, steps=30, backend="torch"))
