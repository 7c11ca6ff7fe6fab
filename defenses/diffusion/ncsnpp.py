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

from bench.checkpoint_files import torch_load
from bench.params import CheckpointFile, Rule, param_rules
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

# -- the official score-SDE config (ml_collections ConfigDict: training / data / model / ...) ----------
#: Choices of the official config that this network implements one way only (field -> that value).
#: A checkpoint trained with another choice would load (or not) and compute something else.
IMPLEMENTED_CHOICES: dict[str, Any] = {
    "model.name": "ncsnpp",
    "model.scale_by_sigma": False,        # the output is eps; score = -eps / std(t) (module docstring)
    "model.normalization": "GroupNorm",
    "model.nonlinearity": "swish",
    "model.conditional": True,            # time-conditioned
    "model.fir": False,                   # naive up/down-sampling inside the BigGAN blocks
    "model.skip_rescale": True,
    "model.resblock_type": "biggan",
    "model.progressive": "none",
    "model.progressive_input": "none",
    "model.attention_type": "ddpm",
    "model.embedding_type": "positional",  # sinusoidal embedding of 999 t (not Gaussian Fourier)
    "model.conv_size": 3,
    "model.beta_min": 0.1,                # the VP schedule of defenses.diffusion.schedule
    "model.beta_max": 20.0,
    "data.centered": True,                # inputs in [-1, 1]
    "training.sde": "vpsde",
    "training.continuous": True,          # labels 999 t, std from the continuous marginal
}
#: Official fields that set :class:`NCSNppConfig` fields.
CONFIG_FIELDS: dict[str, str] = {
    "model.nf": "nf", "model.ch_mult": "ch_mult", "model.num_res_blocks": "num_res_blocks",
    "model.attn_resolutions": "attn_resolutions", "model.dropout": "dropout", "data.image_size": "image_size",
    "data.num_channels": "num_channels", "model.sigma_min": "sigma_min", "model.sigma_max": "sigma_max",
    "model.num_scales": "num_scales",
}
#: Official fields read without effect on this network's outputs: training, sampling and evaluation
#: settings, the EMA rate, initialisation, and options that only matter for choices refused above
#: (the FIR kernel without FIR, the progressive combiner without progressive paths, resampling
#: convolutions, which BigGAN blocks do not use, the Fourier scale without Fourier embedding).
IGNORED_SECTIONS = ("sampling", "eval", "optim", "seed", "device")
IGNORED_FIELDS = ("model.ema_rate", "model.init_scale", "model.fir_kernel", "model.progressive_combine",
                  "model.resamp_with_conv", "model.fourier_scale", "data.dataset", "data.random_flip",
                  "data.uniform_dequantization")
_SECTIONS = ("training", "data", "model", *IGNORED_SECTIONS)


class ScoreSDEConfigError(ValueError):
    """An official score-SDE config asks for something this network does not implement."""


def is_official_config(config: dict[str, Any]) -> bool:
    """True for the official nested layout (``model`` / ``data`` / ``training`` sections)."""
    return any(isinstance(config.get(section), dict) for section in ("model", "data", "training"))


def _same(found: Any, implemented: Any) -> bool:
    if isinstance(implemented, bool) or isinstance(found, bool):
        return found is implemented
    if isinstance(implemented, (int, float)) and isinstance(found, (int, float)):
        return math.isclose(found, implemented, rel_tol=1e-9)
    return found == implemented


def official_config(config: dict[str, Any]) -> NCSNppConfig:
    """The :class:`NCSNppConfig` of an official score-SDE config, refusing what is not implemented.

    Every field of :data:`IMPLEMENTED_CHOICES` must be present and equal to the implemented value
    (a dump of a config object always has them); unknown fields are refused too (a typo would
    otherwise pass silently).

    Raises:
        ScoreSDEConfigError: naming every offending field, its value and what is implemented.
    """
    problems = []
    unknown_sections = sorted(set(config) - set(_SECTIONS))
    if unknown_sections:
        problems.append(f"unknown section(s) {unknown_sections}; allowed: {', '.join(_SECTIONS)}")
    flat: dict[str, Any] = {}
    for section in ("training", "data", "model"):
        values = config.get(section, {})
        if not isinstance(values, dict):
            problems.append(f"{section} must be a mapping, got {values!r}")
            continue
        flat.update({f"{section}.{key}": value for key, value in values.items()})
    known = set(IMPLEMENTED_CHOICES) | set(CONFIG_FIELDS) | set(IGNORED_FIELDS)
    training_only = {k for k in flat if k.startswith("training.")} - set(IMPLEMENTED_CHOICES)
    unknown = sorted(set(flat) - known - training_only)
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    for field, implemented in IMPLEMENTED_CHOICES.items():
        if field in flat and not _same(flat[field], implemented):
            problems.append(f"{field} = {flat[field]!r} is not implemented; this network implements {implemented!r}")
    missing = [field for field in IMPLEMENTED_CHOICES if field not in flat]
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)} (a dump of the official config has them all; the values "
                        "this network implements are listed in defenses.diffusion.ncsnpp.IMPLEMENTED_CHOICES)")
    if problems:
        raise ScoreSDEConfigError("score-SDE config: " + "; ".join(problems))
    values = {ours: flat[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in flat}
    return resolve_config(values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """An official config dumped as JSON (``config.to_json()``) or YAML (``config.to_yaml()``).

    YAML is read bounded and safely; ``!!python/tuple`` becomes a list and other Python objects (the
    ``device``) an inert placeholder: nothing is instantiated.
    """
    from bench.safe_yaml import YAMLInputError, YAMLLimits, read_yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"score-SDE config file not found: {path}")
    try:
        data = read_yaml(path, YAMLLimits(max_bytes=1 << 20), python_tuples=True)  # JSON is YAML
    except YAMLInputError as exc:
        raise ScoreSDEConfigError(f"score-SDE config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ScoreSDEConfigError(f"score-SDE config {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def resolve_config(config: str | Path | dict[str, Any] | NCSNppConfig) -> NCSNppConfig:
    """A config from: a preset name; a path to an official config dump (``.json``/``.yaml``/``.yml``);
    an official config dict (``model`` / ``data`` / ``training`` sections, see :func:`official_config`);
    a flat dict of :class:`NCSNppConfig` fields; or a config."""
    if isinstance(config, NCSNppConfig):
        return config
    if isinstance(config, Path) or (isinstance(config, str) and config not in PRESETS
                                    and config.lower().endswith((".json", ".yaml", ".yml"))):
        return official_config(read_config_file(config))
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown NCSN++ config {config!r}; allowed: {', '.join(PRESETS)}, a config file "
                             "(.json/.yaml/.yml) or a dict")
        return PRESETS[config]
    if isinstance(config, dict) and is_official_config(config):
        return official_config(config)
    if isinstance(config, dict):
        allowed = {f.name for f in fields(NCSNppConfig)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"NCSN++ config has unknown field(s) {unknown}; allowed: {sorted(allowed)} "
                             "(or the official layout with model/data/training sections)")
        values = dict(config)
        for key in ("ch_mult", "attn_resolutions"):
            if key in values:
                values[key] = tuple(values[key])
        return NCSNppConfig(**values)
    raise TypeError(f"NCSN++ config must be a preset name, a config file, a dict or an NCSNppConfig, got {type(config).__name__}")


def config_problem(config: Any, *, read_files: bool) -> str | None:
    """Why ``config`` (a ``score-sde`` backbone's ``config`` parameter) is not usable, or None.

    Checks presets, dicts and (with ``read_files``) config files without building the network.
    """
    is_file = isinstance(config, str) and config not in PRESETS and config.lower().endswith((".json", ".yaml", ".yml"))
    if is_file and not read_files:
        return None
    try:
        resolve_config(config)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return str(exc)
    return None


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


@param_rules(
    Rule(("config",), lambda config: config_problem(config, read_files=False),
         text="config: a preset (cifar10-deep, cifar10), an official score-SDE config (dict or .json/.yaml dump) "
              "whose choices this network implements, or a dict of NCSNppConfig fields"),
    Rule(("config",), lambda config: config_problem(config, read_files=True), needs_files=True),
)
def load_score_sde(
    checkpoint: CheckpointFile | Path,
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
        config: Architecture preset (``"cifar10-deep"``, ``"cifar10"``); the official score-SDE
            config the checkpoint was trained with, as a dict (``model`` / ``data`` / ``training``
            sections) or a JSON / YAML dump of it (a ``.json`` / ``.yaml`` path), refused with the
            field named when it asks for a choice this network does not implement
            (:data:`IMPLEMENTED_CHOICES`); or a flat dict of :class:`NCSNppConfig` fields.
            Default ``"cifar10-deep"``.

    Returns:
        The network in eval mode; ``model(x_t, 999 * t)`` is eps (score = -eps / std(t)).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"score-SDE checkpoint not found: {path}")
    state = torch_load(path, weights_only=weights_only)
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
