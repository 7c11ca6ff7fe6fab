"""The score-SDE DDPM++ network: layout identical to the original, checkpoint_8.pth loading, EMA use."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import yaml

from bench.registry import BACKBONES
from defenses.diffusion.ncsnpp import NCSNpp, assign_ema, load_score_sde, timestep_embedding

# Fingerprints taken from the ORIGINAL implementation (yang-song/score_sde_pytorch, models/ncsnpp.py,
# instantiated with configs/vp/cifar10_ddpmpp_deep_continuous.py and with the tiny config below):
# the sha256 of "name:shape" lines of named_parameters() in order, the tensor count and the size.
DEEP_FINGERPRINT = ("b2e98ab98124915d1f744942aadb3953aa6356d354e2f6ba914ddc1771813c4e", 956, 106_632_579)
TINY = {"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16]}
TINY_FINGERPRINT = ("6c9aecedb2d62e15a57f85707c078ea7dca74f087c04c7b82a056bd3061886e9", 154, 189_347)


def fingerprint(model: torch.nn.Module) -> tuple[str, int, int]:
    rows = [f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters()]
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return digest, len(rows), sum(p.numel() for p in model.parameters())


@pytest.mark.slow  # ~2 s alone, >10 s on a loaded 2-core machine (first meta-device use)
def test_deep_config_has_the_original_parameter_layout():
    with torch.device("meta"):  # 106M parameters: shapes only, no memory, no init cost
        model = NCSNpp("cifar10-deep")
    assert fingerprint(model) == DEEP_FINGERPRINT
    keys = list(model.state_dict())
    assert keys[:3] == ["sigmas", "all_modules.0.weight", "all_modules.0.bias"]
    assert keys[-2:] == ["all_modules.90.weight", "all_modules.90.bias"]


def test_tiny_config_has_the_original_parameter_layout():
    assert fingerprint(NCSNpp(TINY)) == TINY_FINGERPRINT


class NotAllowlisted:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def write_checkpoint(path, model: NCSNpp, shadow: list[torch.Tensor], prefix: str = "module.", extra=None) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model(torch.zeros(1, 3, 32, 32), torch.zeros(1)).sum().backward()
    optimizer.step()
    state = {
        "model": {prefix + k: v for k, v in model.state_dict().items()},
        "ema": {"decay": 0.9999, "num_updates": 12, "shadow_params": shadow},
        "optimizer": optimizer.state_dict(),
        "step": 12,
    }
    if extra is not None:
        state["extra"] = extra
    torch.save(state, path)


@pytest.fixture
def raw_and_shadow():
    torch.manual_seed(0)
    raw = NCSNpp(TINY)
    gen = torch.Generator().manual_seed(1)
    # EMA weights clearly different from the raw ones (and non-zero where init_scale is 0).
    shadow = [torch.randn(p.shape, generator=gen) * 0.05 for p in raw.parameters()]
    return raw, shadow


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_checkpoint_loads_strictly_and_uses_the_ema_weights(tmp_path, raw_and_shadow, prefix):
    raw, shadow = raw_and_shadow
    path = tmp_path / "checkpoint_8.pth"
    write_checkpoint(path, raw, shadow, prefix=prefix)

    model = load_score_sde(path, config=TINY)
    assert not model.training
    for loaded, expected in zip(model.parameters(), shadow):
        assert torch.equal(loaded, expected)

    # Reference built independently: the shadow list mapped to names by position.
    reference = NCSNpp(TINY).eval()
    names = [n for n, _ in reference.named_parameters()]
    reference.load_state_dict({**dict(zip(names, shadow)), "sigmas": reference.sigmas}, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([999 * 0.1, 999 * 0.05])
    with torch.no_grad():
        out = model(x, t)
        assert out.shape == (2, 3, 32, 32)
        assert torch.equal(out, reference(x, t))
        raw_out = load_score_sde(path, use_ema=False, config=TINY)(x, t)
        assert torch.equal(raw_out, raw.eval()(x, t))
        assert not torch.allclose(out, raw_out)


def test_weights_only_is_the_default(tmp_path, raw_and_shadow):
    raw, shadow = raw_and_shadow
    path = tmp_path / "checkpoint_8.pth"
    write_checkpoint(path, raw, shadow, extra=NotAllowlisted())
    with pytest.raises(Exception, match="(?i)weights.only"):
        load_score_sde(path, config=TINY)
    model = load_score_sde(path, config=TINY, weights_only=False)  # explicit opt-in for trusted files
    assert torch.equal(next(model.parameters()), shadow[0])


def test_mismatches_fail_clearly(tmp_path, raw_and_shadow):
    raw, shadow = raw_and_shadow
    path = tmp_path / "checkpoint_8.pth"
    write_checkpoint(path, raw, shadow[:-1])
    with pytest.raises(ValueError, match="shadow_params: 153 tensors, but the model has 154"):
        load_score_sde(path, config=TINY)
    with pytest.raises(ValueError, match="'model' does not match"):
        load_score_sde(path, config={**TINY, "num_res_blocks": 2})
    with pytest.raises(ValueError, match="unknown field"):
        load_score_sde(path, config={**TINY, "fir": True})
    swapped = list(shadow)
    swapped[0], swapped[2] = swapped[2], swapped[0]
    with pytest.raises(ValueError, match=r"shadow_params\[0\] has shape"):
        assign_ema(NCSNpp(TINY), swapped)


def test_registered_as_score_sde_backbone():
    assert BACKBONES.get("score-sde") is load_score_sde


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 99.9, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-k / 3) for k in range(4)]  # half = 4 -> exponent k / (half - 1)
    expected = [[math.sin(ti * f) for f in freqs] + [math.cos(ti * f) for f in freqs] for ti in t.tolist()]
    assert torch.allclose(emb, torch.tensor(expected), atol=1e-5)


def test_eps_output_responds_to_time_and_input():
    torch.manual_seed(0)
    model = NCSNpp(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # init_scale 0 layers start at ~0; randomise for a live network
            p.normal_(0, 0.05)
        x = torch.randn(3, 3, 32, 32)
        a = model(x, torch.tensor(10.0))  # a scalar label is broadcast over the batch
        b = model(x, torch.full((3,), 500.0))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.allclose(a, b)


# The official config of checkpoint_8.pth, transcribed from yang-song/score_sde_pytorch
# (configs/default_cifar10_configs.py + configs/vp/cifar10_ddpmpp_deep_continuous.py), as to_dict() gives it.
OFFICIAL_DEEP = {
    "training": {"batch_size": 128, "n_iters": 950001, "snapshot_freq": 50000, "log_freq": 50, "eval_freq": 100,
                 "snapshot_freq_for_preemption": 10000, "snapshot_sampling": True, "likelihood_weighting": False,
                 "continuous": True, "reduce_mean": True, "sde": "vpsde"},
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": 0.16, "method": "pc",
                 "predictor": "euler_maruyama", "corrector": "none"},
    "eval": {"begin_ckpt": 9, "end_ckpt": 26, "batch_size": 1024, "enable_sampling": False, "num_samples": 50000,
             "enable_loss": True, "enable_bpd": False, "bpd_dataset": "test"},
    "data": {"dataset": "CIFAR10", "image_size": 32, "random_flip": True, "centered": True,
             "uniform_dequantization": False, "num_channels": 3},
    "model": {"sigma_min": 0.01, "sigma_max": 50, "num_scales": 1000, "beta_min": 0.1, "beta_max": 20.0,
              "dropout": 0.1, "embedding_type": "positional", "name": "ncsnpp", "scale_by_sigma": False,
              "ema_rate": 0.9999, "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128,
              "ch_mult": (1, 2, 2, 2), "num_res_blocks": 8, "attn_resolutions": (16,), "resamp_with_conv": True,
              "conditional": True, "fir": False, "fir_kernel": [1, 3, 3, 1], "skip_rescale": True,
              "resblock_type": "biggan", "progressive": "none", "progressive_input": "none",
              "progressive_combine": "sum", "attention_type": "ddpm", "init_scale": 0.0, "fourier_scale": 16,
              "conv_size": 3},
    "optim": {"weight_decay": 0, "optimizer": "Adam", "lr": 2e-4, "beta1": 0.9, "eps": 1e-8, "warmup": 5000,
              "grad_clip": 1.0},
    "seed": 42,
}


def test_official_config_dict_and_dumps_give_the_deep_preset(tmp_path):
    from defenses.diffusion.ncsnpp import PRESETS, resolve_config

    assert resolve_config(OFFICIAL_DEEP) == PRESETS["cifar10-deep"]
    four = {**OFFICIAL_DEEP, "model": {**OFFICIAL_DEEP["model"], "num_res_blocks": 4}}
    assert resolve_config(four) == PRESETS["cifar10"]
    # ml_collections' to_yaml(): tuples as !!python/tuple, the device as a Python object (never built)
    dump = yaml.dump({**OFFICIAL_DEEP, "device": "DEVICE"}, default_flow_style=False)
    assert "!!python/tuple" in dump
    dump = dump.replace("device: DEVICE", "device: !!python/object/apply:torch.device\n- cuda\n- 0")
    (tmp_path / "config.yaml").write_text(dump)
    assert resolve_config(str(tmp_path / "config.yaml")) == PRESETS["cifar10-deep"]
    (tmp_path / "config.json").write_text(json.dumps(OFFICIAL_DEEP))  # to_json()
    assert resolve_config(str(tmp_path / "config.json")) == PRESETS["cifar10-deep"]


@pytest.mark.parametrize("field,value", [
    ("model.scale_by_sigma", True), ("model.embedding_type", "fourier"), ("model.fir", True),
    ("model.resblock_type", "ddpm"), ("model.progressive", "output_skip"), ("model.progressive_input", "residual"),
    ("model.normalization", "InstanceNorm"), ("model.nonlinearity", "elu"), ("model.skip_rescale", False),
    ("model.conditional", False), ("model.attention_type", "legacy"), ("model.conv_size", 5), ("model.name", "ddpm"),
    ("model.beta_max", 10.0), ("data.centered", False), ("training.sde", "subvpsde"), ("training.continuous", False),
])
def test_official_config_choices_the_network_does_not_implement_are_refused(field, value):
    from defenses.diffusion.ncsnpp import ScoreSDEConfigError, resolve_config

    section, key = field.split(".")
    config = {**OFFICIAL_DEEP, section: {**OFFICIAL_DEEP[section], key: value}}
    with pytest.raises(ScoreSDEConfigError) as info:
        resolve_config(config)
    assert f"{field} = {value!r} is not implemented" in str(info.value)


def test_official_config_missing_or_unknown_fields_are_refused():
    from defenses.diffusion.ncsnpp import ScoreSDEConfigError, resolve_config

    model = {k: v for k, v in OFFICIAL_DEEP["model"].items() if k != "scale_by_sigma"}
    with pytest.raises(ScoreSDEConfigError, match="missing field\\(s\\) model.scale_by_sigma"):
        resolve_config({**OFFICIAL_DEEP, "model": model})
    with pytest.raises(ScoreSDEConfigError, match="unknown field\\(s\\) \\['model.fir_kernal'\\]"):
        resolve_config({**OFFICIAL_DEEP, "model": {**OFFICIAL_DEEP["model"], "fir_kernal": [1]}})


def test_checkpoint_loads_with_its_official_config_and_a_job_is_checked_against_it(tmp_path, raw_and_shadow, monkeypatch):
    """A tiny network described in the official layout loads like the flat config; a job whose backbone
    config asks for Fourier embeddings fails at load naming backbones.<name>.config."""
    from bench.spec import JobSpecError, parse_job

    raw, shadow = raw_and_shadow
    path = tmp_path / "checkpoint_8.pth"
    write_checkpoint(path, raw, shadow)
    official = {**OFFICIAL_DEEP, "model": {**OFFICIAL_DEEP["model"], **TINY}}
    (tmp_path / "tiny.json").write_text(json.dumps(official))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([99.9])
    with torch.no_grad():
        assert torch.equal(load_score_sde(path, config=str(tmp_path / "tiny.json"))(x, t),
                           load_score_sde(path, config=TINY)(x, t))
    job = {"name": "j", "dataset": {"name": "cifar10"}, "classifier": "resnet20", "threat": {"norm": "Linf", "eps": "8/255"},
           "backbones": {"sde": {"type": "score-sde", "checkpoint": str(path), "config": str(tmp_path / "tiny.json")}},
           "defenses": [{"type": "diffpure", "backbone": "sde"}], "attacks": []}
    parse_job(job)
    bad = {**official, "model": {**official["model"], "embedding_type": "fourier"}}
    job["backbones"]["sde"]["config"] = bad
    with pytest.raises(JobSpecError) as info:
        parse_job(job)
    assert info.value.field == "backbones.sde.config"
    assert "model.embedding_type = 'fourier' is not implemented; this network implements 'positional'" in info.value.message
