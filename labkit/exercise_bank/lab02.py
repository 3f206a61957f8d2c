"""Lab 02 exercises: ProbeX (registered into ``labkit.exercise_bank.EXERCISES``).

The ladder, in notebook order: the metric (``binary_accuracy``), the probe responses (``probe_responses``), the real
build, ProbeX's whole classifier forward pass from its parameters (``probex_forward``: probes, shared projection,
ReLU, the fused per-probe encoders and the head, as ``px.ProbeXClassifier`` computes them), and the zero-shot head's
cosine logits (``cosine_logits``).
"""

from __future__ import annotations

import math

import torch

from labkit.exercise_bank.core import register
from labkit.methods import probex


def probex_forward(X: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits ``[B, d_Y]`` of ``px.ProbeXClassifier`` for layers ``X: [B, d_H, d_W]``, with the parameters
    ``params`` (its ``state_dict``: ``encoder.U.weight [r_U, d_W]``, ``encoder.V.weight [r_V, d_H]``,
    ``encoder.E.weight [r_T, r_U·r_V]``, ``encoder.E.bias [r_T]``, ``head.weight [d_Y, r_T]``, ``head.bias [d_Y]``).

    The library's module itself computes them: built on the meta device (no init, the global RNG untouched), the
    parameters assigned, then its forward.
    """
    r_U, d_W = params["encoder.U.weight"].shape
    r_V, d_H = params["encoder.V.weight"].shape
    r_T, d_Y = params["encoder.E.weight"].shape[0], params["head.weight"].shape[0]
    with torch.device("meta"):
        model = probex.ProbeXClassifier(d_H, d_W, d_Y, r_U, r_V, r_T)
    model.load_state_dict(params, assign=True)
    with torch.no_grad():
        return model(X)


def _probex_params(g: torch.Generator, d_H: int, d_W: int, d_Y: int, r_U: int, r_V: int, r_T: int,
                   dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random parameters of a ProbeXClassifier, scaled like PyTorch's Linear init (1/sqrt(fan_in))."""
    def linear(out, fan_in):
        return torch.randn(out, fan_in, generator=g, dtype=dtype) / math.sqrt(fan_in)

    return {"encoder.U.weight": linear(r_U, d_W), "encoder.V.weight": linear(r_V, d_H),
            "encoder.E.weight": linear(r_T, r_U * r_V), "encoder.E.bias": torch.randn(r_T, generator=g, dtype=dtype),
            "head.weight": linear(d_Y, r_T), "head.bias": torch.randn(d_Y, generator=g, dtype=dtype)}


def _lab02_forward_cases():
    g = torch.Generator().manual_seed(20)
    negative = _probex_params(g, 3, 4, 2, 2, 3, 5)
    negative["encoder.U.weight"] = negative["encoder.U.weight"].abs()
    negative["encoder.V.weight"] = -negative["encoder.V.weight"].abs()
    return [
        ("square layers 4x4, r_U = r_V = 4, r_T = 3, 2 labels",
         (torch.randn(3, 4, 4, generator=g), _probex_params(g, 4, 4, 2, 4, 4, 3))),
        ("5 wide layers 3x8, 6 probes, r_V = 2, r_T = 4, 10 labels",
         (torch.randn(5, 3, 8, generator=g), _probex_params(g, 3, 8, 10, 6, 2, 4))),
        ("one probe on a [10, 1] layer (a bias vector), 1 label",
         (torch.randn(2, 10, 1, generator=g), _probex_params(g, 10, 1, 1, 1, 3, 2))),
        ("every response cut to 0 by the ReLU: the logits are the head applied to b_E",
         (torch.rand(2, 3, 4, generator=g), negative)),
        ("float64", (torch.randn(2, 5, 3, generator=g, dtype=torch.float64),
                     _probex_params(g, 5, 3, 3, 2, 4, 3, dtype=torch.float64))),
        ("the notebook's sizes: 64x64 layers, r_U = r_V = 32, r_T = 64, 10 labels",
         (torch.randn(4, 64, 64, generator=g) / 8, _probex_params(g, 64, 64, 10, 32, 32, 64))),
    ]


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


# ------------------------------------------------------------------------------------------- typical mistakes


def _no_relu(X, U, V):
    return (X @ U).transpose(1, 2) @ V.T


def _relu_before_projection(X, U, V):
    return torch.relu(X @ U).transpose(1, 2) @ V.T


def _forward(X, params, *, U=None, flatten=None, relu=True, bias=True):
    """probex_forward with one step swapped out: the parametrised typical mistakes below."""
    U = params["encoder.U.weight"].T if U is None else U
    P = (X @ U).transpose(1, 2) @ params["encoder.V.weight"].T
    P = torch.relu(P) if relu else P
    flat = P.flatten(1) if flatten is None else flatten(P)
    e = flat @ params["encoder.E.weight"].T + (params["encoder.E.bias"] if bias else 0)
    return e @ params["head.weight"].T + params["head.bias"]


def _flatten_projection_major(X, params):
    return _forward(X, params, flatten=lambda P: P.transpose(1, 2).flatten(1))


def _u_not_transposed(X, params):
    return _forward(X, params, U=params["encoder.U.weight"])


def _forward_no_relu(X, params):
    return _forward(X, params, relu=False)


def _forward_no_encoder_bias(X, params):
    return _forward(X, params, bias=False)


def _dot_logits(e, t):
    return e @ t.T


def _normalise_models_only(e, t):
    return (e / e.norm(dim=-1, keepdim=True)) @ t.T


def _threshold_half(logits, Y):
    return ((logits > 0.5).float() == Y).float().mean().item()


# ------------------------------------------------------------------------------------ the ladder (notebook order)


register("02.binary_accuracy", probex.binary_accuracy, _lab02_metric_cases, title="Multi-label accuracy",
         difficulty=1, importance=2, minutes=5,
         hints=("A logit above 0 means the concept is predicted present (its sigmoid is above one half).",
                "logits and Y are [B, C] with Y in {0, 1}; compare every entry and average over all of them; return a "
                "Python float."),
         mistakes=(("thresholded the logits at 0.5; a logit is positive exactly when the probability is above 0.5",
                    _threshold_half),))
register("02.probe_responses", probex.probe_responses, _lab02_probe_cases, title="ProbeX's probe responses",
         difficulty=2, importance=4, minutes=10,
         hints=("ProbeX reads a layer's weights through learned probes: multiply by U, project the hidden dimension "
                "with V, then a non-linearity.",
                "X is [B, d_H, d_W] and U is [d_W, r_U], so X @ U is [B, d_H, r_U]; the result is [B, r_U, r_V], so "
                "d_H must meet V, which is [r_V, d_H].",
                "Swap the last two dimensions of X U so that d_H comes last, then project with V; the ReLU is the "
                "very last step."),
         mistakes=(("forgot the ReLU at the end; ProbeX's encoder is not linear", _no_relu),
                   ("applied the ReLU to X U before the projection; ProbeX projects with V first, then the ReLU",
                    _relu_before_projection)))
register("02.probex_forward", probex_forward, _lab02_forward_cases,
         title="ProbeX's forward pass, assembled from its parameters", difficulty=3, importance=5, minutes=20,
         hints=("Follow the boxed formula with the six tensors of params: the probe responses X U, the shared "
                "projection V and a ReLU, the fused per-probe encoder E with its bias, then the head with its bias. "
                "Every tensor is stored the way nn.Linear keeps its weight, [out, in].",
                "Shapes: the probes U are [d_W, r_U] (the stored weight is [r_U, d_W]); X U is [B, d_H, r_U]; after "
                "V and the ReLU the responses P are [B, r_U, r_V]; laid out as one row per model they are "
                "[B, r_U * r_V]; e is [B, r_T]; the logits are [B, d_Y].",
                "A Linear with weight [out, in] maps a row x to x times the transposed weight, plus the bias. E reads "
                "the responses probe-major: the r_V numbers of probe 1, then those of probe 2, and so on, which is "
                "the order you get by merging the last two dimensions of a [B, r_U, r_V] tensor as they are."),
         mistakes=(("flattened the responses projection-major ([B, r_V, r_U] merged); E reads them probe-major, all "
                    "r_V numbers of probe 1 first", _flatten_projection_major),
                   ("used the stored weight encoder.U.weight [r_U, d_W] as U; nn.Linear keeps [out, in], so the "
                    "probes are its transpose [d_W, r_U]", _u_not_transposed),
                   ("forgot the ReLU after the projection V; without it ProbeX collapses to a linear map",
                    _forward_no_relu),
                   ("left out the encoder's bias encoder.E.bias", _forward_no_encoder_bias)),
         rtol=1e-4, atol=1e-5)
register("02.cosine_logits", probex.cosine_logits, _lab02_cosine_cases, title="Cosine logits against text",
         difficulty=1, importance=3, minutes=5,
         hints=("The logit between a model embedding and a text embedding is their cosine similarity: no temperature, "
                "values between -1 and 1.",
                "e is [B, D] and t is [C, D]; the result is [B, C]. Make every row of both unit length first.",
                "Divide each row by its Euclidean norm (torch.nn.functional.normalize along the last dimension does "
                "this), then take all the dot products at once."),
         mistakes=(("used raw dot products; normalise both embeddings to unit length first", _dot_logits),
                   ("normalised only the model embeddings; the texts must be unit length too",
                    _normalise_models_only)))
