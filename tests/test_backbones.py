"""Noise-predictor backbones behind one interface: diffusers, the small UNet, the schedule, caching."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from bench.registry import BACKBONES
from bench.training.denoiser import DenoiserConfig, train_denoiser
from defenses.diffusion.backbone import NoisePredictor, load_backbone
from defenses.diffusion.diffusers_unet import DiffusersUNet, load_diffusers_unet
from defenses.diffusion.schedule import VPSchedule
from defenses.diffusion.small_unet import SmallUNet, load_small_unet


def tiny_unet(out_channels: int = 3):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.mark.slow  # the first `import diffusers` of a process takes 5-20 s (package scanning)
def test_diffusers_round_trip_matches_diffusers(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    wrapped = load_diffusers_unet(tmp_path / "pipe", subfolder="unet")
    assert isinstance(wrapped, NoisePredictor) and not wrapped.training
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3.0, 99.9])
    with torch.no_grad():
        expected = unet(x, t).sample
        assert torch.equal(wrapped(x, t), expected)
        # Through the registry and the per-process cache, as a job would build it.
        built = load_backbone({"type": "diffusers", "path_or_id": str(tmp_path / "pipe"), "subfolder": "unet"})
        assert torch.equal(built(x, t), expected)
        # A scalar label is broadcast over the batch.
        assert torch.equal(wrapped(x, torch.tensor(7.0)), unet(x, torch.tensor([7.0, 7.0])).sample)


def test_diffusers_learned_variance_returns_the_eps_half():
    unet = tiny_unet(out_channels=6)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(DiffusersUNet(unet)(x, torch.tensor([5.0])), unet(x, torch.tensor([5.0])).sample[:, :3])


def test_diffusers_offline_and_bad_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="allow_download"):
        load_diffusers_unet("google/ddpm-cifar10-32", subfolder="unet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot load a UNet2DModel"):
        load_diffusers_unet(tmp_path / "empty")


def test_offline_mode_wins_over_allow_download(tmp_path, monkeypatch):
    """BENCH_OFFLINE=1 (the tests' default) refuses a hub id even with allow_download: true, at load
    time (naming the backbone field) and in the loader; the network is never reached."""
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        load_diffusers_unet("google/ddpm-cifar10-32", subfolder="unet", allow_download=True)
    monkeypatch.chdir(tmp_path)
    from bench.spec import JobSpecError, load_job

    job = {"name": "t", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 8}},
           "classifier": "resnet20", "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0],
           "attacks": [{"type": "pgd-eot", "steps": 2, "eot": 1}], "backbones": {"hub": {"type": "diffusers", "path_or_id": "google/ddpm-cifar10-32",
                                         "subfolder": "unet", "allow_download": True}},
           "defenses": [{"type": "diffpure", "backbone": "hub"}]}
    with pytest.raises(JobSpecError, match="downloads are off") as info:
        load_job(_yaml(tmp_path / "j.yaml", job))
    assert info.value.field.startswith("backbones.hub")


def test_small_unet_checkpoint_round_trip(tmp_path):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "denoiser.pt"
    config = DenoiserConfig(t_max=50, batch_size=2, max_steps=3, minutes=None, model={"nf": 16, "ch_mult": [1, 2]})
    result = train_denoiser(path, config, images=images)
    loaded = load_small_unet(path)
    assert isinstance(loaded, SmallUNet) and loaded.t_max == 50 and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([0.0, 50.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), result.model(x, t))  # EMA weights by default
        raw = load_small_unet(path, use_ema=False)
        assert not torch.equal(raw(x, t), loaded(x, t))  # 3 steps of EMA lag behind the iterate
    state = torch.load(path, weights_only=True)
    assert state["step"] == 3 and state["training"]["t_max"] == 50 and state["config"]["ch_mult"] == [1, 2]
    assert BACKBONES.get("small-unet") is load_small_unet


def test_small_unet_rejects_foreign_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a small-unet checkpoint"):
        load_small_unet(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="bench train denoiser"):
        load_small_unet(tmp_path / "missing.pt")


def test_load_backbone_caches_per_config(tmp_path):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "cached.pt"
    train_denoiser(path, DenoiserConfig(batch_size=2, max_steps=1, minutes=None, model={"ch_mult": [1]}), images=images)
    config = {"type": "small-unet", "checkpoint": str(path)}
    first = load_backbone(config)
    assert load_backbone(dict(config)) is first  # same config, same object: weights loaded once
    other = load_backbone({**config, "use_ema": False})
    assert other is not first
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    model = SmallUNet()
    assert load_backbone(model) is model  # a built predictor passes through


def test_schedule_matches_closed_forms():
    s = VPSchedule()
    betas = s.betas()
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert (s.beta_min, s.beta_max) == (pytest.approx(0.1), pytest.approx(20.0))
    # discrete abar_t = prod_{s<=t}(1 - beta_s), here summed in log space independently of torch.cumprod
    abar = s.alphas_cumprod()
    for t in (0, 99, 500, 999):
        expected = math.exp(math.fsum(math.log1p(-(1e-4 + k * (0.02 - 1e-4) / 999)) for k in range(t + 1)))
        assert abar[t].item() == pytest.approx(expected, rel=1e-12)
    assert abar[-1].item() == pytest.approx(4.0358e-05, rel=1e-4)  # DDPM's published last abar
    # continuous: abar(t) = exp(-0.1 t - 9.95 t^2), std = sqrt(1 - abar); d log abar / dt = -b(t)
    assert s.abar_continuous(0.1) == pytest.approx(math.exp(-0.1095), rel=1e-12)
    assert s.std_continuous(0.1) == pytest.approx(math.sqrt(1 - math.exp(-0.1095)), rel=1e-12)
    t = torch.tensor([0.05, 0.1, 0.5], dtype=torch.float64, requires_grad=True)
    torch.log(s.abar_continuous(t)).sum().backward()
    assert torch.allclose(-t.grad, s.beta_continuous(t.detach()), rtol=1e-12)
    # the two views agree: discrete index i ~ continuous time (i + 1) / 1000 (label 999 t ~ i)
    i = torch.arange(1000, dtype=torch.float64)
    gap = (abar - s.abar_continuous((i + 1) / 1000)).abs()
    assert gap.max().item() < 1e-3
    assert abar[99].item() == pytest.approx(s.abar_continuous(0.1), abs=1e-3)


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
