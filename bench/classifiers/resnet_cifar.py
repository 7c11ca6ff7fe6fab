"""The CIFAR ResNet of He et al. 2016 (arXiv:1512.03385, §4.2): 6n+2 layers, option-A shortcuts.

A 3x3 conv with 16 channels, three stages of n basic blocks with 16/32/64 channels (stride 2 at the
start of stages 2 and 3), global average pooling, a linear layer. Option-A shortcuts have no
parameters: the identity subsampled by 2 in space and zero-padded in channels. Parameter names match
the checkpoints of akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``), whose files are named
``resnet20-<first 8 hex digits of the sha256>.th``. Inputs are [0,1] images; the ImageNet mean/std
normalisation those checkpoints were trained with happens inside the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.artifacts.catalogue import file_digest
from bench.checkpoint_files import load_error_message
from bench.params import CheckpointFile, ExistingDir
from bench.registry import CLASSIFIERS, PluginError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}  # name -> n (depth 6n+2)


class CheckpointError(PluginError):
    """A checkpoint file is corrupted or does not fit the architecture (bad input: the CLI exits 2)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file is missing; the message says where it was looked for."""


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; option-A shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes  # channels to add with zeros (option A)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet with 6n+2 layers mapping [0,1] images (N,3,32,32) to logits.

    Args:
        n: Basic blocks per stage (3 -> ResNet-20, 5 -> 32, 7 -> 44, 9 -> 56).
        num_classes: Output classes. Default 10.
        mean: Per-channel mean subtracted inside. Default ImageNet's (0.485, 0.456, 0.406).
        std: Per-channel std divided inside. Default (0.229, 0.224, 0.225).
    """

    def __init__(self, n: int, num_classes: int = 10, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> None:
        super().__init__()
        # Buffers so they follow .to(device) but stay out of state_dict (the checkpoints lack them).
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # He init, as in the paper (used when training from scratch)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove ``prefix`` from the keys that start with it (DataParallel checkpoints)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def find_checkpoint(name: str, model_dir: str | os.PathLike | None = None) -> Path:
    """``<model_dir>/<name>-<sha8>.th``; model_dir defaults to ``data_dir()/weights``."""
    from bench.datasets import data_dir

    folder = Path(model_dir).expanduser() if model_dir is not None else data_dir() / "weights"
    found = sorted(folder.glob(f"{name}-*.th"))
    if not found:
        raise CheckpointNotFoundError(
            f"no {name} checkpoint ({name}-<sha256 prefix>.th) in {folder}. Fix: run `bench data fetch "
            f"--what {name}` (the published akamaster/pytorch_resnet_cifar10 file, sha256-checked; "
            "--model-dir for another folder), or pass checkpoint=..., or model_dir=..., or set "
            "BENCH_DATA_DIR to a folder whose weights/ holds the files of pretrained_models/"
        )
    if len(found) > 1:
        raise CheckpointError(f"several {name} checkpoints in {folder}: {[p.name for p in found]}; pass checkpoint=...")
    return found[0]


def verify_sha256_prefix(path: Path) -> None:
    """Check that the hex digits after the last '-' of the file name start its sha256 (torch.hub's rule)."""
    stem = path.name.split(".")[0]
    expected = stem.rsplit("-", 1)[-1].lower()
    if "-" not in stem or len(expected) < 6 or any(c not in "0123456789abcdef" for c in expected):
        raise CheckpointError(f"{path}: the file name carries no sha256 prefix (expected <name>-<hex digits>.th)")
    actual = file_digest(path, "sha256")
    if not actual.startswith(expected):
        raise CheckpointError(f"{path}: sha256 {actual[:len(expected)]}... does not match the {expected} in its name; the file is corrupted or not the published one")


def load_state(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Tensor]:
    """Load a checkpoint on CPU and return its state dict with any ``module.`` prefix removed.

    Accepts a plain state dict or ``{'state_dict': ...}`` / ``{'model': ...}`` wrappers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # pickle refusals, truncated files, non-checkpoints: told apart there
        raise CheckpointError(load_error_message(path, exc, weights_only)) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (a dict of tensors, or one under 'state_dict'/'model')")
    return strip_prefix(obj)


def load_weights(model: nn.Module, path: str | os.PathLike, weights_only: bool = True) -> nn.Module:
    """``model.load_state_dict(load_state(path), strict=True)`` with a readable error."""
    try:
        model.load_state_dict(load_state(path, weights_only), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {exc}") from exc
    return model


def _resnet(name: str, checkpoint, model_dir, pretrained: bool, weights_only: bool) -> ResNetCIFAR:
    model = ResNetCIFAR(DEPTHS[name])
    if not pretrained:
        return model
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()  # the user's own file: its name need not carry a hash
    else:
        path = find_checkpoint(name, model_dir)
        verify_sha256_prefix(path)
    return load_weights(model, path, weights_only).eval()


def resnet20(checkpoint: CheckpointFile | None = None, model_dir: ExistingDir | None = None, pretrained: bool = True,
             weights_only: bool = True) -> ResNetCIFAR:
    """ResNet-20 (0.27M parameters; 91.73% on the CIFAR-10 test set with the published weights).

    Pretrained networks come in eval mode; ``pretrained=False`` ones in training mode.

    Args:
        checkpoint: A checkpoint file. Default None -> ``<model_dir>/resnet20-*.th``.
        model_dir: Folder searched when no checkpoint is given. Default None -> ``data_dir()/weights``.
        pretrained: Load weights; False gives a randomly initialised network. Default True.
        weights_only: ``torch.load(weights_only=...)``; set False only for a file you trust. Default True.
    """
    return _resnet("resnet20", checkpoint, model_dir, pretrained, weights_only)


def resnet32(checkpoint: CheckpointFile | None = None, model_dir: ExistingDir | None = None, pretrained: bool = True,
             weights_only: bool = True) -> ResNetCIFAR:
    """ResNet-32 (0.46M parameters; 92.63%). Arguments as :func:`resnet20`."""
    return _resnet("resnet32", checkpoint, model_dir, pretrained, weights_only)


def resnet44(checkpoint: CheckpointFile | None = None, model_dir: ExistingDir | None = None, pretrained: bool = True,
             weights_only: bool = True) -> ResNetCIFAR:
    """ResNet-44 (0.66M parameters; 93.10%). Arguments as :func:`resnet20`."""
    return _resnet("resnet44", checkpoint, model_dir, pretrained, weights_only)


def resnet56(checkpoint: CheckpointFile | None = None, model_dir: ExistingDir | None = None, pretrained: bool = True,
             weights_only: bool = True) -> ResNetCIFAR:
    """ResNet-56 (0.85M parameters; 93.39%). Arguments as :func:`resnet20`."""
    return _resnet("resnet56", checkpoint, model_dir, pretrained, weights_only)


for _name, _factory in (("resnet20", resnet20), ("resnet32", resnet32), ("resnet44", resnet44), ("resnet56", resnet56)):
    CLASSIFIERS.add(_name, _factory)
