"""Small architectures used by the mini-jungle and the labs."""

from labkit.models.mlp import make_mlp

__all__ = ["make_mlp"]
