"""data_scripts/download.py offline: argument parsing, the allow-pattern logic, the arrival check (no hub)."""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
_spec = importlib.util.spec_from_file_location("download", ROOT / "data_scripts" / "download.py")
dl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dl)


def _matches(patterns, path):
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def test_parser():
    args = dl.parser().parse_args(["lowra", "--subset", "vit", "--dest", "/tmp/x", "--dry-run"])
    assert args.benchmark == "lowra" and args.dry_run and args.dest == Path("/tmp/x")
    with pytest.raises(SystemExit):
        dl.parser().parse_args(["imagenet", "--subset", "x", "--dest", "y"])
    assert dl.main(["lowra", "--subset", "nope", "--dest", "/tmp/x"]) == 2


def test_lowra_patterns_fetch_one_subset():
    pats = dl.allow_patterns("lowra", "vit")
    assert _matches(pats, "vit/train-00000-of-00001.parquet") and _matches(pats, "README.md")
    assert not _matches(pats, "stable-diffusion-1.5/train-00000-of-00006.parquet")


def test_lora_wise_patterns_from_the_card_and_fallback(tmp_path):
    pats = dl.allow_patterns("lora-wise", "low_16", FIX / "lora_wise" / "README.md")
    # low_16 is not in the fixture card → the folder fallback
    assert _matches(pats, "low/16/train-00003-of-00008.parquet")
    assert not _matches(pats, "low/32/train-00000-of-00016.parquet") and not _matches(pats, "images/low_images.zip")
    card = tmp_path / "README.md"
    card.write_text("---\nconfigs:\n- config_name: medium_32_2\n  data_files:\n  - split: train\n"
                    "    path: medium_sd2/32/train-*\n---\n")
    pats = dl.allow_patterns("lora-wise", "medium_32_2", card)
    assert _matches(pats, "medium_sd2/32/train-00000-of-00016.parquet")
    assert dl.card_files(FIX / "lowra" / "README.md", "vit") == {"train": ["vit/train-*"]}


def test_model_j_patterns():
    pats = dl.allow_patterns("model-j", "SD_200", splits=["train", "test_holdout"])
    assert _matches(pats, "train/model_idx_0001/pytorch_lora_weights.safetensors")
    assert _matches(pats, "test_holdout/model_idx_4100/pytorch_lora_weights.safetensors")
    assert not _matches(pats, "val/model_idx_0002/pytorch_lora_weights.safetensors")
    assert not _matches(pats, "train/model_idx_0001/training_images/0.png")
    assert _matches(dl.allow_patterns("model-j", "SD_1k", images=True), "val/model_idx_0002/training_images/0.png")
    assert dl.allow_patterns("model-j", "SupViT") == ["model.safetensors", "config.json", "README.md"]
    with pytest.raises(ValueError, match="unknown model-j subset"):
        dl.allow_patterns("model-j", "CLIP")


def test_check_arrival(tmp_path):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "a.parquet").write_bytes(b"x" * 10)
    problems = dl.check_arrival(tmp_path, {"vit/a.parquet": 10, "vit/b.parquet": 5})
    assert problems == ["missing vit/b.parquet"]
    assert "run again to resume" in dl.check_arrival(tmp_path, {"vit/a.parquet": 11})[0]
