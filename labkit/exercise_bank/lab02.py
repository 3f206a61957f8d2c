"""Lab 02 exercises: ProbeX (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
from labkit.methods import probex


def _lab02_probe_cases():
    g = torch.Generator().manual_seed(2)
    return [
        ("4 layers 6×5, 3 probes, projection to 2", (torch.randn(4, 6, 5, generator=g), torch.randn(5, 3, generator=g),
                                                   torch.randn(2, 6, generator=g))),
        ("one wide layer 3×8, 4 probes, projection to 5", (torch.randn(1, 3, 8, generator=g),
                                                         torch.randn(8, 4, generator=g), torch.randn(5, 3, generator=g))),
        ("all-negative responses are cut to 0 by the ReLU", (torch.ones(2, 3, 3), torch.ones(3, 2), -torch.ones(4, 3))),
        ("float64", (torch.randn(2, 4, 4, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g,
                                                                                         dtype=torch.float64),
                     torch.randn(3, 4, generator=g, dtype=torch.float64))),
    ]


def _lab02_cosine_cases():
    g = torch.Generator().manual_seed(3)
    e = torch.randn(5, 4, generator=g)
    return [
        ("5 models, 3 texts, dim 4", (e, torch.randn(3, 4, generator=g))),
        ("scale does not matter: 10·e gives the same logits", (10 * e, torch.randn(2, 4, generator=g))),
        ("a text equal to a model's embedding scores 1", (e[:2], e[1:2].clone())),
        ("opposite vectors score −1", (torch.tensor([[1.0, 2.0]]), torch.tensor([[-2.0, -4.0]]))),
    ]


def _lab02_metric_cases():
    return [
        ("all right", (torch.tensor([[3.0, -2.0], [-1.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))),
        ("all wrong", (torch.tensor([[3.0, -2.0]]), torch.tensor([[0.0, 1.0]]))),
        ("3 of 4 decisions right (threshold at logit 0, i.e. sigmoid 0.5)",
         (torch.tensor([[0.5, -0.5], [2.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))),
        ("logit exactly 0 means sigmoid 0.5, which is not > 0.5: predicted off",
         (torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]))),
        ("a 3×4 case", (torch.tensor([[1.0, -1, 1, -1], [1, 1, 1, 1], [-1, -1, -1, -1]]),
                        torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]))),
    ]


def _no_relu(X, U, V):
    return (X @ U).transpose(1, 2) @ V.T


def _dot_logits(e, t):
    return e @ t.T


def _threshold_half(logits, Y):
    return ((logits > 0.5).float() == Y).float().mean().item()


register("02.probe_responses", probex.probe_responses, _lab02_probe_cases, title="ProbeX's probe responses",
         difficulty=2, importance=4, minutes=10,
         hints=("ProbeX reads a layer's weights through learned probes: multiply by U, project the hidden dimension "
                "with V, then a non-linearity.",
                "X is [B, d_H, d_W] and U is [d_W, r_U], so X @ U is [B, d_H, r_U]; the result is [B, r_U, r_V], so "
                "d_H must meet V, which is [r_V, d_H].",
                "Swap the last two dimensions before projecting with V (tensor.transpose(1, 2)); the ReLU comes last."),
         mistakes=(("forgot the ReLU at the end; ProbeX's encoder is not linear", _no_relu),))
register("02.cosine_logits", probex.cosine_logits, _lab02_cosine_cases, title="Cosine logits against text",
         difficulty=1, importance=3, minutes=5,
         hints=("The logit between a model embedding and a text embedding is their cosine similarity: no temperature, "
                "values between -1 and 1.",
                "e is [B, D] and t is [C, D]; the result is [B, C]. Make every row unit length first.",
                "import torch.nn.functional as F; F.normalize(x, dim=-1) makes each row unit length."),
         mistakes=(("used raw dot products; normalise both embeddings to unit length first", _dot_logits),))
register("02.binary_accuracy", probex.binary_accuracy, _lab02_metric_cases, title="Multi-label accuracy",
         difficulty=1, importance=2, minutes=5,
         hints=("A logit above 0 means the concept is predicted present (its sigmoid is above one half).",
                "logits and Y are [B, C] with Y in {0, 1}; compare every entry and average over all of them; return a "
                "Python float."),
         mistakes=(("thresholded the logits at 0.5; a logit is positive exactly when the probability is above 0.5",
                    _threshold_half),))
