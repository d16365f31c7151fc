"""Data loading (embedded MNIST subset, errors, batching) and the PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eqkern.data import datasets
from eqkern.tools import plots
from eqkern.data.datasets import DATASETS, iterate_batches, load_dataset

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist.npz"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def subset() -> datasets.DataSplit:
    return load_dataset("mnist_subset")


def test_subset_shapes_and_balance(subset):
    assert subset.x_train.shape == (10000, 1, 28, 28) and subset.x_test.shape == (2000, 1, 28, 28)
    assert subset.x_train.dtype == torch.float32 and subset.y_train.dtype == torch.int64
    assert subset.input_shape == (1, 28, 28) and subset.num_classes == 10
    assert subset.class_names == tuple(str(i) for i in range(10))
    assert torch.bincount(subset.y_train, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(subset.y_test, minlength=10).tolist() == [200] * 10
    # Round-robin order: every prefix of 10*k is balanced.
    assert subset.y_train[:30].tolist() == list(range(10)) * 3


def test_subset_normalisation(subset):
    for x in (subset.x_train, subset.x_test):
        assert abs(x.mean().item()) < 0.05
        assert abs(x.std().item() - 1.0) < 0.05


def test_limits_and_dtype():
    d = load_dataset("mnist_subset", limit_train=50, limit_test=20, dtype=torch.float64)
    assert d.x_train.shape == (50, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.x_train.dtype == torch.float64
    assert torch.bincount(d.y_train, minlength=10).tolist() == [5] * 10


def test_subset_equals_source_images(subset):
    """Recompute the selection from the full MNIST file, independently of the build script."""
    with np.load(SHARED_MNIST, allow_pickle=False) as full:
        src = {k: full[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    with np.load(Path(datasets.__file__).parent.parent / "_data" / "mnist_subset.npz") as emb:
        for split, per_class in (("train", 1000), ("test", 200)):
            # One plain pass: the first per_class indices of each class, in file order.
            firsts: list[list[int]] = [[] for _ in range(10)]
            for i, c in enumerate(src[f"y_{split}"].tolist()):
                if len(firsts[c]) < per_class:
                    firsts[c].append(i)
            order = [firsts[c][k] for k in range(per_class) for c in range(10)]
            assert np.array_equal(emb[f"x_{split}"], src[f"x_{split}"][order])
            assert np.array_equal(emb[f"y_{split}"], src[f"y_{split}"][order])
            assert emb[f"x_{split}"].dtype == np.uint8 and emb[f"y_{split}"].dtype == np.uint8
            if split == "train":
                first_train = order[0]
        assert "sha256" in " ".join(emb["source"].tolist())
    # And the loader's tensors are exactly these pixels, normalised with the MNIST statistics.
    x0 = torch.from_numpy(src["x_train"][first_train]).double() / 255
    assert torch.allclose(subset.x_train[0, 0].double(), (x0 - 0.1307) / 0.3081, atol=1e-5)


def test_unknown_name():
    with pytest.raises(ValueError, match="known:.*mnist_subset"):
        load_dataset("imagenet")


def test_missing_dataset_names_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("cifar10", root=tmp_path)
    msg = str(exc.value)
    assert "cifar10.npz" in msg and "cifar-10-batches-py" in msg
    assert str(tmp_path) in msg and "EQKERN_DATA" in msg and "root=" in msg
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_env_var_sets_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EQKERN_DATA", str(tmp_path))
    assert datasets.default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="fashion_mnist.npz"):
        load_dataset("fashion_mnist")


def test_no_default_folder(monkeypatch):
    """Without root= and EQKERN_DATA there is no folder (none is guessed beside the checkout)."""
    monkeypatch.delenv("EQKERN_DATA", raising=False)
    assert datasets.default_data_dir() is None
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("mnist")
    msg = str(exc.value)
    print(msg)
    assert "root=" in msg and "EQKERN_DATA" in msg and "mnist_subset" in msg
    assert "shared" not in msg
    assert load_dataset("mnist_subset", limit_train=10).x_train.shape == (10, 1, 28, 28)


def _idx(path: Path, magic: int, arr: np.ndarray) -> None:
    """An idx-ubyte file: big-endian magic (0x0803 images, 0x0801 labels), dims, then bytes."""
    import struct

    header = struct.pack(f">I{arr.ndim}I", magic, *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("key, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_layout(tmp_path, key, folder):
    """torchvision's MNIST/raw/*-ubyte (read from raw/ directly: no processed/ folder needed)."""
    import torchvision  # noqa: F401 - installed with torch by make test: fail, not skip
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    y_tr, y_te = np.array([0, 1, 2, 3, 4, 9]), np.array([5, 6, 7])
    _idx(raw / "train-images-idx3-ubyte", 0x803, x_tr)
    _idx(raw / "train-labels-idx1-ubyte", 0x801, y_tr)
    _idx(raw / "t10k-images-idx3-ubyte", 0x803, x_te)
    with pytest.raises(FileNotFoundError, match="torchvision rejected"):  # t10k labels missing
        load_dataset(key, root=tmp_path)
    _idx(raw / "t10k-labels-idx1-ubyte", 0x801, y_te)
    d = load_dataset(key, root=tmp_path)
    info = DATASETS[key]
    print(d.x_train.shape, d.y_train.tolist(), d.class_names[:2])
    assert d.x_train.shape == (6, 1, 28, 28) and d.x_test.shape == (3, 1, 28, 28)
    assert d.y_train.tolist() == y_tr.tolist() and d.y_test.tolist() == y_te.tolist()
    assert len(d.class_names) == 10 and d.num_classes == 10
    expect = (x_tr[4, 5, 7] / 255 - info.mean[0]) / info.std[0]
    assert d.x_train[4, 0, 5, 7].item() == pytest.approx(expect, abs=1e-5)
    # A damaged file is a DataFileError naming the folder, not an AssertionError from torchvision.
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(ValueError, match=f"cannot read .*{folder}"):
        load_dataset(key, root=tmp_path)


def test_npz_in_root(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar10_subset.npz",
             x_train=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(4, dtype=np.uint8),
             x_test=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(2, dtype=np.uint8), class_names=np.array(list("abcdefghij")))
    d = load_dataset("cifar10_subset", root=tmp_path)
    assert d.x_train.shape == (4, 3, 32, 32) and d.y_test.tolist() == [0, 1]
    raw = np.load(tmp_path / "cifar10_subset.npz")["x_train"]
    info = DATASETS["cifar10_subset"]
    # NHWC -> NCHW: channel 2 of pixel (5, 7) of image 3.
    expect = (raw[3, 5, 7, 2] / 255 - info.mean[2]) / info.std[2]
    assert d.x_train[3, 2, 5, 7].item() == pytest.approx(expect, abs=1e-5)


def test_torchvision_cifar_layout(tmp_path, monkeypatch):
    """CIFAR-10 in torchvision's extracted-pickle layout, used when the npz is absent."""
    import pickle

    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [3, 7]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    # Without the md5 check torchvision rejects the fake files (with a message suggesting a
    # download, which load_dataset turns into a FileNotFoundError).
    with pytest.raises(FileNotFoundError, match="torchvision rejected"):
        load_dataset("cifar10", root=tmp_path)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)
    d = load_dataset("cifar10", root=tmp_path)
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    assert d.y_train.tolist() == [3, 7] * 5 and d.class_names == tuple(names)


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterate_batches_shuffled_covers_each_index_once(drop_last):
    n, bs = 103, 10
    x = torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 3).contiguous()
    y = torch.arange(n)
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(x, y, bs, shuffle=True, generator=gen, drop_last=drop_last))
    seen = torch.cat([yb for _, yb in batches])
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay paired
    if drop_last:
        assert len(batches) == n // bs and len(set(seen.tolist())) == len(seen) == n // bs * bs
    else:
        assert sorted(seen.tolist()) == list(range(n))
        assert seen.tolist() != list(range(n))  # actually shuffled
    again = list(iterate_batches(x, y, bs, shuffle=True,
                                 generator=torch.Generator().manual_seed(0), drop_last=drop_last))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))  # reproducible


def test_iterate_batches_in_order():
    x, y = torch.randn(25, 2), torch.arange(25)
    batches = list(iterate_batches(x, y, 10, shuffle=False))
    assert [len(b[1]) for b in batches] == [10, 10, 5]
    assert torch.equal(torch.cat([b[0] for b in batches]), x)


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


def test_plot_training_curves(tmp_path):
    history = [{"epoch": e, "train_acc": 50 + 10 * e, "test_acc": 45 + 10 * e,
                "train_loss": 1.0 / e, "test_loss": 1.2 / e} for e in range(1, 4)]
    out = plots.plot_training_curves(history, tmp_path / "curves.png", title="test run")
    assert out == tmp_path / "curves.png"
    _assert_png(out)
    # Only some keys present, and overwriting an existing file.
    plots.plot_training_curves([{"train_acc": 10.0}, {"train_acc": 20.0}], out)
    _assert_png(out)


def test_training_curves_show_the_settle_steps(tmp_path):
    """A CRNN's records carry the steps the convergence stop used: a third panel plots them."""
    from matplotlib.image import imread

    base = [{"epoch": e, "train_acc": 50 + e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    with_steps = [dict(h, settle_steps_per_batch=300 - 40 * h["epoch"]) for h in base]
    plain = plots.plot_training_curves(base, tmp_path / "a" / "curves.png")
    steps = plots.plot_training_curves(with_steps, tmp_path / "b" / "curves.png")
    widths = imread(plain).shape[1], imread(steps).shape[1]
    print(f"widths without / with the steps panel: {widths}")
    assert widths[1] > widths[0] * 1.3
    # the CRNN runs' figure (layer curves) has the panel too, with the records' values
    from matplotlib.figure import Figure
    from eqkern.training.curves import _steps_panel, plot_layer_curves

    ax = Figure().subplots()
    _steps_panel(ax, with_steps)
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[260, 220, 180]]
    layered = [dict(h, state_abs=[0.1, 0.2], update_abs=[1e-3, 2e-3]) for h in with_steps]
    _assert_png(plot_layer_curves(layered, tmp_path / "c" / "curves.png"))


def test_plot_gdu(tmp_path):
    table = [{"name": "connections.0.weight", "cosine": 0.999, "rel_error": 1e-3},
             {"name": "connections.0.bias", "cosine": 0.98, "rel_error": 0.2},
             {"name": "out.weight", "cosine": -0.1, "rel_error": 0.0},
             {"name": "out.bias", "cosine": 0.0, "rel_error": float("inf")}]  # BPTT's is 0
    out = plots.plot_gdu(table, tmp_path / "sub" / "gdu.png")
    _assert_png(out)
