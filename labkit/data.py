"""Real data that ships offline: scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CLASS_NAMES", "Digits", "load_digits_split"]

# the name of each digit class, in label order: the label names of the digit zoos and of their Model-J exports
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class Digits:
    """A stratified train/test split. ``X_*: [N, 64]`` float32 in [0, 1]; ``y_*: [N]`` int64 labels 0–9."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def images_train(self) -> torch.Tensor:
        """``[N, 8, 8]`` view of the training images."""
        return self.X_train.view(-1, 8, 8)


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> Digits:
    """Load the digits and split them 75/25, stratified by class (``random_state=seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    t = torch.from_numpy
    return Digits(t(Xtr), t(ytr).long(), t(Xte), t(yte).long())
