"""The Score-SDE DDPM++ continuous VP network (NCSN++ family) and its ``checkpoint_8.pth`` loader.

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021,
arXiv:2011.13456. The CIFAR-10 checkpoint that DiffPure (arXiv:2205.07460), Lee & Kim
(arXiv:2305.15928) and FreqPure use is the "DDPM++ cont. (VP, deep)" model: nf 128, ch_mult
(1, 2, 2, 2), 8 residual blocks per resolution, attention at 16x16, BigGAN-style residual blocks
(resampling inside the block: nearest-neighbour up, 2x2 mean-pool down, no FIR), sinusoidal
("positional") time embedding of the label ``999 t``, GroupNorm with ``min(C // 4, 32)`` groups and
eps 1e-6, skip connections rescaled by 1/sqrt(2), dropout 0.1, inputs centred to [-1, 1], and no
``scale_by_sigma``. 106,632,579 parameters in 956 tensors.

What the network outputs. With ``scale_by_sigma = False`` the raw output is the noise estimate eps;
the score-SDE code (``models/utils.py:get_score_fn``, continuous VP branch, which DiffPure's
``RevVPSDE`` with ``score_type='score_sde'`` calls) turns it into the score itself:
``score = -model(x, 999 t) / std(t)`` with ``std(t) = sqrt(1 - abar(t))``. So this module returns
eps, as every :class:`NoisePredictor` does, and the defenses divide by the std.

Parameter order matters: the checkpoint's EMA weights (``ema.shadow_params``) are a plain list in
``model.parameters()`` order, so the modules below are created in exactly the order of the
original ``NCSNpp.__init__`` (one flat ``all_modules`` list, the same attribute names inside each
block). ``tests/test_ncsnpp.py`` pins the names, shapes and order against a fingerprint taken from
the original implementation.

Usage::

    eps_model = load_score_sde("pretrained/score_sde/checkpoint_8.pth")
    eps = eps_model(x_t, 999 * t)       # x_t in [-1, 1], t in [0, 1]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from defenses.diffusion.backbone import NoisePredictor

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class NCSNppConfig:
    """The architecture knobs of the DDPM++ VP network (the fixed choices are in the module doc).

    Args:
        nf: Base channel count. Default 128.
        ch_mult: Channel multiplier per resolution level. Default (1, 2, 2, 2).
        num_res_blocks: Residual blocks per resolution level. Default 8 ("deep").
        attn_resolutions: Spatial sizes that get self-attention. Default (16,).
        dropout: Dropout rate inside residual blocks (inactive in eval mode). Default 0.1.
        image_size: Input height = width. Default 32.
        num_channels: Image channels. Default 3.
        sigma_min, sigma_max, num_scales: Define the (unused by the VP model, but stored in the
            checkpoint) ``sigmas`` buffer. Defaults 0.01, 50, 1000.
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    image_size: int = 32
    num_channels: int = 3
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000


PRESETS: dict[str, NCSNppConfig] = {
    # configs/vp/cifar10_ddpmpp_deep_continuous.py: the checkpoint_8.pth that DiffPure uses.
    "cifar10-deep": NCSNppConfig(),
    # configs/vp/cifar10_ddpmpp_continuous.py: the same network with 4 blocks per resolution.
    "cifar10": NCSNppConfig(num_res_blocks=4),
}


def resolve_config(config: str | dict[str, Any] | NCSNppConfig) -> NCSNppConfig:
    """A preset name, a dict of :class:`NCSNppConfig` fields, or a config -> a config."""
    if isinstance(config, NCSNppConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown NCSN++ config {config!r}; allowed: {', '.join(PRESETS)} or a dict of fields")
        return PRESETS[config]
    if isinstance(config, dict):
        allowed = {f.name for f in fields(NCSNppConfig)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"NCSN++ config has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        values = dict(config)
        for key in ("ch_mult", "attn_resolutions"):
            if key in values:
                values[key] = tuple(values[key])
        return NCSNppConfig(**values)
    raise TypeError(f"NCSN++ config must be a preset name, a dict or an NCSNppConfig, got {type(config).__name__}")


# -- initialisation: DDPM's variance scaling (fan_avg, uniform); scale 0 means "almost zero" -----
def _ddpm_init_(weight: Tensor, scale: float = 1.0, fan_in_axis: int = 1, fan_out_axis: int = 0) -> Tensor:
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_avg = 0.5 * (weight.shape[fan_in_axis] + weight.shape[fan_out_axis]) * receptive
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        weight.uniform_(-bound, bound)
    return weight


def _conv(in_ch: int, out_ch: int, kernel: int = 3, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    _ddpm_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    _ddpm_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def timestep_embedding(t_label: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [sin(t w_k), cos(t w_k)], w_k = max_period^(-k/(dim/2 - 1)) (DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_label.device) / (half - 1))
    args = t_label.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class NIN(nn.Module):
    """A 1x1 "network-in-network" projection with weight ``W`` of shape (in, out) (checkpoint layout)."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        # W is stored (in, out), the transpose of a Conv2d/Linear weight, so it is its own Parameter.
        self.W = nn.Parameter(_ddpm_init_(torch.empty(in_dim, out_dim), init_scale, fan_in_axis=0, fan_out_axis=1))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("nchw,cd->ndhw", x, self.W) + self.b[None, :, None, None]


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual with 1/sqrt(2) rescaling."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels)
        self.NIN_0 = NIN(channels, channels)  # query
        self.NIN_1 = NIN(channels, channels)  # key
        self.NIN_2 = NIN(channels, channels)  # value
        self.NIN_3 = NIN(channels, channels, init_scale=0.0)  # output projection, starts at ~0

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = self.GroupNorm_0(x)
        q, k, v = (proj(y).flatten(2) for proj in (self.NIN_0, self.NIN_1, self.NIN_2))  # (N, C, HW)
        attn = torch.softmax(torch.einsum("ncp,ncq->npq", q, k) * c**-0.5, dim=-1)
        out = torch.einsum("npq,ncq->ncp", attn, v).reshape(n, c, h, w)
        return (x + self.NIN_3(out)) / _SQRT2


class ResBlockBigGAN(nn.Module):
    """BigGAN-style residual block with time conditioning; optional 2x up/down inside the block."""

    def __init__(self, in_ch: int, out_ch: int | None, temb_dim: int, dropout: float, up: bool = False, down: bool = False) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.up, self.down = up, down
        self.GroupNorm_0 = _group_norm(in_ch)
        self.Conv_0 = _conv(in_ch, out_ch)
        self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, init_scale=0.0)
        self.Conv_2 = _conv(in_ch, out_ch, kernel=1) if (in_ch != out_ch or up or down) else None

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        x = self._resample(x)
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2


class NCSNpp(NoisePredictor):
    """DDPM++ continuous VP network: ``forward(x_t in [-1,1], t_label = 999 t) -> eps``.

    Args:
        config: An :class:`NCSNppConfig`, a preset name (``"cifar10-deep"``, ``"cifar10"``) or a dict
            of config fields. Default ``"cifar10-deep"``.
    """

    def __init__(self, config: str | dict[str, Any] | NCSNppConfig = "cifar10-deep") -> None:
        super().__init__()
        cfg = self.config = resolve_config(config)
        nf, temb_dim = cfg.nf, 4 * cfg.nf
        levels = len(cfg.ch_mult)
        sizes = [cfg.image_size // 2**i for i in range(levels)]
        # Unused by the VP eps model but part of the checkpoint's state dict (strict loading); float64
        # like the original, which built it from a NumPy array.
        sigmas = torch.exp(torch.linspace(math.log(cfg.sigma_max), math.log(cfg.sigma_min), cfg.num_scales, dtype=torch.float64))
        self.register_buffer("sigmas", sigmas)

        def block(in_ch: int, out_ch: int | None = None, **kw: bool) -> ResBlockBigGAN:
            return ResBlockBigGAN(in_ch, out_ch, temb_dim, cfg.dropout, **kw)

        mods: list[nn.Module] = [_linear(nf, temb_dim), _linear(temb_dim, temb_dim), _conv(cfg.num_channels, nf)]
        skip_ch, ch = [nf], nf
        for level in range(levels):  # encoder
            for _ in range(cfg.num_res_blocks):
                mods.append(block(ch, nf * cfg.ch_mult[level]))
                ch = nf * cfg.ch_mult[level]
                if sizes[level] in cfg.attn_resolutions:
                    mods.append(AttnBlock(ch))
                skip_ch.append(ch)
            if level != levels - 1:
                mods.append(block(ch, down=True))
                skip_ch.append(ch)
        mods += [block(ch), AttnBlock(ch), block(ch)]  # middle
        for level in reversed(range(levels)):  # decoder: one extra block per level eats the skips
            for _ in range(cfg.num_res_blocks + 1):
                mods.append(block(ch + skip_ch.pop(), nf * cfg.ch_mult[level]))
                ch = nf * cfg.ch_mult[level]
            if sizes[level] in cfg.attn_resolutions:
                mods.append(AttnBlock(ch))
            if level != 0:
                mods.append(block(ch, up=True))
        mods += [_group_norm(ch), _conv(ch, cfg.num_channels, init_scale=0.0)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x_t: Tensor, t_label: Tensor) -> Tensor:
        cfg = self.config
        t_label = torch.as_tensor(t_label, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        mods: Iterator[nn.Module] = iter(self.all_modules)
        temb = next(mods)(timestep_embedding(t_label, cfg.nf))
        temb = next(mods)(F.silu(temb))
        skips = [next(mods)(x_t)]
        levels = len(cfg.ch_mult)
        for level in range(levels):
            for _ in range(cfg.num_res_blocks):
                h = next(mods)(skips[-1], temb)
                if h.shape[-1] in cfg.attn_resolutions:
                    h = next(mods)(h)
                skips.append(h)
            if level != levels - 1:
                skips.append(next(mods)(skips[-1], temb))
        h = skips[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for level in reversed(range(levels)):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, skips.pop()], dim=1), temb)
            if h.shape[-1] in cfg.attn_resolutions:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h, temb)
        h = F.silu(next(mods)(h))
        return next(mods)(h)


def _strip_prefix(state: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """DataParallel saved every key as ``module.<name>``; accept both forms."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def assign_ema(model: nn.Module, shadow_params: list[Tensor], source: str = "ema.shadow_params") -> None:
    """Copy EMA weights into ``model``, by position in ``model.parameters()`` order (score-SDE's EMA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if len(shadow_params) != len(params):
        raise ValueError(f"{source}: {len(shadow_params)} tensors, but the model has {len(params)} parameters; wrong config?")
    with torch.no_grad():
        for i, ((name, p), s) in enumerate(zip(((n, p) for n, p in model.named_parameters() if p.requires_grad), shadow_params)):
            if p.shape != s.shape:
                raise ValueError(f"{source}[{i}] has shape {tuple(s.shape)}, but parameter {name!r} has {tuple(p.shape)}")
            p.copy_(s)


def load_score_sde(
    checkpoint: str | Path,
    use_ema: bool = True,
    weights_only: bool = True,
    config: str | dict[str, Any] = "cifar10-deep",
) -> NCSNpp:
    """Load a score-SDE ``checkpoint_8.pth`` as an eps predictor (registered backbone ``score-sde``).

    Args:
        checkpoint: Path to the checkpoint: a dict with ``model`` (state dict, keys possibly prefixed
            ``module.``), ``ema`` (``decay``, ``num_updates``, ``shadow_params``: a list of tensors in
            ``parameters()`` order), ``optimizer`` and ``step``.
        use_ema: Evaluate with the EMA weights (what DiffPure does). Default True.
        weights_only: Passed to ``torch.load``; set False only for a checkpoint you trust. Default True.
        config: Architecture preset (``"cifar10-deep"``, ``"cifar10"``) or a dict of
            :class:`NCSNppConfig` fields. Default ``"cifar10-deep"``.

    Returns:
        The network in eval mode; ``model(x_t, 999 * t)`` is eps (score = -eps / std(t)).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"score-SDE checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=weights_only)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: expected a dict with keys 'model', 'ema', 'optimizer', 'step' (checkpoint_8.pth layout)")
    model = NCSNpp(config)
    try:
        model.load_state_dict(_strip_prefix(state["model"]), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: 'model' does not match the NCSN++ config {model.config}: {exc}") from exc
    if use_ema:
        ema = state.get("ema")
        if not isinstance(ema, dict) or "shadow_params" not in ema:
            raise ValueError(f"{path}: use_ema=True but there is no 'ema.shadow_params' (pass use_ema=False for the raw weights)")
        assign_ema(model, list(ema["shadow_params"]), source=f"{path}: ema.shadow_params")
    return model.eval()


def config_dict(config: NCSNppConfig) -> dict[str, Any]:
    """A JSON-friendly dict of the config (for logs and job files)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
