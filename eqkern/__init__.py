"""eqkern: fast, memory-lean Equilibrium Propagation for convergent RNNs.

Public API: the model description (:class:`CRNN`, :class:`Conv`, :class:`Linear`), the dynamics
(:func:`settle`), the learning rules (:func:`ep_gradients` with the contrastive rule or FRE-RNN's
``rule="fre"``, :func:`bptt_gradients`), FRE-RNN skip topologies (:func:`residual_skips`,
:func:`random_skips`), the GDU check (:func:`check_gdu`), a small training loop (:func:`train`),
:func:`info`, and for separate feedback weights (``CRNN(feedback="separate")``,
:mod:`eqkern.asymmetric`) :func:`weight_angles`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .asymmetric import weight_angles
from .backends import available_backends, resolve_backend
from .bptt import BPTTResult, bptt_gradients
from .gdu import check_gdu, format_gdu
from .learning import EPResult, ep_gradients, free_phase
from .model import CRNN, Conv, Linear
from .settle import settle
from .skips import random_skips, residual_skips
from .train import TrainConfig, evaluate, train
from .augmentation import crop_flip
from .presets import Preset, get_preset, list_presets
from .schedules import (ConstantKappa, CosineKappa, ExponentialKappa, LinearKappa, StepKappa,
                        make_schedule)
from .teacher import load_teacher, teacher_features, train_teacher
from .vgg import TrainResult, train_vgg


def info() -> dict:
    """Versions, what was built, and which backends run on which device (and why not)."""
    from . import _build

    return _build.info()


__all__ = [
    "CRNN", "Conv", "Linear", "settle", "ep_gradients", "free_phase", "EPResult",
    "bptt_gradients", "BPTTResult", "check_gdu", "format_gdu", "available_backends",
    "resolve_backend", "train", "TrainConfig", "evaluate", "info", "__version__",
    "train_vgg", "TrainResult", "Preset", "get_preset", "list_presets", "train_teacher",
    "teacher_features", "load_teacher", "crop_flip", "make_schedule", "ConstantKappa",
    "LinearKappa", "ExponentialKappa", "CosineKappa", "StepKappa", "weight_angles", "residual_skips",
    "random_skips",
]
