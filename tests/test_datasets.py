"""bench.datasets: the evaluation-subset rule (SPEC §1), data-dir resolution and the CIFAR-10 sources."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.datasets import CIFAR10, DatasetNotFoundError, data_dir, subset_indices, training_pool_indices
from bench.registry import DATASETS


# -- subset rule ------------------------------------------------------------------------------
def test_subset_is_numpy_randomstate_choice_in_order():
    ids = subset_indices()
    expected = np.random.RandomState(0).choice(10000, 512, replace=False)
    assert ids == expected.tolist()
    # The first images of the subset DiffPure / Lee & Kim / FreqPure evaluate (numpy's legacy RNG
    # stream is frozen by numpy's compatibility policy, so these never change).
    assert ids[:4] == [9394, 898, 2398, 5906]
    assert len(ids) == 512 and len(set(ids)) == 512
    assert all(isinstance(i, int) and 0 <= i < 10000 for i in ids)
    assert ids != sorted(ids)  # the order is part of the rule, not sorted


def test_subset_is_deterministic_and_seed_dependent():
    assert subset_indices(seed=0) == subset_indices(seed=0)
    assert subset_indices(seed=1) != subset_indices(seed=0)
    assert subset_indices(100, 10, 3) == np.random.RandomState(3).choice(100, 10, replace=False).tolist()
    # RandomState.choice without replacement takes a prefix of one permutation, so a smaller subset is
    # the head of a larger one: the demo's 32 images are the first 32 of the paper's 512.
    assert subset_indices(size=32) == subset_indices(size=512)[:32]
    with pytest.raises(ValueError, match="subset size"):
        subset_indices(10, 11)


def test_training_pool_is_the_sorted_complement():
    pool = training_pool_indices()
    subset = set(subset_indices())
    assert pool == sorted(pool) and len(pool) == 10000 - 512
    assert not subset & set(pool)
    assert subset | set(pool) == set(range(10000))


# -- data dir ---------------------------------------------------------------------------------
def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv("BENCH_DATA_DIR")
    assert data_dir() == Path.home() / ".cache" / "bench" / "data"


# -- npz source -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar(data_dir):
    return CIFAR10(root=data_dir)


def test_npz_images(cifar, data_dir):
    assert DATASETS.get("cifar10") is CIFAR10
    assert len(cifar) == 10000 and cifar.source == data_dir / "cifar10_test.npz"
    x, y = cifar.images(list(range(10)))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9  # really scaled, not all dark
    assert np.bincount(cifar.labels, minlength=10).tolist() == [1000] * 10
    # Same pixels as the file, transposed HWC -> CHW and scaled by 1/255, in the order asked.
    with np.load(data_dir / "cifar10_test.npz") as raw:
        ids = [9394, 0, 898]
        expected = torch.from_numpy(raw["x"][ids]).permute(0, 3, 1, 2).float() / 255
    got, labels = cifar.images(ids)
    assert torch.equal(got, expected) and labels.tolist() == cifar.labels[ids].tolist()


def test_bad_ids_and_split(cifar, tmp_path):
    with pytest.raises(IndexError, match="0..9999"):
        cifar.images([10000])
    with pytest.raises(ValueError, match="split 'val'"):
        CIFAR10(root=tmp_path, split="val")


# -- torchvision-format directory ---------------------------------------------------------------
def _write_batch(path: Path, x_hwc: np.ndarray, y: np.ndarray) -> None:
    # The official format: a pickled dict, 'data' uint8 (N, 3072) channel-major rows, 'labels' list.
    data = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1)
    with open(path, "wb") as f:
        pickle.dump({"batch_label": path.name, "data": data, "labels": y.tolist()}, f)


def _write_torchvision_dir(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _write_batch(folder / "test_batch", x, y)
    for i in range(1, 6):  # torchvision needs all six files even for the test split
        _write_batch(folder / f"data_batch_{i}", x[:2], y[:2])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10.classes)}, f)


@pytest.fixture(scope="module")
def raw_head(data_dir):
    with np.load(data_dir / "cifar10_test.npz") as raw:
        return raw["x"][:64], raw["y"][:64]


def test_torchvision_directory_round_trip(tmp_path, monkeypatch, raw_head, cifar):
    # torchvision verifies the MD5 of each file against the official release. A re-pickled batch can
    # never match those digests (the originals are Python 2 pickles that also carry file names we do
    # not have), so this test replaces ONLY the checksum comparison with an existence check; parsing,
    # reshaping and our conversion run for real. The next test shows the check is active otherwise.
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    _write_torchvision_dir(tmp_path, *raw_head)
    ds = CIFAR10(root=tmp_path)
    assert len(ds) == 64 and ds.source == tmp_path / "cifar-10-batches-py"
    x, y = ds.images(range(64))
    x_ref, y_ref = cifar.images(range(64))
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    train = CIFAR10(root=tmp_path, split="train")
    assert len(train) == 10 and train.labels.tolist() == raw_head[1][:2].tolist() * 5


def test_torchvision_directory_checksum_failure_is_explained(tmp_path, raw_head):
    _write_torchvision_dir(tmp_path, *raw_head)
    with pytest.raises(DatasetNotFoundError, match="MD5") as err:
        len(CIFAR10(root=tmp_path))
    assert "download: true" in str(err.value) and str(tmp_path / "cifar-10-batches-py") in str(err.value)


def test_missing_data_names_paths_and_fixes(tmp_path):
    ds = CIFAR10(root=tmp_path)  # lazy: constructing does not touch the disk
    with pytest.raises(DatasetNotFoundError) as err:
        ds.images([0])
    message = str(err.value)
    for needle in (str(tmp_path / "cifar10_test.npz"), str(tmp_path / "cifar-10-batches-py"), "--data-dir", "BENCH_DATA_DIR", "download: true"):
        assert needle in message
    with pytest.raises(DatasetNotFoundError) as err:
        len(CIFAR10(root=tmp_path, split="train"))
    assert "cifar10_test.npz" not in str(err.value).split("Fix:")[0]  # the npz holds no train split


def test_malformed_npz_is_rejected(tmp_path):
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((2, 3, 32, 32), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"'x' must be uint8 \(N,32,32,3\)"):
        len(CIFAR10(root=tmp_path))
