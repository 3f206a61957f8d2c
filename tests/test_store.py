import dataclasses
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
from labkit.safe_io import CorruptFileError
from labkit.tensor_files import read_safetensors, save_safetensors
from labkit.zoo.store import ZooError, ZooStore, sha256_file, zoo_key


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
        from labkit.tensor_files import save_safetensors
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
    with pytest.raises(CorruptFileError, match="has 19376 bytes, the manifest records 38752.*rebuild"):
        store.load_model("m0")
    path.write_bytes(data[:-4] + b"\0\0\0\1")  # same size, other bytes
    with pytest.raises(CorruptFileError, match="does not match its sha256.*rebuild"):
        store.load_model("m0")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="corrupt or truncated"):
        store.load_model("m0", verify=False)
    assert len(store.verify_all()) == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CorruptFileError):
        read_safetensors(junk)


def test_every_safetensors_reader_raises_the_one_corrupt_file_error(tmp_path):
    """The zoo's reader, the Model-J header reader and ``labkit detune``'s lazy reader: one ``CorruptFileError``
    (a ``ValueError``, so every command exits 2 with its one line), never a ``ZooError`` or a bare ``ValueError``."""
    from labkit.datasets.model_j import read_header, read_tensors
    from labkit.replicate.detune import _Weights

    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"w": torch.ones(64, 64)})
    data = path.read_bytes()
    assert read_header(path)[0] == {"w": ("F32", [64, 64])} and _Weights(path).shapes == {"w": (64, 64)}
    for broken in (data[: len(data) // 2], data[:5], b"\xff" * 64):
        path.write_bytes(broken)
        for read in (read_safetensors, read_header, lambda p: read_tensors(p, ["w"]), _Weights):
            with pytest.raises(CorruptFileError) as info:
                read(path)
            assert type(info.value) is CorruptFileError and isinstance(info.value, ValueError)
            assert not isinstance(info.value, ZooError) and str(info.value).startswith(str(path))


def _snapshot(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (folders as b"<dir>"), to show that nothing changed."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def _interrupted(store):
    """Two finished models and what builds killed at four moments leave behind."""
    for i in range(2):
        store.save_model(f"m{i}", {"w": torch.full((2,), float(i))})
    store.save_model("m2", {"w": torch.ones(2)})  # killed after the rename, before the row was appended:
    store.manifest_path.write_text("".join(store.manifest_path.read_text().splitlines(keepends=True)[:2]))
    (store.models_dir / ".tmp-m3-999").mkdir()  # killed while writing the files
    (store.models_dir / "m4").mkdir()  # an older kit's unfinished folder (no row.json): cannot be checked
    (store.models_dir / "m4" / "model.safetensors").write_bytes(b"half")
    with open(store.manifest_path, "a") as f:
        f.write('{"id": "m5", "kind": "mo')  # killed while appending a row
    return store


def test_opening_a_store_never_changes_anything(store):
    before = _snapshot(_interrupted(store).root)
    reader = ZooStore(store.root)
    assert reader.ids() == ["m0", "m1"]
    problems = reader.verify_all()
    assert any("last line is half-written" in p for p in problems)
    assert any("2 model folders are not in the manifest (m2, m4)" in p for p in problems)
    assert _snapshot(store.root) == before


def test_a_build_repairs_only_its_own_leftovers(store, caplog):
    _interrupted(store)
    (store.models_dir / "m6").mkdir()  # a folder whose row.json does not match its files: removed
    (store.models_dir / "m6" / "row.json").write_text(store.manifest_path.read_text().splitlines()[0]
                                                      .replace('"m0"', '"m6"'))
    with ZooStore(store.root).lock() as s:
        assert s.ids() == ["m0", "m1", "m2"]  # m2 listed again from its row.json
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "cut the half-written last manifest line", "removed m6 (its files do not match its row.json)",
        "listed m2 again (its files match its row.json)"]
    assert sorted(p.name for p in store.models_dir.iterdir()) == ["m0", "m1", "m2", "m4"]
    assert store.manifest_path.read_text().count("\n") == 3 and ZooStore(store.root).verify_all() == [
        "1 model folders are not in the manifest (m4); `labkit zoo repair "
        f"{store.root}` lists those whose files check out"]
    s.save_model("m4", {"w": torch.zeros(2)})  # the build rewrites the unverifiable folder when it gets there
    assert ZooStore(store.root).ids() == ["m0", "m1", "m2", "m4"] and ZooStore(store.root).verify_all() == []


@pytest.mark.parametrize("line, why", [
    ("not json\n", "line 2 is not valid JSON"),
    ("[1, 2]\n", "line 2 is a JSON list, not an object"),
    ('{"id": "../../evil", "kind": "model"}\n', "line 2 has no valid model id"),
    ('{"id": "m9", "kind": "model", "sha256": "x", "files": {"../../etc/passwd": "' + "0" * 64 + '"}}\n',
     "line 2 has no valid 'files'"),
    (None, "line 2 repeats model id 'm0'"),
])
def test_an_unreadable_manifest_line_is_an_error_and_deletes_nothing(store, line, why):
    for i in range(4):
        store.save_model(f"m{i}", {"w": torch.full((2,), float(i))})
    lines = store.manifest_path.read_text().splitlines(keepends=True)
    lines.insert(1, lines[0] if line is None else line)
    store.manifest_path.write_text("".join(lines))
    before = _snapshot(store.root)
    with pytest.raises(ZooError, match=f"{why}.*nothing was changed.*labkit zoo repair"):
        ZooStore(store.root)
    with pytest.raises(ZooError, match=f"{why}.*nothing was changed.*labkit zoo repair"), store.lock():
        pass
    assert _snapshot(store.root) == {**before, ".lock": b""}  # the lock file is the builder's; no model moved
    result = ZooStore.repair_manifest(store.root)
    assert result["kept"] == 4 and result["bad_lines"] == [2] and result["recovered"] == []
    assert ZooStore(store.root).ids() == ["m0", "m1", "m2", "m3"] and ZooStore(store.root).verify_all() == []
    assert (store.root / "manifest.jsonl.damaged-1").read_text() == "".join(lines)


def test_a_lost_manifest_is_rebuilt_from_the_model_folders(store):
    for i in range(5):
        store.save_model(f"m{i}", {"w": torch.full((2,), float(i))}, {"tree": "t", "labels": [i]})
    rows = store.rows()
    store.manifest_path.unlink()
    reader = ZooStore(store.root)
    assert len(reader) == 0 and "5 model folders are not in the manifest" in reader.verify_all()[0]
    assert sorted(p.name for p in store.models_dir.iterdir()) == [f"m{i}" for i in range(5)]
    assert ZooStore.repair_manifest(store.root)["recovered"] == [f"m{i}" for i in range(5)]
    assert ZooStore(store.root).rows() == rows


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


class _DemoRecipe:
    """A recipe of ``n`` small models that counts how many it writes (stands in for a mini-jungle recipe)."""

    def __init__(self, n: int = 6):
        self.n, self.written = n, []

    @dataclasses.dataclass(frozen=True)
    class Settings:
        n: int

    def settings(self, profile):
        return self.Settings(self.n)

    def build(self, store, settings, device):
        for i in range(settings.n):
            if f"m{i}" not in store:
                store.save_model(f"m{i}", {"w": torch.full((8,), float(i))}, {"i": i})
                self.written.append(f"m{i}")
        return {}


@pytest.fixture
def demo_build(tmp_path, monkeypatch):
    from labkit import zoo

    recipe = _DemoRecipe()
    monkeypatch.setattr(zoo, "recipe_module", lambda name: recipe)
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)

    def build():
        recipe.written.clear()
        return zoo.build("demo", profile="smoke", home=tmp_path)

    return build, recipe


def test_a_complete_zoo_is_served_only_when_every_promised_model_is_there(demo_build):
    import shutil

    build, recipe = demo_build
    store = build()
    assert store.complete and store.summary()["ids"] == [f"m{i}" for i in range(6)] and len(recipe.written) == 6
    assert build().ids() == store.ids() and recipe.written == []  # intact: served without building
    shutil.rmtree(store.path("m2"))  # a model folder lost
    assert build().verify_all() == [] and recipe.written == ["m2"]
    lines = store.manifest_path.read_text().splitlines(keepends=True)
    store.manifest_path.write_text("".join(lines[:3]))  # the manifest lost its last rows: listed again
    assert build().verify_all() == [] and recipe.written == []
    path = store.path("m4") / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-8])  # truncated: the size check catches it, the model is rebuilt
    again = build()
    assert again.verify_all() == [] and recipe.written == ["m4"] and again.ids()[-1] == "m4"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, other bytes: served (the sha256 check is verify's and the loaders')
    path.write_bytes(bytes(data))
    tampered = build()
    assert recipe.written == [] and "m4/model.safetensors does not match its sha256" in tampered.verify_all()[0]
    with pytest.raises(CorruptFileError, match="does not match its sha256"):
        tampered.load_model("m4")


def test_readers_during_a_build_disturb_nothing(tmp_path):
    """A process builds a zoo while this one opens it, lists it and loads models in a loop: both succeed."""
    script = textwrap.dedent("""
        import sys, torch
        from labkit.zoo.store import ZooStore
        store = ZooStore.open("demo", "smoke", {"k": 2}, home=sys.argv[1])
        with store.lock():
            for i in range(300):
                store.save_model(f"m{i:03d}", {"w": torch.full((256,), float(i))}, {"i": i})
            store.mark_complete({})
    """)
    root = tmp_path / zoo_key("demo", "smoke", {"k": 2})
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    reads, seen = 0, 0
    while proc.poll() is None:
        if (root / "zoo.json").is_file():
            reader = ZooStore(root)
            for model_id in reader.ids()[-3:]:
                tensors, _ = reader.load_model(model_id)
                assert tensors["w"][0].item() == int(model_id[1:])
            reader.problems(full=False)
            reads, seen = reads + 1, max(seen, len(reader))
    assert proc.returncode == 0, proc.stderr.read()
    done = ZooStore(root)
    assert reads > 10 and 0 < seen and done.complete and len(done) == 300 and done.verify_all() == []
