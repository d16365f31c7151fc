"""BP-trained VGG teachers for knowledge distillation (Lin et al. §3.2, App. D).

A teacher is a plain ``torch.nn`` VGG: five blocks of (3×3 conv, padding 1, BatchNorm, ReLU)
followed by a 2×2 max-pool, then a small classifier. The block widths are 64-128-256-512-512 like
the student CRNNs of Lin App. C, so the output of block ``k`` (after its pool) has exactly the
shape of the student's state at the last conv of its block ``k``: KD needs no map
(:func:`teacher_features` returns them). Conv layouts per block: vgg11 (1-1-2-2-2), vgg13
(2-2-2-2-2), vgg16 (2-2-3-3-3), vgg19 (2-2-4-4-4) with two hidden FC-512 layers; vgg15 is vgg16's
13 convs with one hidden FC (13 + 2 = 15 weight layers; Lin's 'VGG-15' is not a standard VGG);
vgg7, vgg10, vgg12 mirror the students (1-1-1-1-1, 1-1-2-2-2, 2-2-2-2-2 with one hidden FC).

Training (``eqkern.train_teacher``) and checkpoints are in :mod:`eqkern.training.teacher`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from eqkern.errors import ArgumentError
from eqkern.validate import as_float, as_int, describe

__all__ = ["VGG_ARCHS", "VGG", "build_teacher", "teacher_features", "match_features",
           "check_vgg_config", "vgg_state_size", "MAX_WIDTH", "MAX_NUM_CLASSES", "MAX_INPUT_SIDE"]

_W = (64, 128, 256, 512, 512)

# arch -> (convs per block, number of hidden FC-512 layers)
VGG_ARCHS: dict[str, tuple[tuple[int, ...], int]] = {
    "vgg7": ((1, 1, 1, 1, 1), 1),
    "vgg10": ((1, 1, 2, 2, 2), 1),
    "vgg11": ((1, 1, 2, 2, 2), 2),
    "vgg12": ((2, 2, 2, 2, 2), 1),
    "vgg13": ((2, 2, 2, 2, 2), 2),
    "vgg15": ((2, 2, 3, 3, 3), 1),
    "vgg16": ((2, 2, 3, 3, 3), 2),
    "vgg19": ((2, 2, 4, 4, 4), 2),
}

# Sane bounds of a teacher's config: far above any real use (full width is 1.0; CIFAR has 100
# classes and 32×32 images), low enough that a corrupt or hostile config is refused before
# anything is built. The loader also bounds the total size (eqkern.training.teacher).
MAX_WIDTH = 64.0
MAX_NUM_CLASSES = 100_000
MAX_INPUT_SIDE = 4096        # H and W
MAX_INPUT_CHANNELS = 1024


def check_vgg_config(arch: Any, num_classes: Any, input_shape: Any,
                     width: Any) -> tuple[str, int, tuple[int, int, int], float]:
    """The teacher's config normalised, or an ArgumentError (ArgumentTypeError for a wrong type)
    naming the field: ``arch`` in :data:`VGG_ARCHS`, ``num_classes`` an int in
    ``[1, MAX_NUM_CLASSES]``, ``input_shape`` three ints ``(C, H, W)`` with ``H, W >= 32`` (five
    2×2 pools), ``width`` a finite number in ``(0, MAX_WIDTH]``. Allocates nothing."""
    if not isinstance(arch, str) or arch not in VGG_ARCHS:
        raise ArgumentError(f"unknown teacher arch {arch!r}; known: {', '.join(VGG_ARCHS)}")
    num_classes = as_int("num_classes", num_classes, minimum=1, maximum=MAX_NUM_CLASSES)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) \
            or len(input_shape) != 3:
        raise ArgumentError(f"input_shape must be (C, H, W), three ints, got {describe(input_shape)}")
    c = as_int("input_shape[0] (channels)", input_shape[0], minimum=1, maximum=MAX_INPUT_CHANNELS)
    h, w = (as_int(f"input_shape[{i}]", input_shape[i], minimum=1, maximum=MAX_INPUT_SIDE)
            for i in (1, 2))
    width = as_float("width", width, minimum=0.0, exclusive_min=True, maximum=MAX_WIDTH)
    if h < 32 or w < 32:
        raise ArgumentError(f"{arch} needs inputs of at least 32×32 (five 2×2 pools), got "
                            f"input_shape {(c, h, w)}")
    return arch, num_classes, (c, h, w), width


def _plan(arch: str, num_classes: int, input_shape: tuple[int, int, int], width: float):
    """``(convs, fcs)``: the ``(c_in, c_out)`` of every conv per block and the ``(d_in, d_out)``
    of every linear layer. The one description of the network: :class:`VGG` builds it and
    :func:`vgg_state_size` counts it (so a config can be sized before anything is allocated)."""
    per_block, n_fc = VGG_ARCHS[arch]
    c_in, (_, h, w) = input_shape[0], input_shape
    blocks = []
    for n, c in zip(per_block, _W):
        c = max(1, round(c * width))
        blocks.append([(c_in if k == 0 else c, c) for k in range(n)])
        c_in, h, w = c, h // 2, w // 2
    hidden = max(1, round(512 * width))
    dims = [c_in * h * w] + [hidden] * n_fc + [num_classes]
    return blocks, list(zip(dims[:-1], dims[1:]))


def vgg_state_size(arch: str, num_classes: int, input_shape, width: float) -> int:
    """Number of values in the state dict of ``VGG(arch, num_classes, input_shape, width)``
    (weights, biases, BatchNorm's affine parameters and running statistics), computed from the
    (checked) config alone."""
    arch, num_classes, input_shape, width = check_vgg_config(arch, num_classes, input_shape, width)
    blocks, fcs = _plan(arch, num_classes, input_shape, width)
    # conv 3×3 weight + bias; BatchNorm weight, bias, running mean and var (+ 1 step counter)
    convs = sum(9 * ci * co + co + 4 * co + 1 for block in blocks for ci, co in block)
    return convs + sum(di * do + do for di, do in fcs)


class VGG(nn.Module):
    """VGG with BatchNorm. ``forward(x)`` gives logits; :meth:`blocks_out` the pooled block outputs.
    The arguments are checked by :func:`check_vgg_config` (errors naming the argument)."""

    def __init__(self, arch: str = "vgg19", num_classes: int = 10, input_shape=(3, 32, 32),
                 width: float = 1.0) -> None:
        super().__init__()
        arch, num_classes, input_shape, width = check_vgg_config(arch, num_classes, input_shape,
                                                                 width)
        self.arch, self.num_classes, self.width, self.input_shape = arch, num_classes, width, input_shape
        blocks, fcs = _plan(arch, num_classes, input_shape, width)
        self.blocks = nn.ModuleList()
        for block in blocks:
            layers: list[nn.Module] = []
            for c_in, c in block:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            self.blocks.append(nn.Sequential(*layers))
        fc: list[nn.Module] = []
        for d_in, d_out in fcs[:-1]:
            fc += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
        fc.append(nn.Linear(*fcs[-1]))
        self.classifier = nn.Sequential(*fc)

    def blocks_out(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.flatten(1))

    def config(self) -> dict:
        return {"arch": self.arch, "num_classes": self.num_classes, "width": self.width,
                "input_shape": list(self.input_shape)}


def build_teacher(arch: str = "vgg19", num_classes: int = 10, input_shape=(3, 32, 32),
                  width: float = 1.0) -> VGG:
    return VGG(arch, num_classes, input_shape, width)


@torch.no_grad()
def teacher_features(teacher: VGG, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of every block after its pool, ``[(B, C_k, H_k, W_k)]``, in eval mode, no grad."""
    was_training = teacher.training
    teacher.eval()
    try:
        return [f.detach() for f in teacher.blocks_out(x)]
    finally:
        teacher.train(was_training)


def match_features(teacher: VGG, student_shapes: Sequence[tuple[int, ...]],
                   layers: Sequence[int]) -> list[int]:
    """For each student layer in ``layers``, the teacher block whose output has its shape."""
    x = torch.zeros(1, *teacher.input_shape, device=next(teacher.parameters()).device)
    shapes = [tuple(f.shape[1:]) for f in teacher_features(teacher, x)]
    picks = []
    for i in layers:
        want = tuple(student_shapes[i])
        if want not in shapes:
            raise ArgumentError(f"no teacher block output has the shape {want} of student layer {i}; "
                             f"the {teacher.arch} teacher (width {teacher.width:g}) gives {shapes}. "
                             f"Train the teacher with the student's width.")
        picks.append(shapes.index(want))
    return picks
