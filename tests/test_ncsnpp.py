"""The score-SDE DDPM++ network: layout identical to the original, checkpoint_8.pth loading, EMA use."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

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
