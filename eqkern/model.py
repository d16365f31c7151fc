"""The convergent RNN (CRNN) description shared by every backend (SPEC §1).

A CRNN is a stack of *connections*; connection ``l`` maps the state ``s_l`` (``s_0 = x``, the
clamped input) to the drive of state layer ``s_{l+1}``:

* :class:`Conv`: ``P_l(W_l * s_l + b_l)``, a k×k stride-1 convolution with optional zero padding
  and an optional 2×2 stride-2 max-pool ``P_l`` (bias inside the pool, as in Laborieux's Φ);
* :class:`Linear`: ``W_l · flat(s_l) + b_l``.

Each spec also describes the state layer it feeds: its activation ρ, its forward scale α (on the
bottom-up drive) and its feedback scale γ (on the top-down term it receives from the layer above).

The read-out is either ``"ce"`` (a soft-max read-out ``ŷ = softmax(W_out · s_N + b_out)`` that is
not a state, Laborieux §3.2) or ``"mse"`` (the last state layer is the output, squared error).
In this package ``state[i]`` is ``s_{i+1}``: a Python list of tensors, one per state layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .activations import check_activation
from .augment import (Augmentation, Distill, aux_error, aux_loss, aux_readout_transpose, labels_of,
                      make_aux_modules, per_sample, reset_aux_module)
from .skips import SkipLink, check_skips

Readout = Literal["ce", "mse"]
Feedback = Literal["symmetric", "separate"]
FEEDBACK_MODES = ("symmetric", "separate")


@dataclass(frozen=True)
class Conv:
    """A convolutional connection and the state layer it feeds.

    out_channels: channels of the state layer; kernel_size, padding: of the stride-1 convolution;
    pool: a 2×2 stride-2 max-pool after it; activation/alpha/gamma: of the state layer it feeds.
    """

    out_channels: int
    kernel_size: int = 3
    padding: int = 1
    pool: bool = True
    activation: str = "hard_sigmoid"
    alpha: float = 1.0
    gamma: float = 1.0


@dataclass(frozen=True)
class Linear:
    """A fully connected connection and the state layer it feeds (see :class:`Conv`)."""

    out_features: int
    activation: str = "hard_sigmoid"
    alpha: float = 1.0
    gamma: float = 1.0


LayerSpec = Union[Conv, Linear]


def _conv_out_shape(shape: tuple[int, ...], spec: Conv) -> tuple[int, int, int]:
    _, h, w = shape
    h, w = h + 2 * spec.padding - spec.kernel_size + 1, w + 2 * spec.padding - spec.kernel_size + 1
    if spec.pool:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"{spec} turns an input of shape {shape} into an empty map")
    return (spec.out_channels, h, w)


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
        augment: LE or KD(W) signals on some state layers (:mod:`eqkern.augment`); their weight in
            Φ_β is ``model.kappa`` (κ, a plain float the training driver sets per epoch).
        feedback: ``"symmetric"`` (the top-down term of connection ``l`` uses ``W_l``, the dynamics
            are ``∂Φ/∂s``) or ``"separate"`` (Laborieux §2.4 and App. D.3: connection ``l ≥ 1`` gets
            its own feedback weight ``B_l``, shaped like ``W_l``, no bias, initialised
            independently by the same law; the dynamics are a vector field, see
            :meth:`feedback_weight` and :mod:`eqkern.asymmetric`). Connection 0 reads the clamped
            input and sends nothing down, so it has no ``B_0`` (as in the paper).
        skips: residual / skip links ``(i, j)`` between state layers ``j > i + 1`` (FRE-RNN §3.3):
            Φ gains ``⟨s_j, R_ij(s_i)⟩`` (:mod:`eqkern.skips`; ``residual_skips``, ``random_skips``
            build the paper's topologies).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        layers: Sequence[LayerSpec],
        num_classes: int,
        readout: Readout = "ce",
        init_scale: float = 1.0,
        state_init: Literal["zeros", "uniform"] = "zeros",
        augment: Augmentation | None = None,
        skips: Sequence[Sequence[int]] = (),
        feedback: Feedback = "symmetric",
    ) -> None:
        super().__init__()
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
        if readout not in ("ce", "mse"):
            raise ValueError(f"readout must be 'ce' or 'mse', got {readout!r}")
        if state_init not in ("zeros", "uniform"):
            raise ValueError(f"state_init must be 'zeros' or 'uniform', got {state_init!r}")
        if not layers:
            raise ValueError("a CRNN needs at least one layer")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.specs: tuple[LayerSpec, ...] = tuple(layers)
        self.num_classes = int(num_classes)
        self.readout: Readout = readout
        self.state_init = state_init
        self.init_scale = float(init_scale)

        self.connections = nn.ModuleList()
        shapes: list[tuple[int, ...]] = []
        shape = self.input_shape
        for i, spec in enumerate(self.specs):
            check_activation(spec.activation)
            if isinstance(spec, Conv):
                if len(shape) != 3:
                    raise ValueError(f"layer {i}: Conv needs a (C, H, W) input, got shape {shape}")
                self.connections.append(
                    nn.Conv2d(shape[0], spec.out_channels, spec.kernel_size, padding=spec.padding)
                )
                shape = _conv_out_shape(shape, spec)
            elif isinstance(spec, Linear):
                self.connections.append(nn.Linear(math.prod(shape), spec.out_features))
                shape = (spec.out_features,)
            else:
                raise TypeError(f"layer {i}: expected eqkern.Conv or eqkern.Linear, got {spec!r}")
            shapes.append(shape)
        self.state_shapes: tuple[tuple[int, ...], ...] = tuple(shapes)
        if readout == "ce":
            self.out = nn.Linear(math.prod(shape), self.num_classes)
        else:
            if shape != (self.num_classes,):
                raise ValueError(
                    f"readout='mse' needs a last Linear layer of {num_classes} units, got {shape}"
                )
            self.out = None
        self.augment = augment
        self.kappa = 1.0
        if augment is not None:
            bad = [i for i in augment.layers if not 0 <= i < len(shapes)]
            if bad or not augment.layers:
                raise ValueError(f"augment.layers must name state layers 0..{len(shapes) - 1}, "
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Kaiming-uniform init (Laborieux's), every tensor times ``init_scale``."""
        modules = list(self.connections) + ([self.out] if self.out is not None else [])
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
            raise ValueError("connection 0 reads the clamped input: it has no feedback weight")
        return self.feedback_weights[str(i)]

    def ep_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the feedback weights ``B_l``, in ``parameters()`` order: what the
        backends' Hebbian updates (the gradient of Φ) cover."""
        skip = set() if self.feedback_weights is None else {id(p) for p in self.feedback_weights.values()}
        return [p for p in self.parameters() if id(p) not in skip]

    def feedback_indices(
        self, i: int, s_in: torch.Tensor, idx: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Pool indices of connection ``i``'s top-down term, given ``idx`` from :meth:`drive`.

        Symmetric, or no pool: ``idx`` itself. Separate: the arg-max of ``P(B_i * s_in)`` (no bias),
        as in Laborieux's per-layer function ``Φ̃_n ∋ s_{n+1} • P(w^b_{n+1} ⋆ s_n)`` (App. D.3,
        eq. 46) whose ``s_n``-derivative is the top-down term.
        """
        spec = self.specs[i]
        if self.feedback_weights is None or not isinstance(spec, Conv) or not spec.pool:
            return idx
        pre = F.conv2d(s_in, self.feedback_weight(i), None, padding=spec.padding)
        return F.max_pool2d_with_indices(pre, 2, 2)[1]

    # -- shapes and states -------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.specs)

    def init_state(self, batch: int, *, like: torch.Tensor | None = None) -> list[torch.Tensor]:
        """A fresh initial state: one ``(batch, *state_shapes[i])`` tensor per state layer."""
        ref = like if like is not None else self.connections[0].weight
        make = torch.zeros if self.state_init == "zeros" else torch.rand
        return [make((batch, *s), dtype=ref.dtype, device=ref.device) for s in self.state_shapes]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error if ``x: (batch, *input_shape)`` does not fit the model."""
        w = self.connections[0].weight
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise ValueError(f"x has shape {tuple(x.shape)}, expected (batch, *{self.input_shape})")
        if x.dtype != w.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {w.dtype}")
        if x.device != w.device:
            raise ValueError(f"x is on {x.device} but the model's parameters are on {w.device}")

    def check_state(self, state: Sequence[torch.Tensor], batch: int) -> None:
        """Raise a clear error if ``state`` does not match the model and batch."""
        w = self.connections[0].weight
        if len(state) != self.num_layers:
            raise ValueError(f"state has {len(state)} layers, the model has {self.num_layers}")
        for i, (s, shape) in enumerate(zip(state, self.state_shapes)):
            if tuple(s.shape) != (batch, *shape):
                raise ValueError(f"state[{i}] has shape {tuple(s.shape)}, expected {(batch, *shape)}")
            if s.dtype != w.dtype or s.device != w.device:
                raise TypeError(
                    f"state[{i}] is {s.dtype} on {s.device}, the model is {w.dtype} on {w.device}"
                )

    def check_targets(self, y, batch: int) -> None:
        """Targets are class ids ``y: (batch,)`` of an integer dtype, on the model's device, or,
        with KD, ``Targets(labels, features)`` with one teacher tensor per augmented layer."""
        if isinstance(self.augment, Distill):
            feats = getattr(y, "features", None)
            if feats is None or len(feats) != len(self.augment.layers):
                raise ValueError(f"KD needs eqkern.augment.Targets(labels, features) with "
                                 f"{len(self.augment.layers)} teacher feature tensors")
            for j, (f, i) in enumerate(zip(feats, self.augment.layers)):
                if tuple(f.shape) != (batch, *self.state_shapes[i]):
                    raise ValueError(f"teacher features[{j}] have shape {tuple(f.shape)}, layer {i} "
                                     f"needs {(batch, *self.state_shapes[i])}")
        y = labels_of(y)
        if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(
                f"targets must be class ids of shape ({batch},) and integer dtype, "
                f"got shape {tuple(y.shape)} dtype {y.dtype}"
            )
        if y.device != self.connections[0].weight.device:
            raise ValueError(f"targets are on {y.device}, the model on {self.connections[0].weight.device}")

    # -- the pieces of Φ that every backend shares -------------------------------------------

    def drive(self, i: int, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bottom-up drive of state layer ``i`` from its input ``s_in`` (``x`` or ``state[i-1]``).

        Returns ``(u, idx)``: ``u: (batch, *state_shapes[i])`` and the max-pool arg-max indices
        (``None`` without a pool).
        """
        spec, conn = self.specs[i], self.connections[i]
        if isinstance(spec, Conv):
            pre = F.conv2d(s_in, conn.weight, conn.bias, padding=spec.padding)
            if spec.pool:
                return F.max_pool2d_with_indices(pre, 2, 2)
            return pre, None
        return F.linear(s_in.flatten(1), conn.weight, conn.bias), None

    def feedback(
        self, i: int, s_out: torch.Tensor, idx: torch.Tensor | None, in_shape: torch.Size
    ) -> torch.Tensor:
        """Top-down term that state layer ``i`` (above) sends to its input through connection ``i``.

        ``s_out: (batch, *state_shapes[i])``; returns a tensor of ``in_shape`` (the shape of the
        input of connection ``i``): ``conv_transpose(unpool(s_out, idx), W_i)`` or ``W_iᵀ s_out``,
        with ``B_i`` for ``W_i`` when the feedback is separate (``idx`` from :meth:`feedback_indices`).
        """
        spec, weight = self.specs[i], self.feedback_weight(i)
        if isinstance(spec, Conv):
            if spec.pool:
                s_out = self.unpool(i, s_out, idx, in_shape)
            return F.conv_transpose2d(s_out, weight, padding=spec.padding)
        return (s_out @ weight).view(in_shape)

    def unpool(self, i: int, s_out: torch.Tensor, idx: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
        """Scatter pooled ``s_out`` back to the pre-pool map of conv ``i`` (input shape ``in_shape``).

        The output size is given explicitly: with an odd pre-pool size the last row/column was
        dropped by the pool and must come back as zeros.
        """
        spec = self.specs[i]
        pre_hw = (in_shape[-2] + 2 * spec.padding - spec.kernel_size + 1,
                  in_shape[-1] + 2 * spec.padding - spec.kernel_size + 1)
        return F.max_unpool2d(s_out, idx, 2, 2, output_size=pre_hw)

    def logits(self, s_last: torch.Tensor) -> torch.Tensor:
        """Read-out logits ``W_out · flat(s_N) + b_out`` (CE) or ``s_N`` itself (MSE)."""
        if self.out is None:
            return s_last
        return self.out(s_last.flatten(1))

    def loss(self, s_last: torch.Tensor, y, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss summed over the batch: CE of the read-out, or ½‖s_N − onehot(y)‖².

        ``weight: (batch,)``: a weighted sum ``Σ_b w_b L_b`` instead (per-sample β)."""
        y = labels_of(y)
        if self.out is not None:
            if weight is None:
                return F.cross_entropy(self.logits(s_last), y.long(), reduction="sum")
            return (F.cross_entropy(self.logits(s_last), y.long(), reduction="none") * weight).sum()
        onehot = F.one_hot(y.long(), self.num_classes).to(s_last.dtype)
        if weight is None:
            return 0.5 * (s_last - onehot).pow(2).sum()
        return 0.5 * ((s_last - onehot).pow(2).flatten(1).sum(1) * weight).sum()

    def output_nudge(self, s_last: torch.Tensor, y, beta: float | torch.Tensor) -> torch.Tensor:
        """``−β ∂L/∂s_N``: ``β W_outᵀ(onehot(y) − ŷ)`` (CE) or ``−β (s_N − onehot(y))`` (MSE).

        ``beta``: a float or a per-sample ``(batch,)`` tensor."""
        y = labels_of(y)
        onehot = F.one_hot(y.long(), self.num_classes).to(s_last.dtype)
        if self.out is not None:
            err = onehot - torch.softmax(self.logits(s_last), dim=1)
            return (per_sample(beta, err) * (err @ self.out.weight)).view_as(s_last)
        return per_sample(beta, s_last) * (onehot - s_last)

    # -- skip links (FRE-RNN residual connections) ------------------------------------------

    def skip_drives(self, state: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Bottom-up skip terms ``Σ_i R_ij s_i`` of every target layer ``j``, from ``state``."""
        out: dict[int, torch.Tensor] = {}
        for (i, j), link in zip(self.skips, self.skip_links):
            r = link(state[i])
            out[j] = r if j not in out else out[j] + r
        return out

    def skip_feedback(self, i: int, state: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """Top-down skip term ``Σ_j R_ijᵀ s_j`` of source layer ``i`` (None if it has no link)."""
        total = None
        for (src, j), link in zip(self.skips, self.skip_links):
            if src == i:
                r = link.transpose(state[j])
                total = r if total is None else total + r
        return total

    # -- augmentation (LE / KD / KDW) ------------------------------------------------------

    def aux_module(self, j: int) -> nn.Module | None:
        """The learned map of augmented layer number ``j`` (``B_j`` or ``M_j``), if any."""
        return self.aux[j] if len(self.aux) else None

    def augmented_loss(
        self, state: Sequence[torch.Tensor], y, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``κ Σ_{i∈Υ} L_aug,i(s_i)`` summed over the batch (0 without augmentation); with
        ``weight: (batch,)`` each sample's term is weighted (per-sample β)."""
        if self.augment is None:
            return state[-1].new_zeros(())
        return self.kappa * sum(aux_loss(self.augment, self.aux_module(j), j, state[i], y, weight)
                                for j, i in enumerate(self.augment.layers))

    def total_loss(self, state: Sequence[torch.Tensor], y) -> torch.Tensor:
        """``L_EP + κ Σ L_aug``: what EP's estimate (Lin eq. 12) and BPTT descend."""
        return self.loss(state[-1], y) + self.augmented_loss(state, y)

    def layer_nudge(self, i: int, s: torch.Tensor, y, beta: float | torch.Tensor) -> torch.Tensor | None:
        """All nudge terms of state layer ``i`` (``−β ∂L_EP/∂s_i − βκ ∂L_aug/∂s_i``), or None.

        ``beta``: a float or a per-sample ``(batch,)`` tensor."""
        nudge = self.output_nudge(s, y, beta) if i == self.num_layers - 1 else None
        if self.augment is not None and i in self.augment.layers:
            j = self.augment.layers.index(i)
            mod = self.aux_module(j)
            err = aux_error(self.augment, mod, j, s, y)
            aux = aux_readout_transpose(self.augment, mod, err, s) * (-per_sample(beta, s) * self.kappa)
            nudge = aux if nudge is None else nudge + aux
        return nudge

    def predict(self, state: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predicted class ids ``(batch,)`` from a (free-phase) state."""
        return self.logits(state[-1]).argmax(dim=1)
