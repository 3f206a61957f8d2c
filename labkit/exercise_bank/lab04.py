"""Lab 04 exercises: DSiRe (registered into ``labkit.exercise_bank.EXERCISES``).

The ladder, in notebook order: the size of a LoRA update (``update_norm``), the metrics (``scores``), the three
spectra (``lora_spectra``), the vote (``majority_vote``) and the real build, DSiRe's predict (``predict``: one
1-nearest-neighbour voter per spectrum and the majority with the official tie rule).
"""

from __future__ import annotations

import torch

from labkit.exercise_bank.core import register
from labkit.methods import dsire


def update_norm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``||B A||_F`` for ``A: [..., r, d_in]``, ``B: [..., d_out, r]`` -> ``[...]`` (Frobenius-NN's feature, unscaled),
    as ``dsire.frobenius_features`` computes it: the 2-norm of the singular values of ``B A``."""
    return dsire.product_singular_values(A, B).norm(dim=-1)


def predict(train: dict[str, torch.Tensor], train_labels: torch.Tensor, test: dict[str, torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """DSiRe's majority-vote prediction: ``dsire.predict`` with ``vote="majority"`` -> ``(prediction, votes)``."""
    return dsire.predict(train, train_labels, test)


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


def _lab04_predict_cases():
    g = torch.Generator().manual_seed(404)
    medium = torch.tensor([1, 10, 20, 30, 40, 50])

    def voters(n, widths):
        return {f"v{i}": torch.randn(n, w, generator=g, dtype=torch.float64) for i, w in enumerate(widths)}

    train3, test3 = voters(6, (4, 4, 4)), voters(5, (4, 4, 4))
    mixed_train, mixed_test = voters(6, (4, 1, 4)), voters(3, (4, 1, 4))
    copy_of_2 = {k: v[[2, 2]] + 0 for k, v in train3.items()}
    tied = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # both training rows identical per voter
    # voters v0 and v3 see the test LoRA next to the size-20 LoRA, v1 and v2 next to the size-10 one: a 2-2 vote
    split_train = {f"v{i}": torch.tensor([[0.0], [1.0]], dtype=torch.float64) for i in range(4)}
    split_test = {f"v{i}": torch.tensor([[x]], dtype=torch.float64) for i, x in enumerate((0.9, 0.1, 0.2, 0.8))}
    sizes = medium.repeat(15)  # the paper's 90 training LoRAs: 15 sets x 6 sizes
    shift = torch.log(sizes.double())[:, None]
    zoo_train = {f"l{i}": torch.randn(90, 8, generator=g, dtype=torch.float64) * 0.5 + shift for i in range(24)}
    zoo_test = {f"l{i}": torch.randn(210, 8, generator=g, dtype=torch.float64) * 0.5
                + torch.log(medium.repeat(35).double())[:, None] for i in range(24)}
    return [
        ("3 voters of width 4, 6 training LoRAs of sizes 1..50, 5 test LoRAs", (train3, medium, test3)),
        ("voters of different widths (4, 1, 4)", (mixed_train, medium, mixed_test)),
        ("test LoRAs equal to training LoRA 2: every voter finds it", (train3, medium, copy_of_2)),
        ("an exact distance tie: the earlier training LoRA wins",
         ({"v0": tied}, torch.tensor([30, 10]), {"v0": torch.tensor([[0.0, 1.0]], dtype=torch.float64)})),
        ("a 2-2 vote goes to the size the first voter chose", (split_train, torch.tensor([10, 20]), split_test)),
        ("the zoo's scale: 24 voters of r=8, 90 training and 210 test LoRAs", (zoo_train, sizes, zoo_test)),
    ]


def _squared_spectra(A, B):
    return tuple(s**2 for s in dsire.lora_spectra(A, B))


def _smallest_on_ties(votes):
    return torch.mode(votes, dim=1).values


def _mape_over_prediction(y_true, y_pred):
    out = dsire.scores(y_true, y_pred)
    yt, yp = torch.as_tensor(y_true, dtype=torch.float64), torch.as_tensor(y_pred, dtype=torch.float64)
    return {**out, "mape": float(100 * ((yt - yp).abs() / yp.abs()).mean())}


def _norm_product(A, B):
    return B.norm(dim=(-2, -1)) * A.norm(dim=(-2, -1))


def _squared_norm(A, B):
    return update_norm(A, B) ** 2


def _votes_are_indices(train, train_labels, test):
    index = torch.arange(len(train_labels))
    votes = dsire.nearest_neighbour_votes(train, index, test)
    return dsire.majority_vote(votes), votes


def _one_concatenated_voter(train, train_labels, test):
    return dsire.predict(dsire.concat_features(train), train_labels, dsire.concat_features(test))


def _mode_of_votes(train, train_labels, test):
    votes = dsire.nearest_neighbour_votes(train, train_labels, test)
    return torch.mode(votes, dim=1).values, votes


register("04.update_norm", update_norm, _lab04_spectra_cases, title="The size of a LoRA update (Frobenius norm of BA)",
         difficulty=1, importance=3, minutes=5,
         hints=("The size of the update Delta W = B A is its Frobenius norm: the square root of the sum of its "
                "squared entries.",
                "A is [..., r, d_in] and B is [..., d_out, r], so B A is [..., d_out, d_in]; return one number per "
                "leading index, shape [...].",
                "Take the norm over the last two dimensions only (the leading ones are models or layers). The norm "
                "of a product is not the product of the norms."),
         mistakes=(("multiplied ||B||_F by ||A||_F; that is only an upper bound of ||BA||_F", _norm_product),
                   ("returned the squared norm (the sum of squares without its square root)", _squared_norm)),
         rtol=1e-4, atol=1e-6)
register("04.scores", dsire.scores, _lab04_score_cases, title="Accuracy, MAE and MAPE", difficulty=1,
         importance=2, minutes=5,
         hints=("Accuracy counts exact hits in percent; MAE averages the absolute errors; MAPE averages the absolute "
                "errors relative to the true size, in percent.",
                "Return a dict with the keys 'accuracy', 'mae' and 'mape', each a Python float."),
         mistakes=(("divided by the prediction in MAPE; divide by the true size", _mape_over_prediction),))
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
register("04.predict", predict, _lab04_predict_cases, title="DSiRe's predict: one 1-NN voter per spectrum, then the vote",
         difficulty=3, importance=5, minutes=20,
         hints=("Each voter is its own 1-nearest-neighbour classifier: for every test LoRA it finds the training LoRA "
                "whose spectrum (for that voter) is closest in squared L2 and votes for that LoRA's size. The "
                "prediction is the majority of the votes.",
                "Loop over the voter names. For one voter the distances are [N_test, N_train], the index of the "
                "closest training LoRA is [N_test] and its size is [N_test]. The V columns side by side give votes "
                "[N_test, V] in voter order; return (prediction [N_test], votes).",
                "A [N_test, 1, d] tensor minus a [1, N_train, d] one gives every difference at once (torch.cdist "
                "works too); work in float64. argmin keeps the first index on an exact tie, like the official "
                "index. Reuse your majority_vote for the last step."),
         mistakes=(("voted with the index of the nearest training LoRA; vote with its size (index train_labels with "
                    "it)", _votes_are_indices),
                   ("fitted one nearest neighbour on all voters concatenated (the 'NN - full model' ablation); DSiRe "
                    "fits one per voter and takes their majority", _one_concatenated_voter),
                   ("broke a tied vote towards the smaller size (torch.mode); the official rule keeps the size the "
                    "earliest voter chose", _mode_of_votes)))
