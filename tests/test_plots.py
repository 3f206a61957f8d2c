"""labkit.plots: the mosaic every image figure uses, and that each figure draws from plain tensors."""

import matplotlib

matplotlib.use("Agg")

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
