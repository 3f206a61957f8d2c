"""The motivating experiment of ProbeX (Horwitz et al., 2025, §1) in lab 01: a linear probe on one layer reads a
model's training classes well within one Model Tree, not across trees.

* :func:`multi_hot` — each model's training classes as a 0/1 row;
* :func:`probe_accuracy` — a ridge probe (``sklearn.linear_model.Ridge``) from one layer to those rows;
* :func:`within_vs_mixed` — the probe trained within a tree, on a mix of trees, and across trees, with an equal
  training budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["multi_hot", "probe_accuracy", "within_vs_mixed"]


def multi_hot(classes: Sequence[Sequence[int]], n_classes: int = 10) -> torch.Tensor:
    """Each model's training classes as a 0/1 row: ``[n_models, n_classes]``."""
    Y = torch.zeros(len(classes), n_classes)
    for i, c in enumerate(classes):
        Y[i, list(c)] = 1.0
    return Y


def probe_accuracy(X_train: torch.Tensor, Y_train: torch.Tensor, X_test: torch.Tensor, Y_test: torch.Tensor,
                   alpha: float = 10.0) -> float:
    """A linear probe (scikit-learn ridge regression with an intercept, ``alpha`` on standardised weights,
    threshold 0.5) predicting each model's training classes from one layer. ``X: [models, features]``,
    ``Y: [models, classes]`` (0/1). Returns the mean per-class binary accuracy on the test models (ProbeX's metric
    for Model-J)."""
    from sklearn.linear_model import Ridge

    X_train, X_test = X_train.double(), X_test.double()
    mu, sd = X_train.mean(0), X_train.std(0).clamp_min(1e-8)  # ddof = 1, as the probe always used
    # fit_intercept: the intercept is the mean training label ȳ (the standardised X has mean 0); "cholesky" solves
    # the closed form, in its dual W = Aᵀ (A Aᵀ + αI)⁻¹ (Y − ȳ) when models ≪ features
    ridge = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky")
    ridge.fit(((X_train - mu) / sd).numpy(force=True), Y_train.double().numpy(force=True))
    pred = ridge.predict(((X_test - mu) / sd).numpy(force=True)).reshape(Y_test.shape)
    return float(((pred > 0.5) == Y_test.double().numpy(force=True)).mean())


def within_vs_mixed(X: torch.Tensor, Y: torch.Tensor, trees: np.ndarray, train: np.ndarray, test: np.ndarray,
                    repeats: int = 5, seed: int = 0, alpha: float = 10.0) -> dict[str, float]:
    """The motivating experiment of ProbeX (§1) with an equal training budget.

    For each tree t, a probe for t's test models is trained on the n_t training models of tree t (**within**),
    on n_t training models drawn from all trees (**mixed**, ``repeats`` draws), and on the other trees' models
    only (**cross**). ``X: [models, features]`` (one layer, flattened), ``Y: [models, classes]``, ``trees: [models]``,
    ``train``/``test``: boolean masks. Returns test-size-weighted means of :func:`probe_accuracy`.
    """
    rng = np.random.default_rng(seed)
    res = {"within": 0.0, "mixed": 0.0, "cross": 0.0}
    total = 0
    pool = np.flatnonzero(train)
    for t in np.unique(trees):
        own, te = np.flatnonzero(train & (trees == t)), test & (trees == t)
        if len(own) < 2 or te.sum() == 0:
            continue
        w = int(te.sum())
        res["within"] += w * probe_accuracy(X[own], Y[own], X[te], Y[te], alpha)
        res["mixed"] += w * float(np.mean([probe_accuracy(X[m], Y[m], X[te], Y[te], alpha) for m in
                                           (rng.choice(pool, len(own), replace=False) for _ in range(repeats))]))
        other = np.flatnonzero(train & (trees != t))
        res["cross"] += w * probe_accuracy(X[other], Y[other], X[te], Y[te], alpha) if len(other) > 1 else 0.0
        total += w
    if total == 0:
        raise ValueError("no tree has both training and test models")
    return {k: v / total for k, v in res.items()}
