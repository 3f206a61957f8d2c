"""ipywidgets explorers. Each returns an object holding the widget (``.widget``) and the plain state its
callbacks compute (``.state``), so tests drive it by setting control values — no browser needed.
Notebooks ``display(explorer.widget)`` and also show the default view as a static figure for readers
without a kernel (DESIGN §6).
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import torch

from labkit.plots import layer_figure
from labkit.spectra import energy_fraction

__all__ = ["LayerExplorer", "figure_png", "layer_summary"]


def figure_png(fig, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes and close it. Widgets show figures through an ``Image`` widget rather than an
    ``Output`` widget: under papermill/nbclient, Output widgets that clear and redisplay occasionally leave the
    client waiting forever for a message (nbclient issue 312), and an Image is also lighter to update."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def layer_summary(W: torch.Tensor, W_init: torch.Tensor | None = None, k: int = 5) -> dict[str, float]:
    """Numbers the layer explorer shows: shape, top-k energy share now and at init, relative change."""
    out = {"d_out": W.shape[0], "d_in": W.shape[1], "energy_topk": float(energy_fraction(W.float(), k))}
    if W_init is not None:
        out["energy_topk_init"] = float(energy_fraction(W_init.float(), k))
        out["relative_change"] = float((W - W_init).norm() / W_init.norm())
    return out


class LayerExplorer:
    """A slider over a model's weight matrices: heat map + singular-value spectrum, trained vs init.

    ``layers``: name → ``W: [d_out, d_in]``; ``init`` (optional): the same names → weights at initialisation.
    """

    def __init__(self, layers: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None = None, k: int = 5):
        import ipywidgets as widgets

        if not layers:
            raise ValueError("LayerExplorer needs at least one weight matrix")
        bad = [n for n, W in layers.items() if W.ndim != 2]
        if bad:
            raise ValueError(f"LayerExplorer shows 2-D weight matrices; {bad} are not 2-D")
        self.names, self.layers, self.init, self.k = list(layers), layers, init or {}, k
        self.slider = widgets.IntSlider(value=0, min=0, max=len(self.names) - 1, description="layer",
                                        continuous_update=False)
        self.k_slider = widgets.IntSlider(value=k, min=1, max=min(min(W.shape) for W in layers.values()),
                                          description="top k", continuous_update=False)
        self.label = widgets.Label()
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([widgets.HBox([self.slider, self.k_slider]), self.label, self.image])
        self.state: dict = {}
        self.slider.observe(lambda _: self.update(), names="value")
        self.k_slider.observe(lambda _: self.update(), names="value")
        self.update()

    def update(self) -> dict:
        """Recompute for the current slider values; returns (and keeps) the new state."""
        name = self.names[self.slider.value]
        W, W0, k = self.layers[name], self.init.get(name), self.k_slider.value
        self.state = {"layer": name, "k": k, **layer_summary(W, W0, k)}
        text = f"{name}: {self.state['d_out']}×{self.state['d_in']}, top-{k} energy {self.state['energy_topk']:.2f}"
        if W0 is not None:
            text += f" (at init {self.state['energy_topk_init']:.2f}; ‖W−W₀‖/‖W₀‖ = {self.state['relative_change']:.2f})"
        self.label.value = text
        self.image.value = figure_png(layer_figure(W, W0, name, k))
        return self.state
