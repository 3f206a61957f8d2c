"""stable_seed: the top bits of a sha256, the one seed-from-text function every zoo recipe uses."""

import hashlib

import pytest

from labkit.seeds import stable_seed


@pytest.mark.parametrize("text", ["digit-trees:0:mlp_a-c007", "inr:0:inr-train-0001", "0/size-low-d0-p0-n1", "", "é°"])
def test_stable_seed_is_the_top_bits_of_sha256(text):
    hexdigest = hashlib.sha256(text.encode()).hexdigest()
    assert stable_seed(text) == int(hexdigest[:16], 16)  # what digit-trees and cnn-zoo used
    assert stable_seed(text, bits=48) == int(hexdigest[:12], 16)  # inr
    assert stable_seed(text, bits=32) % 2**31 == int(hexdigest[:8], 16) % 2**31  # digit-diffusion
    assert 0 <= stable_seed(text, bits=31) < 2**31 and stable_seed(text, bits=256) == int(hexdigest, 16)


def test_stable_seed_bits_are_checked():
    with pytest.raises(ValueError, match="between 1 and 256"):
        stable_seed("x", bits=0)
