"""Small architectures used by the mini-jungle and the labs."""

from labkit.models.cnn import DigitCNN, make_cnn
from labkit.models.mlp import make_mlp
from labkit.models.siren import Siren, make_siren, pixel_coordinates

__all__ = ["DigitCNN", "Siren", "make_cnn", "make_mlp", "make_siren", "pixel_coordinates"]
