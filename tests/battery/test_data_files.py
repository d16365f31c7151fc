"""Bad-input battery: data files (``.npz`` in a data folder), data limits, user-given ``DataSplit``s
and the batch / augmentation helpers.

Every npz probe writes a small MNIST-shaped ``mnist.npz`` (20 train, 10 test images) into its own
folder, damages it one way and loads it with ``load_dataset("mnist", root=folder)``: the error
must be a :class:`DataFileError` naming the file and the array (key) at fault.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from eqkern.data.crop_flip import crop_flip
from eqkern.data.datasets import DataSplit, iterate_batches, load_dataset
from eqkern.errors import ArgumentError, ArgumentTypeError, DataFileError
from eqkern.training.build import limit_data
from eqkern.training.presets import get_preset
from eqkern.training.train_preset import train_vgg
from probes import Probe, assert_probe, ids

N_TRAIN, N_TEST = 20, 10


def _arrays(**changes) -> dict[str, np.ndarray]:
    """A valid MNIST-shaped set of arrays, with ``changes`` applied (``None`` drops a key)."""
    g = np.random.default_rng(0)
    arrays = {"x_train": g.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
              "y_train": (np.arange(N_TRAIN) % 10).astype(np.uint8),
              "x_test": g.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
              "y_test": (np.arange(N_TEST) % 10).astype(np.uint8),
              "class_names": np.array([str(i) for i in range(10)])}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _npz(folder: Path, **changes) -> Path:
    path = folder / "mnist.npz"
    np.savez(path, **_arrays(**changes))
    return path


def _load(folder: Path, **kw) -> DataSplit:
    return load_dataset("mnist", root=folder, **kw)


def _written(folder: Path, damage=None, **changes) -> DataSplit:
    """Write ``mnist.npz`` (``changes`` to its arrays), apply ``damage(path)``, load it."""
    path = _npz(folder, **changes)
    if damage is not None:
        damage(path)
    return _load(folder)


def _raw(folder: Path, data: bytes) -> DataSplit:
    """``data`` as ``mnist.npz``, loaded."""
    (folder / "mnist.npz").write_bytes(data)
    return _load(folder)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte_in_x_train(path: Path) -> None:
    # np.savez stores its members uncompressed, x_train first: a byte well inside its pixels
    # changes the data but not the zip structure, so only the CRC check can see it.
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))


def _labels(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


# --- a user-given DataSplit (train_vgg(data=...)) ----------------------------------------------

def _split(**changes) -> DataSplit:
    g = torch.Generator().manual_seed(0)
    d = DataSplit(torch.randn(8, 1, 28, 28, generator=g), torch.arange(8) % 10,
                  torch.randn(4, 1, 28, 28, generator=g), torch.arange(4) % 10,
                  tuple(map(str, range(10))), (1, 28, 28), 10)
    return d._replace(**changes)


def _train_on(data: DataSplit):
    return train_vgg("demo-mnist", data=data, epochs=1, batch_size=4, t_free=1, t_nudge=1,
                     width=1 / 16, backend="torch", progress=False, log=lambda s: None)


def _trains(result, folder) -> bool:
    return len(result.history) == 1 and 0 <= result.history[0]["test_acc"] <= 100


def _valid_split(d: DataSplit, folder) -> bool:
    return (d.x_train.shape == (N_TRAIN, 1, 28, 28) and d.y_train.dtype == torch.int64
            and d.y_train.tolist() == [i % 10 for i in range(N_TRAIN)]
            and d.x_test.shape == (N_TEST, 1, 28, 28) and d.num_classes == 10)


PROBES: list[Probe] = [
    # damaged files
    Probe("npz-truncated", lambda f: _written(f, _truncate), DataFileError, r"mnist\.npz"),
    Probe("npz-empty", lambda f: _raw(f, b""),
          DataFileError, r"mnist\.npz.*empty"),
    Probe("npz-bad-crc", lambda f: _written(f, _flip_byte_in_x_train), DataFileError,
          r"mnist\.npz.*x_train"),
    Probe("npz-random-bytes", lambda f: _raw(f, os.urandom(4096)),
          DataFileError, r"mnist\.npz.*not an? \.?npz"),
    Probe("npz-pickled-object-array",
          lambda f: _written(f, y_train=np.array([{"a": 1}] * N_TRAIN, dtype=object)),
          DataFileError, r"mnist\.npz.*y_train"),
    # wrong arrays
    Probe("npz-missing-key", lambda f: _written(f, y_test=None), DataFileError,
          r"mnist\.npz.*y_test"),
    Probe("npz-float-labels",
          lambda f: _written(f, y_train=_labels(np.arange(N_TRAIN) % 10 + 0.7, np.float32)),
          DataFileError, r"mnist\.npz.*y_train.*float"),
    Probe("npz-bool-labels", lambda f: _written(f, y_test=np.ones(N_TEST, dtype=bool)),
          DataFileError, r"mnist\.npz.*y_test.*bool"),
    Probe("npz-label-out-of-range-train",
          lambda f: _written(f, y_train=_labels([10] + [1] * (N_TRAIN - 1), np.uint8)),
          DataFileError, r"mnist\.npz.*y_train.*10"),
    Probe("npz-label-out-of-range-test",
          lambda f: _written(f, y_test=_labels([1] * (N_TEST - 1) + [12], np.int64)),
          DataFileError, r"mnist\.npz.*y_test.*12"),
    Probe("npz-negative-label", lambda f: _written(f, y_test=_labels([-1] * N_TEST, np.int8)),
          DataFileError, r"mnist\.npz.*y_test.*-1"),
    Probe("npz-labels-2d", lambda f: _written(f, y_train=np.zeros((N_TRAIN, 1), np.uint8)),
          DataFileError, r"mnist\.npz.*y_train.*1-D"),
    Probe("npz-length-mismatch", lambda f: _written(f, y_train=np.zeros(N_TRAIN - 1, np.uint8)),
          DataFileError, r"mnist\.npz.*(x_train.*y_train|y_train.*x_train)"),
    Probe("npz-wrong-image-shape",
          lambda f: _written(f, x_train=np.zeros((N_TRAIN, 32, 32), np.uint8)),
          DataFileError, r"mnist\.npz.*x_train.*28, 28"),
    Probe("npz-float-images",
          lambda f: _written(f, x_test=np.zeros((N_TEST, 28, 28), np.float32)),
          DataFileError, r"mnist\.npz.*x_test.*uint8"),
    Probe("npz-zero-examples",
          lambda f: _written(f, x_train=np.zeros((0, 28, 28), np.uint8),
                             y_train=np.zeros(0, np.uint8)),
          DataFileError, r"mnist\.npz.*x_train.*no examples"),
    Probe("npz-class-names-wrong-length",
          lambda f: _written(f, class_names=np.array(["a", "b"])),
          DataFileError, r"mnist\.npz.*class_names.*10"),
    Probe("npz-valid-file-loads", lambda f: _written(f), check=_valid_split),
    Probe("npz-int32-labels-load", lambda f: _written(f, y_train=(np.arange(N_TRAIN) % 10).astype(np.int32)),
          check=_valid_split),
    # limits and arguments of load_dataset
    Probe("limit-train-zero", lambda f: load_dataset("mnist_subset", limit_train=0),
          ArgumentError, r"limit_train.*>= 1.*got 0"),
    Probe("limit-test-negative", lambda f: load_dataset("mnist_subset", limit_test=-3),
          ArgumentError, r"limit_test.*got -3"),
    Probe("limit-train-float", lambda f: load_dataset("mnist_subset", limit_train=2.5),
          ArgumentTypeError, r"limit_train.*2\.5"),
    Probe("dataset-name-not-a-string", lambda f: load_dataset(3), ArgumentTypeError,
          r"name.*3 \(int\)"),
    Probe("dtype-not-a-dtype", lambda f: load_dataset("mnist_subset", dtype="float32"),
          ArgumentTypeError, r"dtype.*'float32'"),
    # a user-given DataSplit
    Probe("split-float-labels", lambda f: _train_on(_split(y_train=torch.arange(8) % 10 + 0.5)),
          ArgumentTypeError, r"y_train.*float"),
    Probe("split-test-label-out-of-range",
          lambda f: _train_on(_split(y_test=torch.tensor([0, 1, 2, 10]))),
          ArgumentError, r"y_test.*10"),
    Probe("split-empty-train", lambda f: _train_on(_split(x_train=torch.zeros(0, 1, 28, 28),
                                                          y_train=torch.zeros(0, dtype=torch.long))),
          ArgumentError, r"x_train.*no examples"),
    Probe("split-length-mismatch", lambda f: _train_on(_split(y_train=torch.arange(7) % 10)),
          ArgumentError, r"x_train.*y_train|y_train.*x_train"),
    Probe("split-wrong-image-shape", lambda f: _train_on(_split(x_test=torch.zeros(4, 3, 28, 28))),
          ArgumentError, r"x_test.*\(1, 28, 28\)"),
    Probe("split-nan-image",
          lambda f: _train_on(_split(x_train=torch.full((8, 1, 28, 28), float("nan")))),
          ArgumentError, r"x_train.*NaN"),
    # (through limit_data: train_vgg reads data.x_train.device before it; see the report)
    Probe("split-not-a-split", lambda f: limit_data((1, 2, 3), get_preset("demo-mnist"), "cpu"),
          ArgumentTypeError, r"data.*DataSplit"),
    Probe("split-int32-labels-train", lambda f: _train_on(_split(y_train=(torch.arange(8) % 10).int())),
          check=_trains),
    # batching and augmentation helpers
    Probe("iterate-batch-size-float",
          lambda f: list(iterate_batches(torch.zeros(4, 1), torch.zeros(4), 2.5, shuffle=False)),
          ArgumentTypeError, r"batch_size.*2\.5"),
    Probe("crop-flip-negative-padding", lambda f: crop_flip(torch.zeros(2, 1, 4, 4), padding=-1),
          ArgumentError, r"padding.*-1"),
    Probe("crop-flip-float-padding", lambda f: crop_flip(torch.zeros(2, 1, 4, 4), padding=1.5),
          ArgumentTypeError, r"padding.*1\.5"),
]


@pytest.mark.parametrize("probe", PROBES, ids=ids(PROBES))
def test_probe(probe, tmp_path):
    assert_probe(probe, tmp_path)
