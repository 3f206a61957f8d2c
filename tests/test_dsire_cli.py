"""`labkit dsire`: DSiRe on LoRA-WiSE configs with the paper's protocol (labkit.replicate.dsire)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labkit.cli import main
from labkit.datasets.lora_wise import open_lora_wise
from labkit.lora import lora_factors
from labkit.methods import dsire
from labkit.replicate.dsire import PAPER, read_lora_wise, voter_key
from labkit.zoo import export as E

torch.set_num_threads(1)
FIX = Path(__file__).resolve().parent / "fixtures" / "lora_wise"  # low_8: flat cells, str names; medium_8: rows


@pytest.fixture(scope="module")
def diffusion(tiny_zoo):
    return tiny_zoo("digit-diffusion")


def run(*args, capsys) -> tuple[int, dict | None, str]:
    code = main(["dsire", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.strip() else None), err


@pytest.mark.parametrize("config, names", [("low_8", ["backpack", "wooden_pot"]), ("medium_8", [3, 17])])
def test_fixture_configs_flat_and_nested(config, names, capsys):
    code, res, err = run("--lora-wise", FIX, "--config", config, "--n-train-sets", 1, capsys=capsys)
    assert code == 0, err
    assert (res["config"], res["rank"], res["n_models"], res["n_layers"], res["n_voters"]) == (config, 8, 6, 2, 6)
    assert res["n_sets"] == 2 and res["sizes"] == [1, 5, 10] and res["repeats"] == 10 and res["seed"] == 42
    # the fixture's signal (‖BA‖_F ∝ 1/√size, same pattern in both sets) is read perfectly by DSiRe and by the norm
    for method in ("dsire", "frobenius_nn"):
        assert res[method]["accuracy_mean"] == 100.0 and res[method]["mae_mean"] == 0.0
        assert len(res[method]["accuracy"]) == 10 and all(len(s) == 1 and s[0] in names for s in res[method]["splits"])
    assert set(res["seconds"]) >= {"load", "features", "evaluate", "total"}
    assert f"{config}: accuracy 100.00" in err
    if config == "low_8":  # string names: the low-range note; the paper's Table 4 row for rank 8
        assert res["set_order"] == "sorted names" and "Concept101" in res["notes"][0]
        assert res["paper"]["dsire"]["mae"] == {"mean": None, "std": None, "status": "unverified", "claimed": 0.43,
                                                "claimed_std": 0.04}
        assert res["paper"]["frobenius_nn"] is None
    else:
        assert res["paper"] is None and "no numbers for medium_8" in res["notes"][0]


def test_streamed_voters_equal_the_whole_config_at_once():
    """Layer by layer + official_order gives the same voters, in the same order, as all layers in one call."""
    cfg = open_lora_wise(FIX, "low_8")
    A, B = {}, {}
    for key in cfg.keys:
        A[voter_key(key)], B[voter_key(key)] = cfg.layer(key)
    whole = dsire.dsire_features(A, B)
    streamed = read_lora_wise(FIX, "low_8", keep=[voter_key(cfg.keys[0])], progress=False)
    assert list(streamed.voters) == list(whole)
    assert list(whole)[:2] == [f"{voter_key(cfg.keys[0])}.down", f"{voter_key(cfg.keys[0])}.up"]
    for k in whole:
        torch.testing.assert_close(streamed.voters[k], whole[k], rtol=1e-12, atol=1e-15)
    assert torch.equal(streamed.factors[voter_key(cfg.keys[0])][0], A[voter_key(cfg.keys[0])])
    frob = dsire.frobenius_features(A, B)  # Frobenius-NN's feature, taken from σ(BA) instead of a second pass
    assert list(streamed.frobenius) == list(frob)
    for k in frob:
        torch.testing.assert_close(streamed.frobenius[k], frob[k], rtol=1e-12, atol=0)
    assert voter_key("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0") == \
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out"


def test_paper_rows_follow_the_spec():
    # only the verified means are the paper's (labkit.paper_numbers); the rest are None
    assert PAPER["medium_32"][1]["accuracy"] == (None, None) and PAPER["medium_32"][2]["mae"] == (None, None)
    assert PAPER["high_32"][1]["mae"] == (41.77, None) and PAPER["low_32"][1]["mae"] == (0.36, None)
    assert PAPER["medium_32_2"][0].startswith("Table 3")


def test_set_order_and_json_file(tmp_path, capsys):
    order = tmp_path / "order.txt"
    order.write_text("wooden_pot\nbackpack\n")
    out = tmp_path / "r.json"
    code, res, err = run("--lora-wise", FIX, "--config", "low_8", "--n-train-sets", 1, "--splits", 3,
                         "--set-order", order, "--json", out, capsys=capsys)
    assert code == 0 and res is None, err
    res = json.loads(out.read_text())
    assert res["set_order"] == "given" and res["repeats"] == 3 and not res["notes"]
    first = dsire.split_sets(2, 1, 3, 42)
    assert res["dsire"]["splits"] == [[["wooden_pot", "backpack"][i] for i in s] for s in first]


def test_round_trip_on_an_exported_zoo_equals_cross_validate_on_the_zoo(diffusion, tmp_path, capsys):
    E.export_lora_wise(diffusion, tmp_path)
    rows = [r for r in diffusion.rows() if r.get("zoo") == "size"]
    set_order = list(dict.fromkeys(r["set"] for r in rows))  # the export numbers sets 1, 2, … in this order
    for config, rng in (("low_8", "low"), ("medium_8", "medium")):
        code, res, err = run("--lora-wise", tmp_path, "--config", config, "--n-train-sets", 1, capsys=capsys)
        assert code == 0, err
        members = [r for r in rows if r["range"] == rng]
        factors = [lora_factors(diffusion.load_adapter_weights(r["id"])[0]) for r in members]
        A = {k: torch.stack([f[k][0] for f in factors]).double() for k in factors[0]}
        B = {k: torch.stack([f[k][1] for f in factors]).double() for k in factors[0]}
        sizes, sets = [r["n"] for r in members], [r["set"] for r in members]
        direct = dsire.cross_validate(dsire.dsire_features(A, B), sizes, sets, 1, 10, 42, set_order=set_order)
        frob = dsire.cross_validate(dsire.frobenius_features(A, B), sizes, sets, 1, 10, 42, set_order=set_order)
        assert res["n_models"] == len(members) and res["n_layers"] == len(A) and res["n_voters"] == 3 * len(A)
        for m in dsire.METRICS:
            assert res["dsire"][m] == direct[m] and res["frobenius_nn"][m] == frob[m]
            assert res["dsire"][f"{m}_mean"] == direct[f"{m}_mean"]
        assert res["dsire"]["splits"] == [[set_order.index(s) + 1 for s in split] for split in direct["splits"]]


@pytest.mark.parametrize("args, message", [
    (["--lora-wise", "{tmp}/absent", "--config", "low_16"],
     "python data_scripts/download.py lora-wise --subset low_16 --dest"),
    (["--lora-wise", FIX, "--config", "high_32"], "download.py lora-wise --subset high_32"),
    (["--lora-wise", FIX, "--config", "medium_99"], "unknown LoRA-WiSE config 'medium_99'"),
    (["--lora-wise", FIX, "--config", "low_8", "--rank", 7], "holds rank-8 LoRAs; --rank 7"),
    (["--lora-wise", FIX, "--config", "low_8", "--rank", 0], "--rank must be a positive integer"),
    (["--lora-wise", FIX, "--config", "low_8"], "--n-train-sets 15 leaves no test sets: the config has 2"),
    (["--lora-wise", FIX, "--config", "low_8", "--n-train-sets", 1, "--splits", 0], "--splits must be positive"),
])
def test_errors_are_one_line(args, message, tmp_path, capsys):
    code, _, err = run(*[str(a).replace("{tmp}", str(tmp_path)) for a in args], capsys=capsys)
    assert code == 2
    assert message in err and err.strip().count("\n") == 0 and err.startswith("labkit dsire: ")


def test_wrong_rank_of_an_unsuffixed_config_is_named(tmp_path, capsys):
    """A config name without a rank needs --rank; a wrong one is the loader's one-line error."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train-00000-of-00001.parquet").write_bytes(
        (FIX / "low" / "8" / "train-00000-of-00001.parquet").read_bytes())
    code, _, err = run("--lora-wise", tmp_path, "--config", "mine", "--n-train-sets", 1, capsys=capsys)
    assert code == 2 and "pass rank= explicitly" in err
    code, _, err = run("--lora-wise", tmp_path, "--config", "mine", "--rank", 7, "--n-train-sets", 1, capsys=capsys)
    assert code == 2 and "not divisible by rank 7" in err.splitlines()[-1]
    code, res, err = run("--lora-wise", tmp_path, "--config", "mine", "--rank", 8, "--n-train-sets", 1, capsys=capsys)
    assert code == 0 and res["dsire"]["accuracy_mean"] == 100.0 and res["paper"] is None


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("folder", "is a folder, not a regular set-order file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not UTF-8 text"),
    (b"backpack\x00wooden_pot\n", "is a binary file"),
    ("\n  \n", "holds no set names"),
    ("backpack\nwooden_pots\n", "must list every set name of low_8 once, one a line (2 names, e.g. backpack, "
                                "wooden_pot); missing e.g. wooden_pot; not in the config e.g. wooden_pots"),
    ("backpack\nwooden_pot\nbackpack\n", "listed twice e.g. backpack"),
])
def test_set_order_errors_name_the_file(content, message, tmp_path, capsys):
    order = tmp_path / "my\x1b[31morder.txt"
    if content == "folder":
        order.mkdir()
    elif content is not None:
        order.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run("--lora-wise", FIX, "--config", "low_8", "--n-train-sets", 1, "--splits", 2,
                       "--set-order", order, capsys=capsys)
    assert code == 2 and err.startswith("labkit dsire: ") and err.count("\n") == 1, err
    assert "my\\x1b[31morder.txt" in err and "\x1b" not in err and message in err, err
