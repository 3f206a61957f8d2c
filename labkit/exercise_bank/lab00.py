"""Lab 00 exercises: spectra, the LoRA update and a training loop (registered into
``labkit.exercise_bank.EXERCISES``).

The ladder: ``00.energy`` (energy in the top-k singular values) → ``00.lora`` (the merged LoRA update
``(alpha/r)·B·A``, the scale four labs use) → ``00.rank`` (numerical rank with a relative tolerance: a LoRA update
has rank r, the fine-tuned layer is full rank) → ``00.fit`` (the real build: the training loop of
``labkit.training.fit_classifier``, reproduced exactly on its per-epoch losses).
"""

from __future__ import annotations

import torch
from torch import nn

from labkit.exercise_bank.core import register
from labkit.lora import lora_delta
from labkit.models import make_mlp
from labkit.spectra import energy_fraction, singular_values
from labkit.training import fit_classifier

# ----------------------------------------------------------------------------------------------- 00.energy


def _energy_cases():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 1, generator=g), torch.randn(1, 4, generator=g)
    return [
        ("random 8×5 matrix, k=2", (torch.randn(8, 5, generator=g), 2)),
        ("wide 5×8 matrix, k=3", (torch.randn(5, 8, generator=g), 3)),
        ("rank-1 matrix, k=1 (all energy in one direction)", (u @ v, 1)),
        ("k=0 keeps nothing", (torch.randn(4, 4, generator=g), 0)),
        ("k larger than the rank keeps everything", (torch.randn(3, 7, generator=g), 5)),
        ("float64 input", (torch.randn(6, 6, generator=g, dtype=torch.float64), 2)),
    ]


def _energy_of_singular_values(W, k):
    s = torch.linalg.svdvals(W)
    return s[:k].sum() / s.sum()


register("00.energy", energy_fraction, _energy_cases, title="Energy in the top-k singular values", difficulty=1,
         importance=3, minutes=3,
         hints=("The singular values of W, largest first, say how much of W lies along each direction; the "
                "energy of a set of directions is a sum of squares.",
                "Compute the singular values once (a vector of min(d_out, d_in) values); the answer is the ratio of "
                "two sums, a number between 0 and 1.",
                "torch.linalg.svdvals returns the singular values sorted largest first; slice the first k."),
         mistakes=(("summed the singular values themselves; energy sums their squares", _energy_of_singular_values),))

# ------------------------------------------------------------------------------------------------- 00.lora


def lora_update(A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    """The merged LoRA update ``ΔW = (alpha / r) · B A`` with ``r = A.shape[0]``: ``A: [r, d_in]``,
    ``B: [d_out, r]`` → ``[d_out, d_in]`` (``labkit.lora.lora_delta`` with peft's scale)."""
    return lora_delta(A, B, alpha / A.shape[-2])


def _lora_cases():
    g = torch.Generator().manual_seed(1)

    def factors(r, d_in, d_out, dtype=torch.float32):
        return torch.randn(r, d_in, generator=g, dtype=dtype), torch.randn(d_out, r, generator=g, dtype=dtype)

    return [
        ("r=2, a 3×5 layer (d_out=3, d_in=5), alpha=8", (*factors(2, 5, 3), 8.0)),
        ("square 4×4 layer, r=2, alpha=16", (*factors(2, 4, 4), 16.0)),
        ("r=1: one outer product, alpha=1", (*factors(1, 6, 3), 1.0)),
        ("alpha = r: the scale is 1", (*factors(4, 5, 7), 4.0)),
        ("r=8, alpha=16 (a common peft setting), float64", (*factors(8, 10, 12, torch.float64), 16.0)),
    ]


def _lora_no_scale(A, B, alpha):
    return B @ A


def _lora_transposed(A, B, alpha):
    return (alpha / A.shape[0]) * (A.T @ B.T)


def _lora_rank_from_B(A, B, alpha):
    return (alpha / B.shape[0]) * (B @ A)


def _lora_alpha_only(A, B, alpha):
    return alpha * (B @ A)


register("00.lora", lora_update, _lora_cases, title="The merged LoRA update (alpha/r) B A", difficulty=1,
         importance=5, minutes=3,
         hints=("A LoRA fine-tune adds a low-rank matrix to a frozen weight: the product of its two factors, times "
                "a scale set by alpha and the rank.",
                "A is [r, d_in] and B is [d_out, r]; the update must have the layer's shape [d_out, d_in], so only "
                "one order of the product fits. The rank r is the length of the axis the two factors share.",
                "Read r from A.shape[0]; the scale is alpha divided by r, and it multiplies the whole product."),
         mistakes=(("forgot the LoRA scale: peft merges (alpha / r) * B A, not B A", _lora_no_scale),
                   ("transposed the factors: you returned A^T B^T = (B A)^T of shape [d_in, d_out]; the update is "
                    "B @ A, [d_out, d_in]", _lora_transposed),
                   ("read r from B.shape[0], which is d_out; r is the shared axis, A.shape[0] (or B.shape[1])",
                    _lora_rank_from_B),
                   ("scaled by alpha alone; the scale is alpha / r", _lora_alpha_only)))

# ------------------------------------------------------------------------------------------------- 00.rank


def numerical_rank(W: torch.Tensor, rtol: float) -> int:
    """How many singular values of ``W: [m, n]`` exceed ``rtol`` times the largest one (0 for a zero matrix)."""
    s = singular_values(W)
    return int((s > rtol * s[..., :1]).sum())


def _rank_cases():
    g = torch.Generator().manual_seed(2)
    dW = torch.randn(6, 2, generator=g) @ torch.randn(2, 5, generator=g)  # rank 2, float32 rounding noise
    dW64 = torch.randn(6, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 5, generator=g, dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, 3, generator=g, dtype=torch.float64))
    graded = U @ torch.diag(torch.tensor([1.0, 0.1, 0.001], dtype=torch.float64)) @ V.T
    W0 = torch.randn(6, 5, generator=g)
    return [
        ("a rank-2 LoRA update of a 6×5 layer, float32, rtol=1e-4", (dW, 1e-4)),
        ("singular values 1, 0.1, 0.001, rtol=0.01 keeps two", (graded, 0.01)),
        ("the same rank-2 update times 1e-6: rank does not depend on scale", (1e-6 * dW64, 1e-4)),
        ("a random 5×8 matrix is full rank", (torch.randn(5, 8, generator=g), 1e-4)),
        ("a layer plus its rank-2 update is full rank", (W0 + dW, 1e-4)),
        ("the zero matrix has rank 0", (torch.zeros(3, 4), 1e-4)),
    ]


def _rank_absolute(W, rtol):
    return int((torch.linalg.svdvals(W) > rtol).sum())


def _rank_no_tolerance(W, rtol):
    return int((torch.linalg.svdvals(W) > 0).sum())


register("00.rank", numerical_rank, _rank_cases, title="Numerical rank: what a LoRA changes", difficulty=2,
         importance=4, minutes=4,
         hints=("In floating point almost no singular value is exactly zero; the numerical rank counts only the "
                "singular values that are large compared with the largest one.",
                "Compute the singular values (largest first), build a threshold from the first one and rtol, and "
                "count how many lie strictly above it. Return a Python int.",
                "A zero matrix has all singular values 0; with a strict comparison it gets rank 0 without a special "
                "case."),
         mistakes=(("counted every nonzero singular value: rounding noise (about 1e-7 in float32) makes a low-rank "
                    "matrix look full rank; count only those above rtol times the largest", _rank_no_tolerance),
                   ("used rtol as an absolute threshold; it is relative: compare with rtol times the largest "
                    "singular value", _rank_absolute)))

# -------------------------------------------------------------------------------------------------- 00.fit


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
                     seed: int) -> list[float]:
    """Adam on cross-entropy with shuffled mini-batches (``labkit.training.fit_classifier``); trains ``model`` in
    place and returns the mean training loss of each epoch."""
    return fit_classifier(model, X, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)


def _loop(model, X, y, epochs, lr, batch_size, seed, *, order_rule="each epoch", per_row=True, zero_grad=True):
    """The reference loop with one typical mistake switched on (for the diagnoses)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    once = torch.randperm(len(X), generator=gen) if order_rule == "once" else None
    out = []
    for _ in range(epochs):
        if order_rule == "each epoch":
            order = torch.randperm(len(X), generator=gen)
        else:
            order = once if order_rule == "once" else torch.arange(len(X))
        batch_losses, sizes = [], []
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            opt.step()
            batch_losses.append(loss.item())
            sizes.append(len(idx))
        if per_row:
            out.append(sum(b * n for b, n in zip(batch_losses, sizes)) / len(X))
        else:
            out.append(sum(batch_losses) / len(batch_losses))
    return out


def _loop_with_dataloader(model, X, y, epochs, lr, batch_size, seed):
    """A DataLoader over the same seeded generator: its sampler draws a seed from the generator first."""
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    out = []
    for _ in range(epochs):
        total = 0.0
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        out.append(total / len(X))
    return out


def _fit_cases():
    g = torch.Generator().manual_seed(3)

    def data(n):
        return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def model(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make_mlp(6, (8,), 3)

    return [
        ("22 rows in batches of 8 (the last batch has 6 rows), 3 epochs", (model(0), *data(22), 3, 0.01, 8, 0)),
        ("24 rows in batches of 8 (no partial batch), 2 epochs, seed 1", (model(1), *data(24), 2, 0.01, 8, 1)),
        ("one batch holds every row (batch_size > N), 3 epochs", (model(2), *data(10), 3, 0.05, 16, 2)),
        ("another seed: other batches, other losses", (model(0), *data(22), 3, 0.01, 8, 7)),
        ("0 epochs: no training, an empty list", (model(0), *data(5), 0, 0.01, 8, 0)),
    ]


register("00.fit", train_classifier, _fit_cases, title="Your own training loop (Adam on shuffled mini-batches)",
         difficulty=3, importance=4, minutes=10,
         hints=("One private random generator seeded once decides every epoch's order; each epoch visits every row "
                "once in a fresh random order, in consecutive slices of batch_size rows, with one Adam step per "
                "slice.",
                "Per epoch: order = a random permutation of range(N) drawn from your generator; for each slice "
                "compute the mean cross-entropy of the [B, n_classes] logits against the [B] labels, zero the "
                "gradients, backpropagate, step. The epoch's loss is the mean over rows, not over batches.",
                "torch.Generator().manual_seed(seed) and torch.randperm(N, generator=gen); the last slice may be "
                "shorter, so add loss.item() times its number of rows and divide the total by N."),
         mistakes=(("averaged the batch means: the last, shorter batch counts as much as a full one; weight each "
                    "batch's loss by its number of rows and divide by N",
                    lambda *a: _loop(*a, per_row=False)),
                   ("drew one permutation before the epoch loop and reused it; draw a fresh randperm from the "
                    "generator at the start of every epoch", lambda *a: _loop(*a, order_rule="once")),
                   ("did not shuffle: every epoch must visit the rows in a random order drawn from the seeded "
                    "generator", lambda *a: _loop(*a, order_rule="none")),
                   ("never zeroed the gradients: each backward() adds to the previous gradients; call "
                    "opt.zero_grad() before loss.backward()", lambda *a: _loop(*a, zero_grad=False)),
                   ("used a shuffling DataLoader: its sampler draws a seed from your generator first, so the batches "
                    "differ; draw torch.randperm(N, generator=gen) each epoch and slice it", _loop_with_dataloader)),
         rtol=1e-5, atol=1e-6)
