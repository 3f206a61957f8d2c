"""Lab 03 (ProbeGen): the explorer's plain function, the probe figure and the widget itself."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from labkit.plots import probe_figure
from labkit.widgets import ProbeGenExplorer, probegen_view


def _runs():
    g = torch.Generator().manual_seed(0)
    return {(d, t): {"accuracy": 0.5 + 0.1 * d + t / 1000, "probes": torch.randn(t, 2, generator=g)}
            for d in (0, 1, 2) for t in (8, 16)} | {(4, 16): {"accuracy": 0.9, "probes": torch.randn(16, 2)}}


def test_probegen_view_picks_the_run_and_its_vanilla_twin():
    runs = _runs()
    v = probegen_view(runs, 2, 16)
    assert v["accuracy"] == pytest.approx(0.716) and v["vanilla_accuracy"] == pytest.approx(0.516)
    assert v["probes"] is runs[2, 16]["probes"]
    assert probegen_view({(2, 8): runs[2, 8]}, 2, 8)["vanilla_accuracy"] is None
    with pytest.raises(ValueError, match="no cached run with generator depth 4 and 8 probes"):
        probegen_view(runs, 4, 8)


def test_probe_figure_draws_coordinates_and_images():
    fig = probe_figure({"a": torch.rand(10, 2) * 2 - 1, "b": torch.rand(40, 1, 8, 8)}, title="t")
    assert fig.axes[0].get_title() == "a" and fig.axes[1].get_title().startswith("b\n")
    assert len(fig.axes[0].collections) == 1  # the scatter of the coordinates
    assert len(fig.axes[1].images) == 1  # one grid image


def test_probegen_explorer_follows_its_controls():
    ex = ProbeGenExplorer(_runs())
    assert ex.state["depth"] == 4 and ex.state["n_probes"] == 16 and ex.image.value[:4] == b"\x89PNG"
    ex.depth.value = 1
    assert ex.state["accuracy"] == pytest.approx(0.616) and "vanilla 51.6%" in ex.label.value
    ex.n_probes.value = 8
    assert ex.state["n_probes"] == 8 and ex.state["accuracy"] == pytest.approx(0.608)
    ex.depth.value = 4  # not run with 8 probes: says so instead of failing
    assert ex.state["accuracy"] is None and "was not run" in ex.label.value
    assert ProbeGenExplorer(_runs(), depth=0, n_probes=8).state["depth"] == 0
    with pytest.raises(ValueError, match="at least one"):
        ProbeGenExplorer({})
