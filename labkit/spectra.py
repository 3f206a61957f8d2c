"""Singular-value spectra of weight matrices: the lens of DSiRe (lab 04) and Spectral DeTuning (lab 05),
introduced in notebook 00.

The energy of a matrix is its squared Frobenius norm, ``‖W‖_F² = Σ_i σ_i²``; the share held by its top ``k``
singular directions is ``E_k(W) = Σ_{i<k} σ_i² / Σ_i σ_i²``. A trained layer concentrates energy in few
directions; a random one spreads it out.
"""

from __future__ import annotations

import torch

from labkit.methods.checks import require_finite

__all__ = ["energy_fraction", "singular_values"]


def _check_matrix(W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(W).__name__}")
    if W.ndim < 2:
        raise ValueError(f"expected a matrix [..., d_out, d_in], got shape {list(W.shape)}")
    require_finite(W, "the matrix contains NaN or inf; check the weights you loaded")
    return W if W.is_floating_point() else W.float()


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """Singular values, largest first. ``W: [..., m, n]`` → ``[..., min(m, n)]`` (batched over leading dims)."""
    return torch.linalg.svdvals(_check_matrix(W))


def energy_fraction(W: torch.Tensor, k: int) -> torch.Tensor:
    """Share of ``‖W‖_F²`` in the top ``k`` singular values. ``W: [..., m, n]`` → ``[...]``, values in [0, 1]."""
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    s2 = singular_values(W) ** 2
    total = s2.sum(-1)
    return s2[..., : int(k)].sum(-1) / total.clamp_min(torch.finfo(s2.dtype).tiny)
