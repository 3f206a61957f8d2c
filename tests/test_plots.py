"""labkit.plots: the mosaic every image figure uses, and that each figure draws from plain tensors."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from labkit import plots


def test_tile_places_images_row_major_with_separators():
    images = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
    grid = plots.tile(images, ncol=2)
    assert grid.shape == (3 * 3 - 1 + 2, 2 * 4 - 1 + 2)
    for i in range(5):
        r, c = divmod(i, 2)
        assert torch.equal(grid[1 + 3 * r:1 + 3 * r + 2, 1 + 4 * c:1 + 4 * c + 3], images[i])
    assert grid[0].eq(0).all() and grid[:, 4].eq(0).all()  # border and separator
    assert grid[7:9, 5:8].eq(0).all()  # the empty sixth slot


def test_tile_without_border_and_with_nan_fill():
    grid = plots.tile(torch.ones(3, 2, 2), ncol=8, fill=float("nan"), border=0)
    assert grid.shape == (2, 3 * 3 - 1)
    assert grid[:, 2].isnan().all() and grid[:, :2].eq(1).all()


def test_image_figures_draw():
    imgs = torch.rand(6, 8, 8)
    for fig in (plots.sample_panels({"a": imgs, "b": imgs}),
                plots.retrieval_figure("a query", ["x", "y"], torch.tensor([0.9, 0.5]), torch.rand(2, 4, 8, 8)),
                plots.probe_figure({"vanilla": torch.randn(20, 1, 8, 8), "coords": torch.rand(30, 2) * 2 - 1})):
        assert fig.axes
        matplotlib.pyplot.close(fig)


def test_flow_diagram_draws_boxes_arrows_and_a_loop_and_refuses_bad_input():
    fig = plots.flow_diagram([("weights", "W [d_out, d_in]"), ("spectrum", "σ(W)", "learned"), ("vote", "1-NN")],
                             ["svd", "compare"], loop=(1, 2, "repeat"), title="t")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert {"weights", "spectrum", "vote", "svd", "compare", "repeat"} <= set(texts)
    styles = {p.get_linestyle() for p in fig.axes[0].patches if hasattr(p, "get_boxstyle")}
    assert len(styles) == 3  # data, learned and decision boxes differ by outline, not colour alone
    with pytest.raises(ValueError, match="need 2 arrow labels"):
        plots.flow_diagram([("a", ""), ("b", ""), ("c", "")], ["x"])
    with pytest.raises(ValueError, match="unknown kind"):
        plots.flow_diagram([("a", ""), ("b", "", "magic")])


def test_lora_update_figure_titles_each_panel_with_its_rank():
    torch.manual_seed(0)
    W, A, B = torch.randn(12, 16), torch.randn(2, 16), torch.randn(12, 2)
    fig = plots.lora_update_figure(W, A, B, alpha=4.0)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2].startswith("ΔW  [12, 16]\nrank 2,") and titles[3].startswith("W (frozen)  [12, 16]\nrank 12,")
    assert titles[0].startswith("B  [12, 2]\nrank 2") and "values within ±" in titles[5]
    with pytest.raises(ValueError, match="do not compose"):
        plots.lora_update_figure(W, B, A, alpha=4.0)
