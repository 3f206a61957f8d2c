"""The papers' algorithms, one module per lab: each takes tensors and returns tensors or plain results.

``mother`` (lab 01, Model Trees), ``probex`` (02), ``probegen`` (03), ``dsire`` (04), ``spectral_detuning`` (05);
``checks`` holds the input checks they share. Import a module by name, e.g. ``from labkit.methods import mother``.
This package imports nothing from the rest of labkit (tests/test_package_layout.py), so the methods can be read,
tested and reused on their own.
"""
