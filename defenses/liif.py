"""LIIF, the local implicit image function IRAD builds on, and IRAD's SampleNet.

LIIF: Chen, Liu & Wang, "Learning Continuous Image Representation with Local Implicit Image
Function", CVPR 2021 (arXiv:2012.09161). SampleNet: Cao et al., "IRAD: Implicit Representation-driven
Image Resampling against Adversarial Attacks", ICLR 2024 (arXiv:2310.11890).

Both networks share one structure: an EDSR-baseline encoder (no upsampling) turns the image into a
feature map, and an MLP decodes any continuous query coordinate from the 3x3-unfolded features of the
four nearest feature cells (the "local ensemble"). LIIF's MLP outputs RGB; SampleNet's outputs a 2-D
coordinate shift. Every convention below follows the authors' released forward (SPEC §2.4), because
a checkpoint from the authors must reproduce their outputs:

- coordinates are pixel centres ``-1 + 1/n + 2i/n`` in (row, column) order, flipped to (x, y) only
  for ``grid_sample`` (nearest mode, ``align_corners=False``);
- the ensemble offsets each query by ``±1/H``, ``±1/W`` plus ``1e-6`` and clamps it to
  ``±(1 - 1e-6)``; relative coordinates use the unclamped query; relative coordinate and cell are
  multiplied by the feature-map size; each prediction is weighted by the area of the diagonally
  opposite neighbour;
- the EDSR mean-shift layers exist (and are saved) but are not applied.

Parameter names match the authors' state dicts (``encoder.head.0.weight``,
``encoder.body.16.bias``, ``encoder.sub_mean.weight``, ``imnet.layers.8.weight``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The authors' ensemble constants: the tie-breaking nudge and the clamp margin (SPEC §2.4).
EPS_SHIFT = 1e-6
CLAMP_MARGIN = 1e-6
#: Added to every ensemble area so that an all-zero set of areas still normalises (authors' value).
AREA_EPS = 1e-9
#: EDSR's DIV2K mean, kept only so the saved mean-shift layers hold the authors' values.
EDSR_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def make_coord(shape: Sequence[int], device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel-centre coordinates of an ``(H, W)`` grid in [-1, 1], 'ij' order.

    Args:
        shape: ``(H, W)``.
        device: Device of the result (default: CPU).
        dtype: Floating dtype (default float32).

    Returns:
        Tensor (H, W, 2): ``[..., 0]`` is the row coordinate ``-1 + 1/H + 2i/H``, ``[..., 1]`` the
        column coordinate ``-1 + 1/W + 2j/W``.
    """
    # Same float arithmetic as the authors' utils.make_coord, so coordinates agree bit for bit.
    axes = [(-1 + 1 / n) + (2 / n) * torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def pixel_queries(batch: int, height: int, width: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Coordinates and cell sizes of every pixel of a ``height x width`` image, row-major.

    Returns:
        ``(coord, cell)``, each (batch, height*width, 2): the pixel centres and the cell
        ``(2/height, 2/width)``.
    """
    coord = make_coord((height, width), device, dtype).view(1, -1, 2).expand(batch, -1, -1)
    cell = torch.tensor([2 / height, 2 / width], device=device, dtype=dtype).expand_as(coord)
    return coord, cell


class MeanShift(nn.Conv2d):
    """EDSR's frozen 1x1 colour shift. Present in the state dict, never applied (authors' LIIF)."""

    def __init__(self, sign: float, rgb_range: float = 1.0) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(EDSR_RGB_MEAN))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip, scaled by ``res_scale`` (EDSR)."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSRBaseline(nn.Module):
    """EDSR-baseline feature extractor without upsampling (Lim et al. 2017, arXiv:1707.02921).

    Args:
        n_resblocks: Residual blocks (default 16).
        n_feats: Feature channels (default 64).
        res_scale: Residual scaling (default 1.0).
        rgb_range: Range used by the (unapplied) mean-shift layers (default 1.0).
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
                 rgb_range: float = 1.0) -> None:
        super().__init__()
        self.sub_mean = MeanShift(-1.0, rgb_range)
        self.add_mean = MeanShift(+1.0, rgb_range)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(
            *(ResBlock(n_feats, res_scale) for _ in range(n_resblocks)),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.out_dim = n_feats

    def forward(self, x: Tensor) -> Tensor:
        # Mean shift deliberately not applied: the authors' LIIF comments it out (SPEC §2.4).
        h = self.head(x)
        return self.body(h) + h


class MLP(nn.Module):
    """Linear-ReLU stack applied to the last dimension (LIIF's ``imnet``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def decode_local_ensemble(feat: Tensor, imnet: MLP, coord: Tensor, cell: Tensor) -> Tensor:
    """Decode query coordinates from a feature map with LIIF's unfolding and 4-neighbour ensemble.

    The MLP's first layer is linear in the 3x3-unfolded feature, so its feature part is applied once
    per feature cell as a 3x3 convolution (the unfolding's zero padding is the convolution's) and the
    result is gathered per query: the same function as gathering 9C-channel unfolded features for
    each of the four neighbours of every query, with ~4x less work and memory in that layer.

    Args:
        feat: Feature map (N, C, h, w).
        imnet: MLP mapping ``[unfolded feature (9C), relative coordinate (2), cell (2)]`` to outputs.
        coord: Queries (N, Q, 2) in [-1, 1], (row, column) order; may leave the grid.
        cell: Cell sizes (N, Q, 2) in the same units.

    Returns:
        (N, Q, out) predictions.
    """
    n, c, h, w = feat.shape
    first, rest = imnet.layers[0], imnet.layers[1:]
    weight = first.weight
    # Unfolded channel k*9 + (dy*3 + dx) is channel k at offset (dy-1, dx-1): a conv kernel layout.
    proj = F.conv2d(feat, weight[:, : 9 * c].reshape(-1, c, 3, 3), first.bias, padding=1)
    w_rel, w_cell = weight[:, 9 * c: 9 * c + 2], weight[:, 9 * c + 2:]
    feat_coord = make_coord((h, w), feat.device, feat.dtype).permute(2, 0, 1).unsqueeze(0).expand(n, 2, h, w)
    size = torch.tensor([h, w], device=feat.device, dtype=feat.dtype)
    cell_term = (cell * size) @ w_cell.t()
    preds, areas = [], []
    for vx in (-1, 1):
        for vy in (-1, 1):
            offset = torch.tensor([vx / h + EPS_SHIFT, vy / w + EPS_SHIFT], device=feat.device, dtype=feat.dtype)
            query = (coord + offset).clamp(-1 + CLAMP_MARGIN, 1 - CLAMP_MARGIN)
            grid = query.flip(-1).unsqueeze(1)  # grid_sample wants (x, y) = (column, row)
            q_proj = F.grid_sample(proj, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            rel_coord = (coord - q_coord) * size  # from the unclamped query, in feature-cell units
            preds.append(rest(q_proj + rel_coord @ w_rel.t() + cell_term))
            areas.append((rel_coord[..., 0] * rel_coord[..., 1]).abs() + AREA_EPS)
    total = torch.stack(areas).sum(dim=0)
    # Each neighbour is weighted by the area of the diagonally opposite one (bilinear-like weights).
    return sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, reversed(areas)))


class LocalImplicitDecoder(nn.Module):
    """An EDSR-baseline encoder + an MLP decoded at query points with the 4-neighbour local ensemble.

    LIIF (RGB out) and SampleNet (2-D shift out) are this network with a different output width;
    the parameter names (``encoder.*``, ``imnet.layers.*``) are those of the authors' files.
    """

    out_dim: int

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
                 hidden: Sequence[int] = (256, 256, 256, 256)) -> None:
        super().__init__()
        self.config = {"n_resblocks": n_resblocks, "n_feats": n_feats, "res_scale": res_scale,
                       "hidden": list(hidden)}
        self.encoder = EDSRBaseline(n_resblocks, n_feats, res_scale)
        self.imnet = MLP(9 * n_feats + 4, self.out_dim, hidden)

    def forward(self, x: Tensor, coord: Tensor, cell: Tensor) -> Tensor:
        """``x`` (N,3,H,W), ``coord``/``cell`` (N,Q,2) -> (N,Q,out_dim)."""
        return decode_local_ensemble(self.encoder(x), self.imnet, coord, cell)


class LIIF(LocalImplicitDecoder):
    """Local implicit image function: image in [-1, 1] + query coordinates -> RGB in [-1, 1] scale.

    Args:
        n_resblocks: Encoder residual blocks (default 16, the EDSR baseline).
        n_feats: Encoder feature channels (default 64).
        res_scale: Encoder residual scaling (default 1.0).
        hidden: MLP hidden widths (default four layers of 256).

    Usage: ``rgb = LIIF()(x * 2 - 1, coord, cell)`` with ``coord, cell = pixel_queries(N, H, W)``.
    """

    out_dim = 3

    def spec(self) -> dict[str, Any]:
        """The authors' self-describing model spec (``{'name': 'liif', 'args': ..., 'sd': ...}``)."""
        return {
            "name": "liif",
            "args": {
                "encoder_spec": {"name": "edsr-baseline", "args": {
                    "n_resblocks": self.config["n_resblocks"], "n_feats": self.config["n_feats"],
                    "res_scale": self.config["res_scale"], "no_upsampling": True}},
                "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": self.config["hidden"]}},
            },
            "sd": self.state_dict(),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], source: str = "model spec") -> "LIIF":
        """Build (without weights) from the authors' ``{'name': 'liif', 'args': {...}}`` spec."""
        return cls(**liif_config_from_spec(spec, source))


# Defaults of the authors' spec entries (LIIF's ``models.make`` fills these in).
_LIIF_FLAGS = {"local_ensemble": True, "feat_unfold": True, "cell_decode": True}
_ENCODERS = {"edsr-baseline": {"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
             "edsr": {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1}}


def liif_config_from_spec(spec: dict[str, Any], source: str = "model spec") -> dict[str, Any]:
    """Our ``LIIF`` keyword arguments from the authors' spec; errors name ``source`` and the field."""
    if spec.get("name") != "liif":
        raise ValueError(f"{source}: model name is {spec.get('name')!r}; only 'liif' is supported")
    args = dict(spec.get("args", {}))
    for flag, default in _LIIF_FLAGS.items():
        if args.get(flag, default) is not default:
            raise ValueError(f"{source}: args.{flag}={args[flag]!r}; IRAD's LIIF requires {default}")
    enc = args.get("encoder_spec", {})
    if enc.get("name") not in _ENCODERS:
        raise ValueError(f"{source}: args.encoder_spec.name={enc.get('name')!r}; allowed: {sorted(_ENCODERS)}")
    enc_args = {**_ENCODERS[enc["name"]], **enc.get("args", {})}
    if not enc_args.pop("no_upsampling", False):
        raise ValueError(f"{source}: args.encoder_spec.args.no_upsampling must be true for LIIF")
    enc_args.pop("scale", None)  # only used by the upsampling tail, which LIIF never builds
    if enc_args.pop("rgb_range", 1) != 1:
        raise ValueError(f"{source}: args.encoder_spec.args.rgb_range must be 1")
    unknown = set(enc_args) - {"n_resblocks", "n_feats", "res_scale"}
    if unknown:
        raise ValueError(f"{source}: unsupported encoder arguments {sorted(unknown)}")
    imnet = args.get("imnet_spec") or {}
    imnet_args = imnet.get("args", {})
    if imnet.get("name") != "mlp" or imnet_args.get("out_dim", 3) != 3:
        raise ValueError(f"{source}: args.imnet_spec must be an 'mlp' with out_dim 3, got {imnet!r}")
    return {**enc_args, "hidden": list(imnet_args.get("hidden_list", [256, 256, 256, 256]))}


class SampleNet(LocalImplicitDecoder):
    """IRAD's SampleNet: its own (frozen in training) encoder copy + an MLP giving a 2-D shift per query.

    The input image is in [0, 1] (the authors feed SampleNet the raw image, unlike LIIF). The shift
    is in the normalised coordinates of ``make_coord`` (one pixel = 2/H rows, 2/W columns).

    Args:
        n_resblocks, n_feats, res_scale: Encoder shape (defaults 16, 64, 1.0 — the LIIF encoder's).
        hidden: MLP hidden widths (default four layers of 256).
    """

    out_dim = 2


def mlp_hidden_from_state_dict(state_dict: dict[str, Tensor], prefix: str = "imnet.layers.") -> list[int]:
    """Hidden widths of an ``MLP`` saved under ``prefix`` (its Linear layers sit at even indices)."""
    indices = sorted(int(k[len(prefix):].split(".")[0]) for k in state_dict
                     if k.startswith(prefix) and k.endswith(".weight"))
    return [int(state_dict[f"{prefix}{i}.weight"].shape[0]) for i in indices[:-1]]
