"""Offline image-classification data as normalised tensors, and a cheap mini-batch iterator.

Nothing here ever downloads: data comes from ``.npz`` files (``x_*`` uint8 ``(N, H, W)`` or
``(N, H, W, C)``, ``y_*`` uint8, ``class_names``) in a data folder, from torchvision's usual
CIFAR folders in that same folder, or, for ``mnist_subset``, from the copy inside the package.

The data folder is ``root=`` if given, else ``$EQKERN_DATA``, else ``../shared/data`` next to the
repository checkout (see :func:`default_data_dir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

__all__ = ["DATASETS", "DatasetInfo", "DataSplit", "default_data_dir", "load_dataset",
           "iterate_batches"]


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives and how to normalise it (per-channel ``(x/255 - mean) / std``)."""

    file: str                         # npz file name inside the data folder
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]           # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    torchvision_dir: str | None = None  # fallback: torchvision's folder under the same root


_MNIST = ((0.1307,), (0.3081,))
_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist.npz", (1, 28, 28), 10, *_MNIST),
    # The embedded subset keeps the full-MNIST statistics so that models move between the two.
    "mnist_subset": DatasetInfo("mnist_subset.npz", (1, 28, 28), 10, *_MNIST),
    "fashion_mnist": DatasetInfo("fashion_mnist.npz", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10.npz", (3, 32, 32), 10, *_CIFAR10, "cifar-10-batches-py"),
    "cifar10_subset": DatasetInfo("cifar10_subset.npz", (3, 32, 32), 10, *_CIFAR10),
    "cifar100": DatasetInfo("cifar100.npz", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), "cifar-100-python"),
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
    """``$EQKERN_DATA`` if set, else ``<checkout>/../shared/data`` if it exists, else ``None``."""
    env = os.environ.get("EQKERN_DATA")
    if env:
        return Path(env).expanduser()
    # eqkern/data/datasets.py -> parents[2] is the checkout, parents[3] the folder holding it.
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data"
    return candidate if candidate.is_dir() else None


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
    files, mnist_subset and the CIFAR-10 npz files, a prefix of 10*k stays class-balanced).
    Raises ``ValueError`` for an unknown name and ``FileNotFoundError`` (naming the files and
    folders looked for) when the data is not there. Never downloads.
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    info = DATASETS[key]
    if key == _EMBEDDED:
        arrays = _load_embedded(info.file)
    else:
        arrays = _load_from_root(key, info, root)
    x_tr, y_tr, x_te, y_te, names = arrays
    x_tr, y_tr = _limit(x_tr, y_tr, limit_train, "limit_train")
    x_te, y_te = _limit(x_te, y_te, limit_test, "limit_test")
    return DataSplit(
        _to_tensor(x_tr, info, dtype, device, name), _labels(y_tr, device),
        _to_tensor(x_te, info, dtype, device, name), _labels(y_te, device),
        tuple(str(c) for c in names), info.input_shape, info.num_classes,
    )


# --- loading ---------------------------------------------------------------------------------

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _read_npz(f) -> _Arrays:
    # allow_pickle=False: the files hold only plain arrays, and a pickle could run code.
    with np.load(f, allow_pickle=False) as d:
        return tuple(d[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names"))


def _load_embedded(file: str) -> _Arrays:
    # as_file: works even when the package is imported from a zip.
    with resources.as_file(resources.files("eqkern") / "_data" / file) as path:
        if not path.is_file():
            raise FileNotFoundError(f"the embedded {file} is missing from the eqkern package "
                                    f"({path}); rebuild it with scripts/make_embedded_mnist.py")
        return _read_npz(path)


def _load_from_root(key: str, info: DatasetInfo, root: str | os.PathLike | None) -> _Arrays:
    folder = Path(root).expanduser() if root is not None else default_data_dir()
    expected = info.file + (f" (or torchvision's {info.torchvision_dir}/)"
                            if info.torchvision_dir else "")
    hint = (f"Pass the folder holding it as load_dataset({key!r}, root=...) or set "
            f"EQKERN_DATA=/path/to/folder. eqkern never downloads data; "
            f"'mnist_subset' is embedded and needs no folder.")
    if folder is None:
        raise FileNotFoundError(
            f"dataset {key!r}: expected {expected}, but no data folder was found "
            f"(no root=, EQKERN_DATA unset, and no ../shared/data next to the checkout "
            f"{Path(__file__).resolve().parents[2]}). {hint}")
    npz = folder / info.file
    if npz.is_file():
        return _read_npz(npz)
    if info.torchvision_dir and (folder / info.torchvision_dir).is_dir():
        return _load_torchvision(key, folder)
    raise FileNotFoundError(f"dataset {key!r}: {expected} not found in {folder}. {hint}")


def _load_torchvision(key: str, folder: Path) -> _Arrays:
    """CIFAR-10/100 from torchvision's extracted pickles; ``.data`` is already NHWC uint8."""
    try:
        from torchvision import datasets as tvd  # optional dependency, only needed here
    except ImportError as exc:
        raise FileNotFoundError(
            f"dataset {key!r}: found {folder / DATASETS[key].torchvision_dir} but reading it needs "
            f"torchvision, which is not installed; or provide {DATASETS[key].file} instead") from exc
    cls = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
    try:
        train = cls(str(folder), train=True, download=False)
        test = cls(str(folder), train=False, download=False)
    except RuntimeError as exc:  # torchvision's own text suggests download=True; we never do
        raise FileNotFoundError(
            f"dataset {key!r}: {folder / DATASETS[key].torchvision_dir} exists but torchvision "
            f"rejected it ({exc}); it must hold the complete, unmodified extracted archive") from exc
    return (train.data, np.asarray(train.targets), test.data, np.asarray(test.targets),
            np.asarray(train.classes))


# --- conversion ------------------------------------------------------------------------------

def _limit(x: np.ndarray, y: np.ndarray, n: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if n < 0:
        raise ValueError(f"{what} must be >= 0, got {n}")
    return x[:n], y[:n]


def _to_tensor(x: np.ndarray, info: DatasetInfo, dtype: torch.dtype,
               device: str | torch.device, name: str) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> normalised ``(N, C, H, W)`` float."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4:
        t = t.permute(0, 3, 1, 2)
    if tuple(t.shape[1:]) != info.input_shape or t.dtype != torch.uint8:
        raise ValueError(f"dataset {name!r}: expected uint8 images of shape (N, "
                         f"{', '.join(map(str, info.input_shape))}) after layout conversion, "
                         f"got {t.dtype} {tuple(t.shape)}")
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
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
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
