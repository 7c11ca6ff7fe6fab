"""A small noise-prediction UNet that this project trains on CPU (``bench train denoiser``).

The architecture is the DDPM++ network of :mod:`defenses.diffusion.ncsnpp` (Song et al. 2021,
arXiv:2011.13456: BigGAN residual blocks with time conditioning, GroupNorm, sinusoidal time
embedding, skip rescaling) at a size that trains in minutes on two CPU cores: by default 16 base
channels, multipliers (1, 2, 2) (32, 16, 8 pixels), one residual block per level and no attention,
about 0.31M parameters. Reusing the score-SDE blocks means the CPU model and the GPU checkpoint
share one tested implementation; only the size differs.

It is trained only on the noise levels purification uses (discrete steps ``t <= t_max``), so it is a
denoiser for moderate noise, not a generative model: querying it above ``t_max`` is out of its
training range (``SmallUNet.t_max`` records the bound; defenses may check it).

Checkpoint format (our own, written by :mod:`bench.training.denoiser`), a dict::

    format: "bench.small-unet/1"
    config: {nf, ch_mult, num_res_blocks, attn_resolutions, dropout}
    model:  state dict of the trained weights        ema: state dict of the EMA weights
    optimizer, step, rng (generator state)           training: {t_max, split, indices, ...}

Usage::

    eps_model = load_small_unet(".cache/models/denoiser.pt")
    eps = eps_model(x_t, t)             # x_t in [-1, 1], t the discrete step (0..t_max)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.checkpoint_files import torch_load
from bench.params import CheckpointFile
from defenses.diffusion.ncsnpp import NCSNpp, NCSNppConfig

CHECKPOINT_FORMAT = "bench.small-unet/1"
#: The architecture knobs a checkpoint's ``config`` may set, with the CPU defaults.
DEFAULT_CONFIG: dict[str, Any] = {
    "nf": 16,
    "ch_mult": (1, 2, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (),
    "dropout": 0.0,
}


class SmallUNet(NCSNpp):
    """A small DDPM++ eps predictor for 32x32 RGB: ``forward(x_t in [-1,1], t_label) -> eps``.

    Args:
        nf: Base channels; must keep every channel count divisible by its GroupNorm group count
            (``min(C // 4, 32)`` groups), e.g. 16, 32, 64. Default 16.
        ch_mult: Channel multiplier per resolution level. Default (1, 2, 2).
        num_res_blocks: Residual blocks per level. Default 1.
        attn_resolutions: Spatial sizes with self-attention. Default () (none; attention at 8x8 costs
            little, at 32x32 a lot).
        dropout: Dropout in residual blocks during training. Default 0.0.
        t_max: Largest discrete step the weights were trained for (metadata). Default 999.
    """

    def __init__(
        self,
        nf: int = 16,
        ch_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
        t_max: int = 999,
    ) -> None:
        super().__init__(
            NCSNppConfig(
                nf=nf,
                ch_mult=tuple(ch_mult),
                num_res_blocks=num_res_blocks,
                attn_resolutions=tuple(attn_resolutions),
                dropout=dropout,
            )
        )
        self.t_max = t_max

    def arch_config(self) -> dict[str, Any]:
        """The constructor arguments that define the architecture (stored in checkpoints)."""
        c = self.config
        return {
            "nf": c.nf,
            "ch_mult": list(c.ch_mult),
            "num_res_blocks": c.num_res_blocks,
            "attn_resolutions": list(c.attn_resolutions),
            "dropout": c.dropout,
        }


def build_small_unet(config: dict[str, Any] | None = None, t_max: int = 999) -> SmallUNet:
    """A :class:`SmallUNet` from a (partial) config dict; unknown keys raise ``ValueError``.

    Args:
        config: Overrides of :data:`DEFAULT_CONFIG`. Default None (the defaults).
        t_max: Stored as ``model.t_max``. Default 999.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"small-unet config has unknown key(s) {unknown}; allowed: {sorted(DEFAULT_CONFIG)}")
    return SmallUNet(**{**DEFAULT_CONFIG, **config}, t_max=t_max)


def read_checkpoint(checkpoint: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Load and validate a ``bench.small-unet/1`` checkpoint dict (no model is built).

    Args:
        checkpoint: Path of the file.
        weights_only: Passed to ``torch.load``. Default True.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"small-unet checkpoint not found: {path} (train one with `bench train denoiser --out {path}`)"
        )
    state = torch_load(path, weights_only=weights_only)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a small-unet checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    for key in ("config", "model", "training"):
        if key not in state:
            raise ValueError(f"{path}: missing field {key!r} of the {CHECKPOINT_FORMAT} format")
    return state


def load_small_unet(checkpoint: CheckpointFile | Path, weights_only: bool = True, use_ema: bool = True) -> SmallUNet:
    """Load a checkpoint written by ``bench train denoiser`` (registered backbone ``small-unet``).

    Args:
        checkpoint: Path of the ``bench.small-unet/1`` file.
        weights_only: Passed to ``torch.load``; set False only for a file you trust. Default True.
        use_ema: Use the EMA weights (better denoising) instead of the last iterate. Default True.

    Returns:
        The network in eval mode, with ``t_max`` set to the largest training step.
    """
    state = read_checkpoint(checkpoint, weights_only=weights_only)
    t_max = int(state["training"].get("t_max", 999))
    model = build_small_unet(state["config"], t_max=t_max)
    key = "ema" if use_ema and state.get("ema") is not None else "model"
    if use_ema and key != "ema":
        raise ValueError(f"{checkpoint}: use_ema=True but the checkpoint has no 'ema' weights")
    try:
        model.load_state_dict(state[key], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: '{key}' weights do not match config {state['config']}: {exc}") from exc
    return model.eval()
