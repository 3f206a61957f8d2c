"""Training one small classifier (notebook 00, and the reference loop the batched zoo trainer is checked against)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["accuracy", "fit_classifier"]


def fit_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int = 20, lr: float = 3e-3,
                   batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0) -> list[float]:
    """Adam on cross-entropy with shuffled mini-batches. ``X: [N, ...]``, ``y: [N]``; returns the loss per epoch."""
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    device = next(model.parameters()).device
    X, y = X.to(device), y.to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(X))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows of ``X`` whose arg-max logit equals ``y``."""
    device = next(model.parameters()).device
    return (model(X.to(device)).argmax(-1).cpu() == y.cpu()).float().mean().item()
