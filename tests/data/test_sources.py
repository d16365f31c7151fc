"""The data sources of eqkern.data.sources: tensors, Datasets, DataLoaders and lists of batches."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from eqkern.data import (BatchSource, DatasetSource, LoaderSource, TensorSource, TrainingData,
                         as_source, as_training_data, iterate_batches, load_dataset)
from eqkern.errors import ArgumentError, ArgumentTypeError

CPU = torch.device("cpu")


def _data(n: int = 23, shape: tuple[int, ...] = (1, 4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _same(a: list, b: list) -> bool:
    """Bit-for-bit equality of two lists of batches."""
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) and
                                    ya.dtype == yb.dtype for (xa, ya), (xb, yb) in zip(a, b))


class _Classes(Dataset):
    """A map-style dataset with torchvision's ``classes`` attribute."""

    classes = ["a", "b", "c"]

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.mark.parametrize("shuffle", [False, True])
def test_tensor_source_is_iterate_batches(shuffle):
    x, y = _data()
    src = TensorSource(x, y)
    got = list(src.batches(5, shuffle=shuffle, generator=torch.Generator().manual_seed(3),
                           device=CPU))
    want = list(iterate_batches(x, y, 5, shuffle=shuffle,
                                generator=torch.Generator().manual_seed(3)))
    print("labels", [b[1].tolist() for b in got], "vs", [b[1].tolist() for b in want])
    assert _same(got, want)
    assert src.num_examples == 23 and src.num_batches(5) == 5 and src.deterministic
    assert src.sample_shape() == (1, 4, 4)
    assert src.describe() == "tensors: 23 examples, input [1, 4, 4]"


def test_tensor_source_skip_and_generator_state():
    """skip leaves out the first batches but draws the full permutation first (resume)."""
    x, y = _data()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = list(TensorSource(x, y).batches(5, shuffle=True, generator=g1, device=CPU))
    rest = list(TensorSource(x, y).batches(5, shuffle=True, generator=g2, device=CPU, skip=2))
    print(len(full), len(rest))
    assert _same(full[2:], rest)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataset_source_equals_tensor_source(shuffle, num_workers):
    x, y = _data()
    g_t, g_d = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    global_before = torch.get_rng_state()
    want = list(TensorSource(x, y).batches(4, shuffle=shuffle, generator=g_t, device=CPU))
    src = DatasetSource(TensorDataset(x, y), num_workers=num_workers)
    got = list(src.batches(4, shuffle=shuffle, generator=g_d, device=CPU))
    print("dataset", [b[1].tolist() for b in got])
    print("tensors", [b[1].tolist() for b in want])
    assert _same(got, want)
    # Neither our generator nor the global one moved differently (DataLoader's seed draw).
    assert torch.equal(g_t.get_state(), g_d.get_state())
    assert torch.equal(torch.get_rng_state(), global_before)
    assert src.num_examples == 23 and src.num_batches(4) == 6 and src.deterministic
    assert src.sample_shape() == (1, 4, 4)
    assert src.describe() == "Dataset TensorDataset: 23 examples"


def test_dataset_source_labels_int64_and_skip():
    x, y = _data(10)
    src = DatasetSource(TensorDataset(x, y.int()))  # int32 labels are widened
    batches = list(src.batches(3, shuffle=True, generator=torch.Generator().manual_seed(1),
                               device=CPU, skip=1))
    full = list(src.batches(3, shuffle=True, generator=torch.Generator().manual_seed(1),
                            device=CPU))
    print([b[1].dtype for b in batches], [len(b[1]) for b in full])
    assert all(b[1].dtype == torch.int64 for b in batches)
    assert _same(batches, full[1:])


def test_loader_source_over_dataloader():
    x, y = _data(20)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    src = LoaderSource(loader)
    got = list(src.batches(999, shuffle=True, generator=None, device=CPU))  # its own batching
    print([len(b[1]) for b in got], src.describe())
    assert [len(b[1]) for b in got] == [8, 8, 4] and torch.equal(torch.cat([b[0] for b in got]), x)
    assert src.deterministic and src.num_examples == 20 and src.num_batches(3) == 3
    assert src.sample_shape() == (1, 4, 4)
    assert src.describe() == "DataLoader (batch size 8) over TensorDataset: 20 examples"
    shuffled = LoaderSource(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    assert not shuffled.deterministic
    dropped = LoaderSource(DataLoader(TensorDataset(x, y), batch_size=8, drop_last=True))
    assert dropped.num_examples == 16


def test_loader_source_over_list_and_iterable():
    x, y = _data(10)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    src = as_source(batches)
    got = list(src.batches(4, shuffle=True, generator=None, device=CPU))
    print(type(src).__name__, src.describe(), [len(b[1]) for b in got])
    assert isinstance(src, LoaderSource) and _same(got, batches)
    assert src.num_examples == 10 and src.num_batches(4) == 2 and src.deterministic
    assert src.sample_shape() == (1, 4, 4) and src.describe() == "list of 2 batches"

    class Again:  # re-iterable, but not known to repeat itself
        def __iter__(self):
            return iter(batches)

    other = as_source(Again())
    print(other.describe(), other.num_batches(4))
    assert isinstance(other, LoaderSource) and not other.deterministic
    assert other.num_examples is None and other.num_batches(4) is None
    assert _same(list(other.batches(4, shuffle=False, generator=None, device=CPU)), batches)


def test_one_shot_iterator_refused():
    x, y = _data(4)
    with pytest.raises(ArgumentTypeError) as exc:
        as_source(((x, y) for _ in range(2)), what="train_data")
    print(exc.value)
    msg = str(exc.value)
    assert "train_data" in msg and "one-shot" in msg
    assert "list" in msg and "DataLoader" in msg and "Dataset" in msg


class _FakePIL:
    """Stands for a PIL image (the check goes by the module, as PIL is not a dependency)."""


_FakePIL.__module__ = "PIL.Image"


@pytest.mark.parametrize("case, kind, words", [
    ("uint8 x", ArgumentTypeError, ["batch 2", "uint8", "float"]),
    ("float y", ArgumentTypeError, ["batch 2", "y", "integer", "float32"]),
    ("bool y", ArgumentTypeError, ["batch 2", "y", "bool"]),
    ("lengths", ArgumentError, ["batch 2", "3 labels", "4 examples"]),
    ("PIL x", ArgumentTypeError, ["batch 2", "PIL", "ToTensor"]),
    ("no batch dim", ArgumentError, ["batch 2", "batch dimension"]),
    ("shape change", ArgumentError, ["batch 2", "(1, 5, 5)", "(1, 4, 4)"]),
    ("not a pair", ArgumentTypeError, ["batch 2", "(x, y) pair", "tuple of 3 items"]),
])
def test_bad_batches_refused(case, kind, words):
    x, y = _data(4)
    bad = {"uint8 x": ((x * 50).clamp(0, 255).to(torch.uint8), y),
           "float y": (x, y.float()), "bool y": (x, y > 3), "lengths": (x, y[:3]),
           "PIL x": (_FakePIL(), y), "no batch dim": (x[0, 0, 0], y),
           "shape change": (torch.randn(4, 1, 5, 5), y), "not a pair": (x, y, y)}[case]
    src = as_source([(x, y), bad], what="my_data")
    with pytest.raises(kind) as exc:
        list(src.batches(4, shuffle=False, generator=None, device=CPU))
    print(case, "->", exc.value)
    assert all(w in str(exc.value) for w in ["my_data"] + words)


def test_bad_examples_in_dataset():
    x, y = _data(6)

    class PILs(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return _FakePIL(), 1

    with pytest.raises(ArgumentTypeError) as exc:
        list(DatasetSource(PILs(), what="data").batches(4, shuffle=False, generator=None,
                                                        device=CPU))
    print(exc.value)
    assert "batch 1" in str(exc.value) and "ToTensor" in str(exc.value)
    uint8 = TensorDataset((x * 50).clamp(0, 255).to(torch.uint8), y)
    with pytest.raises(ArgumentTypeError, match="batch 1.*uint8.*float"):
        list(DatasetSource(uint8).batches(4, shuffle=False, generator=None, device=CPU))
    floaty = TensorDataset(x, y.float())
    with pytest.raises(ArgumentTypeError, match="batch 1: y must hold integer"):
        list(DatasetSource(floaty).batches(4, shuffle=False, generator=None, device=CPU))


def test_pil_through_user_dataloader():
    """A real torchvision-like dataset of PIL images behind the user's DataLoader."""
    from PIL import Image  # torchvision's dependency, installed by make test

    class PILs(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return Image.new("L", (4, 4)), 0

    with pytest.raises(ArgumentTypeError) as exc:
        list(as_source(DataLoader(PILs(), batch_size=2)).batches(2, shuffle=False,
                                                                   generator=None, device=CPU))
    print(exc.value)
    assert "batch 1" in str(exc.value) and "ToTensor" in str(exc.value)


def test_empty_epoch_refused():
    with pytest.raises(ArgumentError, match="yielded no batch"):
        list(as_source([]).batches(4, shuffle=False, generator=None, device=CPU))
    with pytest.raises(ArgumentError, match="empty"):
        DatasetSource(TensorDataset(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)))


@pytest.mark.parametrize("value, words", [
    (torch.randn(3, 2), ["without labels"]),
    ("mnist", ["'mnist'", "DataLoader"]),
    (42, ["42 (int)", "Dataset"]),
    (None, ["None"]),
])
def test_as_source_refuses(value, words):
    with pytest.raises(ArgumentTypeError) as exc:
        as_source(value, what="train_data")
    print(exc.value)
    assert all(w in str(exc.value) for w in ["train_data"] + words)


def test_as_source_kinds():
    x, y = _data(8)
    kinds = {"pair": (x, y), "list pair": [x, y], "dataset": TensorDataset(x, y),
             "subset": Subset(TensorDataset(x, y), [0, 1, 2]),
             "loader": DataLoader(TensorDataset(x, y), batch_size=4), "batches": [(x, y)]}
    got = {k: type(as_source(v)).__name__ for k, v in kinds.items()}
    print(got)
    assert got == {"pair": "TensorSource", "list pair": "TensorSource", "dataset": "DatasetSource",
                   "subset": "DatasetSource", "loader": "LoaderSource", "batches": "LoaderSource"}
    src = TensorSource(x, y)
    assert as_source(src) is src and isinstance(src, BatchSource)


def test_as_training_data_kinds():
    split = load_dataset("mnist_subset", limit_train=20, limit_test=10)
    td = as_training_data(split)
    print(td.fingerprint())
    assert isinstance(td, TrainingData) and td.input_shape == (1, 28, 28) and td.num_classes == 10
    assert isinstance(td.train, TensorSource) and td.test.num_examples == 10
    assert td.fingerprint() == ("train: tensors: 20 examples, input [1, 28, 28]; "
                                "test: tensors: 10 examples, input [1, 28, 28]")
    with pytest.raises(ArgumentError, match="test_data must be None"):
        as_training_data(split, (split.x_test, split.y_test))

    x, y = _data(12)
    pair = as_training_data((_Classes(x, y), DataLoader(TensorDataset(x, y), batch_size=5)))
    print(pair.fingerprint())
    assert isinstance(pair.train, DatasetSource) and isinstance(pair.test, LoaderSource)
    assert pair.input_shape == (1, 4, 4) and pair.num_classes == 3
    assert pair.fingerprint() == ("train: Dataset _Classes: 12 examples; "
                                  "test: DataLoader (batch size 5) over TensorDataset: 12 examples")

    single = as_training_data((x, y))  # an (x, y) tensor pair is one source, not (train, test)
    print(single.fingerprint())
    assert isinstance(single.train, TensorSource) and single.test is None
    assert single.input_shape == (1, 4, 4) and single.num_classes is None
    assert single.fingerprint().endswith("test: none")

    both = as_training_data([(x, y)], test_data=Subset(_Classes(x, y), [0, 1]))
    assert isinstance(both.train, LoaderSource) and isinstance(both.test, DatasetSource)
    assert both.num_classes == 3 and both.input_shape == (1, 4, 4)

    with pytest.raises(ArgumentError, match="shape"):
        as_training_data((x, y), test_data=(torch.randn(3, 2), torch.zeros(3, dtype=torch.long)))


def test_peek_keeps_random_state():
    """sample_shape calls dataset[0]; a random transform there must not move any RNG."""
    x, y = _data(4)

    class Noisy(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            random.random(), np.random.rand()
            return x[i] + torch.randn(()), int(y[i])

    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert DatasetSource(Noisy()).sample_shape() == (1, 4, 4)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_move_cuda():
    x, y = _data(10)
    cuda = torch.device("cuda")
    for src in (TensorSource(x, y), DatasetSource(TensorDataset(x, y), num_workers=1),
                as_source([(x, y)])):
        gen = torch.Generator().manual_seed(0)
        xb, yb = next(iter(src.batches(4, shuffle=True, generator=gen, device=cuda)))
        print(type(src).__name__, xb.device, yb.device, yb.dtype)
        assert xb.is_cuda and yb.is_cuda and yb.dtype == torch.int64
    # A CUDA generator shuffles a CPU dataset the same way as CPU tensors.
    g1, g2 = (torch.Generator(device=cuda).manual_seed(4) for _ in range(2))
    a = list(TensorSource(x.cuda(), y.cuda()).batches(4, shuffle=True, generator=g1, device=cuda))
    b = list(DatasetSource(TensorDataset(x, y)).batches(4, shuffle=True, generator=g2, device=cuda))
    assert _same(a, b)


def test_device_move_meta():
    """Moving to another device: a CPU source yields batches on the requested device (meta
    stands in for a GPU, which CPU-only machines lack)."""
    x, y = _data(6)
    meta = torch.device("meta")
    four = [(x[:4], y[:4])]
    for src in (TensorSource(x, y), DatasetSource(TensorDataset(x, y)), as_source(four)):
        xb, yb = next(iter(src.batches(4, shuffle=False, generator=None, device=meta)))
        print(type(src).__name__, xb.device, yb.device, yb.dtype, tuple(xb.shape))
        assert xb.device == meta and yb.device == meta and yb.dtype == torch.int64
        assert tuple(xb.shape) == (4, 1, 4, 4)
