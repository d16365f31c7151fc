"""The convergent RNN (CRNN): its connections, parameters, state shapes and read-out.

The layer specs (:class:`Conv`, :class:`Linear`) and their shape arithmetic are in
:mod:`eqkern.model.specs`; the terms of Φ that the dynamics are built from in
:mod:`eqkern.model.energy`; the checks of a phase's input, state and targets in
:mod:`eqkern.model.checks`. The read-out is either ``"ce"`` (a soft-max read-out
``ŷ = softmax(W_out · s_N + b_out)`` that is not a state, Laborieux §3.2) or ``"mse"`` (the last
state layer is the output, squared error). In this package ``state[i]`` is ``s_{i+1}``: a Python
list of tensors, one per state layer.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model.auxiliary import (Augmentation, make_aux_modules,
                                    reset_aux_module)
from eqkern.model.skips import SkipLink, check_skips
from eqkern.model.specs import (FEEDBACK_MODES, READOUTS, STATE_INITS, Conv, Feedback, LayerSpec,
                                Linear, Readout, StateInit, check_spec, output_shape)
from eqkern.model.checks import as_count
from eqkern.validate import as_float, as_int, describe

__all__ = ["CRNN", "Conv", "Linear", "LayerSpec", "register_free_phase"]

# The free phase that CRNN.forward runs lives in eqkern.dynamics, a layer above this one: it
# registers itself here when it is imported (eqkern/__init__ imports it), so the model layer
# imports nothing above it.
_FREE_PHASE: Callable[..., list[torch.Tensor]] | None = None


def register_free_phase(fn: Callable[..., list[torch.Tensor]]) -> None:
    """Set the function :meth:`CRNN.forward` runs: ``fn(model, x, steps, **options) -> state``."""
    global _FREE_PHASE
    _FREE_PHASE = fn


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of Python ints >= 1 (``(C, H, W)``, or ``(features,)``)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ArgumentTypeError(f"input_shape must be a sequence such as (channels, height, width) "
                                f"or (features,), got {describe(input_shape)}")
    if len(input_shape) == 0:
        raise ArgumentError("input_shape must have at least one dimension, got ()")
    return tuple(as_int(f"input_shape[{i}]", d, minimum=1) for i, d in enumerate(input_shape))


class CRNN(nn.Module):
    """A convergent RNN trained by Equilibrium Propagation.

    Args:
        input_shape: ``(channels, height, width)`` of one input (or ``(features,)`` for an MLP).
        layers: the connections, conv first, then linear (a conv after a linear is rejected).
        num_classes: classes of the task.
        readout: ``"ce"`` (soft-max read-out + cross-entropy) or ``"mse"`` (the last state layer
            has ``num_classes`` units and is the output).
        init_scale: factor on the default Kaiming-uniform init of every weight and bias.
        state_init: initial state of a phase, ``"zeros"`` or ``"uniform"`` (U(0,1), Lin's KD presets).
        augment: LE or KD(W) signals on some state layers (:mod:`eqkern.model.auxiliary`); their weight in
            Φ_β is ``model.kappa`` (κ, a plain float the training driver sets per epoch).
        feedback: ``"symmetric"`` (the top-down term of connection ``l`` uses ``W_l``, the dynamics
            are ``∂Φ/∂s``) or ``"separate"`` (Laborieux §2.4 and App. D.3: connection ``l ≥ 1`` gets
            its own feedback weight ``B_l``, shaped like ``W_l``, no bias, initialised
            independently by the same law; the dynamics are a vector field, see
            :meth:`feedback_weight` and :mod:`eqkern.learning.separate_feedback`). Connection 0 reads the clamped
            input and sends nothing down, so it has no ``B_0`` (as in the paper).
        skips: residual / skip links ``(i, j)`` between state layers ``j > i + 1`` (FRE-RNN §3.3):
            Φ gains ``⟨s_j, R_ij(s_i)⟩`` (:mod:`eqkern.model.skips`; ``residual_skips``, ``random_skips``
            build the paper's topologies).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        layers: Sequence[LayerSpec],
        num_classes: int,
        readout: Readout = "ce",
        init_scale: float = 1.0,
        state_init: StateInit = "zeros",
        augment: Augmentation | None = None,
        skips: Sequence[Sequence[int]] = (),
        feedback: Feedback = "symmetric",
    ) -> None:
        super().__init__()
        for name, value, known in (("feedback", feedback, FEEDBACK_MODES),
                                   ("readout", readout, READOUTS),
                                   ("state_init", state_init, STATE_INITS)):
            if value not in known:
                raise ArgumentError(f"{name} must be one of {known}, got {value!r}")
        self.num_classes = as_int("num_classes", num_classes, minimum=1)
        if isinstance(layers, (Conv, Linear)) or not isinstance(layers, Sequence):
            raise ArgumentTypeError(f"layers must be a list of eqkern.Conv / eqkern.Linear, got "
                                    f"{describe(layers)}")
        if not layers:
            raise ArgumentError("a CRNN needs at least one layer")
        self.input_shape = check_input_shape(input_shape)
        self.readout: Readout = readout
        self.state_init = state_init
        self.init_scale = as_float("init_scale", init_scale)

        self.connections = nn.ModuleList()
        specs: list[LayerSpec] = []
        shapes: list[tuple[int, ...]] = []
        shape = self.input_shape
        for i, spec in enumerate(layers):
            spec = check_spec(i, spec, shape)
            specs.append(spec)
            if isinstance(spec, Conv):
                self.connections.append(
                    nn.Conv2d(shape[0], spec.out_channels, spec.kernel_size, padding=spec.padding))
            else:
                self.connections.append(nn.Linear(math.prod(shape), spec.out_features))
            shape = output_shape(shape, spec)
            shapes.append(shape)
        self.specs: tuple[LayerSpec, ...] = tuple(specs)
        self.state_shapes: tuple[tuple[int, ...], ...] = tuple(shapes)
        if readout == "ce":
            self.out = nn.Linear(math.prod(shape), self.num_classes)
        else:
            if shape != (self.num_classes,):
                raise ArgumentError(
                    f"readout='mse' needs a last Linear layer of {num_classes} units, got {shape}"
                )
            self.out = None
        self.augment = augment
        self.kappa = 1.0
        if augment is not None:
            bad = [i for i in augment.layers if not 0 <= i < len(shapes)]
            if bad or not augment.layers:
                raise ArgumentError(f"augment.layers must name state layers 0..{len(shapes) - 1}, "
                                 f"got {augment.layers}")
        self.aux = make_aux_modules(augment, shapes, self.num_classes)
        # registered after aux so that the parameter order of models without skips is unchanged
        self.skips = check_skips(skips, shapes)
        self.skip_links = nn.ModuleList(SkipLink(shapes[i], shapes[j]) for i, j in self.skips)
        self.feedback_mode: Feedback = feedback
        # Registered last, so that model.parameters() lists W, b, read-out and LE/KDW maps in the
        # same order as a symmetric model (the backends zip their gradient lists with it).
        self.feedback_weights = None
        if feedback == "separate":
            self.feedback_weights = nn.ParameterDict({
                str(i): nn.Parameter(torch.empty_like(conn.weight))
                for i, conn in enumerate(self.connections) if i > 0})
        # The free phase that model(x) runs (training entry points set it to their t_free).
        self.default_steps = 50
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Kaiming-uniform init (Laborieux's), every tensor times ``init_scale``."""
        modules = self.weight_layers()
        with torch.no_grad():
            for m in modules:
                m.reset_parameters()
                m.weight.mul_(self.init_scale)
                m.bias.mul_(self.init_scale)
        for m in self.aux:
            reset_aux_module(self.augment, m, self.init_scale)
        for link in self.skip_links:
            link.reset_parameters(self.init_scale)
        if self.feedback_weights is not None:
            # Drawn after everything else, so W_l, b_l are those of the symmetric model of the same
            # seed; the law is nn.Conv2d/nn.Linear's default weight init (Kaiming-uniform, a=√5).
            with torch.no_grad():
                for b in self.feedback_weights.values():
                    nn.init.kaiming_uniform_(b, a=math.sqrt(5))
                    b.mul_(self.init_scale)

    def weight_layers(self) -> list[nn.Module]:
        """The connections, then the CE read-out if there is one: one module per weight layer
        (what layer-wise learning rates and per-layer statistics count)."""
        return list(self.connections) + ([self.out] if self.out is not None else [])

    # -- feedback weights ----------------------------------------------------------------------

    @property
    def separate_feedback(self) -> bool:
        """True when the top-down terms use their own weights ``B_l`` (``feedback="separate"``)."""
        return self.feedback_weights is not None

    def feedback_weight(self, i: int) -> torch.Tensor:
        """The weight of connection ``i``'s top-down term: ``B_i`` (separate), else ``W_i``."""
        if self.feedback_weights is None:
            return self.connections[i].weight
        if i == 0:
            raise ArgumentError("connection 0 reads the clamped input: it has no feedback weight")
        return self.feedback_weights[str(i)]

    def ep_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the feedback weights ``B_l``, in ``parameters()`` order: what the
        backends' Hebbian updates (the gradient of Φ) cover."""
        skip = set() if self.feedback_weights is None else {id(p) for p in self.feedback_weights.values()}
        return [p for p in self.parameters() if id(p) not in skip]

    # -- shapes and states -------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.specs)

    def init_state(self, batch: int, *, like: torch.Tensor | None = None) -> list[torch.Tensor]:
        """A fresh initial state: one ``(batch, *state_shapes[i])`` tensor per state layer."""
        batch = as_int("batch", batch, minimum=0)
        ref = like if like is not None else self.connections[0].weight
        make = torch.zeros if self.state_init == "zeros" else torch.rand
        return [make((batch, *s), dtype=ref.dtype, device=ref.device) for s in self.state_shapes]

    # -- read-out and inference ---------------------------------------------------------------

    def logits(self, s_last: torch.Tensor) -> torch.Tensor:
        """Read-out logits ``W_out · flat(s_N) + b_out`` (CE) or ``s_N`` itself (MSE)."""
        if self.out is None:
            return s_last
        return self.out(s_last.flatten(1))

    @property
    def weighs_kappa(self) -> bool:
        """Whether ``kappa`` weighs anything: only LE / KD(W) learning signals read it."""
        return self.augment is not None

    def aux_module(self, j: int) -> nn.Module | None:
        """The learned map of augmented layer number ``j`` (``B_j`` or ``M_j``), if any."""
        return self.aux[j] if len(self.aux) else None

    def predict(self, state: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predicted class ids ``(batch,)`` from a (free-phase) state."""
        return self.logits(state[-1]).argmax(dim=1)

    def forward(self, x: torch.Tensor, steps: int | None = None, **phase_options) -> torch.Tensor:
        """Read-out logits ``(batch, num_classes)`` at the free-phase equilibrium of ``x``.

        ``x: (batch, *input_shape)``; ``steps``: the length of the free phase (default
        ``self.default_steps``, set by the training entry points to the run's ``t_free``);
        ``phase_options``: ``backend``, ``schedule``, ``tol``, ``check_every`` of
        :func:`eqkern.free_phase`. Runs without a graph: EP needs none, so ``model(x)`` is
        inference, and hooks, torchinfo and wrappers see an ordinary module call.
        """
        if _FREE_PHASE is None:  # only when eqkern.model is loaded without the package
            raise RuntimeError("CRNN.forward needs eqkern.dynamics: import eqkern first")
        steps = as_count("steps", self.default_steps if steps is None else steps)
        return self.logits(_FREE_PHASE(self, x, steps, **phase_options)[-1])

