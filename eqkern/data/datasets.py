"""Offline image-classification data as normalised tensors, and a cheap mini-batch iterator.

Nothing here ever downloads: data comes from ``.npz`` files (``x_*`` uint8 ``(N, H, W)`` or
``(N, H, W, C)``, ``y_*`` uint8, ``class_names``) in a data folder, from torchvision's usual
folders in that same folder (``MNIST/raw/*-ubyte``, ``FashionMNIST/raw/*-ubyte``,
``cifar-10-batches-py/``, ``cifar-100-python/``, read with torchvision, ``download=False``), or,
for ``mnist_subset``, from the copy inside the package (no folder needed).

The data folder is ``root=`` if given, else ``$EQKERN_DATA``; there is no other default (see
:func:`default_data_dir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from eqkern.errors import (ArgumentError, ArgumentTypeError, DataFileError, EqkernError,
                           MissingFileError, first_line)
from eqkern.validate import as_int, check_tensor_finite, describe

__all__ = ["DATASETS", "DatasetInfo", "DataSplit", "default_data_dir", "load_dataset",
           "check_split", "iterate_batches"]


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives and how to normalise it (per-channel ``(x/255 - mean) / std``)."""

    file: str                         # npz file name inside the data folder
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]           # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    # Fallback when the npz is absent: torchvision's folder under the same root, and the
    # torchvision.datasets class that reads it (both or neither).
    torchvision_dir: str | None = None
    torchvision_class: str | None = None


_MNIST = ((0.1307,), (0.3081,))
_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist.npz", (1, 28, 28), 10, *_MNIST, "MNIST", "MNIST"),
    # The embedded subset keeps the full-MNIST statistics so that models move between the two.
    "mnist_subset": DatasetInfo("mnist_subset.npz", (1, 28, 28), 10, *_MNIST),
    "fashion_mnist": DatasetInfo("fashion_mnist.npz", (1, 28, 28), 10, (0.2860,), (0.3530,),
                                 "FashionMNIST", "FashionMNIST"),
    "cifar10": DatasetInfo("cifar10.npz", (3, 32, 32), 10, *_CIFAR10, "cifar-10-batches-py",
                           "CIFAR10"),
    "cifar10_subset": DatasetInfo("cifar10_subset.npz", (3, 32, 32), 10, *_CIFAR10),
    "cifar100": DatasetInfo("cifar100.npz", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), "cifar-100-python", "CIFAR100"),
}

_EMBEDDED = "mnist_subset"


class DataSplit(NamedTuple):
    """A train/test split. ``x_*: (N, C, H, W)`` normalised float, ``y_*: (N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    num_classes: int


def default_data_dir() -> Path | None:
    """``$EQKERN_DATA`` if set (and not empty), else ``None``: an installed package has no folder
    of its own to guess, so without ``root=`` or the variable only ``mnist_subset`` loads."""
    env = os.environ.get("EQKERN_DATA")
    return Path(env).expanduser() if env else None


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplit:
    """Load ``name`` as normalised ``(N, C, H, W)`` tensors on ``device``.

    ``limit_train`` / ``limit_test`` keep at most the first n examples (for the round-robin
    files, mnist_subset and the CIFAR-10 npz files, a prefix of 10*k stays class-balanced;
    each must be >= 1 or None). Raises :class:`ArgumentError` for an unknown name,
    :class:`MissingFileError` (naming the files and folders looked for) when the data is not
    there and :class:`DataFileError` (naming the file and the array) when a file is damaged or
    holds the wrong arrays. Never downloads.
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"name must be a dataset name (a string), got {describe(name)}")
    key = name.lower()
    if key not in DATASETS:
        raise ArgumentError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got "
                                f"{describe(dtype)}")
    # Checked before any file is read: a bad limit should not cost a load.
    limit_train = as_int("limit_train", limit_train, minimum=1, allow_none=True)
    limit_test = as_int("limit_test", limit_test, minimum=1, allow_none=True)
    info = DATASETS[key]
    if key == _EMBEDDED:
        arrays = _load_embedded(info)
    else:
        arrays = _load_from_root(key, info, root)
    x_tr, y_tr, x_te, y_te, names = arrays
    x_tr, y_tr = x_tr[:limit_train], y_tr[:limit_train]
    x_te, y_te = x_te[:limit_test], y_te[:limit_test]
    return DataSplit(
        _to_tensor(x_tr, info, dtype, device), _labels(y_tr, device),
        _to_tensor(x_te, info, dtype, device), _labels(y_te, device),
        tuple(str(c) for c in names), info.input_shape, info.num_classes,
    )


# --- loading ---------------------------------------------------------------------------------

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip


def _read_npz(path: Path, info: DatasetInfo) -> _Arrays:
    """The five arrays of the npz file ``path``, checked (:func:`_check_arrays`)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise DataFileError(f"data file {path} is empty (0 bytes); replace it with a complete copy")
    if head not in _ZIP_MAGIC:
        # np.load would try it as a pickle and blame 'pickled data': say what it is not.
        raise DataFileError(f"data file {path} is not an .npz file (it does not start with a zip "
                            f"header; its first bytes are {head!r}); replace it with a complete "
                            f"copy")
    try:
        # allow_pickle=False: the files hold only plain arrays, and a pickle could run code.
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise many types for one cause
        raise DataFileError(f"data file {path} is truncated or corrupt (not a readable zip: "
                            f"{first_line(exc)}); replace it with a complete copy") from exc
    with npz:
        missing = [k for k in _KEYS if k not in npz.files]
        if missing:
            raise DataFileError(f"data file {path} has no array {', '.join(missing)}; a dataset "
                                f"npz holds {', '.join(_KEYS)} (it has {', '.join(npz.files)})")
        arrays = {}
        for k in _KEYS:
            try:  # each member is read (and its CRC checked) only here
                arrays[k] = npz[k]
            except Exception as exc:  # noqa: BLE001 - bad CRC, truncated member, object array
                raise DataFileError(f"data file {path}: array {k!r} cannot be read "
                                    f"({first_line(exc)}); the file is corrupt or not a plain "
                                    f"array file, replace it") from exc
    return _check_arrays(arrays, info, f"data file {path}")


def _load_embedded(info: DatasetInfo) -> _Arrays:
    # as_file: works even when the package is imported from a zip.
    with resources.as_file(resources.files("eqkern") / "_data" / info.file) as path:
        if not path.is_file():
            raise MissingFileError(f"the embedded {info.file} is missing from the eqkern package "
                                    f"({path}); rebuild it with scripts/make_embedded_mnist.py")
        return _read_npz(path, info)


def _load_from_root(key: str, info: DatasetInfo, root: str | os.PathLike | None) -> _Arrays:
    folder = Path(root).expanduser() if root is not None else default_data_dir()
    expected = info.file + (f" (or torchvision's {info.torchvision_dir}/ folder, read by "
                            f"torchvision.datasets.{info.torchvision_class})"
                            if info.torchvision_dir else "")
    hint = (f"Pass the folder holding it as load_dataset({key!r}, root=...) or set "
            f"EQKERN_DATA=/path/to/folder. eqkern never downloads data; "
            f"'mnist_subset' is embedded and needs no folder.")
    if folder is None:
        raise MissingFileError(
            f"dataset {key!r}: expected {expected}, but no data folder was given (no root= and "
            f"EQKERN_DATA is unset). {hint}")
    npz = folder / info.file
    if npz.is_file():
        return _read_npz(npz, info)
    if info.torchvision_dir and (folder / info.torchvision_dir).is_dir():
        return _load_torchvision(key, info, folder)
    raise MissingFileError(f"dataset {key!r}: {expected} not found in {folder}. {hint}")


def _load_torchvision(key: str, info: DatasetInfo, folder: Path) -> _Arrays:
    """``info.torchvision_dir`` under ``folder`` read by ``torchvision.datasets.<class>`` (never
    downloading). ``.data`` is NHWC uint8 (a numpy array for CIFAR, an ``(N, H, W)`` tensor for
    the MNIST family) and ``.targets`` a list or a tensor; both are checked as an npz's are."""
    where = folder / info.torchvision_dir
    try:
        from torchvision import datasets as tvd  # optional dependency, only needed here
    except ImportError as exc:
        raise MissingFileError(
            f"dataset {key!r}: found {where} but reading it needs torchvision, which is not "
            f"installed; or provide {info.file} instead") from exc
    cls = getattr(tvd, info.torchvision_class)
    try:
        train = cls(str(folder), train=True, download=False)
        test = cls(str(folder), train=False, download=False)
    except RuntimeError as exc:  # torchvision's own text suggests download=True; we never do
        raise MissingFileError(
            f"dataset {key!r}: {where} exists but torchvision rejected it ({first_line(exc)}); it "
            f"must hold the complete, unmodified extracted files") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged idx file fails an assert or a reshape
        raise DataFileError(f"dataset {key!r}: torchvision cannot read {where} "
                            f"({first_line(exc)}); replace it with a complete copy") from exc

    def as_array(v: Any) -> np.ndarray:
        return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    arrays = {"x_train": as_array(train.data), "y_train": as_array(train.targets),
              "x_test": as_array(test.data), "y_test": as_array(test.targets),
              "class_names": np.asarray(train.classes)}
    return _check_arrays(arrays, info, f"torchvision folder {where}")


# --- checks ----------------------------------------------------------------------------------

def _check_arrays(arrays: dict[str, np.ndarray], info: DatasetInfo, where: str) -> _Arrays:
    """The arrays of a data file in :data:`_KEYS` order, each checked: uint8 images of the
    dataset's shape (``(N, H, W)`` or ``(N, H, W, C)``), integer labels in range, as many labels
    as images, at least one example, one class name per class. ``where`` names the file."""
    c, h, w = info.input_shape
    shapes = [f"(N, {h}, {w}, {c})"] + ([f"(N, {h}, {w})"] if c == 1 else [])
    for split in ("train", "test"):
        kx, ky = f"x_{split}", f"y_{split}"
        x = arrays[kx]
        if x.dtype != np.uint8 or not _image_shape_ok(x.shape, info.input_shape):
            raise DataFileError(f"{where}: {kx} must hold uint8 images of shape "
                                f"{' or '.join(shapes)}, got {x.dtype} {tuple(x.shape)}")
        _check_labels(arrays[ky], len(x), info.num_classes, f"{where}: ", kx, ky, DataFileError,
                      DataFileError)
    names = arrays["class_names"]
    if names.ndim != 1 or len(names) != info.num_classes:
        raise DataFileError(f"{where}: class_names must list the {info.num_classes} class names, "
                            f"got shape {tuple(names.shape)}")
    return tuple(arrays[k] for k in _KEYS)


def _image_shape_ok(shape: tuple[int, ...], input_shape: tuple[int, int, int]) -> bool:
    c, h, w = input_shape
    return tuple(shape[1:]) == (h, w, c) or (c == 1 and tuple(shape[1:]) == (h, w))


def _check_labels(y: Any, n: int, num_classes: int, where: str, kx: str, ky: str,
                  value_error: type[EqkernError], type_error: type[EqkernError]) -> None:
    """``y`` (a numpy array or a tensor) as the labels of the ``n`` examples of ``kx``: at least
    one, laid out as :func:`check_label_layout` says, each in ``[0, num_classes)``. ``where``
    starts each message (the file, or ``data.``)."""
    if n == 0:
        raise value_error(f"{where}{kx} has no examples; at least one is needed")
    check_label_layout(y, n, where, kx, ky, value_error, type_error)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise value_error(f"{where}{ky} must hold class ids in [0, {num_classes}), got "
                          f"{int(y[i])} at index {i} ({int(bad.sum())} labels out of range)")


def check_label_layout(y: Any, n: int, where: str, kx: str = "x", ky: str = "y",
                       value_error: type[EqkernError] = ArgumentError,
                       type_error: type[EqkernError] = ArgumentTypeError) -> None:
    """``y`` (a numpy array or a tensor) as the labels of the ``n`` examples of ``kx``, without
    reading a value (no host sync): 1-D, an integer dtype (float labels are refused, not
    truncated; bool too), ``n`` of them. ``where`` starts each message."""
    if y.ndim != 1:
        raise value_error(f"{where}{ky} must be 1-D (one class id per example), got shape "
                          f"{tuple(y.shape)}")
    if not _is_integer_dtype(y.dtype):
        raise type_error(f"{where}{ky} must hold integer class ids, got dtype {y.dtype} (float "
                         f"or bool labels are refused, not rounded)")
    if len(y) != n:
        raise value_error(f"{where}{ky} has {len(y)} labels but {kx} has {n} examples; they "
                          f"must be as many")


def _is_integer_dtype(dtype) -> bool:
    if isinstance(dtype, torch.dtype):
        return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    return bool(np.issubdtype(dtype, np.integer))


def check_split(data: Any, what: str = "data") -> None:
    """A user-given :class:`DataSplit` checked as the data files are: ``x_*`` floating
    ``(N, *input_shape)`` tensors without NaN/inf, integer ``y_*`` in ``[0, num_classes)``, as
    many labels as images, at least one example each. Errors name ``what.<field>``."""
    if not isinstance(data, DataSplit):
        raise ArgumentTypeError(f"{what} must be an eqkern.data.datasets.DataSplit (e.g. from "
                                f"load_dataset), got {describe(data)}")
    num_classes = as_int(f"{what}.num_classes", data.num_classes, minimum=1)
    shape = tuple(data.input_shape) if isinstance(data.input_shape, (tuple, list)) else ()
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ArgumentError(f"{what}.input_shape must be (C, H, W), three ints >= 1, got "
                            f"{describe(data.input_shape)}")
    for split in ("train", "test"):
        kx, ky = f"x_{split}", f"y_{split}"
        x, y = getattr(data, kx), getattr(data, ky)
        for k, t in ((kx, x), (ky, y)):
            if not isinstance(t, torch.Tensor):
                raise ArgumentTypeError(f"{what}.{k} must be a tensor, got {describe(t)}")
        if not x.is_floating_point():
            raise ArgumentTypeError(f"{what}.{kx} must be a floating tensor (normalised images), "
                                    f"got dtype {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ArgumentError(f"{what}.{kx} must have shape (N, {', '.join(map(str, shape))}) "
                                f"(its input_shape {shape}), got {tuple(x.shape)}")
        _check_labels(y, len(x), num_classes, f"{what}.", kx, ky, ArgumentError,
                      ArgumentTypeError)
        check_tensor_finite(f"{what}.{kx}", x)


# --- conversion ------------------------------------------------------------------------------

def _to_tensor(x: np.ndarray, info: DatasetInfo, dtype: torch.dtype,
               device: str | torch.device) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` (checked by :func:`_check_arrays`) ->
    normalised ``(N, C, H, W)`` float."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    # Move the uint8 data first (4x fewer bytes to copy), then convert on the device.
    t = t.to(device).to(dtype).contiguous()
    mean = torch.tensor(info.mean, dtype=dtype, device=t.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=dtype, device=t.device).view(1, -1, 1, 1)
    return t.div_(255.0).sub_(mean).div_(std)


def _labels(y: np.ndarray, device: str | torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


# --- batching --------------------------------------------------------------------------------

def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(xb: (B, ...), yb: (B,))`` mini-batches of ``x: (N, ...)``, ``y: (N,)``.

    Unshuffled batches are views (no copy); shuffled ones index with one permutation drawn from
    ``generator`` (so a seeded generator gives reproducible epochs). The last batch is smaller
    unless ``drop_last``.
    """
    n = len(x)
    if len(y) != n:
        raise ArgumentError(f"x has {n} examples but y has {len(y)}")
    batch_size = as_int("batch_size", batch_size, minimum=1)
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for i in range(0, stop, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    # randperm must run on the generator's device; the index then moves to the data.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    perm_y = perm if y.device == x.device else perm.to(y.device)
    for i in range(0, stop, batch_size):
        yield x[perm[i:i + batch_size]], y[perm_y[i:i + batch_size]]
