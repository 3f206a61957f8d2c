"""Denoising diffusion on 8×8 digits: cosine schedule, ε-prediction loss, ancestral sampling (DESIGN §3).

DDPM (Ho et al., 2020) with the cosine schedule of Nichol & Dhariwal (2021, §3.2)::

    ᾱ_t = f(t)/f(0),  f(t) = cos²(((t/T) + s)/(1 + s) · π/2),   x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε

The model predicts ε; the loss is ``‖ε̂(x_t, t) − ε‖²`` averaged over pixels. Sampling runs the reverse chain
with the x_0 prediction clipped to [−1, 1] and the posterior mean and variance (DDPM eq. 6–7).

Every function takes a ``denoise(x, t)`` callable and tensors with any leading batch dimensions
(``x: [..., 64]``, ``t: [...]``), so one call serves one model or K LoRA-adapted models at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Schedule", "cosine_schedule", "diffusion_loss", "from_unit", "noisy", "sample", "to_unit"]


@dataclass(frozen=True)
class Schedule:
    """``betas, alphas, alpha_bar: [T]`` (float32) of a discrete diffusion with ``T`` steps."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor

    @property
    def T(self) -> int:
        return len(self.betas)

    def to(self, device) -> Schedule:
        return Schedule(self.betas.to(device), self.alphas.to(device), self.alpha_bar.to(device))


def cosine_schedule(T: int = 100, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at ``max_beta``."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((steps / T) + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    alphas = 1 - betas
    return Schedule(betas.float(), alphas.float(), torch.cumprod(alphas, 0).float())


def to_unit(x01: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] → [−1, 1] (the diffusion's data range)."""
    return x01 * 2 - 1


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → [0, 1], clipped."""
    return ((x + 1) / 2).clamp(0, 1)


def noisy(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """``x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε``; ``x0, eps: [..., D]``, ``t: [...]``."""
    ab = sched.alpha_bar.to(x0.device)[t][..., None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def diffusion_loss(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                   t: torch.Tensor, eps: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """Per-sample ε-prediction loss ``mean_D (ε̂ − ε)²``: ``x0, eps: [..., D]``, ``t: [...]`` → ``[...]``."""
    return ((denoise(noisy(x0, t, eps, sched), t) - eps) ** 2).mean(-1)


@torch.no_grad()
def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
           sched: Schedule, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Ancestral sampling from pure noise; returns ``x0: shape`` (last dim = pixels) in [−1, 1].

    Each step: x̂0 = clip((x_t − sqrt(1−ᾱ_t) ε̂)/sqrt(ᾱ_t)), then x_{t−1} ~ N(μ̃(x_t, x̂0), β̃_t) (DDPM eq. 7).
    Noise is drawn on the CPU from ``generator`` so results do not depend on the device's RNG.
    """
    sched = sched.to(device)
    x = torch.randn(shape, generator=generator).to(device)
    for step in reversed(range(sched.T)):
        t = torch.full(shape[:-1], step, dtype=torch.long, device=device)
        ab, a, beta = sched.alpha_bar[step], sched.alphas[step], sched.betas[step]
        ab_prev = sched.alpha_bar[step - 1] if step > 0 else torch.ones((), device=device)
        eps = denoise(x, t)
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + (a.sqrt() * (1 - ab_prev) / (1 - ab)) * x
        if step > 0:
            var = beta * (1 - ab_prev) / (1 - ab)
            x = mean + var.sqrt() * torch.randn(shape, generator=generator).to(device)
        else:
            x = mean
    return x.clamp(-1, 1)
