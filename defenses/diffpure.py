"""DiffPure: diffuse the input a little, then denoise it with the reverse process (SPEC §2.2).

Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022, arXiv:2205.07460; the
surrogate gradient follows Lee & Kim, "Robust Evaluation of Diffusion-Based Adversarial
Purification", ICCV 2023, arXiv:2303.09051.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torchsde
from pydantic import Field
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bench.params import Rule, param_rules, validated
from bench.registry import DEFENSES
from defenses.base import Defense
from defenses.diffusion.backbone import NoisePredictor, load_backbone
from defenses.diffusion.sampling import (
    check_trained_range,
    diffuse,
    predict_eps,
    reverse_loop,
    steps_from_t_star,
    strided_indices,
    to_unit,
)
from defenses.diffusion.schedule import VPSchedule

#: Steps of the discrete schedule every registered backbone uses (checked against the model when built).
NUM_STEPS = VPSchedule().num_steps


def t_star_problem(t_star: float, field: str = "t_star") -> str | None:
    """Why ``t_star`` is neither continuous time in (0, 1) nor a step count in 1..1000, or None."""
    try:
        steps_from_t_star(t_star, NUM_STEPS, field)
    except ValueError as exc:
        return str(exc)
    return None


def forward_steps(t_star: float) -> int:
    return steps_from_t_star(t_star, NUM_STEPS)


def _continuous(t_star: float) -> float:
    return float(t_star) if float(t_star) < 1 else forward_steps(t_star) / NUM_STEPS


def respaced_problem(k: int | None, t_star: float, field: str) -> str | None:
    """Why ``k`` reverse steps cannot respace the ``t_star`` forward steps, or None."""
    if k is None or t_star_problem(t_star) is not None:
        return None
    n = forward_steps(t_star)
    return None if 1 <= k <= n else (f"{field}={k} reverse steps exceed the {n} forward steps of t_star={t_star:g}; "
                                     f"allowed: 1..{n}")


class _ReverseVPSDE(nn.Module):
    """The reverse VP-SDE in the increasing time ``s = -t`` that torchsde integrates.

    Forward: ``dx = -b(t)/2 x dt + sqrt(b(t)) dW``. Reverse (Anderson 1982):
    ``dx = [-b/2 x - b score] dt + sqrt(b) dW_bar`` with ``score = -eps / std(t)``; in ``s = -t`` the
    drift changes sign. torchsde wants (batch, d) states, hence the flatten/view. When a graph is
    built the whole drift is checkpointed (only the state is kept per step) and the noise term is
    ``g_prod`` times a Python float, which keeps nothing either: ``full`` gradients through the ~100
    Euler steps store about one state per step.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: NoisePredictor, shape: torch.Size, use_checkpoint: bool) -> None:
        super().__init__()
        self.model, self.shape, self.use_checkpoint = model, shape, use_checkpoint
        self.schedule = model.schedule

    def _drift(self, t: float, y: Tensor) -> Tensor:
        x = y.view(self.shape)
        # score-SDE convention: continuous time t is labelled (N - 1) t (999 t for 1000 steps)
        eps = predict_eps(self.model, x, t * (self.schedule.num_steps - 1))
        beta = self.schedule.beta_continuous(t)
        score = -eps / self.schedule.std_continuous(t)
        return (0.5 * beta * x + beta * score).flatten(1)

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled() and y.requires_grad:
            return checkpoint(self._drift, -float(s), y, use_reentrant=False)
        return self._drift(-float(s), y)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return torch.full_like(y, math.sqrt(self.schedule.beta_continuous(-float(s))))

    def g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return math.sqrt(self.schedule.beta_continuous(-float(s))) * v


@DEFENSES.register("diffpure")
@param_rules(
    Rule(("t_star",), t_star_problem, text="t_star: continuous time in (0, 1) or an integer step count 1..1000"),
    Rule(("steps", "solver"), lambda steps, solver: None if steps is None or solver == "ddpm" else
         f"steps={steps} applies to solver='ddpm' only; the sde solver takes dt", text="steps only with solver: ddpm"),
    Rule(("steps", "t_star"), lambda steps, t_star: respaced_problem(steps, t_star, "steps"),
         text="steps <= the forward steps of t_star"),
    Rule(("surrogate_steps", "t_star"), lambda k, t_star: respaced_problem(k, t_star, "surrogate_steps"),
         text="surrogate_steps <= the forward steps of t_star"),
    Rule(("t_min", "t_star"), lambda t_min, t_star: None if t_star_problem(t_star) or t_min < _continuous(t_star)
         else f"t_min={t_min:g} must be below t_star ({_continuous(t_star):g})", text="t_min < t_star"),
)
class DiffPure(Defense):
    """Diffuse to ``t_star``, then integrate the reverse VP-SDE (or run DDPM ancestral sampling).

    Input (N,C,H,W) in [0,1]; the backbone works on ``2x - 1``; output in [0,1].

    Solvers:
        ``sde``: Euler–Maruyama on the reverse VP-SDE from ``t_star`` to ``t_min`` with step ``dt``
        (about 100 network evaluations at t* = 0.1), through ``torchsde.sdeint(method="euler")``.
        torchsde cannot take a ``torch.Generator``, but its ``BrownianInterval`` is a deterministic
        function of an integer ``entropy``; that integer is drawn from the call's generator, so the
        Brownian path is still reproducible per call and independent across calls. The forward noise
        ``x_t`` comes from the generator directly. Gradients flow by autograd through the solver's
        steps (``sdeint``, not the adjoint), each network call checkpointed.
        ``ddpm``: ancestral sampling (posterior variance) from step ``round(t_star * 1000)`` of the
        discrete schedule down to 0, one network evaluation per step (or ``steps`` respaced steps),
        every step's noise from the generator.

    Gradient modes: ``full`` (autograd through ``purify``; never under ``no_grad``, unlike the
    reference DDPM path, which silently zeroed gradients), ``surrogate`` (Lee & Kim: the same forward
    noise level ``t_star``, denoised by a respaced DDPM chain of ``surrogate_steps`` steps, full
    autograd), ``bpda``.

    Args:
        backbone: Noise predictor, or its config dict (``{"type": "score-sde", "checkpoint": ...}``)
            resolved with ``load_backbone``. Required.
        t_star: Diffusion time in (0, 1) (or an integer step count). Default 0.1, the Linf setting;
            DiffPure uses 0.075 for L2.
        solver: ``"sde"`` (default) or ``"ddpm"``.
        steps: ``ddpm`` only: reverse steps, respaced evenly from t* to 0. Default None = every
            discrete step (the standard DDPM variant); fewer steps are for CPU budgets.
        dt: Euler–Maruyama step of the ``sde`` solver. Default 1e-3.
        t_min: Time where the ``sde`` solver stops (the score diverges at 0). Default 1e-5, as in
            DiffPure's code.
        surrogate_steps: Denoising steps of the surrogate process. Default 10.
        checkpointing: Checkpoint each network call when a graph is built. Default True.

    Example:
        ``DiffPure(backbone={"type": "score-sde", "checkpoint": "checkpoint_8.pth"}).purify(x, gen)``
    """

    paper = "Nie et al., Diffusion Models for Adversarial Purification, ICML 2022, arXiv:2205.07460"
    stochastic = True
    gradient_modes = ("full", "surrogate", "bpda")

    @validated
    def __init__(
        self,
        *,
        backbone: dict[str, Any] | NoisePredictor,
        t_star: Annotated[float, Field(gt=0, le=NUM_STEPS)] = 0.1,
        solver: Literal["sde", "ddpm"] = "sde",
        steps: Annotated[int, Field(ge=1, le=NUM_STEPS)] | None = None,
        dt: Annotated[float, Field(gt=0, le=0.1)] = 1e-3,
        t_min: Annotated[float, Field(ge=0, lt=1)] = 1e-5,
        surrogate_steps: Annotated[int, Field(ge=1, le=NUM_STEPS)] = 10,
        checkpointing: bool = True,
    ) -> None:
        super().__init__()
        self.model = load_backbone(backbone)
        num_steps = self.model.schedule.num_steps
        self.n_steps = steps_from_t_star(t_star, num_steps)  # discrete start (ddpm and surrogate)
        check_trained_range(self.model, self.n_steps, "diffpure")
        self.indices = strided_indices(self.n_steps, self.n_steps if steps is None else int(steps))
        self.t_star = float(t_star) if float(t_star) < 1 else self.n_steps / num_steps
        if not (dt > 0 and 0 <= t_min < self.t_star):
            raise ValueError(f"diffpure: need dt > 0 and 0 <= t_min < t_star, got dt={dt}, t_min={t_min}")
        self.solver, self.dt, self.t_min = solver, float(dt), float(t_min)
        self.surrogate_indices = strided_indices(self.n_steps, int(surrogate_steps))
        self.checkpointing = bool(checkpointing)

    def cost(self) -> float:
        if self.solver == "ddpm":
            return float(len(self.indices))
        return float(math.ceil((self.t_star - self.t_min) / self.dt - 1e-9))  # torchsde's step count

    def surrogate_cost(self) -> float:
        """Network evaluations per image for one ``surrogate_purify`` call."""
        return float(len(self.surrogate_indices))

    def diffuse(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t at the start of the reverse process (continuous abar for ``sde``, discrete for ``ddpm``)."""
        if self.solver == "sde":
            abar = self.model.schedule.abar_continuous(self.t_star)
        else:
            abar = float(self.model.schedule.alphas_cumprod()[self.n_steps - 1])
        return diffuse(2.0 * x - 1.0, abar, generator)

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x_t = self.diffuse(x, generator)
        if self.solver == "ddpm":
            return to_unit(reverse_loop(self.model, x_t, self.indices, 1.0, generator, None, self.checkpointing))
        sde = _ReverseVPSDE(self.model, x_t.shape, self.checkpointing)
        ts = torch.tensor([-self.t_star, -self.t_min], device=x.device, dtype=x.dtype)
        # torchsde seeds its Brownian path from an integer; draw it from the call's generator
        gen_device = generator.device if generator is not None else x.device
        entropy = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device))
        bm = torchsde.BrownianInterval(
            t0=ts[0], t1=ts[1], size=(x.shape[0], x[0].numel()), dtype=x.dtype, device=x.device, entropy=entropy
        )
        ys = torchsde.sdeint(sde, x_t.flatten(1), ts, bm=bm, method="euler", dt=self.dt)
        return to_unit(ys[-1].view(x.shape))

    def surrogate_purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        abar = float(self.model.schedule.alphas_cumprod()[self.n_steps - 1])
        x_t = diffuse(2.0 * x - 1.0, abar, generator)
        return to_unit(reverse_loop(self.model, x_t, self.surrogate_indices, 1.0, generator, None, self.checkpointing))

    def extra_repr(self) -> str:
        return (
            f"t_star={self.t_star}, solver={self.solver}, cost={self.cost():g}, "
            f"surrogate_steps={len(self.surrogate_indices)}"
        )
