"""diffusers ``UNet2DModel`` checkpoints as noise predictors (registered backbone ``diffusers``).

The DDPM CIFAR-10 model of Ho et al. 2020 (arXiv:2006.11239), published in diffusers format as
``google/ddpm-cifar10-32`` (subfolder ``unet``), is trained with the same discrete schedule as this
project (betas linspace(1e-4, 0.02, 1000)) and predicts eps from (x_t in [-1,1], step t), so the
wrapper only unpacks ``.sample``. Models that also learn the variance output 2C channels; the first
C are eps (guided-diffusion convention) and are the ones returned.

Usage::

    eps_model = load_diffusers_unet("/models/ddpm-cifar10-32", subfolder="unet")
    eps = eps_model(x_t, t)             # x_t in [-1, 1], t the discrete step (float allowed)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from bench.params import Rule, param_rules
from defenses.diffusion.backbone import NoisePredictor


class DiffusersUNet(NoisePredictor):
    """Wrap a ``diffusers.UNet2DModel`` as ``forward(x_t, t_label) -> eps``.

    Args:
        unet: The diffusers model (eps-prediction; ``out_channels`` = C or 2C).
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.in_channels = int(unet.config.in_channels)
        out = int(unet.config.out_channels)
        if out not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(
                f"diffusers UNet has out_channels={out}; an eps predictor needs {self.in_channels} "
                f"(or {2 * self.in_channels} with a learned variance)"
            )

    def forward(self, x_t: Tensor, t_label: Tensor) -> Tensor:
        t_label = torch.as_tensor(t_label, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        out = self.unet(x_t, t_label).sample
        return out[:, : self.in_channels]


def _local_or_allowed(path_or_id: str, allow_download: bool) -> str | None:
    from bench.artifacts.policy import OFFLINE_ENV, offline_mode

    if Path(path_or_id).expanduser().is_dir() or (allow_download and not offline_mode()):
        return None
    if allow_download:
        return (f"{path_or_id!r} is not a local directory, and downloads are off ({OFFLINE_ENV}=1 / --offline), "
                "which wins over allow_download: true")
    return (f"{path_or_id!r} is not a local directory; pass a directory written by UNet2DModel.save_pretrained "
            "(or a pipeline directory with subfolder: unet), or set allow_download: true to fetch a hub id")


@param_rules(Rule(("path_or_id", "allow_download"), _local_or_allowed, needs_files=True,
                  text="path_or_id: a local directory unless allow_download: true"))
def load_diffusers_unet(
    path_or_id: str | Path,
    subfolder: str | None = None,
    allow_download: bool = False,
    variant: str | None = None,
) -> DiffusersUNet:
    """Load a ``UNet2DModel`` from a local directory (or, if allowed, from the Hugging Face hub).

    Args:
        path_or_id: A directory written by ``save_pretrained`` (or holding a pipeline, with
            ``subfolder``), or a hub id such as ``google/ddpm-cifar10-32``.
        subfolder: Subdirectory with the UNet, e.g. ``"unet"`` for a pipeline. Default None.
        allow_download: Let diffusers fetch ``path_or_id`` from the hub when it is not a local
            directory. Default False: runs fail fast with a clear message instead. Offline mode
            (``BENCH_OFFLINE=1``, ``--offline``) wins: then nothing is downloaded.
        variant: Weight variant (e.g. ``"fp16"``). Default None.

    Returns:
        The wrapped model in eval mode.
    """
    from diffusers import UNet2DModel  # heavy; only for jobs that use this backbone

    from bench.artifacts.policy import OFFLINE_ENV, offline_mode

    local = Path(path_or_id).expanduser()
    offline = offline_mode()
    if local.is_dir():
        source, local_only = str(local), True
    elif allow_download and not offline:  # the one network rule: offline wins over the plugin's own switch
        source, local_only = str(path_or_id), False
    else:
        switch = (f"downloads are off ({OFFLINE_ENV}=1 / --offline), which wins over `allow_download: true`"
                  if offline else "or set allow_download: true to fetch it from the Hugging Face hub")
        raise FileNotFoundError(
            f"diffusers backbone: {path_or_id!r} is not a local directory. Pass a directory written by "
            f"`UNet2DModel.save_pretrained` (or a pipeline directory with subfolder='unet'); {switch}."
        )
    try:
        unet = UNet2DModel.from_pretrained(source, subfolder=subfolder, variant=variant, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        where = f"{source}/{subfolder}" if subfolder else source
        raise ValueError(f"diffusers backbone: cannot load a UNet2DModel from {where}: {exc}") from exc
    return DiffusersUNet(unet).eval()
