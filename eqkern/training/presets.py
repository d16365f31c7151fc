"""Named presets of the published configurations (Lin Tables 5-6, Laborieux Table 3, Liu Tables 1-2).

A :class:`Preset` is everything :func:`eqkern.train_vgg` needs: the architecture (a tuple of
:class:`~eqkern.Conv` / :class:`~eqkern.Linear` specs at full width), the EP phases, the
optimiser, the augmentation and the κ schedule. ``get_preset(name, **overrides)`` returns one
with any field replaced (``width=1/8`` divides every hidden width by 8, ``t_free=…`` shortens the
phases, ...); ``list_presets()`` names them all. ``notes`` says where a paper is silent and
what we chose.

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

import ast
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Sequence

from eqkern.dynamics.convergence import check_stop_args
from eqkern.model.crnn import Conv, Linear, LayerSpec

__all__ = ["Preset", "PRESETS", "get_preset", "list_presets", "parse_overrides", "format_presets",
           "vgg_arch", "scale_arch", "expand_lr"]

HS = "hard_sigmoid"


@dataclass(frozen=True)
class Preset:
    """One training configuration. Fields mirror the papers' hyper-parameter tables."""

    name: str
    source: str                                  # paper and table it reproduces
    dataset: str                                 # eqkern.data.datasets name
    arch: tuple[LayerSpec, ...]                  # full-width layer specs
    readout: str = "ce"                          # "ce" (soft-max read-out) or "mse"
    beta: float = 0.5
    t_free: int = 250
    t_nudge: int = 50
    estimator: str = "symmetric"                 # symmetric | one_sided | random_sign
    method: str = "ep"                           # ep (any estimator/rule) | bptt | bp (feed-forward backprop)
    truncate: int | None = None                  # bptt: steps the graph covers (None: all of t_free)
    feedback: str = "symmetric"                  # symmetric | separate (B_l, Laborieux §2.4)
    rule: str | None = None                      # None: ep (symmetric) / kp-vf (separate) | ep | fre | vf | kp-vf
    leakage: float = 0.0                         # KP-VF λ on W_l, B_l (weight_decay acts too)
    schedule: str = "synchronous"                # synchronous | alternating (even, then odd layers)
    tol: float | None = None                     # convergence stop of every phase (None: fixed T, K)
    check_every: int = 10                        # steps between two convergence checks
    batched_nudge: bool = False                  # the ±β phases as one batch of 2B
    skips: str = "none"                          # none | residual (every skip_every layers) | random (AGT)
    skip_every: int = 3                          # residual: links (0, k), (k, 2k), … between state layers
    skip_p: float = 0.2                          # random: probability of each pair (i, j), j > i + 1
    skip_seed: int = 0                           # random: seed of the topology
    lr: tuple[float, ...] = (0.03,)              # one per weight layer (read-out included), or one for all
    optimizer: str = "sgd"                       # sgd | adam (or pass any torch.optim class to train_vgg)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    cosine: bool = True                          # cosine annealing of the learning rates
    cosine_epochs: int | None = None             # its period T_max (None: the number of epochs)
    lr_min: float = 1e-5                         # its eta_min
    batch_size: int = 128
    epochs: int = 250
    init_scale: float = 1.0                      # factor on PyTorch's Kaiming-uniform init
    state_init: str = "zeros"                    # zeros | uniform (U(0,1))
    augment: str = "none"                        # none | le | kd | kdw
    augment_layers: tuple[int, ...] = ()         # state-layer indices (0-based)
    tau: float = 4.0
    le_learn: bool = True                        # LE projections B_i learned (eq. 20) or frozen
    kappa: float = 0.0                           # κ_init
    kappa_schedule: str = "constant"             # constant | linear | exponential | cosine | step
    kappa_epochs: int | None = None              # E_total of eq. 14 (None: the number of epochs)
    kappa_min: float = 0.0
    kappa_gamma: float = 0.02
    data_augmentation: str = "crop_flip"         # crop_flip | none
    crop_padding: int = 4
    teacher_arch: str | None = None              # KD: eqkern.teacher architecture
    teacher_path: str | None = None              # KD: checkpoint written by train_teacher
    width: float = 1.0                           # factor on every hidden width (tests, CPU runs)
    train_size: int | None = None                # keep the first n training examples
    test_size: int | None = None
    backend: str | None = None
    seed: int = 0
    eval_batch_size: int = 500
    notes: str = ""

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

    def skip_pairs(self) -> tuple[tuple[int, int], ...]:
        """The skip links ``(i, j)`` of the state layers (:mod:`eqkern.model.skips`)."""
        from eqkern.model.skips import random_skips, residual_skips

        if self.skips == "residual":
            return residual_skips(len(self.arch), self.skip_every)
        if self.skips == "random":
            return random_skips(len(self.arch), self.skip_p, self.skip_seed)
        return ()

    def learning_rates(self) -> list[float]:
        """One learning rate per weight layer (connections + the CE read-out)."""
        return expand_lr(self.lr, len(self.arch) + (1 if self.readout == "ce" else 0))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arch"] = [_spec_str(s) for s in self.arch]
        return d


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
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
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
        raise ValueError(f"lr has {len(rates)} rates but the model has {n} weight layers "
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
]

PRESETS: dict[str, Preset] = {p.name: p for p in _LIST}
_FIELDS = {f.name: f for f in fields(Preset)}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset, **overrides: Any) -> Preset:
    """The preset ``name`` with ``overrides`` applied (any :class:`Preset` field)."""
    if isinstance(name, Preset):
        base = name
    else:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        base = PRESETS[name]
    bad = sorted(set(overrides) - set(_FIELDS))
    if bad:
        raise ValueError(f"unknown preset field(s) {', '.join(bad)}; fields: {', '.join(_FIELDS)}")
    for key in ("lr", "augment_layers", "arch"):
        if key in overrides and not isinstance(overrides[key], (tuple, str)):
            v = overrides[key]
            overrides[key] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    p = dataclasses.replace(base, **overrides)
    _validate(p)
    return p


def _validate(p: Preset) -> None:
    choices = {"readout": ("ce", "mse"), "estimator": ("symmetric", "one_sided", "random_sign"),
               "feedback": ("symmetric", "separate"), "rule": (None, "ep", "fre", "vf", "kp-vf"),
               "schedule": ("synchronous", "alternating"),
               "skips": ("none", "residual", "random"),
               "state_init": ("zeros", "uniform"), "augment": ("none", "le", "kd", "kdw"),
               "data_augmentation": ("crop_flip", "none"),
               "kappa_schedule": ("constant", "linear", "exponential", "cosine", "step")}
    for key, ok in choices.items():
        if getattr(p, key) not in ok:
            raise ValueError(f"{key} must be one of {ok}, got {getattr(p, key)!r}")
    for key in ("t_free", "t_nudge", "batch_size", "epochs"):
        if int(getattr(p, key)) <= 0:
            raise ValueError(f"{key} must be positive, got {getattr(p, key)}")
    if p.rule in ("vf", "kp-vf") and p.feedback != "separate":
        raise ValueError(f"rule={p.rule!r} needs feedback='separate'")
    if not p.leakage >= 0.0:
        raise ValueError(f"leakage must be >= 0, got {p.leakage}")
    check_stop_args(p.tol, p.check_every)
    if p.augment != "none" and not p.augment_layers:
        raise ValueError(f"augment={p.augment!r} needs augment_layers")
    if any(not 0 <= i < len(p.arch) for i in p.augment_layers):
        raise ValueError(f"augment_layers {p.augment_layers} must name state layers 0..{len(p.arch) - 1}")
    p.learning_rates()
    p.skip_pairs()


def parse_overrides(items: Sequence[str], base: Preset | None = None) -> dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--set``) as typed overrides.

    Values are Python literals (``0.5``, ``(1, 2)``, ``None``, ``True``), comma lists
    (``0.03,0.05``) or bare strings (``cosine``); ``width=1/8`` is allowed too.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = (t.strip() for t in item.split("=", 1))
        if key not in _FIELDS:
            raise ValueError(f"unknown preset field {key!r}; fields: {', '.join(_FIELDS)}")
        out[key] = _parse_value(key, raw, base)
    return out


def _parse_value(key: str, raw: str, base: Preset | None) -> Any:
    if key in ("lr", "augment_layers"):
        parts = [t for t in raw.strip("()[] ").split(",") if t.strip()]
        conv = int if key == "augment_layers" else float
        return tuple(conv(ast.literal_eval(t.strip())) for t in parts)
    if key == "arch":
        raise ValueError("arch cannot be set from the command line; use the Python API")
    if "/" in raw and key == "width":
        num, den = raw.split("/", 1)
        return float(num) / float(den)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    current = getattr(base, key) if base is not None else None
    if isinstance(current, bool) and isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    return value


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
