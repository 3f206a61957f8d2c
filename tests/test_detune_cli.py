"""`labkit detune`: Spectral DeTuning on LoWRA Bench files and on a user's own checkpoints (labkit.replicate)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from labkit.cli import main
from labkit.lora import lora_factors
from labkit.replicate.detune import default_lora_ids, detune_lowra
from labkit.text import minilm_path
from labkit.zoo import export as E
from labkit.zoo.recipes import digit_diffusion as dd

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "lowra"  # vit: 2 layers 40×32, 15 LoRAs of rank 16, known W_P


@pytest.fixture(scope="module")
def diffusion(tiny_zoo):
    return tiny_zoo("digit-diffusion")


@pytest.fixture(scope="module")
def minilm(tiny_zoo):
    return tiny_zoo("minilm-lora")


def detune(*args, capsys) -> tuple[int, dict | None, str]:
    code = main(["detune", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.strip() else None), err


def test_official_lora_choice():
    assert default_lora_ids(range(15), 5) == [13, 6, 12, 14, 0]
    assert default_lora_ids(range(15), 12) == [13, 6, 12, 14, 0, 4, 8, 7, 3, 2, 11, 5]


# ------------------------------------------------------------------------------------------------ LoWRA


def test_lowra_fixture_recovers_the_pre_fine_tuning_weights(tmp_path, capsys):
    code, res, err = detune("--lowra", FIXTURE, "--subset", "vit", "--n-loras", 15, "--device", "cpu",
                            "--out", tmp_path, capsys=capsys)
    assert code == 0, err
    assert res["n_loras"] == 15 and res["end_rank"] == 16 and res["n_iters"] == 300  # vit's defaults
    expected = load_file(FIXTURE / "expected.safetensors")
    recovered = load_file(tmp_path / "recovered.safetensors")
    assert [layer["name"] for layer in res["layers"]] == list(recovered) == [
        "vit.vit.encoder.layer.0.attention.attention.query", "vit.vit.encoder.layer.0.attention.attention.value"]
    for i, name in enumerate(recovered):
        mse = (recovered[name] - expected[f"layer_{i}"]).double().square().mean().item()
        assert res["layers"][i]["log10_mse"] == pytest.approx(torch.log10(torch.tensor(mse)).item(), abs=1e-6)
    assert res["w_error"] < -15 and res["mean_lora_w_error"] > -8  # paper: −17.8 against −7.5 (SD)
    assert res["converged_share"] == 1.0 and res["mean_lora_converged_share"] == 0.0
    assert res["seconds"]["total"] > 0 and json.loads((tmp_path / "result.json").read_text()) == res


def test_lowra_defaults_follow_the_paper(tmp_path):
    res = detune_lowra(FIXTURE, "vit", tmp_path, layers=[1], n_iters=20, device="cpu")
    assert res["lora_ids"] == [13, 6, 12, 14, 0] and res["end_rank"] == 16 and res["n_iters"] == 20
    assert [layer["index"] for layer in res["layers"]] == [1]
    res = detune_lowra(FIXTURE, "vit", tmp_path, lora_ids=[1, 2, 3], n_iters=5, device="cpu", shard_bytes=1)
    assert res["lora_ids"] == [1, 2, 3] and res["n_layers"] == 2
    index = json.loads((tmp_path / "recovered.safetensors.index.json").read_text())["weight_map"]
    assert sorted(index.values()) == ["recovered-00001-of-00002.safetensors", "recovered-00002-of-00002.safetensors"]
    assert not (tmp_path / "recovered.safetensors").exists()  # the first run's single file was replaced
    for name, file in index.items():
        assert list(load_file(tmp_path / file)) == [name]


def test_lowra_export_of_a_mini_jungle_zoo(diffusion, tmp_path, capsys):
    E.export_lowra(diffusion, tmp_path / "bench")
    result = tmp_path / "result.json"
    code, res, err = detune("--lowra", tmp_path / "bench", "--subset", "digit-diffusion", "--out", tmp_path / "rec",
                            "--json", result, capsys=capsys)
    assert code == 0 and res is None, err  # --json: nothing on stdout
    res = json.loads(result.read_text())
    assert res["lora_ids"] == [13, 6, 12, 14, 0] and res["end_rank"] == 8 and res["n_layers"] == 8
    assert res["w_error"] < -16 and res["mean_lora_w_error"] > -8
    assert "W-Error" in err and "Mean-LoRA" in err


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoints_peft_adapters_on_a_base(minilm, tmp_path, capsys):
    base = minilm_path() / "model.safetensors"
    adapters = [minilm.path(i) for i in minilm.ids()]
    code, res, err = detune("--checkpoints", *adapters, "--base", base, "--out", tmp_path, capsys=capsys)
    assert code == 0, err
    assert res["end_rank"] == 8 and res["n_layers"] == 6 and res["unchanged"] == 0  # r from adapter_config.json
    # Four rank-8 LoRAs do not pin down every layer in 300 iterations: on this zoo some layers stop in a wrong
    # low-loss solution (which ones depends on the adapters' seeds). Where a layer converges, the recovery is exact,
    # which it cannot be if the adapters were merged with a wrong scale (tests/test_lora_merge.py checks the merge).
    assert res["w_error"] < res["mean_lora_w_error"] - 3 and res["mean_lora_w_error"] > -7
    recovered, W_P = load_file(tmp_path / "recovered.safetensors"), load_file(base)
    assert sorted(recovered) == sorted(f"encoder.layer.{i}.attention.self.{p}.weight" for i in (4, 5)
                                       for p in ("query", "key", "value"))
    exact = 0
    for layer in res["layers"]:
        mse = (recovered[layer["name"]] - W_P[layer["name"]]).double().square().mean().item()
        assert abs(math.log10(mse) - layer["log10_mse"]) < 0.01  # the reported score is the file's
        exact += mse < 1e-14
    assert exact >= 2 and res["converged_share"] == exact / 6


def test_checkpoints_merged_safetensors_without_and_with_base(diffusion, tmp_path, capsys):
    root = diffusion.path(dd.ROOT_ID)  # a folder holding model.safetensors
    base = load_file(root / "model.safetensors")
    files = []
    for r in [r for r in diffusion.rows() if r.get("zoo") == "detune"][:6]:
        tensors, config = diffusion.load_adapter_weights(r["id"])
        merged = dict(base)
        for layer, (A, B) in lora_factors(tensors).items():
            merged[f"{layer}.weight"] = base[f"{layer}.weight"] + config["lora_alpha"] / config["r"] * B @ A
        files.append(tmp_path / f"{r['id']}.safetensors")
        save_file(merged, str(files[-1]))
    code, res, err = detune("--checkpoints", *files, "--rank", 8, "--iters", 200, "--out", tmp_path / "a",
                            capsys=capsys)
    assert code == 0, err
    assert "w_error" not in res and res["n_layers"] == 8  # only the 8 adapted weights differ
    assert res["unchanged"] == sum(t.ndim == 2 for t in base.values()) - 8
    recovered = load_file(tmp_path / "a" / "recovered.safetensors")
    assert sorted(recovered) == sorted(f"{t}.weight" for t in dd.LORA_TARGETS)
    assert all((W - base[name]).square().mean() < 1e-15 for name, W in recovered.items())

    code, res, err = detune("--checkpoints", *files, "--base", root, "--rank", 8, "--iters", 10,
                            "--out", tmp_path / "b", capsys=capsys)  # --base only adds the scores
    assert code == 0, err
    assert res["n_layers"] == 8 and res["mean_lora_w_error"] > -8 and res["w_error"] < res["mean_lora_w_error"]


def test_checkpoints_adapters_of_the_diffusion_zoo(diffusion, tmp_path, capsys):
    adapters = [diffusion.path(r["id"]) for r in diffusion.rows() if r.get("zoo") == "detune"][:5]
    code, res, err = detune("--checkpoints", *adapters, "--base", diffusion.path(dd.ROOT_ID), "--out", tmp_path,
                            capsys=capsys)
    assert code == 0, err
    assert res["n_loras"] == 5 and res["w_error"] < -16 and res["w_error"] < res["mean_lora_w_error"] - 8


# ------------------------------------------------------------------------------------------------ errors


def test_errors_are_one_line(minilm, tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.randn(8, 6)}, str(a))
    save_file({"w": torch.randn(8, 5)}, str(b))
    nan = tmp_path / "nan.safetensors"
    save_file({"w": torch.full((8, 6), float("nan"))}, str(nan))
    other = tmp_path / "other.safetensors"
    save_file({"v": torch.randn(8, 6)}, str(other))
    adapters = [minilm.path(i) for i in minilm.ids()[:2]]
    cases = [
        (["--checkpoints", a], "at least 2"),
        (["--checkpoints", a, b], "shape"),
        (["--checkpoints", a, other], "different 2-D weights"),
        (["--checkpoints", a, nan], "NaN"),
        (["--checkpoints", a, tmp_path / "missing.safetensors"], "does not exist"),
        (["--checkpoints", *adapters], "--base"),
        (["--checkpoints", *adapters, "--base", minilm_path() / "model.safetensors", "--rank", 384], "not below"),
        (["--lowra", FIXTURE, "--subset", "vit", "--end-rank", 32], "not below"),
        (["--lowra", FIXTURE, "--subset", "sd-2"], "unknown LoWRA subset 'sd-2'.*'vit'"),
        (["--lowra", tmp_path / "nowhere", "--subset", "vit"], "not found|no parquet"),
        (["--lowra", FIXTURE, "--subset", "vit", "--n-loras", 16], "has 15"),
        (["--lowra", FIXTURE, "--subset", "vit", "--lora-ids", 3], "at least 2"),
        (["--lowra", FIXTURE, "--subset", "vit", "--layers", 7], "out of range"),
        (["--lowra", FIXTURE], "--subset"),
        (["--checkpoints", a, a], "twice"),
    ]
    for args, message in cases:
        code, _, err = detune(*args, "--iters", 3, "--device", "cpu", "--out", tmp_path / "out", capsys=capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("labkit detune: "), (args, err)
        assert re.search(message, last), (args, last)


def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "labkit"
    res = subprocess.run([str(script), "detune", "--lowra", str(FIXTURE), "--subset", "vit", "--n-loras", "15",
                          "--iters", "300", "--layers", "0", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["n_layers"] == 1 and out["w_error"] < -15
    assert (tmp_path / "recovered.safetensors").is_file()


def _tiny_adapters(root: Path, configs: dict[str, object]) -> Path:
    """``root/base.safetensors`` ([8, 6] fc.weight) and one peft adapter folder per entry of ``configs`` (the
    text of its adapter_config.json, or a dict written as JSON)."""
    g = torch.Generator().manual_seed(0)
    save_file({"fc.weight": torch.randn(8, 6, generator=g)}, str(root / "base.safetensors"))
    for name, config in configs.items():
        folder = root / name
        folder.mkdir()
        save_file({"base_model.model.fc.lora_A.weight": torch.randn(1, 6, generator=g),
                   "base_model.model.fc.lora_B.weight": torch.randn(8, 1, generator=g)},
                  str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return root / "base.safetensors"


GOOD_CONFIG = {"r": 1, "lora_alpha": 2, "peft_type": "LORA"}


@pytest.mark.parametrize("config, message", [
    ('{"r": 1, "lora_alpha": ', "adapter_config.json: not valid JSON"),
    ("[1, 2]", "must be a JSON object (peft's adapter config), got a list"),
    ({"lora_alpha": 2}, "'r' (the LoRA rank) must be a positive integer, got None"),
    ({"r": 1}, "'lora_alpha' must be a number, got None"),
    ({"r": "one", "lora_alpha": 2}, "'r' (the LoRA rank) must be a positive integer, got 'one'"),
    ({"r": 1, "lora_alpha": "2"}, "'lora_alpha' must be a number, got '2'"),
    ({"r": 1, "lora_alpha": 2, "alpha_pattern": [1]}, "'alpha_pattern' must be an object"),
])
def test_a_broken_adapter_config_is_named(config, message, tmp_path, capsys):
    base = _tiny_adapters(tmp_path, {"good": GOOD_CONFIG, "bad": config})
    code, _, err = detune("--checkpoints", tmp_path / "good", tmp_path / "bad", "--base", base, "--iters", 3,
                          "--device", "cpu", "--out", tmp_path / "out", capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"labkit detune: {tmp_path / 'bad' / 'adapter_config.json'}"), err
    assert message in last, last


def test_tiny_adapters_run_and_non_finite_inputs_are_named(tmp_path, capsys):
    base = _tiny_adapters(tmp_path, {"a1": GOOD_CONFIG, "a2": GOOD_CONFIG})
    code, res, err = detune("--checkpoints", tmp_path / "a1", tmp_path / "a2", "--base", base, "--iters", 3,
                            "--device", "cpu", "--out", tmp_path / "out", capsys=capsys)
    assert code == 0 and res["n_layers"] == 1 and res["end_rank"] == 1, err
    # a NaN in the base would score every layer as converged (log10 of a NaN MSE): refused, naming file and tensor
    a, b = tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"
    save_file({"w": torch.randn(8, 6)}, str(a))
    save_file({"w": torch.randn(8, 6)}, str(b))
    save_file({"w": torch.full((8, 6), float("nan"))}, str(tmp_path / "nan_base.safetensors"))
    code, _, err = detune("--checkpoints", a, b, "--base", tmp_path / "nan_base.safetensors", "--rank", 2, "--iters", 3,
                          "--device", "cpu", "--out", tmp_path / "out", capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "weight 'w' of " in last and "nan_base.safetensors contains NaN or inf" in last, err
    save_file({"w": torch.randn(8, 6).index_fill_(0, torch.tensor([2]), float("inf"))}, str(b))
    code, _, err = detune("--checkpoints", a, b, "--rank", 2, "--iters", 3, "--device", "cpu", "--out",
                          tmp_path / "out", capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"labkit detune: weight 'w' of {b} contains NaN or inf"), err
