"""The lab-01 ridge probe (``labkit.tree_probe``): scikit-learn's Ridge gives the accuracies of the closed form the
probe was first written as (same α on standardised weights, intercept = mean training label)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.tree_probe import multi_hot, probe_accuracy, within_vs_mixed


def closed_form_accuracy(X_train, Y_train, X_test, Y_test, alpha: float) -> float:
    """The probe as first written: dual ridge ``W = Aᵀ (A Aᵀ + αI)⁻¹ (Y − ȳ)``, prediction ``B W + ȳ`` > 0.5."""
    X_train, X_test = X_train.double(), X_test.double()
    mu, sd = X_train.mean(0), X_train.std(0).clamp_min(1e-8)
    A, B = (X_train - mu) / sd, (X_test - mu) / sd
    y_mu = Y_train.double().mean(0)
    G = A @ A.T + alpha * torch.eye(A.shape[0], dtype=A.dtype)
    pred = B @ (A.T @ torch.linalg.solve(G, Y_train.double() - y_mu)) + y_mu
    return float(((pred > 0.5).double() == Y_test.double()).double().mean())


@pytest.mark.parametrize("alpha", [0.1, 10.0, 1000.0])
def test_sklearn_ridge_equals_the_closed_form(alpha):
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        models, features = 12 + 7 * seed, [30, 300, 2000][seed % 3]  # fewer and more features than models
        classes = [torch.randperm(10, generator=g)[:5].tolist() for _ in range(models)]
        Y = multi_hot(classes)
        X = Y @ torch.randn(10, features, generator=g) + 2.0 * torch.randn(models, features, generator=g)
        train = np.random.default_rng(seed).random(models) < 0.7
        old = closed_form_accuracy(X[train], Y[train], X[~train], Y[~train], alpha)
        new = probe_accuracy(X[train], Y[train], X[~train], Y[~train], alpha)
        assert new == old, (seed, alpha, new, old)
        assert 0.0 <= new <= 1.0


def test_within_vs_mixed_weights_each_tree_by_its_test_models():
    g = torch.Generator().manual_seed(1)
    n, t = 30, 3
    Y = multi_hot([torch.randperm(10, generator=g)[:5].tolist() for _ in range(n * t)])
    X = torch.randn(n * t, 50, generator=g)
    trees = np.repeat(np.arange(t), n)
    test = np.tile(np.arange(n) >= 20, t)
    res = within_vs_mixed(X, Y, trees, ~test, test, repeats=2, alpha=10.0)
    expected = np.mean([closed_form_accuracy(X[(trees == k) & ~test], Y[(trees == k) & ~test],
                                             X[(trees == k) & test], Y[(trees == k) & test], 10.0) for k in range(t)])
    assert res["within"] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="no tree has both training and test models"):
        within_vs_mixed(X, Y, trees, np.ones(n * t, bool), np.zeros(n * t, bool))
