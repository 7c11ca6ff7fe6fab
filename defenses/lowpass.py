"""Low-pass filter defense (SPEC §2.1).

Paper: "A frequency domain analysis of gradient-based adversarial examples" (anonymous ICLR 2021
submission, papers/lowpass-filter.txt, §4.3): DFT the input, set every frequency outside a cut-off
to zero, inverse DFT. With a normally trained ResNet-32 on CIFAR-10 and cut-off k = 12 the paper
reports 81.81% clean and 51.7% under an *oblivious* PGD (the attacker ignores the filter).

The filter is linear and deterministic, so autograd through it (gradient mode ``full``) is already
a complete adaptive attack; ``bpda`` is offered for comparison with the literature.

Mask geometry. Frequencies are integer cycles per image on the centred (fftshift-ed) grid,
``u in {-floor(H/2), ..., ceil(H/2) - 1}``. A frequency is kept when its distance to the centre is
at most ``cutoff`` (``circle``, default) or when ``|u| <= cutoff`` and ``|v| <= cutoff``
(``square``). On a 32x32 grid the corner lies at 16*sqrt(2) ~ 22.6, so only a circle keeps changing
between k = 16 and the paper's largest k = 22, and k >= 16*sqrt(2) keeps everything.

Why the output is real. The mask is a function of ``|u|`` and ``|v|`` measured in true frequency
values (from ``torch.fft.fftfreq``), so it is invariant under (u, v) -> (-u, -v) modulo the grid
size. For an even size the Nyquist frequency -H/2 is its own negative (mod H), and it has the same
``|u|`` either way, so the mask stays conjugate-symmetric; a mask built from centred *array indices*
(e.g. ``arange(H) - (H - 1) / 2``) would not be, and the inverse transform would gain an imaginary
part that ``.real`` silently drops. ``tests/test_lowpass.py`` checks the imaginary part is ~0.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from bench.params import validated
from bench.registry import DEFENSES
from defenses.base import Defense

MASKS = ("circle", "square")


def centred_frequencies(n: int, device: torch.device | str = "cpu") -> Tensor:
    """Integer frequencies of an ``n``-point DFT in fftshift order (float64), e.g. -16..15 for 32."""
    return torch.fft.fftshift(torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device))


def lowpass_mask(height: int, width: int, cutoff: float, mask: str = "circle",
                 device: torch.device | str = "cpu") -> Tensor:
    """Boolean (H, W) mask on the centred frequency grid, True where a frequency is kept.

    Args:
        height: Image height H.
        width: Image width W.
        cutoff: The cut-off k (> 0), in cycles per image.
        mask: ``"circle"`` (``u^2 + v^2 <= k^2``) or ``"square"`` (``|u|, |v| <= k``). Default circle.
        device: Where to build it.
    """
    if mask not in MASKS:
        raise ValueError(f"lowpass mask {mask!r} is not one of {MASKS}")
    u = centred_frequencies(height, device).view(-1, 1)
    v = centred_frequencies(width, device).view(1, -1)
    # float64 squared integer distances are exact; the tiny tolerance makes k = 16*sqrt(2) (whose
    # square rounds to 512.0000000000001 or 511.99999999999994 depending on the path) keep the corner.
    tol = 1e-9 * max(1.0, cutoff * cutoff)
    if mask == "circle":
        return u * u + v * v <= cutoff * cutoff + tol
    return (u.abs() <= cutoff + tol) & (v.abs() <= cutoff + tol)


def lowpass_filter(x: Tensor, keep: Tensor) -> Tensor:
    """Zero the frequencies outside ``keep`` in every (H, W) plane of ``x``; linear, no clamp.

    Args:
        x: Real tensor (..., H, W); every leading index is filtered independently (batch, channel).
        keep: Boolean (H, W) mask on the centred grid (see :func:`lowpass_mask`).

    Returns:
        The real part of the inverse transform (the imaginary part is ~0 for a symmetric mask).
    """
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    spectrum = spectrum * keep.to(spectrum.real.dtype)
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real


@DEFENSES.register("lowpass")
class LowPass(Defense):
    """Low-pass filter in the 2-D Fourier domain, per image and channel (deterministic).

    Args:
        cutoff: Cut-off k in cycles per image, in (0, 1024]; the paper's best value on CIFAR-10 is 12.
            Default 12.
        mask: ``"circle"`` (distance from the centre <= k; default) or ``"square"`` (|u|, |v| <= k).

    Usage: ``LowPass(cutoff=12).purify(x)`` with ``x`` (N, C, H, W) float in [0, 1] -> same shape.
    """

    paper: ClassVar[str] = "Anonymous, A frequency domain analysis of gradient-based adversarial examples, ICLR 2021 submission, OpenReview D04TGKz5rfF"
    stochastic: ClassVar[bool] = False
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")

    @validated
    def __init__(self, cutoff: Annotated[float, Field(gt=0, le=1024)] = 12,
                 mask: Literal["circle", "square"] = "circle") -> None:
        super().__init__()
        self.cutoff, self.mask = float(cutoff), mask
        self._masks: dict[tuple[int, int, torch.device], Tensor] = {}

    def keep_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """The (H, W) mask for this size and device, built once and cached."""
        key = (height, width, torch.device(device))
        if key not in self._masks:
            self._masks[key] = lowpass_mask(height, width, self.cutoff, self.mask, device)
        return self._masks[key]

    def filter(self, x: Tensor) -> Tensor:
        """The linear part of the defense: filtered ``x`` before clamping."""
        return lowpass_filter(x, self.keep_mask(x.shape[-2], x.shape[-1], x.device)).to(x.dtype)

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Filter ``x`` (N, C, H, W in [0, 1]) and clamp to [0, 1]; differentiable."""
        return self.filter(x).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff:g}, mask={self.mask!r}, {super().extra_repr()}"
