"""labkit.zoo.export: mini-jungle zoos in the public formats, read back with labkit.datasets' loaders."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from labkit.cli import main
from labkit.data import CLASS_NAMES
from labkit.datasets.lora_wise import open_lora_wise
from labkit.datasets.lowra import open_lowra
from labkit.datasets.model_j import open_model_j
from labkit.lora import lora_factors
from labkit.tensor_files import read_safetensors
from labkit.text import minilm_path
from labkit.zoo import export as E
from labkit.zoo.recipes import digit_diffusion as dd

torch.set_num_threads(1)
FIXTURE_LOWRA = "tests/fixtures/lowra/vit/train-00000-of-00001.parquet"

@pytest.fixture(scope="module")
def trees(tiny_zoo):
    return tiny_zoo("digit-trees")


@pytest.fixture(scope="module")
def diffusion(tiny_zoo):
    return tiny_zoo("digit-diffusion")


@pytest.fixture(scope="module")
def minilm(tiny_zoo):
    return tiny_zoo("minilm-lora")


def _configs(folder) -> dict:
    text = (folder / "README.md").read_text()
    head = text.split("---\n")[1]
    return {c["config_name"]: c["data_files"][0] for c in yaml.safe_load(head)["configs"]}


# ------------------------------------------------------------------------------------------------ Model-J


def test_model_j_export_round_trips_through_the_loader(trees, tmp_path):
    written = E.export_model_j(trees, tmp_path)
    assert [p.name for p in written] == ["mlp_a", "cnn"]
    for subset in ("mlp_a", "cnn"):
        rows = [r for r in trees.rows() if r["tree"] == subset and r["kind"] == "model" and r["depth"] == 1]
        mj = open_model_j(tmp_path, subset)
        assert mj.kind == "discriminative"
        assert sorted(mj.splits) == sorted({r["split"] for r in rows})
        for split in mj.splits:
            members = [(i, r) for i, r in enumerate(rows) if r["split"] == split]
            models = mj.models(split)
            assert [m.idx for m in models] == [i for i, _ in members]
            assert [list(m.labels) for m in models] == [r["labels"] for _, r in members]
            name = "fc1.weight" if subset == "mlp_a" else "fc.weight"
            X, Y, _ = mj.layer(split, name, classes=CLASS_NAMES)
            expected = torch.stack([trees.load_model(r["id"])[0][name] for _, r in members])
            assert torch.equal(X, expected)
            assert Y.sum(1).tolist() == [5.0] * len(members)
            for y, (_, r) in zip(Y, members):
                assert [CLASS_NAMES[j] for j in torch.nonzero(y).flatten()] == r["labels"]
    # the file keeps Model-J's metadata: the chosen classes as a repr list, hyper-parameters as strings
    path = open_model_j(tmp_path, "mlp_a").models(mj.splits[0])[0].path
    _, meta = read_safetensors(path)
    assert meta["dataset_chosen_targets"].startswith("['") and "lr" in meta and meta["subset"] == "mlp_a"
    assert path.parent.name == (path.parents[2] / "refs" / "main").read_text()


def test_model_j_export_refuses_other_zoos(minilm, tmp_path):
    with pytest.raises(ValueError, match="digit-trees"):
        E.export_model_j(minilm, tmp_path)


# ---------------------------------------------------------------------------------------------- LoRA-WiSE


def test_lora_wise_export_round_trips_through_the_loader(diffusion, tmp_path):
    written = E.export_lora_wise(diffusion, tmp_path)
    assert set(written) == {"low_8", "medium_8"}
    assert _configs(tmp_path) == {"low_8": {"split": "train", "path": "low/8/train-*"},
                                  "medium_8": {"split": "train", "path": "medium/8/train-*"}}
    for config, rng in (("low_8", "low"), ("medium_8", "medium")):
        rows = [r for r in diffusion.rows() if r.get("zoo") == "size" and r["range"] == rng]
        schema = pq.read_schema(written[config])
        assert str(schema.field("label").type) == "int64" and str(schema.field("name").type) == "int64"
        assert str(schema.field("inp.lora.down.weight").type) == "list<element: double>"
        cfg = open_lora_wise(tmp_path, config)
        assert cfg.rank == 8 and sorted(cfg.keys) == sorted(dd.LORA_TARGETS)
        assert cfg.sizes.tolist() == [r["n"] for r in rows]
        sets = list(dict.fromkeys(r["set"] for r in diffusion.rows() if r.get("zoo") == "size"))
        assert list(cfg.names) == [sets.index(r["set"]) + 1 for r in rows]
        for key in cfg.keys:
            A, B = cfg.layer(key)
            factors = [lora_factors(diffusion.load_adapter_weights(r["id"])[0])[key] for r in rows]
            assert A.dtype == torch.float64 and A.shape == (len(rows), 8, factors[0][0].shape[1])
            assert torch.equal(A, torch.stack([a for a, _ in factors]).double())
            assert torch.equal(B, torch.stack([b for _, b in factors]).double())


# -------------------------------------------------------------------------------------------------- LoWRA


def _merged_by_hand(store, rows, base):
    out = {}
    for r in rows:
        tensors, config = store.load_adapter_weights(r["id"])
        for layer, (A, B) in lora_factors(tensors).items():
            out.setdefault(layer, []).append(base[layer + ".weight"] + config["lora_alpha"] / config["r"] * B @ A)
    return {k: torch.stack(v) for k, v in out.items()}


def test_lowra_export_of_15_loras_has_the_benchmarks_exact_80_columns(diffusion, tmp_path):
    path = E.export_lowra(diffusion, tmp_path)
    schema, reference = pq.read_schema(path), pq.read_schema(FIXTURE_LOWRA)
    assert len(schema.names) == 80 and schema.names == reference.names
    assert [str(f.type) for f in schema] == [str(f.type) for f in reference]
    assert _configs(tmp_path) == {"digit-diffusion": {"split": "train", "path": "digit-diffusion/train-*"}}

    rows = [r for r in diffusion.rows() if r["zoo"] == "detune"]
    base = diffusion.load_model(dd.ROOT_ID)[0]
    by_hand = _merged_by_hand(diffusion, rows, base)
    sub = open_lowra(tmp_path, "digit-diffusion")
    assert sub.n_layers == len(dd.LORA_TARGETS) and sub.lora_ids == list(range(15))
    first = next(sub.iter_layers(layers=[0]))
    assert first.lora_names == [r["id"] for r in rows] and first.rank.tolist() == [8] * 15
    assert set(pq.read_table(path, columns=["pre_ft_name"]).column(0).to_pylist()) == {dd.BASE_MODEL_NAME}
    for layer in sub.iter_layers():
        assert layer.layer_model == "denoiser"
        module = layer.layer_name.removesuffix(".weight")
        assert torch.equal(layer.W_pre, base[layer.layer_name])
        assert torch.equal(layer.A[0], lora_factors(diffusion.load_adapter_weights(rows[0]["id"])[0])[module][0])
        assert torch.allclose(layer.merged(), by_hand[module], atol=1e-7, rtol=0)


def test_lowra_exports_share_a_folder_and_reexport_replaces(minilm, diffusion, tmp_path):
    E.export_lowra(diffusion, tmp_path, n_loras=6)
    path = E.export_lowra(minilm, tmp_path)
    E.export_lowra(diffusion, tmp_path, n_loras=3)  # replaces the first export of this config
    assert set(_configs(tmp_path)) == {"digit-diffusion", "minilm-lora"}
    assert len(pq.read_schema(tmp_path / "digit-diffusion" / "train-00000-of-00001.parquet").names) == 5 + 5 * 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind

    base, _ = read_safetensors(minilm_path() / "model.safetensors")
    by_hand = _merged_by_hand(minilm, minilm.rows(), base)
    sub = open_lowra(tmp_path, "minilm-lora")
    assert sub.n_layers == 6 and len(sub.lora_ids) == len(minilm)
    assert len(pq.read_schema(path).names) == 5 + 5 * len(minilm)
    for layer in sub.iter_layers():
        assert torch.allclose(layer.merged(), by_hand[layer.layer_name.removesuffix(".weight")], atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="n_loras=99"):
        E.export_lowra(minilm, tmp_path, n_loras=99)


def test_export_command(minilm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_HOME", str(minilm.root.parents[1]))  # the zoo built above is reused
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    out = tmp_path / "lowra"
    assert main(["export", "minilm-lora", "--format", "lowra", "--profile", "smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    assert open_lowra(out, "minilm-lora").n_layers == 6
    assert main(["export", "minilm-lora", "--format", "lora-wise", "--profile", "smoke", "--out", str(out)]) == 2
    assert "digit-diffusion" in capsys.readouterr().err


def test_readme_configs_are_merged_into_an_existing_card(tmp_path):
    from labkit.datasets._parquet import card_patterns

    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\nconfigs:\n- config_name: old\n  data_files:\n  - split: train\n"
                    "    path: old/train-*\n---\n# My benchmark\n\nNotes kept.\n")
    E.write_readme_configs(tmp_path, {"new": "new/train-*", "old": "old2/train-*"})
    text = card.read_text()
    assert text.endswith("# My benchmark\n\nNotes kept.\n") and "license: mit" in text
    assert _configs(tmp_path) == {"new": {"split": "train", "path": "new/train-*"},
                                  "old": {"split": "train", "path": "old2/train-*"}}
    assert card_patterns(tmp_path, "new") == ["new/train-*"] and card_patterns(tmp_path, "gone") is None
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    E.write_readme_configs(fresh, {"a": "a/train-*"})
    assert _configs(fresh) == {"a": {"split": "train", "path": "a/train-*"}}
    assert "Exported from a labkit mini-jungle zoo" in (fresh / "README.md").read_text()
    assert sorted(p.name for p in fresh.iterdir()) == ["README.md"]  # no temporary file left behind
