"""Small CRNN cases used by the backend tests: odd sizes, batch 1, no pool, FC-only, MSE, scales."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from conftest import rel_rms
from eqkern import CRNN, Conv, Linear, ep_gradients, settle
from eqkern.model.auxiliary import Distill, LocalError, Targets


@dataclass
class Case:
    id: str
    input_shape: tuple[int, ...]
    layers: list
    num_classes: int = 5
    batch: int = 3
    readout: str = "ce"
    kwargs: dict = field(default_factory=dict)

    def build(self, dtype: torch.dtype) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
        model = CRNN(self.input_shape, self.layers, self.num_classes, self.readout, **self.kwargs)
        model = model.to(dtype)
        x = torch.rand(self.batch, *self.input_shape, dtype=dtype) * 2 - 0.5
        y = torch.randint(0, self.num_classes, (self.batch,))
        return model, x, y


CASES = [
    Case("conv-pool-odd11", (1, 11, 11), [Conv(4), Conv(6, padding=0), Linear(7)]),
    Case("batch1-rgb9", (3, 9, 9), [Conv(5), Conv(4, padding=0, pool=False)], batch=1),
    Case("conv-nopool-mse", (2, 8, 7), [Conv(4, pool=False), Conv(5), Linear(5)], readout="mse"),
    Case("fc-only", (13,), [Linear(9), Linear(6)], batch=4),
    Case("fc-only-mse", (13,), [Linear(9), Linear(5)], readout="mse"),
    Case("activations-scales-uniform", (1, 10, 10),
         [Conv(4, activation="relu", gamma=0.5), Conv(4, activation="clamp01", alpha=0.8),
          Linear(6, activation="hard_sigmoid_courbariaux", gamma=0.3)],
         kwargs={"state_init": "uniform", "init_scale": 0.7}),
    Case("kernel5-pad2-tanh", (1, 12, 12), [Conv(3, kernel_size=5, padding=2, activation="tanh"),
                                             Conv(4, padding=1)]),
]


STATE_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
T_FREE, T_NUDGE, BETA = 20, 8, 0.5


def run_phases(model, x, y, backend, schedule="synchronous"):
    """Free phase then a +β phase from the same initial state; returns the nudged state."""
    torch.manual_seed(7)  # same U(0,1) initial state for every backend
    state = model.init_state(x.shape[0], like=x)
    settle(model, x, state, 0.0, T_FREE, backend=backend, schedule=schedule)
    free = [s.clone() for s in state]
    settle(model, x, state, BETA, T_NUDGE, y, backend=backend, schedule=schedule)
    return free, state


def ep_grads(model, x, y, backend, estimator="symmetric", **options):
    """EP gradients by name; ``options``: more ``ep_gradients`` arguments (schedule, ...)."""
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, beta=BETA, t_free=T_FREE, t_nudge=T_NUDGE,
                 estimator=estimator, backend=backend, **options)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def check_states_match(built, backend: str, label: str, schedule: str = "synchronous") -> None:
    """States after a free and a nudged phase: ``backend`` vs ``reference``, rel RMS per layer."""
    model, x, y = built
    dtype = x.dtype
    ref = run_phases(model, x, y, "reference", schedule)
    out = run_phases(model, x, y, backend, schedule)
    for phase, r_phase, o_phase in zip(("free", "nudged"), ref, out):
        for i, (r, o) in enumerate(zip(r_phase, o_phase)):
            err = rel_rms(r, o)
            print(f"{label} {phase} state[{i}] rel RMS {err:.2e}")
            assert err <= STATE_TOL[dtype]


def check_grads_match(built, backend: str, estimator: str, label: str) -> None:
    """EP gradients of ``backend`` vs ``reference``.

    fp32 gradients are differences of nearly equal terms, so the fp32 *reference* is itself off
    from the exact value; the bound is 1e-5 or twice the fp32 reference's own error against fp64
    (flash-attention's rule), whichever is larger. fp64 is held to 1e-10.
    """
    model, x, y = built
    dtype = x.dtype
    ref = ep_grads(model, x, y, "reference", estimator)
    out = ep_grads(model, x, y, backend, estimator)
    exact = ref
    if dtype == torch.float32:
        exact = ep_grads(model.double(), x.double(), _to_double(y), "reference", estimator)
        model.float()
    for name in ref:
        err = rel_rms(exact[name], out[name])
        ref_err = rel_rms(exact[name], ref[name])
        bound = max(1e-5, 2 * ref_err) if dtype == torch.float32 else 1e-10
        print(f"{label} {estimator} {name}: rel RMS {err:.2e} "
              f"(fp32 reference {ref_err:.2e}, bound {bound:.1e})")
        assert err <= bound


def _to_double(y):
    """Targets with teacher features in fp64 (plain labels stay as they are)."""
    if isinstance(y, Targets) and y.features is not None:
        return Targets(y.labels, [f.double() for f in y.features])
    return y


# LE / KD / KDW models (tests/model/test_auxiliary.py, tests/backends/test_triton_backend.py)
AUG_LAYERS = [Conv(4), Conv(5, padding=0), Linear(6)]
AUGMENTS = {
    "le": LocalError((0, 1)),
    "le-frozen-fc": LocalError((1, 2), learn=False, tau=2.0),
    "kd": Distill((0, 1)),
    "kdw": Distill((0, 2), mapped=True),
}


def build_augmented(aug_id: str, dtype: torch.dtype, batch: int = 3, kappa: float = 0.7):
    model = CRNN((2, 11, 11), AUG_LAYERS, 5, augment=AUGMENTS[aug_id]).to(dtype)
    model.kappa = kappa
    x = torch.rand(batch, 2, 11, 11, dtype=dtype)
    labels = torch.randint(0, 5, (batch,))
    y = labels
    if isinstance(model.augment, Distill):
        y = Targets(labels, [torch.randn(batch, *model.state_shapes[i], dtype=dtype) * 2
                             for i in model.augment.layers])
    if aug_id == "kdw":  # move the maps away from the identity so that they matter
        with torch.no_grad():
            for m in model.aux:
                m.weight.add_(0.1 * torch.randn_like(m.weight))
    return model, x, y
