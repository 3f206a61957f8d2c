"""The tiny ε-prediction denoiser of the digit-diffusion root (DESIGN §3; reference/mini_jungle_notes.md).

An MLP on the flattened 8×8 image (about 0.7 M parameters) with a sinusoidal timestep embedding and three
residual blocks ``h += fc2(SiLU(fc1(SiLU(LayerNorm(h))) + tproj(temb)))``. Every Linear has a name peft can target:
``inp``, ``temb_fc1``, ``temb_fc2``, ``blocks.{i}.fc1``, ``blocks.{i}.fc2``, ``blocks.{i}.tproj``, ``out``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LORA_TARGETS", "Denoiser", "timestep_embedding"]

# the 8 layers the LoRA zoos adapt (mini_jungle_notes.md, "LoRA personalisation")
LORA_TARGETS = ["inp", "blocks.0.fc1", "blocks.1.fc1", "blocks.2.fc1",
                "blocks.0.fc2", "blocks.1.fc2", "blocks.2.fc2", "out"]


def timestep_embedding(t: torch.Tensor, dim: int = 64, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al., 2017; DDPM): ``t: [...]`` integer steps → ``[..., dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class Block(nn.Module):
    """One residual block: ``h + fc2(SiLU(fc1(SiLU(LayerNorm(h))) + tproj(temb)))``."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.tproj = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        act = nn.functional.silu
        return h + self.fc2(act(self.fc1(act(self.norm(h))) + self.tproj(temb)))


class Denoiser(nn.Module):
    """``forward(x: [B, 64], t: [B]) -> ε̂: [B, 64]`` for images scaled to [−1, 1]."""

    def __init__(self, dim: int = 64, width: int = 256, n_blocks: int = 3, t_dim: int = 64):
        super().__init__()
        self.t_dim = t_dim
        self.inp = nn.Linear(dim, width)
        self.temb_fc1 = nn.Linear(t_dim, width)
        self.temb_fc2 = nn.Linear(width, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(n_blocks)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or t.shape != x.shape[:1]:
            raise ValueError(f"Denoiser expects x: [B, dim] and t: [B]; got x {list(x.shape)}, t {list(t.shape)}")
        act = nn.functional.silu
        temb = act(self.temb_fc2(act(self.temb_fc1(timestep_embedding(t, self.t_dim)))))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(act(self.out_norm(h)))
