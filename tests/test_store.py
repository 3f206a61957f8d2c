import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from labkit.models import make_mlp
from labkit.zoo.store import (
    CorruptFileError,
    ZooError,
    ZooStore,
    read_safetensors,
    sha256_file,
    zoo_key,
)


@pytest.fixture
def store(tmp_path):
    return ZooStore.open("demo", "smoke", {"n": 3, "lr": 0.01}, home=tmp_path)


def test_cache_key_depends_on_recipe_profile_and_settings():
    k = zoo_key("digit-trees", "smoke", {"a": 1, "b": [1, 2]})
    assert k.startswith("digit-trees-smoke-") and len(k.rsplit("-", 1)[1]) == 12
    assert k == zoo_key("digit-trees", "smoke", {"b": [1, 2], "a": 1})  # key order does not matter
    assert k != zoo_key("digit-trees", "smoke", {"a": 2, "b": [1, 2]})
    assert k != zoo_key("digit-trees", "workshop", {"a": 1, "b": [1, 2]})


def test_model_roundtrip_with_model_j_metadata(store):
    sd = make_mlp().state_dict()
    row = store.save_model("m0", sd, {"tree": "t0", "parent": None, "split": "train", "labels": [1, 3]},
                           metadata={"dataset_chosen_targets": "['1', '3']", "lr": 0.01})
    assert row["sha256"] == sha256_file(store.path("m0") / "model.safetensors")
    loaded, meta = store.load_model("m0")
    assert meta == {"dataset_chosen_targets": "['1', '3']", "lr": "0.01"}
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    reopened = ZooStore(store.root)
    assert reopened.rows() == store.rows() and reopened.row("m0")["labels"] == [1, 3]


def test_duplicate_and_bad_ids_are_refused(store):
    store.save_model("m0", {"w": torch.ones(2)})
    with pytest.raises(ZooError, match="already in zoo"):
        store.save_model("m0", {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="model id"):
        store.save_model("../evil", {"w": torch.ones(2)})


def test_safetensors_bytes_are_reproducible_across_processes(tmp_path):
    script = textwrap.dedent("""
        import sys, torch
        from labkit.zoo.store import save_safetensors
        meta = {k: str(i) for i, k in enumerate("qwertyuiopasdfgh")}
        save_safetensors(sys.argv[1], {"b": torch.arange(6.).view(2, 3), "a": torch.ones(4)}, meta)
    """)
    digests = set()
    for i in range(3):
        path = tmp_path / f"f{i}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        digests.add(sha256_file(path))
        tensors, meta = read_safetensors(path)
        assert torch.equal(tensors["b"], torch.arange(6.).view(2, 3)) and meta["q"] == "0"
    assert len(digests) == 1


def test_peft_adapter_roundtrip_is_portable(store):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base_sd = make_mlp().state_dict()
    base = make_mlp()
    base.load_state_dict(base_sd)
    peft_model = get_peft_model(base, LoraConfig(target_modules=["fc1", "fc2"], r=4, lora_alpha=8))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # make the adapter do something
    x = torch.randn(5, 64)
    expected = peft_model(x)
    store.save_adapter("a0", peft_model, {"parent": "root"}, base_model="labkit/demo/root")
    config = json.loads((store.path("a0") / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "labkit/demo/root" and config["target_modules"] == ["fc1", "fc2"]
    assert not (store.path("a0") / "README.md").exists()
    fresh = make_mlp()
    fresh.load_state_dict(base_sd)
    loaded = store.load_adapter("a0", fresh)
    torch.testing.assert_close(loaded(x), expected)
    tensors, cfg = store.load_adapter_weights("a0")
    assert set(tensors) == {f"base_model.model.{m}.lora_{ab}.weight" for m in ("fc1", "fc2") for ab in "AB"}
    assert cfg["r"] == 4
    with pytest.raises(ValueError, match="portable name"):
        store.save_adapter("a1", peft_model, base_model="/abs/path/model")


def test_corrupt_and_truncated_files_give_one_clear_error(store, tmp_path):
    store.save_model("m0", make_mlp().state_dict())
    path = store.path("m0") / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="does not match its sha256.*rebuild"):
        store.load_model("m0")
    with pytest.raises(CorruptFileError, match="corrupt or truncated"):
        store.load_model("m0", verify=False)
    assert len(store.verify_all()) == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CorruptFileError):
        read_safetensors(junk)


def test_leftovers_of_an_interrupted_build_are_cleaned(store):
    store.save_model("m0", {"w": torch.ones(2)})
    store.save_model("m1", {"w": torch.ones(2)})
    (store.models_dir / ".tmp-m2-999").mkdir()  # killed while writing files
    (store.models_dir / "m3").mkdir()  # killed between the rename and the manifest row
    with open(store.manifest_path, "a") as f:
        f.write('{"id": "m4", "kind": "mo')  # killed while appending the row
    reopened = ZooStore(store.root)
    assert reopened.ids() == ["m0", "m1"]
    assert sorted(p.name for p in store.models_dir.iterdir()) == ["m0", "m1"]
    assert store.manifest_path.read_text().count("\n") == 2
    reopened.save_model("m4", {"w": torch.zeros(2)})
    assert [r["id"] for r in ZooStore(store.root).rows()] == ["m0", "m1", "m4"]


def test_sigkill_during_a_build_then_resume(tmp_path):
    """Write models in a subprocess, SIGKILL it mid-way, resume: nothing missing, duplicated or corrupt."""
    script = textwrap.dedent("""
        import sys, torch
        from labkit.zoo.store import ZooStore
        store = ZooStore.open("demo", "smoke", {"k": 1}, home=sys.argv[1])
        with store.lock():
            for i in range(400):
                mid = f"m{i:03d}"
                if mid in store:
                    continue
                g = torch.Generator().manual_seed(i)
                store.save_model(mid, {"w": torch.randn(64, 64, generator=g)}, {"i": i})
            store.mark_complete({"models": len(store)})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    root = tmp_path / zoo_key("demo", "smoke", {"k": 1})
    deadline = time.time() + 60
    while time.time() < deadline:
        manifest = root / "manifest.jsonl"
        if manifest.is_file() and manifest.read_text().count("\n") >= 20:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ZooStore(root)
    assert 20 <= len(partial) < 400 and not partial.complete
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    done = ZooStore(root)
    assert done.complete and done.ids() == [f"m{i:03d}" for i in range(400)]
    assert done.verify_all() == []
    for i in (0, 200, 399):
        tensors, _ = done.load_model(f"m{i:03d}")
        assert torch.equal(tensors["w"], torch.randn(64, 64, generator=torch.Generator().manual_seed(i)))
