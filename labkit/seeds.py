"""Seeds derived from names: the same text gives the same seed on every machine and in every process.

Python's ``hash`` of a string changes from process to process (``PYTHONHASHSEED``); a zoo names each model's
randomness by a text such as ``"digit-trees:0:mlp_a-c007"`` and seeds it with ``stable_seed(text)``, so a model's
draws depend on its id only, never on which models were built before it.
"""

from __future__ import annotations

import hashlib

__all__ = ["stable_seed"]


def stable_seed(text: str, bits: int = 64) -> int:
    """The top ``bits`` bits of ``sha256(text)`` (UTF-8) as a non-negative int below ``2**bits``.

    ``bits=64`` is ``int(sha256(text).hexdigest()[:16], 16)``; ``bits=48`` is ``hexdigest()[:12]``.
    """
    if not 1 <= bits <= 256:
        raise ValueError(f"bits must be between 1 and 256 (a sha256 has 256), got {bits}")
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big") >> (256 - bits)
