"""Checkpoint load errors say what happened; only an intact file with pickled objects suggests the opt-in."""

from __future__ import annotations

import pytest
import torch

from bench.checkpoint_files import CheckpointLoadError, torch_load
from bench.classifiers.resnet_cifar import CheckpointError, ResNetCIFAR, resnet20


class NotAllowlisted:
    """A pickled object that torch.load(weights_only=True) must refuse."""


@pytest.fixture
def files(tmp_path):
    model = ResNetCIFAR(3)
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "truncated_legacy.pt").write_bytes(legacy[: len(legacy) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04not a checkpoint" * 20)
    torch.save({"state_dict": model.state_dict(), "extra": NotAllowlisted()}, tmp_path / "pickled.pt")
    return tmp_path


@pytest.mark.parametrize("name,says", [("truncated.pt", "truncated or corrupted"), ("truncated_legacy.pt", "truncated or corrupted"),
                                       ("garbage.pt", "not a readable torch checkpoint")])
def test_damaged_files_never_suggest_unpickling(files, name, says):
    with pytest.raises(CheckpointLoadError) as info:
        torch_load(files / name)
    assert says in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(CheckpointError) as info:  # the classifier loader tells the same story
        resnet20(checkpoint=str(files / name))
    assert says in str(info.value) and "weights_only" not in str(info.value)


def test_pickled_objects_name_the_class_and_the_opt_in(files):
    with pytest.raises(CheckpointLoadError) as info:
        torch_load(files / "pickled.pt")
    message = str(info.value)
    assert "NotAllowlisted" in message and "weights_only: false" in message and "can run code" in message
    assert isinstance(torch_load(files / "pickled.pt", weights_only=False)["extra"], NotAllowlisted)


def test_intact_file_loads(files):
    assert set(torch_load(files / "ok.pt")) == set(ResNetCIFAR(3).state_dict())
    with pytest.raises(FileNotFoundError):
        torch_load(files / "missing.pt")
