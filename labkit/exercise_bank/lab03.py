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


def _lab03_build_cases():
    g = torch.Generator().manual_seed(6)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def generator(*dims):  # weights [d_{i+1}, d_i] scaled as PyTorch's default init
        return ([randn(dims[i + 1], dims[i], scale=dims[i] ** -0.5) for i in range(len(dims) - 1)],
                [randn(d, scale=0.1) for d in dims[1:]])

    def sirens(B, *widths):  # stacked {"seq.i.weight": [B, d_out, d_in], "seq.i.bias": [B, d_out]}, 2 -> ... -> 1
        dims = (2, *widths, 1)
        out = {}
        for i in range(len(dims) - 1):
            out[f"seq.{i}.weight"] = randn(B, dims[i + 1], dims[i], scale=(0.5 if i == 0 else 2.0 / dims[i]))
            out[f"seq.{i}.bias"] = randn(B, dims[i + 1], scale=0.1)
        return out

    return [
        ("the paper's ProbeGen: 128 latents, 32 -> 32 -> 2, on 4 SIRENs", (randn(128, 32), *generator(32, 32, 2),
                                                                            sirens(4, 32, 32), 30.0)),
        ("no generator layers: vanilla probes", (randn(16, 2), [], [], sirens(3, 32, 32), 30.0)),
        ("one SIREN, one probe, a one-layer generator", (randn(1, 8), *generator(8, 2), sirens(1, 32, 32), 30.0)),
        ("a deeper SIREN (four layers, 16 wide)", (randn(10, 32), *generator(32, 32, 2), sirens(5, 16, 16, 16), 30.0)),
        ("w0 = 1 and a three-layer generator", (randn(12, 4), *generator(4, 6, 5, 2), sirens(2, 8, 8), 1.0)),
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


def probe_responses(Z, gen_weights, gen_biases, sirens, w0=30.0):
    """ProbeGen's forward up to the head for the INR task (exercise 03.probe_responses): the probes
    ``P = deep_linear(Z, ...)`` ``[T, 2]`` through every SIREN of a stacked batch ``{"seq.i.weight": [B, d_out, d_in],
    "seq.i.bias": [B, d_out]}`` (any number of layers; sine with frequency ``w0`` after all but the last, +0.5 on the
    output) -> responses ``[B, T]``. For the zoo's 3-layer SIRENs this is ``pg.siren_probe_responses`` on the probes."""
    h = probegen.deep_linear(Z, gen_weights, gen_biases)
    n_layers = len(sirens) // 2
    if n_layers == 3:
        stacked = [sirens[f"seq.{i}.{kind}"] for i in range(3) for kind in ("weight", "bias")]
        return probegen.siren_probe_responses(*stacked, h, w0=w0)
    for i in range(n_layers):
        h = h @ sirens[f"seq.{i}.weight"].transpose(1, 2) + sirens[f"seq.{i}.bias"][:, None]
        h = torch.sin(w0 * h) if i < n_layers - 1 else h
    return h.squeeze(-1) + 0.5


def _siren_stack(h, sirens, w0, sine_last=False, offset=0.5):
    n_layers = len(sirens) // 2
    for i in range(n_layers):
        h = h @ sirens[f"seq.{i}.weight"].transpose(1, 2) + sirens[f"seq.{i}.bias"][:, None]
        if i < n_layers - 1 or sine_last:
            h = torch.sin(w0 * h)
    return h.squeeze(-1) + offset


def _sine_on_output(Z, gen_weights, gen_biases, sirens, w0=30.0):
    return _siren_stack(probegen.deep_linear(Z, gen_weights, gen_biases), sirens, w0, sine_last=True)


def _no_offset(Z, gen_weights, gen_biases, sirens, w0=30.0):
    return _siren_stack(probegen.deep_linear(Z, gen_weights, gen_biases), sirens, w0, offset=0.0)


def _relu_generator(Z, gen_weights, gen_biases, sirens, w0=30.0):
    return _siren_stack(_relu_between(Z, gen_weights, gen_biases), sirens, w0)


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
register("03.probe_responses", probe_responses, _lab03_build_cases,
         title="ProbeGen's forward: generated probes through a batch of SIRENs", difficulty=3, importance=5,
         minutes=20,
         hints=("Two stages. First the generator turns the latents into the probes (your deep_linear does it). Then "
                "every SIREN of the batch answers on those same probes: each layer is a batched affine map, a sine "
                "with frequency w0 follows every layer but the last, and the zoo adds 0.5 to the output.",
                "Shapes: Z is [T, z_dim] and the probes are [T, 2]. Layer i of the batch is a weight [B, d_out, d_in] "
                "and a bias [B, d_out]; the hidden state becomes [B, T, d_out] after the first layer and ends as "
                "[B, T, 1], returned as [B, T]. The number of layers is half the number of entries of the dict.",
                "A [T, d_in] tensor times W.transpose(1, 2) broadcasts over the batch and gives [B, T, d_out]; "
                "index the bias with [:, None] so it broadcasts over the T probes; squeeze(-1) drops the last "
                "size-1 dimension."),
         mistakes=(("applied the sine to the output layer too; a SIREN's last layer is linear", _sine_on_output),
                   ("left out the +0.5 that the zoo's SIRENs add to their output", _no_offset),
                   ("put a ReLU between the generator's layers; ProbeGen's generator is deep but linear",
                    _relu_generator)),
         rtol=1e-6, atol=1e-8)
register("03.kendall_tau", probegen.kendall_tau, _lab03_tau_cases, title="Kendall's tau-b", difficulty=3,
         importance=3, minutes=10,
         hints=("Kendall's tau compares the order of every pair: +1 when prediction and truth order it the same way, "
                "-1 when they disagree, 0 for a tie.",
                "Use the pairs i < j (torch.triu_indices gives them). tau-b divides the sum by the square root of "
                "(pairs not tied in the prediction) times (pairs not tied in the truth)."),
         mistakes=(("divided by the number of pairs (tau-a); tau-b divides by the pairs that are not tied", _tau_a),))
