"""IRAD: implicit-representation-driven image resampling (Cao et al., ICLR 2024, arXiv:2310.11890).

``purify(x) = clamp(LIIF((x - 0.5)/0.5, coord + SampleNet(x, coord, cell), cell) * 0.5 + 0.5, 0, 1)``
with ``coord`` the pixel centres of the input grid and ``cell = (2/H, 2/W)`` (SPEC §2.4). The
defense is deterministic and fully differentiable: gradients reach the input through the LIIF
encoder and, through the query coordinates, through SampleNet — so it is attacked white-box (``full``)
as well as with BPDA.

Weights come from one of two sources:

- the authors' pair of files: ``reconstruction`` = ``Reconstruction.pt``
  (``{'model': {'name': 'liif', 'args': {...}, 'sd': state_dict}}``) and ``samplenet`` =
  ``SampleNet.pt`` (``{'model': state_dict}``, SampleNet's own encoder + MLP, the encoder shape being
  the reconstruction's);
- our single file ``checkpoint`` (written by ``bench train irad``, see :func:`save_irad`):
  ``{'format': 'bench-irad', 'version': 1, 'reconstruction': <authors' spec>, 'samplenet': state_dict}``.

Both are loaded with ``torch.load(weights_only=True)`` unless ``trust_checkpoint=True``, and strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.checkpoint_files import torch_load
from bench.params import CheckpointFile, Rule, param_rules, validated
from defenses.base import Defense
from defenses.liif import LIIF, SampleNet, mlp_hidden_from_state_dict, pixel_queries

FORMAT = "bench-irad"
FORMAT_VERSION = 1

PathLike = str | Path


def _load(path: PathLike, trust: bool) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IRAD checkpoint {str(path)!r} does not exist")
    return torch_load(path, weights_only=not trust)


def weights_problem(checkpoint: Any, reconstruction: Any, samplenet: Any) -> str | None:
    """Why the weight sources given to IRAD are not exactly one of the two accepted forms, or None."""
    if checkpoint is not None:
        if reconstruction is not None or samplenet is not None:
            return "give either checkpoint or reconstruction + samplenet, not both"
        return None
    if reconstruction is None or samplenet is None:
        return ("needs its weights: checkpoint (our format, `bench train irad`) or both reconstruction and samplenet "
                "(the authors' Reconstruction.pt and SampleNet.pt)")
    return None


def _strict_load(module: torch.nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: state dict does not match the expected layout: {exc}") from exc


def liif_from_spec(spec: dict[str, Any], source: str) -> LIIF:
    """A LIIF with weights from the authors' self-describing spec (``name``, ``args``, ``sd``)."""
    if "sd" not in spec:
        raise ValueError(f"{source}: the model spec has no 'sd' (state dict) entry")
    liif = LIIF.from_spec(spec, source)
    _strict_load(liif, spec["sd"], source)
    return liif


def samplenet_from_state_dict(state_dict: dict[str, Tensor], liif: LIIF, source: str) -> SampleNet:
    """A SampleNet whose encoder has the reconstruction's shape and whose MLP widths come from the file."""
    config = {k: liif.config[k] for k in ("n_resblocks", "n_feats", "res_scale")}
    net = SampleNet(**config, hidden=mlp_hidden_from_state_dict(state_dict))
    _strict_load(net, state_dict, source)
    return net


def load_authors_files(reconstruction: PathLike, samplenet: PathLike, trust: bool = False) -> tuple[LIIF, SampleNet]:
    """Load the authors' ``Reconstruction.pt`` and ``SampleNet.pt``."""
    rec = _load(reconstruction, trust)
    if not isinstance(rec, dict) or not isinstance(rec.get("model"), dict):
        raise ValueError(f"{reconstruction}: expected {{'model': {{'name': 'liif', 'args': ..., 'sd': ...}}}}")
    liif = liif_from_spec(rec["model"], str(reconstruction))
    smp = _load(samplenet, trust)
    if not isinstance(smp, dict) or not isinstance(smp.get("model"), dict):
        raise ValueError(f"{samplenet}: expected {{'model': state_dict}} (the authors' SampleNet.pt)")
    return liif, samplenet_from_state_dict(smp["model"], liif, str(samplenet))


def load_checkpoint(path: PathLike, trust: bool = False) -> tuple[LIIF, SampleNet]:
    """Load our single-file format (see the module docstring)."""
    ckpt = _load(path, trust)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT!r} checkpoint (for the authors' files use "
                         "reconstruction=Reconstruction.pt and samplenet=SampleNet.pt)")
    if ckpt.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: {FORMAT} version {ckpt.get('version')!r}; supported: {FORMAT_VERSION}")
    liif = liif_from_spec(ckpt["reconstruction"], f"{path} [reconstruction]")
    return liif, samplenet_from_state_dict(ckpt["samplenet"], liif, f"{path} [samplenet]")


def save_irad(path: PathLike, liif: LIIF, samplenet: SampleNet, **metadata: Any) -> None:
    """Write our single-file format; ``metadata`` (plain values) is stored under ``'metadata'``."""
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "reconstruction": liif.spec(),
                "samplenet": samplenet.state_dict(), "metadata": metadata}, path)


def save_authors_files(directory: PathLike, liif: LIIF, samplenet: SampleNet) -> tuple[Path, Path]:
    """Write ``Reconstruction.pt`` and ``SampleNet.pt`` in the authors' formats into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rec, smp = directory / "Reconstruction.pt", directory / "SampleNet.pt"
    torch.save({"model": liif.spec()}, rec)
    torch.save({"model": samplenet.state_dict()}, smp)
    return rec, smp


@param_rules(Rule(("checkpoint", "reconstruction", "samplenet"), weights_problem,
                  text="either checkpoint, or both reconstruction and samplenet"))
class IRAD(Defense):
    """Implicit-representation resampling defense (IRAD, arXiv:2310.11890); deterministic.

    Args:
        checkpoint: Our single-file checkpoint (``bench train irad`` writes it). Default None.
        reconstruction: The authors' ``Reconstruction.pt`` path, or a built :class:`LIIF`. Default None.
        samplenet: The authors' ``SampleNet.pt`` path, or a built :class:`SampleNet`. Default None.
        trust_checkpoint: Load with ``weights_only=False`` (only for files you trust). Default False.

    Give either ``checkpoint`` or both ``reconstruction`` and ``samplenet``. Input (N,3,H,W) in [0,1].

    Usage: ``IRAD(reconstruction="Reconstruction.pt", samplenet="SampleNet.pt").purify(x)``.
    """

    paper = "Cao et al., IRAD: Implicit Representation-driven Image Resampling against Adversarial Attacks, ICLR 2024, arXiv:2310.11890"
    stochastic = False
    gradient_modes = ("full", "bpda")

    @validated
    def __init__(self, checkpoint: CheckpointFile | Path | None = None,
                 reconstruction: CheckpointFile | Path | LIIF | None = None,
                 samplenet: CheckpointFile | Path | SampleNet | None = None, trust_checkpoint: bool = False) -> None:
        super().__init__()
        if checkpoint is not None:
            liif, net = load_checkpoint(checkpoint, trust_checkpoint)
        elif isinstance(reconstruction, LIIF) and isinstance(samplenet, SampleNet):
            liif, net = reconstruction, samplenet
        elif isinstance(reconstruction, (str, Path)) and isinstance(samplenet, (str, Path)):
            liif, net = load_authors_files(reconstruction, samplenet, trust_checkpoint)
        else:
            raise TypeError("irad: reconstruction and samplenet must both be paths or both be built modules "
                            f"(LIIF, SampleNet); got {type(reconstruction).__name__}, {type(samplenet).__name__}")
        self.liif = liif.eval().requires_grad_(False)
        self.samplenet = net.eval().requires_grad_(False)

    def resample(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(purified, shift)``: the purified images (N,3,H,W) and SampleNet's shifts (N,H*W,2).

        Queries are row-major, so the output is reshaped as (N, H, W, 3); the authors' code writes
        ``view(N, W, H, 3)``, the same for their square images.
        """
        n, _, h, w = x.shape
        coord, cell = pixel_queries(n, h, w, x.device, x.dtype)
        shift = self.samplenet(x, coord, cell)  # SampleNet sees [0,1] input (authors' forward)
        rgb = self.liif((x - 0.5) / 0.5, coord + shift, cell)
        out = (rgb * 0.5 + 0.5).clamp(0, 1)
        return out.view(n, h, w, 3).permute(0, 3, 1, 2).contiguous(), shift

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.resample(x)[0]

    def cost(self) -> float:
        """Two encoder passes (LIIF and SampleNet) plus their MLP decodings per image."""
        return 2.0
