"""Lab 04 exercises: DSiRe (registered into ``labkit.exercise_bank.EXERCISES``)."""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
from labkit.methods import dsire


def _lab04_spectra_cases():
    g = torch.Generator().manual_seed(4)
    U = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(7, 3, generator=g, dtype=torch.float64)).Q
    known_A = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)[:, None] * V.T  # σ(A) = 3, 2, 1
    known_B = U * torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)  # σ(B) = 0.5, 0.2, 0.1
    return [
        ("one layer of 4 LoRAs, r=3, 6 → 9", (torch.randn(4, 3, 6, generator=g), torch.randn(4, 9, 3, generator=g))),
        ("known spectra: σ(BA) = 1.5, 0.4, 0.1", (known_A[None], known_B[None])),
        ("wide input, r=8 (the zoo's shapes, 64 → 256)",
         (torch.randn(2, 8, 64, generator=g) / 8, torch.randn(2, 256, 8, generator=g) * 0.01)),
        ("B = 0 (a LoRA before training): σ(B) = σ(BA) = 0",
         (torch.randn(3, 2, 5, generator=g, dtype=torch.float64), torch.zeros(3, 5, 2, dtype=torch.float64))),
        ("layers × models batch [2, 3, ...]", (torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64),
                                               torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64))),
    ]


def _lab04_vote_cases():
    g = torch.Generator().manual_seed(40)
    return [
        ("a clear majority", (torch.tensor([[10, 20, 20, 20, 10]]),)),
        ("a 2–2 tie goes to the label seen first", (torch.tensor([[1, 2, 2, 1], [2, 1, 1, 2]]),)),
        ("all voters differ: the first voter wins", (torch.tensor([[30, 1, 50]]),)),
        ("one voter", (torch.tensor([[6], [1]]),)),
        ("24 voters, 50 models, sizes 1..6", (torch.randint(1, 7, (50, 24), generator=g),)),
    ]


def _lab04_score_cases():
    return [
        ("all right", ([1, 10, 20], [1, 10, 20])),
        ("medium range, two mistakes", ([1, 10, 20, 50], [1, 20, 20, 40])),
        ("low range, off by one", ([1, 2, 3, 4, 5, 6], [2, 2, 3, 3, 5, 6])),
        ("tensors in", (torch.tensor([1, 30, 40]), torch.tensor([10, 30, 50]))),
    ]


def _squared_spectra(A, B):
    return tuple(s**2 for s in dsire.lora_spectra(A, B))


def _smallest_on_ties(votes):
    return torch.mode(votes, dim=1).values


def _mape_over_prediction(y_true, y_pred):
    out = dsire.scores(y_true, y_pred)
    yt, yp = torch.as_tensor(y_true, dtype=torch.float64), torch.as_tensor(y_pred, dtype=torch.float64)
    return {**out, "mape": float(100 * ((yt - yp).abs() / yp.abs()).mean())}


register("04.lora_spectra", dsire.lora_spectra, _lab04_spectra_cases, title="The three spectra of a LoRA",
         difficulty=2, importance=4, minutes=10,
         hints=("DSiRe's features are the singular values of A, of B and of the product B A.",
                "A is [..., r, d_in] and B is [..., d_out, r]; each spectrum holds r values, largest first; return the "
                "three as a tuple.",
                "torch.linalg.svdvals works on batches; the product has at most r non-zero singular values, keep "
                "the first r."),
         mistakes=(("returned squared singular values (eigenvalues of a Gram matrix); DSiRe uses the singular values",
                    _squared_spectra),), rtol=1e-4, atol=1e-6)
register("04.majority_vote", dsire.majority_vote, _lab04_vote_cases, title="Majority vote with the official tie rule",
         difficulty=2, importance=4, minutes=5,
         hints=("Each row holds every voter's guess for one LoRA; the prediction is the most common guess.",
                "votes is [n, V] and the result is [n]; on a tie the official code keeps the value it saw first in "
                "the row.",
                "collections.Counter keeps first-seen order among equal counts."),
         mistakes=(("broke ties towards the smallest value (what torch.mode does); the official rule keeps the "
                    "first-seen value", _smallest_on_ties),))
register("04.scores", dsire.scores, _lab04_score_cases, title="Accuracy, MAE and MAPE", difficulty=1,
         importance=2, minutes=5,
         hints=("Accuracy counts exact hits in percent; MAE averages the absolute errors; MAPE averages the absolute "
                "errors relative to the true size, in percent.",
                "Return a dict with the keys 'accuracy', 'mae' and 'mape', each a Python float."),
         mistakes=(("divided by the prediction in MAPE; divide by the true size", _mape_over_prediction),))
