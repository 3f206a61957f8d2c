"""Lab 04 (DSiRe): the explorer's plain function, its figures and the widget itself."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from labkit.methods import dsire
from labkit.plots import dsire_phenomenon_figure, dsire_votes_figure
from labkit.widgets import DSiReExplorer, dsire_view


def _zoo(n_sets=5, sizes=(1, 10, 20, 30, 40, 50), seed=0):
    """Synthetic LoRAs of 3 layers whose update shrinks like 1/sqrt(size) (the spec's fixture recipe)."""
    g = torch.Generator().manual_seed(seed)
    rows = [(s, n) for s in range(n_sets) for n in sizes]
    size = torch.tensor([n for _, n in rows], dtype=torch.float32)
    A = {f"l{i}": torch.randn(len(rows), 4, 12, generator=g) for i in range(3)}
    B = {f"l{i}": torch.randn(len(rows), 10, 4, generator=g) * (1 + i) / size.sqrt()[:, None, None] for i in range(3)}
    return A, B, [n for _, n in rows], [s for s, _ in rows]


def test_dsire_view_holds_the_models_own_set_out_and_reports_every_vote():
    A, B, sizes, sets = _zoo()
    f = dsire.dsire_features(A, B)
    v = dsire_view(f, sizes, sets, model=7, n_train_sets=2)
    assert sets[7] not in v["train_sets"] and len(v["train_sets"]) == 2
    assert v["truth"] == sizes[7] and list(v["votes"]) == list(f) and len(v["votes"]) == 9
    assert v["prediction"] == int(dsire.majority_vote(torch.tensor([list(v["votes"].values())]))[0])
    with pytest.raises(ValueError, match="out of range"):
        dsire_view(f, sizes, sets, model=999, n_train_sets=2)


def test_dsire_figures():
    A, B, sizes, sets = _zoo()
    norms = torch.cat(list(dsire.frobenius_features(A, B).values()), 1)
    fig = dsire_phenomenon_figure(norms, dsire.product_singular_values(A["l0"], B["l0"]), sizes, list(A), "l0")
    assert len(fig.axes) == 2 and "l0" in fig.axes[1].get_title()
    f = dsire.dsire_features(A, B)
    v = dsire_view(f, sizes, sets, model=0, n_train_sets=2)
    curve = {"n_train_sets": [1, 2, 3, 4], "accuracy_mean": [50, 60, 70, 75], "accuracy_std": [5, 4, 3, 2]}
    fig = dsire_votes_figure(v["votes"], v["truth"], v["prediction"], sorted(set(sizes)), curve, 2)
    assert len(fig.axes) == 3  # votes, colour bar, accuracy curve
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["σ(A)", "σ(B)", "σ(B·A)"]
    assert len(dsire_votes_figure(v["votes"], v["truth"], v["prediction"], sorted(set(sizes))).axes) == 2


def test_dsire_explorer_follows_its_controls():
    A, B, sizes, sets = _zoo()
    f = dsire.dsire_features(A, B)
    ks = [1, 2, 3, 4]
    runs = [dsire.cross_validate(f, sizes, sets, k, repeats=3) for k in ks]
    curve = {"n_train_sets": ks, "accuracy_mean": [r["accuracy_mean"] for r in runs],
             "accuracy_std": [r["accuracy_std"] for r in runs]}
    ex = DSiReExplorer(f, sizes, sets, [f"m{i}" for i in range(len(sizes))], curve, n_train_sets=2)
    assert ex.state["n_train_sets"] == 2 and ex.image.value[:4] == b"\x89PNG"
    assert ex.state["accuracy"] == pytest.approx(runs[1]["accuracy_mean"])
    ex.model.value = 11
    assert ex.state["model"] == 11 and ex.state["truth"] == sizes[11] and "m11" in ex.label.value
    ex.n_train.value = 4
    assert len(ex.state["train_sets"]) == 4 and sets[11] not in ex.state["train_sets"]
    with pytest.raises(ValueError):
        DSiReExplorer(f, sizes, sets, ["only one label"], curve)
