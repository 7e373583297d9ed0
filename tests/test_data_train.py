"""data and train: the digits split (shapes, dtypes, standardisation) and one short training epoch."""

from __future__ import annotations

import math
import pickle
import random
import sys
import tarfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from repmlp_lite import data as data_module
from repmlp_lite.data import DATASETS, DataError, ImageData, load_cifar10, load_dataset, load_digits
from repmlp_lite.nets import small_repmlp_resnet
from repmlp_lite.reparameterize import check_equivalence
from repmlp_lite.train import History, accuracy, pick_device, predict, seed_everything, train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits16() -> ImageData:
    return load_digits(image_size=16)


# ---- data ----------------------------------------------------------------------------------


def test_load_digits_shapes_and_dtypes():
    data = load_digits()  # the defaults: 32x32, a quarter held out
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 32)
    train_x, train_y = data.train.tensors
    test_x, test_y = data.test.tensors
    assert train_x.shape == (1797 - 449, 1, 32, 32) and test_x.shape == (449, 1, 32, 32)
    assert train_y.shape == (1348,) and test_y.shape == (449,)
    assert train_x.dtype == test_x.dtype == torch.float32
    assert train_y.dtype == test_y.dtype == torch.int64
    assert set(torch.cat([train_y, test_y]).tolist()) == set(range(10))


def test_load_digits_is_standardised_by_the_train_split(digits16):
    train_x = digits16.train.tensors[0]
    test_x = digits16.test.tensors[0]
    assert train_x.shape[2:] == (16, 16)
    assert abs(train_x.mean().item()) < 1e-4
    assert abs(train_x.std().item() - 1) < 1e-4
    # the test split uses the train statistics: close to, but not exactly, zero mean / unit std
    assert abs(test_x.mean().item()) < 0.1 and abs(test_x.std().item() - 1) < 0.1
    assert abs(test_x.mean().item()) > 1e-6
    assert torch.isfinite(train_x).all() and torch.isfinite(test_x).all()


def test_load_digits_split_is_seeded():
    a = load_digits(image_size=8, seed=0)
    b = load_digits(image_size=8, seed=0)
    c = load_digits(image_size=8, seed=1, test_fraction=0.5)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert len(c.test) == 898 and len(c.train) == 899
    assert not torch.equal(a.test.tensors[1][:100], c.test.tensors[1][:100])


def test_load_dataset_dispatches_and_rejects_unknown_names():
    assert DATASETS == ("digits", "cifar10")
    data = load_dataset("digits", image_size=8)
    assert data.train.tensors[0].shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match=r"dataset must be one of .*'mnist'"):
        load_dataset("mnist")


def test_the_digits_without_scikit_learn_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import sklearn.datasets now fails
    with pytest.raises(ImportError, match=r"the digits ship with scikit-learn, which is not installed: pip install"):
        load_digits(image_size=8)


def test_load_cifar10_reads_cifars_own_format(cifar_dir):
    """The chapters' CIFAR-10: the published batches, standardised by the training split."""
    data = load_dataset("cifar10", root=cifar_dir, train_size=12, test_size=5)
    (train_x, train_y), test_x = data.train.tensors, data.test.tensors[0]
    assert train_x.shape == (12, 3, 32, 32) and test_x.shape == (5, 3, 32, 32)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    folder = cifar_dir / "cifar-10-batches-py"
    batches = [pickle.loads((folder / name).read_bytes()) for name in ("data_batch_1", "data_batch_2")]
    raw = torch.from_numpy(np.concatenate([b[b"data"] for b in batches])[:12].reshape(-1, 3, 32, 32)).float() / 255
    assert train_y.tolist() == [int(v) for b in batches for v in b[b"labels"]][:12]
    mean, std = raw.mean((0, 2, 3), keepdim=True), raw.std((0, 2, 3), keepdim=True)
    assert torch.allclose(train_x, (raw - mean) / std, atol=1e-6)


def test_load_cifar10_downloads_only_what_is_missing(cifar_dir, tmp_path, monkeypatch):
    fetched = []

    def fake_download(name, root):  # what the real one writes: the published archive, in root
        fetched.append((name, root))
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(cifar_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    monkeypatch.setattr(data_module, "download_cifar", fake_download)
    with pytest.raises(DataError, match=f"no CIFAR-10 batches in {tmp_path}"):
        load_cifar10(tmp_path, download=False)
    assert len(load_cifar10(tmp_path).train) == 16 and fetched == [("cifar10", tmp_path)]
    assert len(load_cifar10(tmp_path).test) == 8 and len(fetched) == 1  # the archive is there now
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    with pytest.raises(DataError, match="cannot read the CIFAR archive"):
        load_cifar10(tmp_path)


# ---- train ---------------------------------------------------------------------------------


def test_pick_device(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device() == torch.device(expected)
    assert pick_device().type == "cpu" or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")


def test_seed_everything_fixes_all_generators():
    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(3)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_predict_and_accuracy():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    model.train()
    x = torch.randn(10, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    ds = TensorDataset(x, y)
    logits = predict(model, ds, torch.device("cpu"), batch_size=3)
    assert not model.training
    assert logits.shape == (10, 3)
    with torch.no_grad():
        assert torch.allclose(logits, model(x))
    perfect = torch.nn.functional.one_hot(y, 3).float()
    assert accuracy(perfect, ds) == 1.0
    assert accuracy(perfect.roll(1, dims=1), ds) == 0.0
    one_wrong = perfect.clone()
    one_wrong[1] = torch.tensor([1.0, 0.0, 0.0])  # label 1 predicted as 0
    assert accuracy(one_wrong, ds) == pytest.approx(0.9)


def _tiny_run(digits16: ImageData, seed: int = 0) -> tuple[nn.Module, History]:
    torch.manual_seed(seed)
    model = small_repmlp_resnet(num_classes=10, in_channels=1, image_size=16, width=4, h=4)
    train_set = Subset(digits16.train, range(64))
    test_set = Subset(digits16.test, range(32))
    history = train(model, train_set, test_set, epochs=1, device=torch.device("cpu"), batch_size=16, seed=seed)
    return model, history


def test_train_one_short_epoch(digits16):
    model, history = _tiny_run(digits16)
    assert isinstance(history, History)
    assert len(history.train_loss) == 1 and len(history.test_accuracy) == 1
    loss = history.train_loss[0]
    assert math.isfinite(loss) and 0 < loss < 10
    assert 0.0 <= history.test_accuracy[0] <= 1.0
    # it really trained: BN statistics moved (4 steps of batch 16), and the merge of the trained net is exact
    bn = model[0].bn
    assert bn.num_batches_tracked.item() == 4
    assert (bn.running_var - 1).abs().max() > 1e-3
    assert check_equivalence(model, (2, 1, 16, 16)).max_abs < 1e-10


def test_train_is_reproducible(digits16):
    _, first = _tiny_run(digits16, seed=5)
    _, second = _tiny_run(digits16, seed=5)
    assert first.train_loss == second.train_loss
    assert first.test_accuracy == second.test_accuracy


def test_train_rejects_a_batch_larger_than_the_training_set(digits16):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))
    few = Subset(digits16.train, range(8))
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the training set \(8 examples\)"):
        train(model, few, digits16.test, epochs=1, device=torch.device("cpu"), batch_size=64)
