"""Lab 03 exercises: ProbeGen (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
from labkit.methods import probegen


def _lab03_deep_linear_cases():
    g = torch.Generator().manual_seed(3)

    def layers(*dims):
        return ([torch.randn(dims[i + 1], dims[i], generator=g) for i in range(len(dims) - 1)],
                [torch.randn(b, generator=g) for b in dims[1:]])

    W, b = layers(32, 32, 2)
    return [
        ("the paper's INR generator: 128 latents, 32 → 32 → 2", (torch.randn(128, 32, generator=g), W, b)),
        ("one layer is a plain affine map", (torch.randn(5, 4, generator=g), *layers(4, 3))),
        ("four layers, widths change", (torch.randn(7, 3, generator=g), *layers(3, 8, 5, 6, 2))),
        ("no layers: the latents themselves (vanilla probing)", (torch.randn(6, 2, generator=g), [], [])),
        ("collapsed: the same as one affine map", (torch.randn(9, 32, generator=g),
                                                   *[[m] for m in probegen.collapse_linear(W, b)])),
    ]


def _lab03_features_cases():
    g = torch.Generator().manual_seed(4)

    def sirens(B, h=32):
        scale = 1.0 / h
        return (torch.randn(B, h, 2, generator=g) * 0.5, torch.randn(B, h, generator=g) * 0.1,
                torch.randn(B, h, h, generator=g) * scale, torch.randn(B, h, generator=g) * 0.1,
                torch.randn(B, 1, h, generator=g) * scale, torch.randn(B, 1, generator=g) * 0.1)

    return [
        ("4 SIRENs on 16 uniform probes", (*sirens(4), probegen.uniform_coordinates(16, g), 30.0)),
        ("one SIREN, one probe", (*sirens(1), torch.zeros(1, 2), 30.0)),
        ("8 narrow SIRENs (h = 5), w0 = 1", (*sirens(8, 5), probegen.uniform_coordinates(10, g), 1.0)),
        ("probes outside the image square", (*sirens(3), 3 * probegen.uniform_coordinates(6, g), 30.0)),
    ]


def _lab03_tau_cases():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(30, generator=g, dtype=torch.float64)
    return [
        ("the same order: τ = 1", (torch.tensor([0.1, 0.4, 0.3, 0.9]), torch.tensor([1.0, 4.0, 3.0, 9.0]))),
        ("reversed: τ = −1", (torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))),
        ("noisy predictions of 30 accuracies", (x + 0.2 * torch.rand(30, generator=g, dtype=torch.float64), x)),
        ("ties in both vectors (τ-b)", (torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]), torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0]))),
        ("two networks", (torch.tensor([0.2, 0.5]), torch.tensor([0.9, 0.1]))),
    ]


def _relu_between(Z, weights, biases):
    h = Z
    for i, (W, b) in enumerate(zip(weights, biases)):
        h = h @ W.T + b
        if i < len(weights) - 1:
            h = torch.relu(h)
    return h


def _without_w0(W0, b0, W1, b1, W2, b2, coords, w0=30.0):
    return probegen.siren_probe_responses(W0, b0, W1, b1, W2, b2, coords, w0=1.0)


def _tau_a(pred, true):
    i, j = torch.triu_indices(len(pred), len(pred), 1)
    return (torch.sign(pred[i] - pred[j]) * torch.sign(true[i] - true[j])).sum() / len(i)


register("03.deep_linear", probegen.deep_linear, _lab03_deep_linear_cases, title="The deep linear generator",
         difficulty=1, importance=4, minutes=5,
         hints=("ProbeGen's generator is a stack of linear layers with no activation in between.",
                "Z is [T, z_dim]; each layer maps h to h @ W.T + b; the output has the last layer's width.",
                "Loop over zip(weights, biases) and apply the layers in order."),
         mistakes=(("put a ReLU between the layers; ProbeGen's generator is deep but linear", _relu_between),),
         rtol=1e-4, atol=1e-5)
register("03.probe_features", probegen.siren_probe_responses, _lab03_features_cases,
         title="A batch of SIRENs on the probes", difficulty=2, importance=3, minutes=10,
         hints=("Run every SIREN of the batch on the probe coordinates: two sine layers, then a linear output layer.",
                "Weights are batched: W0 is [B, h, 2], b0 is [B, h], coords is [B, T, 2]; the result is [B, T] once "
                "the last size-1 dimension is removed.",
                "h @ W.transpose(1, 2) keeps the batch dimension; b[:, None] broadcasts a bias over the T probes; "
                "the sine takes the frequency w0 times the pre-activation, and the zoo's output adds 0.5."),
         mistakes=(("left out the frequency w0 inside the sines", _without_w0),), rtol=1e-4, atol=1e-5)
register("03.kendall_tau", probegen.kendall_tau, _lab03_tau_cases, title="Kendall's tau-b", difficulty=3,
         importance=3, minutes=10,
         hints=("Kendall's tau compares the order of every pair: +1 when prediction and truth order it the same way, "
                "-1 when they disagree, 0 for a tie.",
                "Use the pairs i < j (torch.triu_indices gives them). tau-b divides the sum by the square root of "
                "(pairs not tied in the prediction) times (pairs not tied in the truth)."),
         mistakes=(("divided by the number of pairs (tau-a); tau-b divides by the pairs that are not tied", _tau_a),))
