"""Lab 01 (Model Trees): the data helpers, `labkit trees recover` on tiny zoos, the figures and the TreeExplorer."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labkit.cli import main
from labkit.forests import Forest, forest_scores, recover_view, regime_forest, sibling_shortcuts, tree_cases
from labkit.kurtosis_runs import kurtosis_trajectory
from labkit.methods import mother
from labkit.plots import forest_figure, tree_comparison_figure, tree_layout
from labkit.replicate.trees import load_folder
from labkit.tensor_files import save_safetensors
from labkit.tree_probe import multi_hot, within_vs_mixed
from labkit.widgets import TreeExplorer
from labkit.zoo.store import ZooStore

# --------------------------------------------------------------------------------------------- tiny trees

TRUE = {"root": None, "c1": "root", "c2": "root", "g1": "c1"}  # a depth-2 tree


def _spike(d: int, i: int, j: int, size: float) -> torch.Tensor:
    """A rank-1 update that adds one outlier: raises the kurtosis (the digit-trees zoo's direction)."""
    out = torch.zeros(d, d, dtype=torch.float64)
    out[i, j] = size
    return out


def tiny_tree(seed: int = 0, d: int = 8) -> dict[str, dict[str, torch.Tensor]]:
    """Four models of one architecture; every edge a rank-1 change that makes the child more kurtotic."""
    g = torch.Generator().manual_seed(seed)
    root = {"a.weight": torch.randn(d, d, generator=g, dtype=torch.float64),
            "b.weight": torch.randn(d, d, generator=g, dtype=torch.float64),
            "b.bias": torch.randn(d, generator=g, dtype=torch.float64)}
    c1 = {**root, "a.weight": root["a.weight"] + _spike(d, 0, 1, 6.0)}
    c2 = {**root, "b.weight": root["b.weight"] + _spike(d, 2, 3, 7.0)}
    g1 = {**c1, "b.weight": c1["b.weight"] + _spike(d, 4, 5, 8.0)}
    return {"root": root, "c1": c1, "c2": c2, "g1": g1}


def recover(path, *args, capsys) -> tuple[int, dict | None, str]:
    code = main(["trees", "recover", str(path), *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def edges_of(result) -> set[tuple[str, str]]:
    return {(e["parent"], e["child"]) for e in result["edges"]}


def truth(names=TRUE) -> set[tuple[str, str]]:
    return {(p, c) for c, p in names.items() if p}


# ----------------------------------------------------------------------------------------------- the CLI


def test_recover_plain_folder_of_safetensors(tmp_path, capsys):
    for name, state in tiny_tree().items():
        save_safetensors(tmp_path / f"{name}.safetensors", {k: v.float() for k, v in state.items()})
    code, res, err = recover(tmp_path, "--regime", "lora", "--reverse", capsys=capsys)
    assert code == 0, err
    assert edges_of(res) == truth() and res["roots"] == ["root"] and res["models"] == 4
    # the default orientation (children less kurtotic) turns this tree upside down
    code, res, _ = recover(tmp_path, "--regime", "lora", capsys=capsys)
    assert code == 0 and res["roots"] != ["root"] and edges_of(res) != truth()


def test_recover_peft_adapters_merged_onto_their_base(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    base = {"fc.weight": torch.randn(6, 6, generator=g), "fc.bias": torch.zeros(6)}
    save_safetensors(tmp_path / "base.safetensors", base)
    for name, r in (("ad1", 1), ("ad2", 2)):
        folder = tmp_path / name
        folder.mkdir()
        save_safetensors(folder / "adapter_model.safetensors",
                         {"base_model.model.fc.lora_A.weight": torch.randn(r, 6, generator=g),
                          "base_model.model.fc.lora_B.weight": torch.randn(6, r, generator=g)})
        (folder / "adapter_config.json").write_text(json.dumps(
            {"r": r, "lora_alpha": 2 * r, "base_model_name_or_path": "someone/base", "peft_type": "LORA"}))
    ids, states = load_folder(tmp_path)
    assert ids == ["base", "ad1", "ad2"]
    assert torch.linalg.matrix_rank(states[2]["fc.weight"] - states[0]["fc.weight"]) == 2
    D = mother.rank_distance(mother.stack_layers(states))
    assert D.tolist() == [[0, 1, 2], [1, 0, 3], [2, 3, 0]]
    code, res, err = recover(tmp_path, "--regime", "lora", "--lambda", "0", capsys=capsys)
    assert code == 0, err
    undirected = {frozenset(e) for e in edges_of(res)}
    assert undirected == {frozenset(("base", "ad1")), frozenset(("base", "ad2"))}


def test_recover_zoo_folder_with_two_architectures(tmp_path, capsys):
    store = ZooStore.open("tiny", "smoke", {"n": 1}, home=tmp_path)
    for t, seed in (("A", 0), ("B", 1)):
        for name, state in tiny_tree(seed).items():
            parent = f"{t}-{TRUE[name]}" if TRUE[name] else None
            store.save_model(f"{t}-{name}", state, {"tree": t, "parent": parent, "training": "full"})
    other = {"conv.weight": torch.randn(3, 3, 2, 2), "fc.weight": torch.randn(5, 5)}
    store.save_model("small", other, {"tree": "S", "parent": None})
    store.save_model("small-c", {**other, "fc.weight": other["fc.weight"] + _spike(5, 0, 0, 9.0).float()}, {"tree": "S", "parent": "small"})
    code, res, _ = recover(store.root, capsys=capsys)  # default: one tree per architecture
    assert code == 0 and len(res["groups"]) == 2 and [g["trees"] for g in res["groups"]] == [1, 1]
    code, _, err = recover(store.root, "--trees", "3", capsys=capsys)  # several architectures: one value each
    assert code == 2 and "--trees" in err and len(err.strip().splitlines()) == 1
    code, res, err = recover(store.root, "--regime", "lora", "--reverse", "--trees", "2", "1", capsys=capsys)
    assert code == 0, err
    expected = {(f"{t}-{p}", f"{t}-{c}") for t in "AB" for p, c in truth()} | {("small", "small-c")}
    assert edges_of(res) == expected
    assert sorted(res["roots"]) == ["A-root", "B-root", "small"]
    assert len({res["trees"][f"A-{n}"] for n in TRUE}) == 1 and res["trees"]["A-root"] != res["trees"]["B-root"]


@pytest.mark.parametrize("case", ["single", "shapes", "missing", "empty", "orphan_adapter"])
def test_recover_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    target = tmp_path / "models"
    target.mkdir()
    if case == "single":
        save_safetensors(target / "only.safetensors", {"w": torch.ones(4, 4)})
        expect = "single model"
    elif case == "shapes":
        save_safetensors(target / "a.safetensors", {"w": torch.ones(4, 4)})
        save_safetensors(target / "b.safetensors", {"w": torch.ones(5, 5)})
        expect = "different shapes"
    elif case == "missing":
        target = tmp_path / "nope"
        expect = "no such folder"
    elif case == "empty":
        expect = "holds no models"
    else:
        save_safetensors(target / "a.safetensors", {"w": torch.ones(4, 4)})
        (target / "ad").mkdir()
        save_safetensors(target / "ad" / "adapter_model.safetensors",
                         {"base_model.model.w.lora_A.weight": torch.ones(1, 4),
                          "base_model.model.w.lora_B.weight": torch.ones(4, 1)})
        (target / "ad" / "adapter_config.json").write_text(json.dumps({"r": 1, "lora_alpha": 1,
                                                                       "base_model_name_or_path": "elsewhere"}))
        expect = "not in"
    code, _, err = recover(target, capsys=capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and expect in err


# ------------------------------------------------------------------------------------- forests and helpers


def tiny_forest() -> Forest:
    models = tiny_tree(0) | {f"x{k}": v for k, v in tiny_tree(1).items()}
    ids = list(models)
    parents = {"c1": "root", "c2": "root", "g1": "c1", "xc1": "xroot", "xc2": "xroot", "xg1": "xc1"}
    layers = mother.stack_layers([models[i] for i in ids])
    return Forest(ids, layers, np.array([ids.index(parents[i]) if i in parents else -1 for i in ids]),
                        np.array([0] * 4 + [1] * 4), ["t0", "t1"], ["pretrain", "full", "full", "full"] * 2)


def test_forest_scores_recovers_tiny_forest_and_shuffling_keeps_answers():
    forest = tiny_forest()
    shuffled = forest.shuffled(1)
    assert sorted(shuffled.ids) == sorted(forest.ids)
    named = {(shuffled.ids[p], shuffled.ids[c]) for p, c in shuffled.true_edges}
    assert named == {(forest.ids[p], forest.ids[c]) for p, c in forest.true_edges}
    ev = forest_scores({"toy": forest}, "lora", (0.0, 0.3), reverse=True)
    assert ev["edge_accuracy"] == 1.0 and ev["cluster_accuracy"] == 1.0 and ev["edges"] == 6
    assert forest_scores({"toy": forest}, "lora", reverse=False)["edge_accuracy"] < 1.0


def test_regime_forest_keeps_one_kind_of_edge():
    forest = tiny_forest()
    forest.kinds = ["pretrain", "lora", "full", "lora"] * 2  # g1 is a LoRA grandchild of a LoRA child
    lora = regime_forest(forest, "lora")
    assert lora.ids == ["root", "c1", "xroot", "xc1"] and lora.true_edges == [(0, 1), (2, 3)]
    ft = regime_forest(forest, "ft")
    assert ft.ids == ["root", "c2", "xroot", "xc2"]
    with pytest.raises(ValueError, match="regime"):
        regime_forest(forest, "dora")


def test_recover_view_and_tree_cases():
    cases = tree_cases(tiny_forest(), "lora")
    assert list(cases) == ["t0", "t1"] and cases["t0"].D.shape == (4, 4)
    good = recover_view(cases["t0"], 0.3, reverse=True)
    assert good["edge_accuracy"] == 1.0 and good["wrong"] == [] and good["missed"] == []
    bad = recover_view(cases["t0"], 0.3, reverse=False)
    assert bad["edge_accuracy"] < 1.0 and bad["wrong"]


def test_sibling_shortcuts_names_a_fan_read_as_a_snake():
    forest = tiny_forest()
    pred = forest.parents.copy()
    pred[2] = 1  # c2 hung under its sibling c1 (c1 moved less than c2 from the root)
    s = sibling_shortcuts(forest, pred)
    assert s["wrong"] == 1 and s["sibling_shortcuts"] == 1 and s["share"] == 1.0
    assert abs(s["sibling_cosine"]) < 1e-9  # the spikes sit in different layers: orthogonal updates


def test_probe_within_tree_beats_mixed_and_cross():
    g = torch.Generator().manual_seed(0)
    n, t = 60, 3
    classes = [torch.randperm(10, generator=g)[:5].tolist() for _ in range(n * t)]
    Y = multi_hot(classes)
    tree_ids = np.repeat(np.arange(t), n)
    proj = [torch.randn(10, 40, generator=g) for _ in range(t)]  # each tree codes the classes its own way
    X = torch.cat([Y[k * n:(k + 1) * n] @ proj[k] for k in range(t)]) + 0.1 * torch.randn(n * t, 40, generator=g)
    test = np.tile(np.arange(n) >= 45, t)
    res = within_vs_mixed(X, Y, tree_ids, ~test, test, repeats=3)
    assert res["within"] > 0.95 and res["within"] > res["mixed"] + 0.05 and res["cross"] < 0.7
    assert Y.shape == (n * t, 10) and Y.sum(1).eq(5).all()


def test_kurtosis_trajectory_shape_and_start():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    X, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
    K = kurtosis_trajectory(model, X, y, [torch.arange(40), torch.arange(20)], [1e-2, 1e-3], epochs=2)
    assert K.shape == (2, 3) and torch.isfinite(K).all()
    assert K[0, 0] == K[1, 0] == mother.kurtosis({"w": model[0].weight.detach()[None].expand(2, 8, 8)})[0]


# --------------------------------------------------------------------------------------- figures and widget


def test_tree_layout_places_parents_over_children():
    parents = [-1, 0, 0, 1, -1, 4]
    pos = tree_layout(parents)
    assert pos[0][1] == 0 and pos[1][1] == -1 and pos[3][1] == -2
    assert pos[0][0] == (pos[1][0] + pos[2][0]) / 2
    assert pos[4][0] > max(pos[i][0] for i in range(4))  # the second tree sits to the right


def test_tree_figures():
    fig = forest_figure([-1, 0, 0, 1], [0, 0, 0, 0], ["pretrain", "full", "lora", "full"], ["t"])
    assert fig.legends and len(fig.axes) == 1
    plt.close(fig)
    many = forest_figure([-1] + [0] * 50 + [-1] + [51] * 50, [0] * 51 + [1] * 51, ["pretrain"] + ["full"] * 50 + ["pretrain"] + ["lora"] * 50)
    assert len(fig.axes) == 1 and sum(ax.has_data() for ax in many.axes) == 2
    plt.close(many)
    plt.close(fig)
    fig = tree_comparison_figure([-1, 0, 0, 1], [-1, 0, 1, 1])
    red = [c for c in fig.axes[1].collections + fig.axes[1].patches
           if hasattr(c, "get_edgecolor") and np.allclose(np.ravel(c.get_edgecolor())[:3],
                                                           plt.matplotlib.colors.to_rgb("tab:red"))]
    assert red and "67% (2/3)" in fig._suptitle.get_text()
    plt.close(fig)
    with pytest.raises(ValueError, match="same length"):
        tree_comparison_figure([-1, 0], [-1, 0, 0])


def test_tree_explorer_callbacks_update_state():
    cases = tree_cases(tiny_forest(), "lora")
    ex = TreeExplorer(cases, lambdas=(0.0, 0.3, 1.0), lam=0.3, reverse=True)
    assert ex.state["tree"] == "t0" and ex.state["edge_accuracy"] == 1.0
    first = bytes(ex.image.value)
    assert first.startswith(b"\x89PNG")
    ex.tree.value = "t1"
    assert ex.state["tree"] == "t1" and "t1" in ex.label.value
    ex.lam.value = 0.0
    assert ex.state["lam"] == 0.0
    assert ex.state == {"tree": "t1", **recover_view(cases["t1"], 0.0, True)} | {"parents": ex.state["parents"]}
    with pytest.raises(ValueError, match="at least one tree"):
        TreeExplorer({})


def test_recover_refuses_identical_and_non_finite_models(tmp_path, capsys):
    same = tiny_tree()["root"]
    for name in ("a", "b", "c"):
        save_safetensors(tmp_path / f"{name}.safetensors", {k: v.float() for k, v in same.items()})
    code, _, err = recover(tmp_path, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the 3 models like 'a'" in err and "identical in every weight MoTHer compares" in err
    assert "no edge can be recovered" in err
    broken = {k: v.float() for k, v in tiny_tree()["c1"].items()}
    broken["b.weight"][1, 2] = float("nan")
    save_safetensors(tmp_path / "c.safetensors", broken)
    code, _, err = recover(tmp_path, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model 'c' in " in err and "weight 'b.weight' holds NaN or inf" in err


def test_recover_checks_a_zoo_against_its_manifest(tmp_path, capsys):
    store = ZooStore.open("tiny", "smoke", {"n": 2}, home=tmp_path)
    for name, state in tiny_tree().items():
        store.save_model(name, state, {"tree": "A", "parent": TRUE[name], "training": "full"})
    code, _, err = recover(store.root, "--regime", "lora", "--reverse", capsys=capsys)
    assert code == 0, err
    # same shapes, same size, other numbers: readable, so only the manifest's sha256 can tell
    file = store.path("c2") / "model.safetensors"
    save_safetensors(file, {k: v + 1.0 for k, v in tiny_tree()["c2"].items()})
    code, _, err = recover(store.root, "--regime", "lora", "--reverse", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("labkit trees: ") and "c2" in err and "sha256" in err, err


@pytest.mark.parametrize("config, message", [
    ("{not json", "adapter_config.json: not valid JSON"),
    ('["r", 1]', "must be a JSON object"),
    ('{"lora_alpha": 1, "base_model_name_or_path": "a"}', "'r' (the LoRA rank) must be a positive integer"),
])
def test_recover_names_a_broken_adapter_config(config, message, tmp_path, capsys):
    save_safetensors(tmp_path / "a.safetensors", {"w": torch.randn(4, 4)})
    (tmp_path / "ad").mkdir()
    save_safetensors(tmp_path / "ad" / "adapter_model.safetensors",
                     {"base_model.model.w.lora_A.weight": torch.ones(1, 4),
                      "base_model.model.w.lora_B.weight": torch.ones(4, 1)})
    (tmp_path / "ad" / "adapter_config.json").write_text(config)
    code, _, err = recover(tmp_path, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"labkit trees: {tmp_path / 'ad' / 'adapter_config.json'}") and message in err, err
