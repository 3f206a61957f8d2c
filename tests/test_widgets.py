import matplotlib.pyplot as plt
import pytest
import torch

from labkit.plots import image_grid, layer_figure
from labkit.spectra import energy_fraction, singular_values
from labkit.widgets import LayerExplorer, layer_summary


def test_energy_fraction_batched_equals_loop():
    W = torch.randn(4, 7, 5)
    batched = energy_fraction(W, 2)
    assert batched.shape == (4,)
    torch.testing.assert_close(batched, torch.stack([energy_fraction(w, 2) for w in W]))
    assert singular_values(W).shape == (4, 5)


def test_spectra_reject_bad_input():
    with pytest.raises(ValueError, match="expected a matrix"):
        singular_values(torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        singular_values(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="non-negative integer"):
        energy_fraction(torch.ones(2, 2), -1)


def test_layer_explorer_callbacks_update_state():
    g = torch.Generator().manual_seed(0)
    trained = {"fc1": torch.randn(16, 8, generator=g), "fc2": torch.randn(4, 16, generator=g)}
    init = {k: torch.randn(v.shape, generator=g) for k, v in trained.items()}
    ex = LayerExplorer(trained, init, k=2)
    assert ex.state["layer"] == "fc1" and ex.state["d_out"] == 16
    first_png = bytes(ex.image.value)
    assert first_png.startswith(b"\x89PNG")
    ex.slider.value = 1  # what dragging the slider does: the observer recomputes
    assert ex.state["layer"] == "fc2" and ex.state["d_in"] == 16
    ex.k_slider.value = 4
    assert ex.state["k"] == 4 and ex.state["energy_topk"] == pytest.approx(1.0)  # fc2 has rank 4
    assert "fc2: 4×16" in ex.label.value and bytes(ex.image.value) != first_png
    assert ex.state == {"layer": "fc2", "k": 4, **layer_summary(trained["fc2"], init["fc2"], 4)}


def test_layer_explorer_rejects_non_matrices():
    with pytest.raises(ValueError, match="not 2-D"):
        LayerExplorer({"conv": torch.ones(2, 3, 3, 3)})


def test_static_figures():
    fig = layer_figure(torch.randn(6, 5), torch.randn(6, 5), "fc1")
    assert len(fig.axes) == 3  # heat map, its colour bar, the spectrum
    plt.close(fig)
    fig = image_grid(torch.rand(10, 8, 8), nrow=4, labels=list(range(10)))
    assert sum(ax.has_data() for ax in fig.axes) == 10
    plt.close(fig)
