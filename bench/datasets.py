"""Datasets: where data lives, the evaluation subset rule (SPEC §1) and the CIFAR-10 plugin.

The evaluation subset is ``numpy.random.RandomState(seed).choice(n_total, size, replace=False)`` in
that order — the rule DiffPure (Nie et al. 2022, arXiv:2205.07460), Lee & Kim 2023 and FreqPure share —
so results on "the 512 images" mean the same images in every paper and in every run here.

Data directory: an explicit path, else ``$BENCH_DATA_DIR``, else ``~/.cache/bench/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.registry import DATASETS

DATA_DIR_ENV = "BENCH_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/bench/data")


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: ``explicit`` > ``$BENCH_DATA_DIR`` > ``~/.cache/bench/data``.

    Args:
        explicit: A directory given by the caller (``--data-dir``, a job's ``root``). Default None.

    Returns:
        The directory with ``~`` expanded (it need not exist).
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def subset_indices(n_total: int = 10000, size: int = 512, seed: int = 0) -> list[int]:
    """The evaluation subset, in the order the papers use (SPEC §1).

    Args:
        n_total: Size of the split drawn from. Default 10000 (the CIFAR-10 test set).
        size: Number of images. Default 512.
        seed: Seed of ``numpy.random.RandomState``. Default 0. Changes the images, so it is a
            dataset parameter, not one of the job's randomness seeds.

    Returns:
        ``size`` distinct indices in ``[0, n_total)``, unsorted (the order is part of the rule: the
        first 32 of the 512 are the demo's images).
    """
    if not 0 < size <= n_total:
        raise ValueError(f"subset size must be in 1..{n_total} (n_total), got {size}")
    return [int(i) for i in np.random.RandomState(seed).choice(n_total, size, replace=False)]


def training_pool_indices(n_total: int = 10000, eval_size: int = 512, eval_seed: int = 0) -> list[int]:
    """Sorted indices NOT in the evaluation subset (for demo training on test images; real users train
    on the training split).

    Args:
        n_total: Size of the split. Default 10000.
        eval_size: Size of the evaluation subset to exclude. Default 512.
        eval_seed: Seed of the evaluation subset. Default 0.
    """
    excluded = set(subset_indices(n_total, eval_size, eval_seed))
    return [i for i in range(n_total) if i not in excluded]


class DatasetNotFoundError(FileNotFoundError):
    """The data files are missing; the message lists the paths tried and how to provide them."""


@DATASETS.register("cifar10")
class CIFAR10:
    """CIFAR-10 (Krizhevsky 2009), images as float32 NCHW in [0,1], labels int64.

    Sources, tried in order (loaded lazily, once per instance):

    1. ``<root>/cifar10_test.npz`` (test split only): ``x`` uint8 (N,32,32,3) HWC RGB, ``y`` int64.
    2. ``<root>/cifar-10-batches-py``, the official Python-pickle release, read by
       ``torchvision.datasets.CIFAR10`` (which checks the MD5 of all six batch files and of
       ``batches.meta``).

    ``bench data fetch --what cifar10`` (or ``download=True``) installs both from the official archive
    (``bench.artifacts.install``), unless downloads are off (``BENCH_OFFLINE=1``).

    Args:
        root: Data directory; default None -> :func:`data_dir` (``$BENCH_DATA_DIR`` or
            ``~/.cache/bench/data``).
        split: ``"test"`` (default) or ``"train"``.
        download: Fetch the official archive into ``root`` (verified, through ``bench.artifacts.install``) when the
            split is missing or does not verify; ignored offline (``BENCH_OFFLINE=1``). Default False.

    Example:
        ``x, y = CIFAR10(split="test").images(subset_indices()[:32])``
    """

    NPZ_NAME = "cifar10_test.npz"
    TORCHVISION_DIR = "cifar-10-batches-py"
    SPLITS = ("test", "train")
    #: images per split, so a job can be expanded into tasks without reading the data (bench.tasks)
    split_sizes = {"test": 10000, "train": 50000}
    num_classes = 10
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self, root: str | os.PathLike | None = None, split: str = "test", download: bool = False) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"cifar10: split {split!r} is not one of {self.SPLITS}")
        self.root = data_dir(root)
        self.split = split
        self.download = download
        self._x: np.ndarray | None = None  # uint8 (N,32,32,3)
        self._y: np.ndarray | None = None  # int64 (N,)
        self.source: Path | None = None

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._x is not None:
            return
        if self.download:
            self._fetch()
        npz = self.root / self.NPZ_NAME
        tv_dir = self.root / self.TORCHVISION_DIR
        if self.split == "test" and npz.is_file():
            from bench.artifacts.cifar10_files import NPZ_READ_ERRORS

            try:
                with np.load(npz) as arrays:
                    x, y = arrays["x"], arrays["y"]
            except NPZ_READ_ERRORS as exc:
                raise DatasetNotFoundError(
                    f"{npz} is damaged ({type(exc).__name__}: {exc}). Fix: run `{self._fetch_command()}`, which "
                    "replaces it with the verified test split") from None
            self.source = npz
        elif tv_dir.is_dir():
            x, y = self._load_torchvision(tv_dir)
            self.source = tv_dir
        else:
            tried = ([str(npz)] if self.split == "test" else []) + [str(tv_dir)]
            raise DatasetNotFoundError(
                f"CIFAR-10 {self.split} split not found; tried: {', '.join(tried)}. Fix: run "
                f"`{self._fetch_command()}` (the official release, 163 MiB, MD5-checked), or point the data "
                f"directory at a folder holding {self.NPZ_NAME} or {self.TORCHVISION_DIR} (CLI --data-dir, or "
                f"env {DATA_DIR_ENV}), or set `download: true` in the job's dataset section."
            )
        self._x, self._y = self._validate(np.asarray(x), np.asarray(y))

    def _fetch_command(self) -> str:
        return f"bench data fetch --what cifar10 --data-dir {self.root}"

    def _fetch(self) -> None:
        """Install the official release into ``root`` unless the split is there and verified
        (``bench.artifacts.install``: verified, atomic, retried; the offline rule wins over ``download``)."""
        from bench.artifacts.catalogue import default_catalogue
        from bench.artifacts.install import install
        from bench.artifacts.layout import DataLayout, inspect
        from bench.artifacts.policy import FetchOptions

        artifact = default_catalogue().get("cifar10")
        layout = DataLayout(self.root, self.root / "weights")
        if inspect(artifact, layout).ready_for(self.split):
            return
        options = FetchOptions.resolve()
        if options.offline:
            raise DatasetNotFoundError(
                f"CIFAR-10 {self.split} split missing or not verified in {self.root}, and downloads are off "
                f"(--offline / BENCH_OFFLINE=1 wins over `download: true`). Fix: run `{self._fetch_command()}` "
                "on a machine with network access, or set BENCH_MIRROR.")
        install(artifact, layout, options)

    def _load_torchvision(self, tv_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        from torchvision.datasets import CIFAR10 as TVCIFAR10  # heavy; only when this source is used

        try:
            ds = TVCIFAR10(str(self.root), train=self.split == "train", download=False)
        except RuntimeError as exc:
            raise DatasetNotFoundError(
                f"CIFAR-10 in {tv_dir} is missing or corrupted ({exc}). torchvision checks the MD5 of "
                "all six batch files (data_batch_1..5, test_batch) and batches.meta of the official "
                f"release. Fix: run `{self._fetch_command()}` (replaces it with a verified copy), or set "
                "`download: true` in the job's dataset section, or put the official files there, or put "
                f"{self.NPZ_NAME} into {self.root} (CLI --data-dir, env {DATA_DIR_ENV})."
            ) from exc
        return ds.data, np.asarray(ds.targets, dtype=np.int64)

    def _validate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise ValueError(f"{self.source}: 'x' must be uint8 (N,32,32,3), got {x.dtype} {x.shape}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{self.source}: 'y' must be integer ({x.shape[0]},), got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"{self.source}: labels must lie in 0..{self.num_classes - 1}")
        y = y.astype(np.int64)
        for array in (x, y):  # workers cache one instance per process: nobody may edit it in place
            array.setflags(write=False)
        return x, y

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._load()
        return int(self._x.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """All labels, int64 (N,)."""
        self._load()
        return self._y

    def images(self, ids: list[int] | np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        """Images and labels for ``ids`` (all images when None).

        Args:
            ids: Indices into the split, in the order wanted. Default None (everything).

        Returns:
            ``(x, y)``: x float32 (len(ids),3,32,32) in [0,1]; y int64 (len(ids),).
        """
        self._load()
        idx = np.arange(len(self)) if ids is None else np.asarray(ids, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"cifar10 {self.split}: image ids must lie in 0..{len(self) - 1}")
        x = torch.from_numpy(self._x[idx]).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return x, torch.from_numpy(self._y[idx].copy())

    def __repr__(self) -> str:
        return f"CIFAR10(root={str(self.root)!r}, split={self.split!r}, download={self.download})"


# -- training images for the training commands (bench train denoiser | irad | sar) -----------------
TRAINING_SPLITS = ("test-outside-subset", "train")
TRAINING_DATA_WARNING = (
    "TRAINING ON CIFAR-10 TEST IMAGES outside the 512-image evaluation subset (demo only: this machine "
    "has no training split). Real users train on the training split: --split train."
)


def training_images(split: str = "test-outside-subset", data_dir: str | os.PathLike | None = None,
                    limit: int | None = None) -> tuple[Tensor, Tensor, list[int] | None]:
    """Images and labels a training command learns from, and which test images they are.

    Args:
        split: ``"test-outside-subset"`` (default; the demo): the CIFAR-10 TEST images outside the
            512-image evaluation subset, since the offline data has no training split; ``"train"``:
            the training split (real use).
        data_dir: Data directory. Default None -> :func:`data_dir`.
        limit: Keep only the first ``limit`` images. Default None (all).

    Returns:
        ``(x, y, ids)``: float32 (N,3,32,32) in [0,1], int64 labels, and the test-split indices used
        (None for the training split).
    """
    if split not in TRAINING_SPLITS:
        raise ValueError(f"split {split!r} is not one of {TRAINING_SPLITS}")
    if split == "train":
        dataset, ids = CIFAR10(data_dir, split="train"), None
    else:
        dataset, ids = CIFAR10(data_dir, split="test"), training_pool_indices()
    if limit is not None:
        ids = (ids if ids is not None else list(range(len(dataset))))[:limit]
    x, y = dataset.images(ids)
    return x, y, ids
