"""Small CNNs for 8×8 digits: the digit-trees CNN root and the CNN-zoo networks (ProbeGen's CIFAR10-GS analogue).

``make_cnn`` follows the layout of the Small CNN Zoo that ProbeGen reads (reference/probegen.md §2, "CNN"): a stack
of ``Conv2d(k=3, stride=2, padding=1)`` layers each followed by its activation, then global average pooling and a
linear classifier ``fc``. On 8×8 inputs three convolutions take the image to 4×4, 2×2 and 1×1.

Dropout is applied before ``fc`` with a per-model rate kept in the buffer ``drop_p`` (a 0-d tensor), so a zoo of
CNNs that differ only in their dropout rate can be trained in one ``torch.func.vmap`` call (labkit.training).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "DigitCNN", "make_cnn"]

ACTIVATIONS = {
    "relu": nn.functional.relu,
    "gelu": nn.functional.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": nn.functional.leaky_relu,
    "sine": lambda x: torch.sin(30.0 * x),
    "none": lambda x: x,
}


class DigitCNN(nn.Module):
    """``x: [B, 64]`` or ``[B, 1, 8, 8]`` in [0, 1] → logits ``[B, n_classes]``.

    Layers ``conv1 … conv{n}`` (``[width, c_in, 3, 3]``), optional square hidden layer ``fc_hidden``
    (``[hidden, width]``, present when ``hidden > 0``) and ``fc`` (``[n_classes, width or hidden]``).
    """

    def __init__(self, width: int = 16, n_conv: int = 3, activation: str = "relu", dropout: float = 0.0,
                 hidden: int = 0, n_classes: int = 10):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.activation = activation
        channels = [1] + [width] * n_conv
        for i in range(n_conv):
            self.add_module(f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1))
        self.n_conv = n_conv
        self.fc_hidden = nn.Linear(width, hidden) if hidden > 0 else None
        self.fc = nn.Linear(hidden or width, n_classes)
        self.register_buffer("drop_p", torch.tensor(float(dropout)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        h = x.reshape(-1, 1, 8, 8)
        for i in range(self.n_conv):
            h = act(getattr(self, f"conv{i + 1}")(h))
        h = h.mean(dim=(2, 3))  # AdaptiveAvgPool2d(1) + flatten
        if self.fc_hidden is not None:
            h = act(self.fc_hidden(h))
        if self.training:
            keep = 1.0 - self.drop_p
            h = h * (torch.rand_like(h) < keep).to(h.dtype) / keep
        return self.fc(h)


def make_cnn(width: int = 16, n_conv: int = 3, activation: str = "relu", dropout: float = 0.0, hidden: int = 0,
             n_classes: int = 10, init_scale: float = 1.0) -> DigitCNN:
    """A ``DigitCNN`` whose default (PyTorch) initial weights are multiplied by ``init_scale`` (biases too)."""
    model = DigitCNN(width, n_conv, activation, dropout, hidden, n_classes)
    if init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(init_scale)
    return model
