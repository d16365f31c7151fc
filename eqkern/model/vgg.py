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

from typing import Sequence

import torch
from torch import nn

__all__ = ["VGG_ARCHS", "VGG", "build_teacher", "teacher_features", "match_features"]

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


class VGG(nn.Module):
    """VGG with BatchNorm. ``forward(x)`` gives logits; :meth:`blocks_out` the pooled block outputs."""

    def __init__(self, arch: str = "vgg19", num_classes: int = 10, input_shape=(3, 32, 32),
                 width: float = 1.0) -> None:
        super().__init__()
        if arch not in VGG_ARCHS:
            raise ValueError(f"unknown teacher arch {arch!r}; known: {', '.join(VGG_ARCHS)}")
        self.arch, self.num_classes, self.width = arch, int(num_classes), float(width)
        self.input_shape = tuple(int(d) for d in input_shape)
        per_block, n_fc = VGG_ARCHS[arch]
        c_in, (_, h, w) = self.input_shape[0], self.input_shape
        self.blocks = nn.ModuleList()
        for n, c in zip(per_block, _W):
            c = max(1, round(c * width))
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.MaxPool2d(2))
            self.blocks.append(nn.Sequential(*layers))
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"{arch} needs inputs of at least 32×32, got {self.input_shape}")
        hidden = max(1, round(512 * width))
        fc: list[nn.Module] = []
        d = c_in * h * w
        for _ in range(n_fc):
            fc += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        fc.append(nn.Linear(d, self.num_classes))
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
            raise ValueError(f"no teacher block output has the shape {want} of student layer {i}; "
                             f"the {teacher.arch} teacher (width {teacher.width:g}) gives {shapes}. "
                             f"Train the teacher with the student's width.")
        picks.append(shapes.index(want))
    return picks
