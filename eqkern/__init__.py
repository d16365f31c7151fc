"""eqkern: fast, memory-lean Equilibrium Propagation for convergent RNNs.

Public API: the model description (:class:`CRNN`, :class:`Conv`, :class:`Linear`), the dynamics
(:func:`settle`), the learning rules (:func:`ep_gradients` with the contrastive rule or FRE-RNN's
``rule="fre"``, :func:`bptt_gradients`), FRE-RNN skip topologies (:func:`residual_skips`,
:func:`random_skips`), the GDU check (:func:`check_gdu`), a small training loop (:func:`train`),
:func:`train_vgg` (paper presets; data-parallel under ``torchrun``), the data
(:func:`load_dataset`, :class:`DataSplit`; a ``Dataset`` or ``DataLoader`` works too), record
sinks (:class:`Callback`, :class:`TensorBoardCallback`), :func:`info`, and for separate feedback weights (``CRNN(feedback="separate")``,
:mod:`eqkern.learning.separate_feedback`) :func:`weight_angles`.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os
import sys as _sys

try:
    from eqkern.learning.separate_feedback import weight_angles
    from eqkern.backends import available_backends, resolve_backend
    from eqkern.learning.bptt import BPTTResult, bptt_gradients
    from eqkern.learning.gdu import check_gdu, format_gdu
    from eqkern.learning.ep import EPResult, ep_gradients
    from eqkern.dynamics.settle import free_phase
    from eqkern.model import CRNN, Conv, Linear
    from eqkern.dynamics.settle import settle
    from eqkern.model.skips import random_skips, residual_skips
    from eqkern.training.evaluation import evaluate
    from eqkern.training.train_crnn import train
    from eqkern.data.crop_flip import crop_flip
    from eqkern.data.datasets import DataSplit, load_dataset
    from eqkern.training.callbacks import Callback
    from eqkern.training.tensorboard import TensorBoardCallback
    from eqkern.training.presets import Preset, TrainConfig, get_preset, list_presets
    from eqkern.training.kappa import (ConstantKappa, CosineKappa, ExponentialKappa, LinearKappa, StepKappa,
                            make_schedule)
    from eqkern.training.teacher import load_teacher, teacher_features, train_teacher
    from eqkern.training.train_preset import TrainResult, train_vgg
except (KeyboardInterrupt, Exception) as _exc:
    # For the command line, Ctrl-C while it still imports torch, or a bad setting read at import
    # (e.g. $EQKERN_TF32=banana), is one line, not a traceback through the import machinery;
    # an import from a user's program keeps Python's usual behaviour.
    from eqkern.errors import EqkernError as _EqkernError

    _cli = _os.path.basename(_sys.argv[0]) in ("eqkern", "-m")
    if _cli and isinstance(_exc, KeyboardInterrupt):
        print("eqkern: interrupted while starting; nothing was run", file=_sys.stderr)
        raise SystemExit(130) from None
    if _cli and isinstance(_exc, _EqkernError):
        print(f"eqkern: error: {_exc}", file=_sys.stderr)
        raise SystemExit(2) from None
    raise


def info() -> dict:
    """Versions, what was built, and which backends run on which device (and why not)."""
    from eqkern.tools.info import info as _info

    return _info()


__all__ = [
    "CRNN", "Conv", "Linear", "settle", "ep_gradients", "free_phase", "EPResult",
    "bptt_gradients", "BPTTResult", "check_gdu", "format_gdu", "available_backends",
    "resolve_backend", "train", "TrainConfig", "evaluate", "info", "__version__",
    "train_vgg", "TrainResult", "Preset", "get_preset", "list_presets", "train_teacher",
    "teacher_features", "load_teacher", "crop_flip", "make_schedule", "ConstantKappa",
    "LinearKappa", "ExponentialKappa", "CosineKappa", "StepKappa", "weight_angles", "residual_skips",
    "random_skips", "DataSplit", "load_dataset", "Callback", "TensorBoardCallback",
]
