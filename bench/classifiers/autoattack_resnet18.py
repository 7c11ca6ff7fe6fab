"""The standard-trained CIFAR-10 ResNet-18 shipped in the pyautoattack wheel (no download needed).

``pyautoattack/examples/model_test.pt`` is a plain state dict (loads with ``weights_only=True``) for
the ResNet-18 of ``pyautoattack/examples/resnet.py`` (the widely used kuangliu/pytorch-cifar
variant of He et al. 2016, arXiv:1512.03385: 64-channel 3x3 stem without max-pooling, four stages of
two basic blocks with 64/128/256/512 channels, 1x1-conv + batch-norm projection shortcuts, 4x4 average
pooling). It takes [0,1] images WITHOUT normalisation. Written here with the same parameter names so
that the weights load strictly, without importing an example script from the wheel.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from bench.classifiers.resnet_cifar import load_weights
from bench.params import CheckpointFile
from bench.registry import CLASSIFIERS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()  # identity; a projection when the shape changes (option B)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs in [0,1] (no normalisation inside), 11.2M parameters.

    Args:
        num_classes: Output classes. Default 10.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, in_planes = (64, 128, 256, 512), 64
        for i, planes in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(out)


def bundled_checkpoint() -> Path:
    """Path of ``model_test.pt`` inside the installed pyautoattack wheel."""
    path = Path(str(files("pyautoattack") / "examples" / "model_test.pt"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the pyautoattack==0.2.0 wheel, which ships it")
    return path


def autoattack_resnet18(checkpoint: CheckpointFile | os.PathLike | None = None, weights_only: bool = True) -> ResNet18:
    """The pyautoattack example ResNet-18 (standard training, CIFAR-10; inputs in [0,1]), in eval mode.

    Args:
        checkpoint: A state-dict file for this architecture. Default None -> the wheel's
            ``pyautoattack/examples/model_test.pt`` (loads with ``weights_only=True``).
        weights_only: ``torch.load(weights_only=...)``; False only for files you trust. Default True.
    """
    path = Path(checkpoint).expanduser() if checkpoint is not None else bundled_checkpoint()
    return load_weights(ResNet18(), path, weights_only).eval()


CLASSIFIERS.add("autoattack-resnet18", autoattack_resnet18)
