"""The engine on other data than a DataSplit: a Dataset, a DataLoader, a list of batches, no
test data. A TensorDataset of the same tensors must train bit for bit like the DataSplit (same
permutation from the same seed); a DataLoader trains and resumes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import eqkern
from eqkern.errors import ArgumentError

from training_helpers import TINY, _one_thread, fake_data  # noqa: F401 (autouse fixture)

SHAPE = (1, 12, 12)


def _model() -> eqkern.CRNN:
    torch.manual_seed(0)
    return eqkern.CRNN(SHAPE, [eqkern.Conv(4)], 10)


def _cfg(**kw):
    return eqkern.TrainConfig(**{**TINY, "epochs": 2, "data_augmentation": "crop_flip",
                                 "crop_padding": 2, **kw})


def _train(data, tmp_path=None, **kw) -> tuple[list[dict], dict]:
    model = _model()
    hist = eqkern.train(model, data, _cfg(), progress=False, log=lambda s: None,
                        out_dir=tmp_path, **kw)
    return hist, {k: v.clone() for k, v in model.state_dict().items()}


def test_a_tensor_dataset_trains_like_the_split():
    data = fake_data(SHAPE, n=24)
    h1, w1 = _train(data)
    h2, w2 = _train(TensorDataset(data.x_train, data.y_train),
                    test_data=TensorDataset(data.x_test, data.y_test))
    diffs = {k: float((w1[k] - w2[k]).abs().max()) for k in w1}
    print(f"DataSplit vs TensorDataset: weight differences {diffs}; test acc "
          f"{[h['test_acc'] for h in h1]} vs {[h['test_acc'] for h in h2]}")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert [h["test_acc"] for h in h1] == [h["test_acc"] for h in h2]
    assert [h["train_loss"] for h in h1] == [h["train_loss"] for h in h2]


def test_a_dataloader_trains_and_resumes(tmp_path):
    data = fake_data(SHAPE, n=24)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=8, shuffle=False)
    test = [(data.x_test, data.y_test)]  # a list of batches is a source too
    straight, w_straight = _train((loader, test))
    assert all(h["batches"] == 3 for h in straight)
    assert all(0 <= h["test_acc"] <= 100 for h in straight)
    cfg1 = _cfg(epochs=1)
    model = _model()
    eqkern.train(model, (loader, test), cfg1, out_dir=tmp_path, progress=False, log=lambda s: None)
    model = _model()
    resumed = eqkern.train(model, (loader, test), _cfg(), out_dir=tmp_path, resume=True,
                           progress=False, log=lambda s: None)
    print([h["test_acc"] for h in straight], [h["test_acc"] for h in resumed])
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in straight]
    assert all(torch.equal(v, w_straight[k]) for k, v in model.state_dict().items())


def test_without_test_data_the_records_say_none(tmp_path):
    data = fake_data(SHAPE, n=16)
    lines: list[str] = []
    model = _model()
    hist = eqkern.train(model, TensorDataset(data.x_train, data.y_train), _cfg(epochs=1),
                        out_dir=tmp_path, progress=False, log=lines.append)
    print(lines)
    assert hist[0]["test_acc"] is None and hist[0]["test_loss"] is None
    assert any("no test data" in line for line in lines)
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "curves.png").exists()


def test_train_vgg_takes_a_dataset_and_refuses_train_size_on_it():
    data = fake_data((1, 28, 28), n=16)
    ds = TensorDataset(data.x_train, data.y_train)
    res = eqkern.train_vgg("demo-mnist", data=ds, test_data=TensorDataset(data.x_test, data.y_test),
                           width=1 / 8, t_free=2, t_nudge=1, batch_size=8, epochs=1,
                           backend="torch", device="cpu", progress=False, log=lambda s: None)
    assert len(res.history) == 1 and res.model.input_shape == (1, 28, 28)
    with pytest.raises(ArgumentError, match="Subset") as err:
        eqkern.train_vgg("demo-mnist", data=ds, train_size=8, epochs=1, device="cpu",
                         progress=False, log=lambda s: None)
    print(err.value)


def test_train_vgg_refuses_test_data_beside_a_split():
    """A DataSplit holds its own test split: a second one is an error, not silently ignored."""
    data = fake_data((1, 28, 28), n=16)
    with pytest.raises(ArgumentError, match="test_data must be None when data is a DataSplit") as err:
        eqkern.train_vgg("demo-mnist", data=data, test_data=TensorDataset(data.x_test, data.y_test),
                         epochs=1, device="cpu", progress=False, log=lambda s: None)
    print(err.value)
