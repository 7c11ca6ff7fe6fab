"""IRAD and its LIIF: coordinate conventions, the local ensemble, gradients, and the authors' formats.

The authors' forward is re-expressed here independently, functionally from a state dict (``F.conv2d``,
``F.linear``, the query loop with in-place per-axis offsets as in the released code), and compared
with our modules loaded from files written in the authors' two formats.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.registry import DEFENSES
from defenses.irad import IRAD, save_irad
from defenses.liif import LIIF, SampleNet, make_coord, pixel_queries

SMALL = {"n_resblocks": 2, "n_feats": 8, "hidden": (16, 16)}


def small_nets(seed: int = 0) -> tuple[LIIF, SampleNet]:
    torch.manual_seed(seed)
    return LIIF(**SMALL).eval(), SampleNet(**SMALL).eval()


def images(n: int = 2, h: int = 8, w: int = 8, seed: int = 1) -> torch.Tensor:
    # A smooth pattern plus noise so that neighbouring pixels differ.
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def constant_shift_samplenet(shift: tuple[float, float]) -> SampleNet:
    """A SampleNet whose output is exactly ``shift`` for every query (last layer: zero weight)."""
    net = SampleNet(**SMALL).eval()
    last = net.imnet.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(shift))
    return net


# --------------------------------------------------------------------------------------------
# Coordinates and the local ensemble


def test_make_coord_pixel_centres_ij_order():
    c = make_coord((4, 5))
    assert c.shape == (4, 5, 2)
    for i in range(4):
        for j in range(5):
            assert c[i, j, 0].item() == pytest.approx(-1 + 1 / 4 + 2 * i / 4, abs=1e-7)  # row first
            assert c[i, j, 1].item() == pytest.approx(-1 + 1 / 5 + 2 * j / 5, abs=1e-7)


def direct_decode(liif: LIIF, x: torch.Tensor, rel: tuple[float, float], di: int = 0, dj: int = 0) -> torch.Tensor:
    """imnet on the unfolded feature of pixel (i+di, j+dj) with relative coordinate ``rel`` and cell 2."""
    feat = liif.encoder(x)
    n, c, h, w = feat.shape
    unf = F.unfold(feat, 3, padding=1).view(n, 9 * c, h, w).permute(0, 2, 3, 1)
    unf = torch.roll(unf, shifts=(-di, -dj), dims=(1, 2))
    extra = torch.tensor([rel[0], rel[1], 2.0, 2.0]).expand(n, h, w, 4)  # cell 2/H scaled by H
    return liif.imnet(torch.cat([unf, extra], dim=-1))


def test_liif_at_pixel_centres_reproduces_its_own_grid_decoding():
    """At pixel centres with zero shift, every pixel not in the last row or column is the MLP's
    decoding of its own unfolded feature at relative coordinate (0, 0): the ensemble picks the cells
    (i, j), (i, j+1), (i+1, j), (i+1, j+1) and the (i, j) term carries weight 4/(4 + 3e-9).
    In the last row the +1/H query is clamped back into the row, all four areas are zero (+1e-9),
    and the output is the equal-weight mix 0.5 dec(i, j; 0, 0) + 0.5 dec(i, j+1; 0, -2)."""
    liif, _ = small_nets()
    x = images(h=8, w=8) * 2 - 1
    coord, cell = pixel_queries(2, 8, 8)
    with torch.no_grad():
        out = liif(x, coord, cell).view(2, 8, 8, 3)
        own = direct_decode(liif, x, (0.0, 0.0))
        right = direct_decode(liif, x, (0.0, -2.0), dj=1)
    torch.testing.assert_close(out[:, :-1, :-1], own[:, :-1, :-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, -1, :-1], 0.5 * own[:, -1, :-1] + 0.5 * right[:, -1, :-1], atol=1e-5, rtol=0)
    # The ensemble is not a no-op: the neighbours' decodings differ from the pixel's own.
    assert (own[:, :-1, :-1] - right[:, :-1, :-1]).abs().max() > 1e-3


@pytest.mark.parametrize("axis", [0, 1])
def test_shift_is_in_normalised_coordinates_one_pixel_is_2_over_size(axis):
    """A constant SampleNet shift of exactly one pixel (2/H along rows, 2/W along columns) makes
    output pixel k equal the unshifted output's pixel k+1 along that axis (H != W to tell them apart),
    for k + 1 short of the last row/column: there all four ensemble areas are ~0 (the authors'
    border degeneracy), so the float rounding of ``coord + 2/W`` alone changes the weights."""
    h, w = 8, 12
    liif, _ = small_nets()
    step = (2 / h, 0.0) if axis == 0 else (0.0, 2 / w)
    shifted = IRAD(reconstruction=liif, samplenet=constant_shift_samplenet(step))
    still = IRAD(reconstruction=liif, samplenet=constant_shift_samplenet((0.0, 0.0)))
    x = images(h=h, w=w)
    with torch.no_grad():
        a, b = shifted.purify(x), still.purify(x)
    dim = 2 + axis
    size = x.shape[dim]
    torch.testing.assert_close(a.narrow(dim, 0, size - 2), b.narrow(dim, 1, size - 2), atol=1e-5, rtol=0)
    assert (b.narrow(dim, 0, size - 2) - b.narrow(dim, 1, size - 2)).abs().max() > 1e-3


def test_shapes_ranges_cost_and_registry():
    liif, net = small_nets()
    defense = DEFENSES.create("irad", reconstruction=liif, samplenet=net)
    x = images(n=3, h=8, w=12)
    y = defense.purify(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert defense.stochastic is False and defense.gradient_modes == ("full", "bpda")
    assert defense.cost() == 2.0
    torch.testing.assert_close(defense.purify(x), y)  # deterministic


def test_gradients_reach_input_through_liif_and_through_samplenet_separately():
    liif, net = small_nets()
    # Scale SampleNet's output to sub-pixel shifts so that outputs are not clamped everywhere.
    with torch.no_grad():
        net.imnet.layers[-1].weight.mul_(0.1)
    defense = IRAD(reconstruction=liif, samplenet=net)
    x = images(h=8, w=8)
    coord, cell = pixel_queries(2, 8, 8)

    def grad(liif_input_live: bool, samplenet_input_live: bool) -> torch.Tensor:
        xi = x.clone().requires_grad_(True)
        shift = defense.samplenet(xi if samplenet_input_live else xi.detach(), coord, cell)
        rgb = defense.liif(((xi if liif_input_live else xi.detach()) - 0.5) / 0.5, coord + shift, cell)
        (rgb * torch.linspace(-1, 1, rgb.numel()).view_as(rgb)).sum().backward()
        return xi.grad

    assert grad(True, False).abs().sum() > 0   # through the LIIF encoder
    assert grad(False, True).abs().sum() > 0   # through SampleNet -> query coordinates
    xi = x.clone().requires_grad_(True)
    defense.purify(xi).sum().backward()
    assert xi.grad.abs().sum() > 0
    assert all(p.grad is None for p in defense.parameters())  # frozen weights


# --------------------------------------------------------------------------------------------
# The authors' formats, and an independent re-expression of their forward


def authors_liif_keys(out_dim: int, n_resblocks: int = 16, n_feats: int = 64, hidden: int = 256, layers: int = 4):
    """(name, shape) of the authors' LIIF/SampleNet state dict (EDSR-baseline + MLP)."""
    keys = [("encoder.sub_mean.weight", (3, 3, 1, 1)), ("encoder.sub_mean.bias", (3,)),
            ("encoder.add_mean.weight", (3, 3, 1, 1)), ("encoder.add_mean.bias", (3,)),
            ("encoder.head.0.weight", (n_feats, 3, 3, 3)), ("encoder.head.0.bias", (n_feats,))]
    for i in range(n_resblocks):
        for j in (0, 2):
            keys += [(f"encoder.body.{i}.body.{j}.weight", (n_feats, n_feats, 3, 3)),
                     (f"encoder.body.{i}.body.{j}.bias", (n_feats,))]
    keys += [(f"encoder.body.{n_resblocks}.weight", (n_feats, n_feats, 3, 3)),
             (f"encoder.body.{n_resblocks}.bias", (n_feats,))]
    widths = [9 * n_feats + 4] + [hidden] * layers + [out_dim]
    for k in range(layers + 1):
        keys += [(f"imnet.layers.{2 * k}.weight", (widths[k + 1], widths[k])),
                 (f"imnet.layers.{2 * k}.bias", (widths[k + 1],))]
    return keys


def random_state_dict(keys, gen, last_scale: float = 1.0):
    sd = {}
    for name, shape in keys:
        if name.endswith("weight"):
            fan_in = math.prod(shape[1:])
            sd[name] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            sd[name] = 0.01 * torch.randn(shape, generator=gen)
    last = max(int(n.split(".")[2]) for n, _ in keys if n.startswith("imnet.layers."))
    sd[f"imnet.layers.{last}.weight"] *= last_scale
    return sd


def ref_make_coord(h: int, w: int) -> torch.Tensor:
    seqs = [-1 + 1 / n + (2 / n) * torch.arange(n).float() for n in (h, w)]
    return torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1).view(-1, 2)


def ref_encoder(sd, x, n_resblocks=16):
    h = F.conv2d(x, sd["encoder.head.0.weight"], sd["encoder.head.0.bias"], padding=1)
    r = h
    for i in range(n_resblocks):
        t = F.relu(F.conv2d(r, sd[f"encoder.body.{i}.body.0.weight"], sd[f"encoder.body.{i}.body.0.bias"], padding=1))
        r = r + F.conv2d(t, sd[f"encoder.body.{i}.body.2.weight"], sd[f"encoder.body.{i}.body.2.bias"], padding=1)
    r = F.conv2d(r, sd[f"encoder.body.{n_resblocks}.weight"], sd[f"encoder.body.{n_resblocks}.bias"], padding=1)
    return r + h


def ref_mlp(sd, v):
    idx = sorted(int(k.split(".")[2]) for k in sd if k.startswith("imnet.layers.") and k.endswith("weight"))
    for n, i in enumerate(idx):
        v = F.linear(v, sd[f"imnet.layers.{i}.weight"], sd[f"imnet.layers.{i}.bias"])
        if n < len(idx) - 1:
            v = F.relu(v)
    return v


def ref_query(sd, feat, coord, cell):
    """The authors' query_rgb, step for step (in-place per-axis offsets, clamp, swapped areas)."""
    feat = F.unfold(feat, 3, padding=1).view(feat.shape[0], feat.shape[1] * 9, feat.shape[2], feat.shape[3])
    rx, ry = 2 / feat.shape[-2] / 2, 2 / feat.shape[-1] / 2
    feat_coord = ref_make_coord(*feat.shape[-2:]).view(*feat.shape[-2:], 2).permute(2, 0, 1) \
        .unsqueeze(0).expand(feat.shape[0], 2, *feat.shape[-2:])
    preds, areas = [], []
    for vx in (-1, 1):
        for vy in (-1, 1):
            c = coord.clone()
            c[:, :, 0] += vx * rx + 1e-6
            c[:, :, 1] += vy * ry + 1e-6
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            q_feat = F.grid_sample(feat, c.flip(-1).unsqueeze(1), mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, c.flip(-1).unsqueeze(1), mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            rel = coord - q_coord
            rel[:, :, 0] *= feat.shape[-2]
            rel[:, :, 1] *= feat.shape[-1]
            rel_cell = cell.clone()
            rel_cell[:, :, 0] *= feat.shape[-2]
            rel_cell[:, :, 1] *= feat.shape[-1]
            preds.append(ref_mlp(sd, torch.cat([q_feat, rel, rel_cell], dim=-1)))
            areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)
    tot = torch.stack(areas).sum(dim=0)
    areas[0], areas[3] = areas[3], areas[0]
    areas[1], areas[2] = areas[2], areas[1]
    return sum(p * (a / tot).unsqueeze(-1) for p, a in zip(preds, areas))


def ref_irad(rec_sd, smp_sd, x):
    n, _, h, w = x.shape
    coord = ref_make_coord(h, w).repeat(n, 1, 1)
    cell = torch.ones_like(coord)
    cell[:, :, 0] *= 2 / h
    cell[:, :, 1] *= 2 / w
    offset = ref_query(smp_sd, ref_encoder(smp_sd, x), coord, cell)
    rgb = ref_query(rec_sd, ref_encoder(rec_sd, (x - 0.5) / 0.5), coord + offset, cell)
    return (rgb * 0.5 + 0.5).clamp(0, 1).view(n, h, w, 3).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def authors_files(tmp_path_factory):
    """Reconstruction.pt and SampleNet.pt written directly in the authors' layouts (default sizes)."""
    gen = torch.Generator().manual_seed(7)
    rec_sd = random_state_dict(authors_liif_keys(3), gen)
    smp_sd = random_state_dict(authors_liif_keys(2), gen, last_scale=0.05)  # sub-pixel-ish shifts
    d = tmp_path_factory.mktemp("irad_authors")
    spec = {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}}, "sd": rec_sd}
    torch.save({"model": spec}, d / "Reconstruction.pt")
    torch.save({"model": smp_sd}, d / "SampleNet.pt")
    return d, rec_sd, smp_sd


def test_authors_files_load_strictly_and_give_the_authors_forward(authors_files):
    d, rec_sd, smp_sd = authors_files
    defense = IRAD(reconstruction=d / "Reconstruction.pt", samplenet=d / "SampleNet.pt")
    assert set(defense.liif.state_dict()) == set(rec_sd)
    assert set(defense.samplenet.state_dict()) == set(smp_sd)
    # SampleNet keeps its own encoder weights, not the reconstruction's.
    torch.testing.assert_close(defense.samplenet.encoder.head[0].weight, smp_sd["encoder.head.0.weight"])
    x = images(n=2, h=8, w=8)
    with torch.no_grad():
        ours, expected = defense.purify(x), ref_irad(rec_sd, smp_sd, x)
    assert 0.05 < (expected > 0).float().mean() and (expected < 1).float().mean() > 0.05  # not all clamped
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_own_format_gives_the_same_output_as_the_authors_files(authors_files, tmp_path):
    d, _, _ = authors_files
    authors = IRAD(reconstruction=str(d / "Reconstruction.pt"), samplenet=str(d / "SampleNet.pt"))
    save_irad(tmp_path / "irad.pt", authors.liif, authors.samplenet, note="test")
    ours = DEFENSES.create("irad", checkpoint=str(tmp_path / "irad.pt"))
    x = images(n=2, h=8, w=8, seed=3)
    with torch.no_grad():
        assert torch.equal(ours.purify(x), authors.purify(x))


def test_bad_files_fail_clearly(authors_files, tmp_path):
    d, rec_sd, smp_sd = authors_files
    broken = dict(smp_sd)
    broken.pop("encoder.body.3.body.0.bias")
    torch.save({"model": broken}, tmp_path / "SampleNet.pt")
    with pytest.raises(ValueError, match="(?s)SampleNet.pt.*encoder.body.3.body.0.bias"):
        IRAD(reconstruction=d / "Reconstruction.pt", samplenet=tmp_path / "SampleNet.pt")
    torch.save({"model": smp_sd}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a 'bench-irad' checkpoint"):
        IRAD(checkpoint=tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="either checkpoint or reconstruction"):
        IRAD(checkpoint=tmp_path / "plain.pt", reconstruction=d / "Reconstruction.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        IRAD(checkpoint=tmp_path / "missing.pt")
