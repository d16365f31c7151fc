"""Typed Python entry points of the C++/CUDA ops in ``eqkern._C``, their fake kernels, and references.

The schemas are defined in ``csrc/ops.cpp`` (``TORCH_LIBRARY(eqkern)``, which names this module as
the home of the fake kernels); the kernels in ``csrc/cpu`` and ``csrc/cuda``. Each op ``<op>`` has a
pure-torch ``<op>_ref`` next to it that the tests compare against.

Bad arguments raise :class:`OpArgumentError` (an ``ArgumentError`` and a ``RuntimeError``), naming
the op and the argument: the C++ checks for shapes, dtypes and devices; the fake kernels for a
mix of devices that includes ``meta`` (which the dispatcher sends to them, not to C++); the
wrappers for outputs that share memory with another argument and for scalars. The wrappers read
no tensor values (no host sync): NaN inputs and class ids out of range are checked one level up,
by ``eqkern.settle`` and ``eqkern.ep_gradients``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.kernels import native as _build  # loads eqkern._C, which registers the eqkern::* kernels
from eqkern.model.activations import ACTIVATION_CODES, activate, check_activation
from eqkern.model.checks import check_no_overlap
from eqkern.validate import as_float, as_int, describe

__all__ = ["settle_epilogue_", "settle_epilogue_ref", "settle", "hebbian_update", "NetworkArgs", "network_args",
           "AuxNudgeArgs"]


class OpArgumentError(ArgumentError, RuntimeError):
    """A bad argument of an ``eqkern::*`` op: an :class:`~eqkern.errors.ArgumentError` that is also
    the ``RuntimeError`` the op's own C++ checks (``TORCH_CHECK``) raise, so that code catching
    either keeps working. The message starts with the op's name, as the C++ messages do."""


def _call(op: str, *args: Any) -> None:
    """``torch.ops.eqkern.<op>(*args)``, with the op's input checks (C++ ``TORCH_CHECK``s, whose
    messages start with ``eqkern.<op>``) raised as :class:`OpArgumentError`."""
    fn = getattr(torch.ops.eqkern, op).default
    if torch.compiler.is_compiling():  # traced: the fake kernels below do the checks
        return fn(*args)
    try:
        return fn(*args)
    except RuntimeError as exc:
        if isinstance(exc, ArgumentError) or not str(exc).startswith(f"eqkern.{op}"):
            raise
        raise OpArgumentError(str(exc)) from exc


def _check_devices(op: str, ref_name: str, ref: torch.Tensor,
                   named: Sequence[tuple[str, torch.Tensor | None]]) -> None:
    """Every tensor on ``ref``'s device, in the words of the C++ checks.

    Run by the fake kernels: a mix of devices that includes ``meta`` is dispatched to the Meta
    kernel, i.e. to them, never reaching the C++ checks (an op on all-meta tensors is fine: memory
    profiles trace the step that way)."""
    for name, t in named:
        if t is not None and t.device != ref.device:
            raise OpArgumentError(f"eqkern.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def _tensor(op: str, name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"eqkern.{op}: {name} must be a torch.Tensor, got {describe(t)}")
    return t


def _named(name: str, ts: Sequence[torch.Tensor | None]) -> list[tuple[str, torch.Tensor | None]]:
    return [(f"{name}[{i}]", t) for i, t in enumerate(ts)]


def _require_cpp(op: str) -> None:
    if not _build.cpp_available():
        raise RuntimeError(
            f"eqkern._C is not built or failed to load, so eqkern.{op} cannot run: "
            f"{_build.cpp_load_error()}. (The pure-torch backends need no build: EQKERN_BACKEND=torch.)"
        )


def settle_epilogue_(
    state: torch.Tensor,
    bottom_up: torch.Tensor,
    top_down: torch.Tensor | None,
    nudge: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: str,
) -> None:
    """Fused epilogue of one neuron update, in place: ``state ← ρ(α·bottom_up + γ·top_down + nudge)``.

    state: (batch, *layer_shape), float32/float64/float16/bfloat16, overwritten (its old value is
        not read). bottom_up, top_down, nudge: (batch, *layer_shape), same dtype and device as state;
        top_down / nudge may be None (= 0). Any strides. 16-bit inputs are computed in float32 and
        rounded once. activation: a name from ``eqkern.activations.ACTIVATION_CODES``.
    """
    code = ACTIVATION_CODES[check_activation(activation)]
    _require_cpp("settle_epilogue_")
    op = "settle_epilogue_"
    inputs = {"bottom_up": _tensor(op, "bottom_up", bottom_up)}
    inputs.update({k: _tensor(op, k, t) for k, t in (("top_down", top_down), ("nudge", nudge)) if t is not None})
    # Elementwise: state may be one of its inputs exactly (each element is read, then written), but
    # not partly overlap one (an element written before another one reads it).
    check_no_overlap({"state": _tensor(op, "state", state)}, inputs, in_place_ok=True)
    _call(op, state, bottom_up, top_down, nudge, as_float("alpha", alpha), as_float("gamma", gamma), code)


def _settle_epilogue_fake(
    state: torch.Tensor,
    bottom_up: torch.Tensor,
    top_down: torch.Tensor | None,
    nudge: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: int,
) -> None:
    # Mutates `state` and returns nothing, so tracing (torch.compile, opcheck) only needs the checks.
    named = (("bottom_up", bottom_up), ("top_down", top_down), ("nudge", nudge))
    _check_devices("settle_epilogue_", "state", state, named)
    for name, t in named:
        if t is None:
            continue
        torch._check(t.dtype == state.dtype, lambda: f"{name} has dtype {t.dtype}, state {state.dtype}")
        torch._check(t.dim() == state.dim(), lambda: f"{name} has shape {t.shape}, state {state.shape}")
        for a, b in zip(t.shape, state.shape):
            torch._check(a == b, lambda: f"{name} has shape {t.shape}, state {state.shape}")
    return None


# The op only exists once eqkern._C loaded (registering a fake for a missing op raises).
if _build.cpp_available():
    torch.library.register_fake("eqkern::settle_epilogue_")(_settle_epilogue_fake)


def settle_epilogue_ref(
    state: torch.Tensor,
    bottom_up: torch.Tensor,
    top_down: torch.Tensor | None,
    nudge: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: str,
) -> torch.Tensor:
    """Out-of-place pure-torch reference of :func:`settle_epilogue_`; returns the new state.

    Same arguments and shapes (``state: (batch, *layer_shape)`` is only used for its shape and
    dtype). Computed with ATen ops in the inputs' dtype, in the order the kernels use.
    """
    if bottom_up.shape != state.shape:
        raise ArgumentError(f"bottom_up has shape {tuple(bottom_up.shape)}, state {tuple(state.shape)}")
    u = alpha * bottom_up
    if top_down is not None:
        u = u + gamma * top_down
    if nudge is not None:
        u = u + nudge
    return activate(activation, u).to(state.dtype)


# -- whole-network ops: eqkern::settle and eqkern::hebbian_update ------------------------------------

class NetworkArgs(NamedTuple):
    """A CRNN flattened into the arguments of the whole-network ops (one entry per layer).

    kinds: 0 = conv, 1 = linear; paddings / pools (0 or 1): of the convs (0 for linear layers);
    activations: codes of ``ACTIVATION_CODES``; out_weight / out_bias: the CE read-out, or None (MSE);
    feedback_weights: ``[]`` (symmetric) or ``[None, B_1, …, B_{N-1}]`` (``CRNN(feedback="separate")``).
    skip_*: one entry per FRE-RNN skip link ``(source, target)``: its pool factor (0: into an FC
    layer) and the weight of its map ``R`` (``eqkern.model.skips.SkipLink``).
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    kinds: list[int]
    paddings: list[int]
    pools: list[int]
    activations: list[int]
    alphas: list[float]
    gammas: list[float]
    out_weight: torch.Tensor | None
    out_bias: torch.Tensor | None
    feedback_weights: list[torch.Tensor | None] = []
    skip_sources: list[int] = []
    skip_targets: list[int] = []
    skip_factors: list[int] = []
    skip_weights: list[torch.Tensor] = []


def network_args(model) -> NetworkArgs:
    """The :class:`NetworkArgs` of an ``eqkern.CRNN`` (its parameters themselves, no copies)."""
    from eqkern.model.crnn import Conv

    convs = [isinstance(spec, Conv) for spec in model.specs]
    return NetworkArgs(
        weights=[c.weight for c in model.connections],
        biases=[c.bias for c in model.connections],
        kinds=[0 if conv else 1 for conv in convs],
        paddings=[spec.padding if conv else 0 for spec, conv in zip(model.specs, convs)],
        pools=[int(spec.pool) if conv else 0 for spec, conv in zip(model.specs, convs)],
        activations=[ACTIVATION_CODES[spec.activation] for spec in model.specs],
        alphas=[float(spec.alpha) for spec in model.specs],
        gammas=[float(spec.gamma) for spec in model.specs],
        out_weight=model.out.weight if model.out is not None else None,
        out_bias=model.out.bias if model.out is not None else None,
        feedback_weights=([None] + [model.feedback_weight(i) for i in range(1, model.num_layers)]
                          if getattr(model, "separate_feedback", False) else []),
        skip_sources=[i for i, _ in model.skips],
        skip_targets=[j for _, j in model.skips],
        skip_factors=[link.factor for link in model.skip_links],
        skip_weights=[link.weight for link in model.skip_links],
    )


class AuxNudgeArgs(NamedTuple):
    """The LE / KD(W) nudge terms of :func:`settle` (one entry per augmented layer).

    ``n_i = −β·scales[k]·M_kᵀ(softmax(flat(M_k s_i)/tau) − targets[k])`` for ``i = layers[k]``:
    maps[k] is ``M_k`` (``(K, dim s_i)`` on the flattened state, a ``(C, C, 1, 1)`` channel map, or
    None for the identity); targets[k]: ``(batch, K or dim s_i)`` rows of probabilities.
    """

    layers: list[int]
    maps: list[torch.Tensor | None]
    targets: list[torch.Tensor]
    scales: list[float]
    tau: float


NO_AUX = AuxNudgeArgs([], [], [], [], 1.0)
SCHEDULE_CODES = {"synchronous": 0, "alternating": 1}


def settle(
    x: torch.Tensor,
    net: NetworkArgs,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    steps: int,
    targets: torch.Tensor | None = None,
    aux: AuxNudgeArgs = NO_AUX,
    schedule: str = "synchronous",
) -> None:
    """Run ``steps`` steps of the dynamics of a whole network in C++, in place on ``state``.

    x: (batch, *input_shape); state: one (batch, *layer_shape) tensor per layer, same dtype and
    device as x, any strides; beta: a float, or a ``(batch,)`` tensor of one β per sample;
    targets: (batch,) integer class ids, needed when β ≠ 0. schedule: ``"synchronous"`` (each step
    updates the layers in the order 0..N-1 exactly as ``eqkern.backends.torch_backend``:
    ``s_l ← ρ_l(α_l·P(W_{l-1} * s_{l-1} + b) + γ_l·conv_transpose(unpool(s_{l+1}), W_l) + n_l)``)
    or ``"alternating"`` (even layers, then odd layers from the new even ones).
    """
    _require_cpp("settle")
    try:  # a non-integer here; the C++ check says what a negative count is
        steps = as_int("steps", steps)
    except ArgumentTypeError as exc:
        raise OpArgumentError(f"eqkern.settle: {exc}") from None
    if not isinstance(beta, torch.Tensor):
        beta = as_float("beta", beta)
    check_no_overlap(dict(_named("state", [_tensor("settle", f"state[{i}]", s) for i, s in enumerate(state)])),
                     {"x": _tensor("settle", "x", x)})
    _call("settle", *settle_op_args(x, net, state, beta, steps, targets, aux, schedule))


def settle_op_args(x, net, state, beta, steps, targets=None, aux=NO_AUX, schedule="synchronous") -> tuple:
    """The positional arguments of ``torch.ops.eqkern.settle`` for :func:`settle`'s (for opcheck)."""
    if schedule not in SCHEDULE_CODES:
        raise ArgumentError(f"schedule must be one of {sorted(SCHEDULE_CODES)}, got {schedule!r}")
    sample_betas = beta if isinstance(beta, torch.Tensor) else None
    return (x, list(net.weights), list(net.biases), net.kinds, net.paddings, net.pools, net.activations,
            net.alphas, net.gammas, list(net.feedback_weights), list(net.skip_sources),
            list(net.skip_targets), list(net.skip_factors), list(net.skip_weights), net.out_weight,
            net.out_bias, targets,
            0.0 if sample_betas is not None else float(beta), sample_betas, list(aux.layers),
            list(aux.maps), list(aux.targets), list(aux.scales), float(aux.tau), SCHEDULE_CODES[schedule],
            int(steps), list(state))


def hebbian_update(
    x: torch.Tensor,
    net: NetworkArgs,
    targets: torch.Tensor | None,
    state_a: Sequence[torch.Tensor],
    beta_a: float,
    state_b: Sequence[torch.Tensor],
    beta_b: float,
    grads: Sequence[torch.Tensor],
) -> None:
    """Add the contrastive Hebbian update of every parameter into ``grads``, in place.

    ``g_θ = −[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)``; the CE read-out
    gets ``(β_a ∂L/∂θ(s_a) − β_b ∂L/∂θ(s_b)) / ((β_a − β_b)·batch)``. grads: weight and bias of every
    layer, then out_weight and out_bias (CE), shaped like the parameters. targets: needed with CE.
    """
    _require_cpp("hebbian_update")
    op = "hebbian_update"
    # The op adds into grads while it reads the states and parameters: none may share their memory.
    # Checked once grads have the parameters' shapes; a wrong list is the C++ checks' to name.
    params = [p for w, b in zip(net.weights, net.biases) for p in (w, b)]
    params += [] if net.out_weight is None else [net.out_weight, net.out_bias]
    grads = [_tensor(op, f"grads[{i}]", g) for i, g in enumerate(grads)]
    if len(grads) == len(params) and all(g.shape == p.shape for g, p in zip(grads, params)):
        read = dict([("x", _tensor(op, "x", x)), *_named("state_a", state_a), *_named("state_b", state_b),
                     *_named("weights", net.weights), *_named("biases", net.biases)])
        check_no_overlap(dict(_named("grads", grads)), read)
    _call(op, x, net.weights, net.biases, net.kinds, net.paddings, net.pools, net.out_weight, net.out_bias,
          targets, list(state_a), as_float("beta_a", beta_a), list(state_b), as_float("beta_b", beta_b),
          list(grads))


def _check_like(op: str, name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    torch._check(t.dtype == like.dtype, lambda: f"eqkern.{op}: {name} has dtype {t.dtype}, x {like.dtype}")


def _settle_fake(x, weights, biases, kinds, paddings, pools, activations, alphas, gammas,
                 feedback_weights, skip_sources, skip_targets, skip_factors, skip_weights, out_weight,
                 out_bias, targets, beta, sample_betas, aux_layers, aux_maps,
                 aux_targets, aux_scales, aux_tau, schedule, steps, state) -> None:
    # Mutates `state` and returns nothing: tracing only needs the checks the kernel would make.
    n = len(weights)
    torch._check(len(biases) == n and len(state) == n and len(kinds) == n,
                 lambda: "eqkern.settle: weights, biases, kinds and state need one entry per layer")
    torch._check(len(activations) == n and len(alphas) == n and len(gammas) == n,
                 lambda: "eqkern.settle: activations, alphas and gammas need one entry per layer")
    torch._check(steps >= 0, lambda: f"eqkern.settle: steps must be >= 0, got {steps}")
    torch._check(schedule in (0, 1), lambda: f"eqkern.settle: schedule must be 0 or 1, got {schedule}")
    torch._check(len(aux_maps) == len(aux_layers) and len(aux_targets) == len(aux_layers),
                 lambda: "eqkern.settle: aux_maps and aux_targets need one entry per aux layer")
    _check_devices("settle", "x", x, [
        *_named("weights", weights), *_named("biases", biases), *_named("feedback_weights", feedback_weights),
        *_named("skip_weights", skip_weights), ("out_weight", out_weight), ("out_bias", out_bias),
        ("targets", targets), ("sample_betas", sample_betas), *_named("aux_maps", aux_maps),
        *_named("aux_targets", aux_targets), *_named("state", state)])
    for i, t in enumerate(list(weights) + list(state) + list(aux_targets)):
        _check_like("settle", f"tensor {i}", t, x)
    return None


def _hebbian_update_fake(x, weights, biases, kinds, paddings, pools, out_weight, out_bias, targets,
                         state_a, beta_a, state_b, beta_b, grads) -> None:
    n = len(weights)
    torch._check(len(state_a) == n and len(state_b) == n,
                 lambda: "eqkern.hebbian_update: state_a and state_b need one tensor per layer")
    torch._check(len(grads) == 2 * n + (2 if out_weight is not None else 0),
                 lambda: "eqkern.hebbian_update: grads needs a weight and a bias per layer (+ read-out)")
    _check_devices("hebbian_update", "x", x, [
        *_named("weights", weights), *_named("biases", biases), ("out_weight", out_weight),
        ("out_bias", out_bias), ("targets", targets), *_named("state_a", state_a),
        *_named("state_b", state_b), *_named("grads", grads)])
    for i, g in enumerate(grads):
        _check_like("hebbian_update", f"grads[{i}]", g, x)
    return None


if _build.cpp_available():
    torch.library.register_fake("eqkern::settle")(_settle_fake)
    torch.library.register_fake("eqkern::hebbian_update")(_hebbian_update_fake)
