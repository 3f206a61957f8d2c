"""Lab 05 (Spectral DeTuning): the DeTuning explorer's plain functions, its figures and the widget itself."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from labkit.plots import detuning_figure, sample_panels
from labkit.widgets import DetuningExplorer, detuning_view


def _run(n_iters=30):
    w = torch.linspace(-4.0, -17.0, n_iters, dtype=torch.float64)
    r = torch.tensor([1] * 10 + [2] * 10 + [8] * (n_iters - 20))
    g = torch.Generator().manual_seed(0)
    samples = {k: torch.rand(4, 8, 8, generator=g) for k in (0, 5, 15, n_iters)}
    return w, r, samples


def test_detuning_view_picks_the_kept_snapshot_at_or_before_the_iteration():
    w, r, samples = _run()
    v = detuning_view(w, r, samples, 12)
    assert v["iteration"] == 5 and v["rank"] == 1 and v["w_error"] == pytest.approx(float(w[4]))
    assert v["samples"] is samples[5]
    end = detuning_view(w, r, samples, 30)
    assert end["iteration"] == 30 and end["rank"] == 8 and end["w_error"] == pytest.approx(-17.0)
    start = detuning_view(w, r, samples, 0)
    assert start["iteration"] == 0 and start["w_error"] is None and start["rank"] == 1
    assert detuning_view(w, r, samples, 999)["iteration"] == 30  # clipped to the run
    with pytest.raises(ValueError, match="at least one"):
        detuning_view(w, r, {}, 3)


def test_detuning_figure_and_sample_panels():
    w, r, samples = _run()
    fig = detuning_figure(w, r, 15, samples[15], mean_lora_error=-4.5, title="t")
    assert len(fig.axes) == 3  # curve, its rank twin, samples
    assert "iteration 15" in fig.axes[0].get_title()
    fig = detuning_figure(w, r, 1)
    assert len(fig.axes) == 2
    fig = sample_panels({"a": samples[0], "b": samples[5], "c": samples[15]})
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]


def test_detuning_explorer_follows_its_slider():
    w, r, samples = _run()
    ex = DetuningExplorer(w, r, samples, mean_lora_error=-4.5)
    assert ex.state["iteration"] == 30 and ex.image.value[:4] == b"\x89PNG"
    ex.slider.value = 5
    assert ex.state["iteration"] == 5 and "rank 1" in ex.label.value
    ex.slider.value = 0
    assert "Mean-LoRA" in ex.label.value
    assert DetuningExplorer(w, r, samples, it=16).state["iteration"] == 15
    with pytest.raises(ValueError):
        DetuningExplorer(w, r, {})
