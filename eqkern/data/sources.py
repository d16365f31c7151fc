"""Where training batches come from: in-memory tensors, a torch ``Dataset``, a ``DataLoader`` or
any re-iterable of ``(x, y)`` batches, behind one interface (:class:`BatchSource`).

* :class:`TensorSource` ``(x, y)``: the fast path, exactly :func:`.datasets.iterate_batches`.
* :class:`DatasetSource` ``(dataset)``: a map-style dataset of ``(x, y)`` examples, shuffled with
  the same permutation ``iterate_batches`` draws (so ``TensorDataset(x, y)`` gives the batches of
  ``TensorSource(x, y)``), collated by ``default_collate`` through a ``DataLoader``.
* :class:`LoaderSource` ``(loader)``: a ``DataLoader`` or a list of batches, used as given.

:func:`as_source` picks one for any of these; :func:`as_training_data` makes the train/test pair
(:class:`TrainingData`) the engine trains on. Batches from a user's dataset, loader or list are
checked as they come (types, dtypes and lengths only: no host sync on values), each error naming
the source and the batch.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import (BatchSampler, DataLoader, IterableDataset,
                              SequentialSampler, default_collate)

from eqkern.data.datasets import DataSplit, check_label_layout, iterate_batches
from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.validate import as_int, describe

__all__ = ["Batch", "BatchSource", "TensorSource", "DatasetSource", "LoaderSource", "TrainingData",
           "as_source", "as_training_data"]

Batch = tuple[torch.Tensor, torch.Tensor]  # x: (B, C, H, W) or (B, D) float, y: (B,) int64

_KINDS = ("an (x, y) pair of tensors, a map-style torch Dataset of (x, y) examples, a DataLoader, "
          "a list of (x, y) batches or a re-iterable object yielding them")
_TO_FLOAT = ("normalise images to float first (torchvision: transforms.ToTensor(), then "
             "Normalize; tensors: x.float() / 255)")


class BatchSource:
    """Base of the data sources. ``batches`` yields ``(x: (B, ...) float, y: (B,) int64)`` on
    ``device``; ``skip`` batches at the start are left out (a mid-epoch resume), after the epoch's
    permutation has been drawn in full, so the generator ends in the same state either way."""

    num_examples: int | None = None   # None when unknown (a plain iterable)
    deterministic: bool = True        # the same generator state gives the same batches
    what: str = "data"                # the argument name errors quote

    def num_batches(self, batch_size: int) -> int | None:
        """Batches per epoch at ``batch_size`` (the last one may be smaller), None if unknown."""
        batch_size = as_int("batch_size", batch_size, minimum=1)
        return None if self.num_examples is None else math.ceil(self.num_examples / batch_size)

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                device: torch.device, skip: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def sample_shape(self) -> tuple[int, ...] | None:
        """Shape of one x example (``(C, H, W)`` or ``(D,)``) when knowable cheaply, else None."""
        return None

    def describe(self) -> str:
        raise NotImplementedError


class TensorSource(BatchSource):
    """``x: (N, ...)`` floating and ``y: (N,)`` integer tensors (y is kept as int64)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, what: str = "data"):
        self.what = what
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise ArgumentTypeError(f"{what}: {name} must be a tensor, got {describe(t)}")
        _check_x(x, f"{what}: x")
        check_label_layout(y, len(x), f"{what}: ")
        if len(x) == 0:
            raise ArgumentError(f"{what}: x has no examples; at least one is needed")
        self.x, self.y = x, y.long()  # .long() is a no-op (no copy) for int64
        self.num_examples = len(x)
        self.deterministic = True

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                device: torch.device, skip: int = 0) -> Iterator[Batch]:
        device = torch.device(device)
        skip = as_int("skip", skip, minimum=0)
        it = iterate_batches(self.x, self.y, batch_size, shuffle=shuffle, generator=generator)
        for xb, yb in itertools.islice(it, skip, None):
            # Already there (the usual case): no copy, the very tensors iterate_batches gives.
            if xb.device != device:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            yield xb, yb

    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def describe(self) -> str:
        return f"tensors: {self.num_examples} examples, input {list(self.x.shape[1:])}"


class DatasetSource(BatchSource):
    """A map-style dataset (``__len__``, ``__getitem__(i) -> (x, y)``), batched in the order
    :func:`.datasets.iterate_batches` would give for ``n = len(dataset)``. Random transforms
    inside the dataset are its own affair (``deterministic`` is about which examples form each
    batch)."""

    def __init__(self, dataset: Any, *, num_workers: int = 0, what: str = "data"):
        self.what = what
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise ArgumentTypeError(f"{what} must be a map-style dataset (with __len__ and "
                                    f"__getitem__), got {describe(dataset)}")
        self.dataset = dataset
        self.num_workers = as_int("num_workers", num_workers, minimum=0)
        self.num_examples = len(dataset)
        if self.num_examples == 0:
            raise ArgumentError(f"{what}: the dataset {type(dataset).__name__} is empty")
        self.deterministic = True
        self._shape: tuple[int, ...] | None = None

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                device: torch.device, skip: int = 0) -> Iterator[Batch]:
        device = torch.device(device)
        batch_size = as_int("batch_size", batch_size, minimum=1)
        skip = as_int("skip", skip, minimum=0)
        n = self.num_examples = len(self.dataset)  # a dataset may have grown since
        # DataLoader draws its workers' base seed on every iter(); from a generator of its own,
        # seeded from a copy of ours (or of the global one), it moves neither, so the batches and
        # the random numbers after them are those of a TensorSource.
        src = generator if generator is not None else torch.default_generator
        copy = torch.Generator(device=src.device)
        copy.set_state(src.get_state())
        loader_gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (), generator=copy, device=src.device)))
        if shuffle:  # the very draw of iterate_batches, so TensorDataset == TensorSource
            gen_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=gen_device).tolist()
        else:
            order = list(range(n))
        chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)][skip:]
        if not chunks:
            return
        # Pinned host memory lets the copy below overlap; only worth it (and only safe: examples
        # already on the GPU cannot be pinned) when workers hand over CPU batches.
        pin = device.type == "cuda" and self.num_workers > 0
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=self.num_workers,
                            collate_fn=_collate, pin_memory=pin, generator=loader_gen)
        shape = None
        for b, batch in enumerate(loader, start=skip + 1):
            xb, yb = _check_batch(batch, self.what, b, shape)
            shape = xb.shape[1:]
            yield xb.to(device, non_blocking=True), yb.to(device, torch.int64, non_blocking=True)

    def sample_shape(self) -> tuple[int, ...] | None:
        if self._shape is None:
            self._shape = _peek_shape(self.dataset)
        return self._shape

    def describe(self) -> str:
        return f"Dataset {type(self.dataset).__name__}: {self.num_examples} examples"


class LoaderSource(BatchSource):
    """A ``DataLoader`` or any re-iterable of ``(x, y)`` batches, iterated afresh each epoch with
    its own batch size and order (``batch_size``, ``shuffle`` and ``generator`` are ignored)."""

    def __init__(self, loader: Iterable, *, what: str = "data"):
        self.what = what
        if isinstance(loader, Iterator):  # iter(obj) is obj: a second epoch would find it empty
            raise ArgumentTypeError(
                f"{what} is a one-shot iterator ({describe(loader)}); every epoch iterates the "
                f"data again, so pass a list of (x, y) batches, a DataLoader or a Dataset")
        if not isinstance(loader, Iterable):
            raise ArgumentTypeError(f"{what} must be iterable (yielding (x, y) batches), got "
                                    f"{describe(loader)}")
        self.loader = loader
        self.num_examples = None
        if isinstance(loader, DataLoader):
            bs = loader.batch_sampler
            if isinstance(bs, BatchSampler):
                self.deterministic = isinstance(bs.sampler, SequentialSampler)
                try:  # an IterableDataset's sampler has no length
                    n = len(bs.sampler)
                    self.num_examples = n - n % bs.batch_size if bs.drop_last else n
                except TypeError:
                    pass
            else:  # batch_size=None: each dataset item is a batch already; or a custom sampler
                self.deterministic = bs is None and isinstance(loader.sampler, SequentialSampler)
        else:
            # A list or tuple gives the same batches every epoch; another iterable may not.
            self.deterministic = isinstance(loader, (list, tuple))
            if self.deterministic:
                try:  # len of each y: shapes only, no host sync
                    self.num_examples = sum(len(b[1]) for b in loader)
                except Exception:  # noqa: BLE001 - a malformed entry is reported when iterated
                    self.num_examples = None

    def num_batches(self, batch_size: int) -> int | None:
        try:
            return len(self.loader)  # its own batch size; an IterableDataset's loader may refuse
        except TypeError:
            return None

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                device: torch.device, skip: int = 0) -> Iterator[Batch]:
        device = torch.device(device)
        skip = as_int("skip", skip, minimum=0)
        it, b, shape = iter(self.loader), 0, None
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except TypeError as exc:  # default_collate on PIL images, strings, None
                lines = [ln for ln in str(exc).splitlines() if "default_collate" in ln]
                if not lines:
                    raise
                # A worker's error arrives as a traceback text: quote collate's own line.
                hint = _PIL_HINT if "PIL" in lines[-1] else (
                    "each example must be an (x, y) pair of tensors, arrays or numbers")
                raise ArgumentTypeError(f"{self.what}: batch {b + 1} cannot be collated into "
                                        f"tensors ({lines[-1].strip()}); {hint}") from exc
            b += 1
            xb, yb = _check_batch(batch, self.what, b, shape)
            shape = xb.shape[1:]
            if b > skip:
                yield (xb.to(device, non_blocking=True),
                       yb.to(device, torch.int64, non_blocking=True))
        if b == 0:
            raise ArgumentError(f"{self.what} ({self.describe()}) yielded no batch in this epoch; "
                                f"it must yield at least one (x, y) batch every time it is "
                                f"iterated")

    def sample_shape(self) -> tuple[int, ...] | None:
        obj = self.loader
        if isinstance(obj, (list, tuple)):
            try:
                x = obj[0][0]
                return tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None
            except (IndexError, TypeError, KeyError):
                return None
        if isinstance(obj, DataLoader) and obj.collate_fn is default_collate and \
                not isinstance(obj.dataset, IterableDataset) and len(obj.dataset):
            return _peek_shape(obj.dataset)
        return None

    def describe(self) -> str:
        obj = self.loader
        if isinstance(obj, DataLoader):
            text = f"DataLoader (batch size {obj.batch_size})"
            if not isinstance(obj.dataset, IterableDataset):
                text += f" over {type(obj.dataset).__name__}: {len(obj.dataset)} examples"
            return text
        if isinstance(obj, (list, tuple)):
            return f"{type(obj).__name__} of {len(obj)} batches"
        return f"iterable {type(obj).__name__}"


# --- checks ----------------------------------------------------------------------------------

_PIL_HINT = ("a torchvision dataset gives PIL images unless its transform turns them into "
             "tensors: add transform=transforms.Compose([transforms.ToTensor(), "
             "transforms.Normalize(mean, std)])")


def _is_pil(v: Any) -> bool:
    return type(v).__module__.startswith("PIL")  # without importing PIL (not a dependency)


class _BadExamples:
    """What :func:`_collate` returns instead of raising: a worker process would wrap our error
    in its traceback text, and only the main process knows the batch number."""

    def __init__(self, message: str):
        self.message = message


def _collate(samples: list) -> Any:
    """``default_collate`` of ``(x, y)`` examples, after a type check of each (cheap beside
    ``__getitem__``) so that a PIL image or a dict gets our message, not collate's."""
    for i, s in enumerate(samples):
        if not (isinstance(s, (tuple, list)) and len(s) == 2):
            return _BadExamples(f"example {i} of the batch must be an (x, y) pair, got "
                                f"{describe(s)}")
        x = s[0]
        if _is_pil(x):
            return _BadExamples(f"x of an example is a PIL image ({type(x).__name__}), expected "
                                f"a float tensor; {_PIL_HINT}")
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            return _BadExamples(f"x of an example must be a tensor (or numpy array), got "
                                f"{describe(x)}")
    return default_collate(samples)


def _check_x(x: torch.Tensor, name: str) -> None:
    if x.dtype == torch.uint8:
        raise ArgumentTypeError(f"{name} holds uint8 pixels ({describe(x)}), expected a floating "
                                f"tensor; {_TO_FLOAT}")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating tensor, got {describe(x)}")
    if x.dim() < 2:
        raise ArgumentError(f"{name} must have a batch dimension, (B, C, H, W) or (B, D), got "
                            f"shape {tuple(x.shape)}")


def _check_batch(batch: Any, what: str, b: int, shape: torch.Size | None) -> Batch:
    """``batch`` (number ``b``, from 1) as an ``(x, y)`` pair of checked tensors: dtypes, ranks,
    lengths, and the example shape of the epoch's first batch (``shape``)."""
    where = f"{what}: batch {b}"
    if isinstance(batch, _BadExamples):
        raise ArgumentTypeError(f"{where}: {batch.message}")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        got = (f"a {type(batch).__name__} of {len(batch)} items"
               if isinstance(batch, (tuple, list)) else describe(batch))
        raise ArgumentTypeError(f"{where} must be an (x, y) pair of tensors, got {got}")
    x, y = batch
    if not isinstance(x, torch.Tensor):
        hint = f"; {_PIL_HINT}" if _is_pil(x) else (
            "; convert it with torch.from_numpy" if isinstance(x, np.ndarray) else "")
        raise ArgumentTypeError(f"{where}: x must be a float tensor (B, C, H, W) or (B, D), got "
                                f"{describe(x)}{hint}")
    if not isinstance(y, torch.Tensor):
        raise ArgumentTypeError(f"{where}: y must be a (B,) tensor of integer class ids, got "
                                f"{describe(y)}")
    _check_x(x, f"{where}: x")
    check_label_layout(y, len(x), f"{where}: ")
    if len(x) == 0:
        raise ArgumentError(f"{where} is empty (x has shape {tuple(x.shape)})")
    if shape is not None and x.shape[1:] != shape:
        raise ArgumentError(f"{where}: x has examples of shape {tuple(x.shape[1:])} but the "
                            f"epoch's first batch had {tuple(shape)}; all must be alike")
    return x, y


def _peek_shape(dataset: Any) -> tuple[int, ...] | None:
    """Shape of ``dataset[0][0]``, without moving any random state: a random transform applied by
    the peek must not change the training run's random numbers."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            example = dataset[0]
    except Exception:  # noqa: BLE001 - only a hint; the batches report a bad example properly
        return None
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = example[0] if isinstance(example, (tuple, list)) and len(example) == 2 else None
    return tuple(x.shape) if isinstance(x, (torch.Tensor, np.ndarray)) else None


def _num_classes_of(obj: Any) -> int | None:
    """``len(obj.classes)`` (torchvision datasets), looking through ``.dataset`` wrappers
    (``Subset``, a ``DataLoader``)."""
    for _ in range(4):
        classes = getattr(obj, "classes", None)
        if isinstance(classes, (list, tuple)) and classes:
            return len(classes)
        obj = getattr(obj, "dataset", None)
        if obj is None:
            return None
    return None


# --- entry points ----------------------------------------------------------------------------

def _is_tensor_pair(obj: Any) -> bool:
    return (isinstance(obj, (tuple, list)) and len(obj) == 2
            and all(isinstance(t, torch.Tensor) for t in obj))


def as_source(obj: Any, *, what: str = "data") -> BatchSource:
    """``obj`` as a :class:`BatchSource`, by kind:

    * a ``BatchSource``: as is;
    * an ``(x, y)`` tuple or list of two tensors: :class:`TensorSource`;
    * a ``DataLoader``: :class:`LoaderSource`;
    * a map-style dataset: a ``torch.utils.data.Dataset`` with ``__len__``, or any other object
      with ``__len__`` and ``__getitem__`` except a list, tuple, tensor, array, dict or string
      (a list or tuple is taken as a list of batches): :class:`DatasetSource`;
    * any other re-iterable (a list of ``(x, y)`` batches, a custom iterable class):
      :class:`LoaderSource` (a one-shot iterator, e.g. a generator, is refused).

    An ``IterableDataset`` (examples, not batches) must come wrapped in a ``DataLoader``.
    ``what`` names the argument in error messages.
    """
    if isinstance(obj, BatchSource):
        return obj
    if isinstance(obj, DataSplit):
        raise ArgumentTypeError(f"{what} is a DataSplit (train and test together); pass it as the "
                                f"training data (as_training_data), or pass (x, y) tensors here")
    if _is_tensor_pair(obj):
        return TensorSource(obj[0], obj[1], what=what)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        raise ArgumentTypeError(f"{what} is {describe(obj)}, data without labels; expected "
                                f"{_KINDS}")
    if isinstance(obj, DataLoader):
        return LoaderSource(obj, what=what)
    if isinstance(obj, IterableDataset):
        raise ArgumentTypeError(f"{what} is an IterableDataset ({type(obj).__name__}), which "
                                f"yields examples, not batches: wrap it as "
                                f"DataLoader(dataset, batch_size=...)")
    if isinstance(obj, (str, bytes, dict)) or obj is None:
        raise ArgumentTypeError(f"{what} must be {_KINDS}; got {describe(obj)}")
    if not isinstance(obj, (list, tuple)) and hasattr(obj, "__len__") and \
            hasattr(obj, "__getitem__"):
        return DatasetSource(obj, what=what)
    if isinstance(obj, Iterable):
        return LoaderSource(obj, what=what)
    raise ArgumentTypeError(f"{what} must be {_KINDS}; got {describe(obj)}")


@dataclass
class TrainingData:
    """The engine's data: a train source, an optional test source and what is known of them."""

    train: BatchSource
    test: BatchSource | None
    input_shape: tuple[int, ...] | None   # one x example, e.g. (C, H, W); None if unknown
    num_classes: int | None               # None if unknown

    def fingerprint(self) -> str:
        """One line for a checkpoint's compatibility check."""
        test = self.test.describe() if self.test is not None else "none"
        return f"train: {self.train.describe()}; test: {test}"


def as_training_data(data: Any, test_data: Any = None) -> TrainingData:
    """``data`` (and ``test_data``) as :class:`TrainingData`.

    * a :class:`DataSplit`: its train and test tensors, input shape and class count
      (``test_data`` must then be None);
    * a ``(train, test)`` tuple (not a DataSplit, not an ``(x, y)`` tensor pair; a list is a
      list of batches): :func:`as_source` of each (``test_data`` must then be None);
    * anything else: ``train = as_source(data)``, ``test = as_source(test_data)`` or None.

    ``input_shape`` comes from the first example when that is cheap, ``num_classes`` from a
    DataSplit or a dataset's ``classes`` attribute, else None.
    """
    if isinstance(data, DataSplit):
        if test_data is not None:
            raise ArgumentError(f"test_data must be None when data is a DataSplit (it holds its "
                                f"test split), got {describe(test_data)}")
        train = TensorSource(data.x_train, data.y_train, what="data.train")
        test = TensorSource(data.x_test, data.y_test, what="data.test")
        return TrainingData(train, test, tuple(data.input_shape), int(data.num_classes))
    if isinstance(data, tuple) and len(data) == 2 and not _is_tensor_pair(data):
        if test_data is not None:
            raise ArgumentError(f"test_data must be None when data is a (train, test) pair, got "
                                f"{describe(test_data)}")
        data, test_data = data
        train = as_source(data, what="data[0] (train)")
        test = as_source(test_data, what="data[1] (test)")
    else:
        train = as_source(data, what="data")
        test = None if test_data is None else as_source(test_data, what="test_data")
    shape = train.sample_shape()
    if test is not None and shape is not None:
        test_shape = test.sample_shape()
        if test_shape is not None and test_shape != shape:
            raise ArgumentError(f"the test data's examples have shape {test_shape} but the "
                                f"training data's have {shape}; they must be alike")
    sources = [train, test] if test is not None else [train]
    num_classes = next((k for s in sources for k in [_num_classes_of(_inner(s))]
                        if k is not None), None)
    return TrainingData(train, test, shape, num_classes)


def _inner(source: BatchSource) -> Any:
    """The user's object behind a source (a dataset or loader), for its ``classes``."""
    inner = getattr(source, "dataset", None)
    return inner if inner is not None else getattr(source, "loader", None)
