"""Named presets of the published configurations (Lin Tables 5-6, Laborieux Table 3, Liu Tables 1-2).

A :class:`Preset` is everything :func:`eqkern.train_vgg` needs: the architecture (a tuple of
:class:`~eqkern.Conv` / :class:`~eqkern.Linear` specs at full width), the EP phases, the
optimiser, the augmentation and the κ schedule. ``get_preset(name, **overrides)`` returns one
with any field replaced (``width=1/8`` divides every hidden width by 8, ``t_free=…`` shortens the
phases, ...), each checked against its declared type (the sections of
:mod:`eqkern.training.config`); ``list_presets()`` names them all. ``notes`` says where a paper
is silent and what we chose. :func:`TrainConfig` is the ``demo-mnist`` preset with overrides.

Architecture of Lin et al. (App. C, Table 4, and the learning-rate lists of Tables 5-6, whose
length is the number of weight layers, the soft-max read-out included):

* VGG-7   = 5 convs (64-128-256-512-512, one per block) + FC-512 + read-out        (7 layers)
* VGG-10  = 8 convs, VGG-11 conv layout  (64 | 128 | 256×2 | 512×2 | 512×2) + FC-512 + read-out
* VGG-11  = the same 8 convs + FC-512 ×2 + read-out
* VGG-12  = 10 convs, VGG-13 conv layout (64×2 | 128×2 | 256×2 | 512×2 | 512×2) + FC-512 + read-out
* VGG-13  = the same 10 convs + FC-512 ×2 + read-out

Every conv is 3×3, stride 1, padding 1; the last conv of each block has the 2×2 max-pool.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from typing import Any, Sequence

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model.crnn import Conv, Linear, LayerSpec
from eqkern.training.config import (SECTIONS, AugmentSection, DataSection, LabelSection,
                                    ModelSection, OptimSection, PhaseSection, RunSection,
                                    check_field, describe_type, field_types, parse_field,
                                    validate_section)
from eqkern.validate import as_float

__all__ = ["Preset", "PRESETS", "TrainConfig", "get_preset", "list_presets", "parse_overrides",
           "format_presets", "field_rows", "vgg_arch", "scale_arch", "expand_lr"]

HS = "hard_sigmoid"


@dataclass(frozen=True)
class Preset(RunSection, AugmentSection, OptimSection, PhaseSection, ModelSection, DataSection,
             LabelSection):
    """One training configuration: the fields of every section of :mod:`eqkern.training.config`
    (label, data, model, phases, optimiser, augmentation, run), flat. Positional: ``name``,
    ``source``, ``dataset``, ``arch``; the rest by keyword. Fields mirror the papers' tables."""

    # -- derived -----------------------------------------------------------------------------

    @property
    def activation(self) -> str:
        names = sorted({s.activation for s in self.arch})
        return names[0] if len(names) == 1 else ", ".join(
            f"{a} ({'/'.join(sorted({type(s).__name__.lower() for s in self.arch if s.activation == a}))})"
            for a in names)

    def layers(self) -> tuple[LayerSpec, ...]:
        """The architecture at ``width`` (the MSE output layer keeps its ``num_classes`` units)."""
        return scale_arch(self.arch, self.width, keep_last=self.readout == "mse")

    def learning_rates(self) -> list[float]:
        """One learning rate per weight layer (connections + the CE read-out)."""
        return expand_lr(self.lr, len(self.arch) + (1 if self.readout == "ce" else 0))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arch"] = [_spec_str(s) for s in self.arch]
        return d

    def sections(self) -> dict[str, Any]:
        """The preset as its sections, ``{"label": LabelSection(...), "data": ..., "run": ...}``."""
        return {_section_key(cls): cls(**{f.name: getattr(self, f.name) for f in fields(cls)})
                for cls in SECTIONS}

    def validate(self) -> None:
        """Each section's checks, then those that span sections (ValueError naming the field)."""
        for section in SECTIONS:
            validate_section(self, section)
        if self.rule in ("vf", "kp-vf") and self.feedback != "separate":
            raise ArgumentError(f"rule={self.rule!r} needs feedback='separate'")
        if any(not 0 <= i < len(self.arch) for i in self.augment_layers):
            raise ArgumentError(f"augment_layers {self.augment_layers} must name state layers "
                             f"0..{len(self.arch) - 1}")
        self.learning_rates()


def _section_key(cls) -> str:
    return cls.__name__.removesuffix("Section").lower()


# --- architecture helpers --------------------------------------------------------------------

def vgg_arch(blocks: Sequence[Sequence[int]], fc: Sequence[int], *, conv_act: str = HS,
             fc_act: str = HS) -> tuple[LayerSpec, ...]:
    """Convs (3×3, padding 1) grouped in blocks with a max-pool after each block's last conv,
    then fully connected hidden layers."""
    layers: list[LayerSpec] = []
    for block in blocks:
        for k, c in enumerate(block):
            layers.append(Conv(c, 3, 1, pool=k == len(block) - 1, activation=conv_act))
    layers += [Linear(n, activation=fc_act) for n in fc]
    return tuple(layers)


def scale_arch(arch: Sequence[LayerSpec], width: float, *, keep_last: bool = False) -> tuple[LayerSpec, ...]:
    """Every Conv's channels and Linear's units times ``width`` (at least 1)."""
    width = as_float("width", width, minimum=0.0, exclusive_min=True)
    out = []
    for i, s in enumerate(arch):
        if keep_last and i == len(arch) - 1:
            out.append(s)
        elif isinstance(s, Conv):
            out.append(dataclasses.replace(s, out_channels=max(1, round(s.out_channels * width))))
        else:
            out.append(dataclasses.replace(s, out_features=max(1, round(s.out_features * width))))
    return tuple(out)


def expand_lr(lr: Sequence[float] | float, n: int) -> list[float]:
    rates = [float(lr)] if isinstance(lr, (int, float)) else [float(r) for r in lr]
    if len(rates) == 1:
        return rates * n
    if len(rates) != n:
        raise ArgumentError(f"lr has {len(rates)} rates but the model has {n} weight layers "
                         f"(connections + read-out); give one rate or {n}")
    return rates


def _rep(*pairs: tuple[float, int]) -> tuple[float, ...]:
    """Lin's ``[LR × N, ...]`` notation."""
    return tuple(r for rate, n in pairs for r in [rate] * n)


def _spec_str(s: LayerSpec) -> str:
    if isinstance(s, Conv):
        txt = f"conv{s.kernel_size}-{s.out_channels}" + ("" if s.padding == 1 else f"-p{s.padding}")
        txt += "+pool" if s.pool else ""
    else:
        txt = f"fc-{s.out_features}"
    extra = [] if s.activation == HS else [s.activation]
    extra += [f"a={s.alpha:g}"] if s.alpha != 1.0 else []
    extra += [f"g={s.gamma:g}"] if s.gamma != 1.0 else []
    return txt + (f"({','.join(extra)})" if extra else "")


# --- the presets -----------------------------------------------------------------------------

_VGG7 = ((64,), (128,), (256,), (512,), (512,))
_VGG11 = ((64,), (128,), (256, 256), (512, 512), (512, 512))      # VGG-10 / VGG-11 convs
_VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))  # VGG-12 / VGG-13 convs

_LIN = "Lin et al. 2025"
_COMMON_LIN = (
    "τ = 4, SGD + momentum 0.9, weight decay 3e-4, cosine annealing of the learning rate (eta_min "
    "1e-5 and period = epochs: the paper names Loshchilov & Hutter but gives neither), cosine κ "
    "schedule with κ_min = 0 and E_total = epochs (App. E: 250); random crop (padding 4) + flip. "
    "The paper does not give the learning rate of the LE projections / KDW maps: they use the "
    "rate of the connection that feeds their layer.")
_LE_NOTE = ("LE on the last conv of blocks 2-5 (Lin §4.2); projections B_i learned by eq. 20; "
            "states start at zeros.")
_KD_NOTE = ("KD on the last conv of every block (after its pool), where the teacher's block "
            "outputs have the same shape; states start at U(0,1).")
_DEEP_NOTE = ("Block layout: Lin's App. C lists only the block widths; the lengths of the "
              "learning-rate lists of Tables 5-6 fix the number of convs (VGG-10/11: 8, "
              "VGG-12/13: 10) and the hidden FC layers (LE: 2, KD: 1, as Table 4's caption says). "
              "We place the convs as the standard VGG-11 (config A: 1-1-2-2-2) and VGG-13 "
              "(config B: 2-2-2-2-2) do.")

_LIU = "Liu & Chen (FRE-RNN)"
_MLP_NOTE = (
    "FRE-RNN layered net: tanh hidden layers, soft-max read-out, feedback scale γ (the paper's "
    "β_i) on every hidden layer that has one above it, forward scale α = 1, nudge β_f = 0.1 (the "
    "paper's layered default), two-phase EP with the paper's rule ΔW = ds·sᵀ (rule='fre'), Adam "
    "(rate 1e-3, Table S2), batch 500, 50 epochs, no weight decay, constant rate, no data "
    "augmentation. Not followed, our choice: the paper's code has no biases (zero, not learned) "
    "and a Xavier-uniform init; ours are PyTorch's Linear defaults (learned biases, Kaiming-uniform, "
    "0.5-0.6× Xavier's range); eqkern's MNIST normalisation instead of raw [0, 1] pixels. The "
    "paper's code feeds back the free phase's output error at every nudged step (models_LN.py; "
    "models_LN_G.py, used for the residual nets, even adds it once more per step); we recompute it "
    "from the current state, as Algorithm 1 (line 15) writes.")
_RES_NOTE = (
    "Residual links (Fig. 3a, Algorithm S3, their make_W_conn(startres=1, block_size=3)): hidden "
    "layers 1→4, 4→7, 7→10, … (state layers (0, 3), (3, 6), …), symmetric, no bias, in the energy; "
    "forward skip scaled by α, feedback skip by γ, as their code scales every forward/feedback "
    "block. The caption of Table 2 gives T = 10·N, K = 5·N (used here); their residual notebook "
    "runs T = 5·N, K = 2·N.")


def _mlp_preset(name: str, table: str, depth: int, width: int, gamma: float, t_free: int,
                t_nudge: int, note: str, skips: str = "none") -> Preset:
    """A FRE-RNN layered MNIST preset: ``depth`` tanh layers of ``width`` units."""
    arch = tuple(Linear(width, activation="tanh", gamma=gamma if k < depth - 1 else 1.0)
                 for k in range(depth))
    return Preset(name, f"{_LIU}, {table}", "mnist", arch, readout="ce", beta=0.1, t_free=t_free,
                  t_nudge=t_nudge, estimator="one_sided", rule="fre", lr=(1e-3,),
                  optimizer="adam", momentum=0.0, weight_decay=0.0, cosine=False, batch_size=500,
                  epochs=50, data_augmentation="none", skips=skips, notes=f"{note} {_MLP_NOTE}")


_LIST: list[Preset] = [
    Preset("vgg7-le-cifar10", f"{_LIN}, Table 5 (VGG-7-LE)", "cifar10", vgg_arch(_VGG7, (512,)),
           beta=0.25, t_free=250, t_nudge=50, lr=_rep((0.03, 7)), batch_size=128, epochs=250,
           augment="le", augment_layers=(1, 2, 3, 4), kappa=0.65, kappa_schedule="cosine",
           notes=f"{_LE_NOTE} {_COMMON_LIN}"),
    Preset("vgg7-kd-cifar10", f"{_LIN}, Table 5 (VGG-7-KD)", "cifar10", vgg_arch(_VGG7, (512,)),
           beta=0.15, t_free=250, t_nudge=60, lr=_rep((0.03, 7)), batch_size=64, epochs=250,
           state_init="uniform", augment="kd", augment_layers=(0, 1, 2, 3, 4), kappa=0.65,
           kappa_schedule="cosine", teacher_arch="vgg19",
           notes=f"{_KD_NOTE} Teacher: VGG-19 (93.37 % in the paper). {_COMMON_LIN}"),
    Preset("vgg7-kdw-cifar10", f"{_LIN}, Table 5 (VGG-7-KDW)", "cifar10", vgg_arch(_VGG7, (512,)),
           beta=0.5, t_free=100, t_nudge=50, lr=_rep((0.03, 7)), batch_size=128, epochs=250,
           state_init="uniform", augment="kdw", augment_layers=(0, 1, 2, 3, 4), kappa=0.15,
           kappa_schedule="cosine", teacher_arch="vgg19",
           notes=(f"{_KD_NOTE} KDW map: the paper says 'a linear mapping' without its shape; we use "
                  f"a learned 1×1-conv channel map per layer initialised to the identity "
                  f"(eqkern.model.auxiliary). Teacher: VGG-19. {_COMMON_LIN}")),
    Preset("vgg11-le-cifar100", f"{_LIN}, Table 6 (VGG-11-LE)", "cifar100",
           vgg_arch(_VGG11, (512, 512)), beta=1.0, t_free=400, t_nudge=40,
           lr=_rep((0.03, 1), (0.05, 7), (0.025, 3)), batch_size=128, epochs=250, init_scale=0.5,
           augment="le", augment_layers=(1, 3, 5, 7), kappa=0.85, kappa_schedule="cosine",
           notes=f"{_LE_NOTE} Kaiming init × 0.5 (App. D). {_DEEP_NOTE} {_COMMON_LIN}"),
    Preset("vgg13-le-cifar100", f"{_LIN}, Table 6 (VGG-13-LE)", "cifar100",
           vgg_arch(_VGG13, (512, 512)), beta=1.0, t_free=140, t_nudge=50,
           lr=_rep((0.03, 2), (0.05, 8), (0.025, 3)), batch_size=128, epochs=250, init_scale=0.5,
           augment="le", augment_layers=(3, 5, 7, 9), kappa=0.85, kappa_schedule="cosine",
           notes=f"{_LE_NOTE} Kaiming init × 0.5 (App. D). {_DEEP_NOTE} {_COMMON_LIN}"),
    Preset("vgg10-kd-cifar100", f"{_LIN}, Table 6 (VGG-10-KD)", "cifar100",
           vgg_arch(_VGG11, (512,)), beta=0.5, t_free=130, t_nudge=50,
           lr=_rep((0.03, 2), (0.05, 6), (0.025, 2)), batch_size=128, epochs=250,
           state_init="uniform", augment="kd", augment_layers=(0, 1, 3, 5, 7), kappa=0.85,
           kappa_schedule="cosine", teacher_arch="vgg16",
           notes=f"{_KD_NOTE} Teacher: VGG-16 (73.69 %). {_DEEP_NOTE} {_COMMON_LIN}"),
    Preset("vgg12-kd-cifar100", f"{_LIN}, Table 6 (VGG-12-KD)", "cifar100",
           vgg_arch(_VGG13, (512,), conv_act="relu"), beta=1.0, t_free=100, t_nudge=15,
           lr=_rep((0.03, 2), (0.05, 8), (0.025, 2)), batch_size=256, epochs=250, init_scale=0.5,
           state_init="uniform", augment="kd", augment_layers=(1, 3, 5, 7, 9), kappa=0.65,
           kappa_schedule="linear", teacher_arch="vgg15",
           notes=(f"{_KD_NOTE} ReLU in the conv layers, hard sigmoid in the FC layer, Kaiming × 0.5 "
                  f"and a linear κ schedule (App. D). Teacher: 'VGG-15' (70.96 %), not a standard "
                  f"VGG: we take VGG-16's 13 convs with one hidden FC (13 + 2 = 15 layers). "
                  f"{_DEEP_NOTE} {_COMMON_LIN}")),
    Preset("vgg5-ce-cifar10", "Laborieux et al. 2021, Table 3 (cross-entropy)", "cifar10",
           (Conv(128), Conv(256), Conv(512), Conv(512, padding=0)), readout="ce", beta=1.0,
           t_free=250, t_nudge=25, lr=(0.25, 0.15, 0.1, 0.08, 0.05), batch_size=128, epochs=120,
           cosine_epochs=100, lr_min=1e-5, weight_decay=3e-4,
           notes=("Four 3×3 convs 128-256-512-512, padding 1 except the last (0), each followed by "
                  "a 2×2 max-pool, flattened 512, soft-max read-out (App. E.1). Cosine annealing with "
                  "decay time 100 epochs over 120 (PyTorch's CosineAnnealingLR(T_max=100), as their "
                  "code: the rate rises again after epoch 100). Hard sigmoid clamp(u/2, 0, 1). "
                  "Symmetric three-phase estimate, states start at zeros, no augmentation signal.")),
    Preset("vgg5-mse-cifar10", "Laborieux et al. 2021, Table 3 (squared error)", "cifar10",
           (Conv(128), Conv(256), Conv(512), Conv(512, padding=0), Linear(10)), readout="mse",
           beta=0.5, t_free=250, t_nudge=30, lr=(0.25, 0.15, 0.1, 0.08, 0.05), batch_size=128,
           epochs=120, cosine_epochs=100, lr_min=1e-5, weight_decay=3e-4,
           notes=("As vgg5-ce-cifar10, but the 10 output units are the last state layer "
                  "(squared-error loss, no read-out). Five learning rates: four convs + the output.")),
    Preset("frernn-conv-mnist", f"{_LIU}, Table 1 / Table S3 (conv, 'Ours (hard-sigmoid)')",
           "mnist",
           (Conv(32, 5, 0, activation="clamp01", gamma=0.01),
            Conv(64, 5, 0, activation="clamp01", gamma=0.01)),
           readout="ce", beta=0.25, t_free=20, t_nudge=10, estimator="one_sided", rule="fre",
           lr=(0.15, 0.35, 0.9), momentum=0.0, weight_decay=1e-5, cosine=False,
           batch_size=128, epochs=40, data_augmentation="none",
           notes=("Ernoult et al.'s conv net in FRE-RNN form (Fig. 1b): conv5-32 (padding 0) + "
                  "pool, conv5-64 + pool, soft-max read-out; hard sigmoid = clamp(u, 0, 1); "
                  "feedback scale γ = 0.01 (the paper's β_i); nudge β_f = 0.25 (their conv default); "
                  "two-phase EP with the paper's rule ΔW = ds·sᵀ (rule='fre', no 1/β, read-out at "
                  "the free state), T = 20, K = 10, batch 128, 40 epochs, SGD with the rates "
                  "[0.15, 0.35, 0.9] of Table S3 (conv1, conv2, read-out), weight decay 1e-5. Not "
                  "stated, our choice: no momentum, constant rate, eqkern's MNIST normalisation (the "
                  "paper uses raw [0, 1] pixels), PyTorch's default init. Difference in form: the "
                  "paper's (Ernoult's) conv states are taken before the pool and pooled on the way up "
                  "(Algorithm S2); ours are after the pool (Laborieux's Φ). Both give the same "
                  "feed-forward pass (max-pool commutes with a monotone ρ) but the feedback into "
                  "s_1 differs. Feedback weights B = Wᵀ (symmetric), as in Table 1.")),
    _mlp_preset("frernn-mlp2-mnist", "Table 1 (2HL, 'Ours (tanh, Adam)')", 2, 512, 0.01, 10, 10,
                "Table 1: 98.39 % test in 1 min 16 s on an RTX A5000 (T/K 10/10, batch 500, "
                "50 epochs). β_i = 0.01 as the caption says (the paper's notebook "
                "Layered_BP_EP_com_MNIST_512 uses bsc = 0.1)."),
    _mlp_preset("frernn-mlp3-mnist", "Table 1 (3HL, 'Ours (tanh, Adam)')", 3, 512, 0.01, 18, 10,
                "Table 1: 98.36 % (T/K 18/10). The SGD variants of Table 1 ('Ours (tanh)', batch "
                "20, rate 0.1, 100 epochs; 'Ours-DLR') are this preset with "
                "--set optimizer=sgd batch_size=20 lr=0.1 epochs=100 momentum=0."),
    _mlp_preset("frernn-mlp5-mnist", "Table 2 (5-symm, 'Ours')", 5, 64, 0.1, 50, 25,
                "Table 2: 97.64 % test."),
    _mlp_preset("frernn-mlp10-mnist", "Table 2 (10-symm, 'Ours')", 10, 64, 0.1, 100, 50,
                "Table 2: 92.49 % test (vanishing gradient under weak feedback)."),
    _mlp_preset("frernn-mlp10-res-mnist", "Table 2 (10-symm, 'Ours-Residual')", 10, 64, 0.1, 100,
                50, f"Table 2: 97.49 % test. {_RES_NOTE}", skips="residual"),
    _mlp_preset("frernn-mlp20-res-mnist", "Table 2 (20-symm, 'Ours-Residual')", 20, 64, 0.1, 200,
                100, f"Table 2: 95.95 % test. {_RES_NOTE}", skips="residual"),
    _mlp_preset("frernn-mlp10-agt-mnist", "Table 2 / Fig. 3c (10 layers, arbitrary graph topology)",
                10, 64, 0.1, 100, 50,
                "Each pair of non-adjacent hidden layers linked with probability P = 0.2 (Fig. S8's "
                "best), topology drawn from skip_seed. NOT the paper's configuration: its AGT runs "
                "(96.87 %) use asymmetric, fixed random feedback weights, which eqkern does not "
                "implement; here every link is symmetric (in the energy).",
                skips="random"),
    Preset("demo-mnist", "eqkern demo (`make demo`)", "mnist_subset", (Conv(16), Conv(32)),
           readout="ce", beta=0.5, t_free=20, t_nudge=6, estimator="symmetric", method="ep",
           lr=(0.05,), momentum=0.9, weight_decay=0.0, cosine=True, lr_min=1e-5, batch_size=64,
           epochs=3, data_augmentation="none", backend=None, seed=0, eval_batch_size=500,
           tol=None,  # fixed T: its 20/6-step phases are shorter than the convergence check
           notes=("Not a paper configuration: the `make demo` network, two 3×3 convs (16, 32 "
                  "channels, each with a 2×2 max-pool) and a soft-max read-out on the embedded "
                  "MNIST subset, with the defaults of eqkern.train (TrainConfig): SGD + momentum "
                  "0.9, no weight decay, cosine annealing to 1e-5, no data augmentation.")),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _LIST}
_TYPES = field_types(Preset)


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset, **overrides: Any) -> Preset:
    """The preset ``name`` with ``overrides`` applied (any :class:`Preset` field, checked against
    its declared type: ``lr=0.1`` and ``lr=[0.1, 0.2]`` become tuples, ``beta="abc"`` fails)."""
    if isinstance(name, Preset):
        base = name
    else:
        if name not in PRESETS:
            raise ArgumentError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        base = PRESETS[name]
    for key in overrides:
        _check_known(key)
    p = dataclasses.replace(base, **{k: check_field(k, v, _TYPES) for k, v in overrides.items()})
    p.validate()
    return p


def _validate(p: Preset) -> None:
    p.validate()


def TrainConfig(**overrides: Any) -> Preset:  # noqa: N802 - was a class; kept as a constructor
    """The configuration of :func:`eqkern.train`: the ``demo-mnist`` preset with ``overrides``
    (any :class:`Preset` field; ``lr`` one rate or one per weight layer). Its defaults: 3 epochs,
    batch 64, EP, T_free 20, T_nudge 6, β 0.5, symmetric estimator, lr 0.05, momentum 0.9, no
    weight decay, cosine annealing to 1e-5, seed 0, evaluation batch 500."""
    return get_preset("demo-mnist", **overrides)


def _check_known(key: str) -> None:
    if key not in _TYPES:
        close = difflib.get_close_matches(key, _TYPES, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"fields: {', '.join(_TYPES)}"
        raise ArgumentError(f"unknown preset field {key!r}; {hint}")


def parse_overrides(items: Sequence[str], base: Preset | None = None) -> dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--set``) as typed overrides, each value read by its
    field's declared type (:func:`eqkern.training.config.parse_field`): bools ``true``/``false``
    (or ``1``/``0``), ints, numbers (``1/8`` too), ``none`` where a field may be None, comma
    lists (``0.03,0.05``), and for choice fields only their choices. A ValueError names the
    field, the value and the expected type. ``base`` is not needed (kept for old callers)."""
    if isinstance(items, str):  # one string would be read character by character
        raise ArgumentTypeError(f"items must be a list of 'key=value' strings, got {items!r}")
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ArgumentError(f"--set expects key=value, got {item!r}")
        key, raw = (t.strip() for t in item.split("=", 1))
        _check_known(key)
        out[key] = parse_field(key, raw, _TYPES)
    return out


def field_rows(p: Preset) -> list[tuple[str, str, Any, str]]:
    """``(section, field, value, type in words)`` of every field (``eqkern presets --name``)."""
    d = p.to_dict()
    return [(key, f.name, d[f.name], describe_type(*_TYPES[f.name]))
            for key, sec in p.sections().items() for f in fields(sec)]


def _skips_str(p: Preset) -> str:
    if p.skips == "residual":
        return f" (residual every {p.skip_every})"
    if p.skips == "random":
        return f" (random P={p.skip_p:g}, seed {p.skip_seed})"
    return ""


def format_presets() -> str:
    """A Markdown table of every preset (what ``eqkern presets`` prints)."""
    rows = ["| name | data | arch | readout | β | T_free/T_nudge | lr | batch | epochs | wd | "
            "init | states | ρ | aug (layers) | κ (schedule) | teacher | rule (skips) |",
            "|" + " --- |" * 17]
    for p in PRESETS.values():
        lr = p.lr
        lr_txt = ", ".join(f"{r:g}" for r in lr) if len(set(lr)) > 1 else f"{lr[0]:g} ×{len(lr)}"
        aug = "—" if p.augment == "none" else f"{p.augment.upper()} {list(p.augment_layers)}"
        kap = "—" if p.augment == "none" else f"{p.kappa:g} ({p.kappa_schedule})"
        rows.append(
            f"| {p.name} | {p.dataset} | {' '.join(_spec_str(s) for s in p.arch)} | {p.readout} | "
            f"{p.beta:g} | {p.t_free}/{p.t_nudge} | {lr_txt} | {p.batch_size} | {p.epochs} | "
            f"{p.weight_decay:g} | ×{p.init_scale:g} | {p.state_init} | {p.activation} | {aug} | "
            f"{kap} | {p.teacher_arch or '—'} | {p.rule or 'ep'}{_skips_str(p)} |")
    return "\n".join(rows)
