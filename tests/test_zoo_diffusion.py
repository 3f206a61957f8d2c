"""The digit-diffusion recipe: root, samples, the three LoRA zoos, peft loading, determinism and resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import zoo
from labkit.diffusion import cosine_schedule, diffusion_loss, sample, to_unit
from labkit.lora import lora_factors
from labkit.models.denoiser import LORA_TARGETS, Denoiser
from labkit.zoo.recipes import digit_diffusion as dd
from labkit.zoo.store import ZooStore, sha256_file

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

# a very small variant for the subprocess builds (determinism, kill-and-resume); lr 5 makes detune LoRAs diverge
TINY = {
    "root": {"steps": 60, "batch": 64, "lr": 2e-3, "ema": 0.9, "width": 256, "blocks": 3},
    "size": {"digits": [0, 8], "picks": 1, "low": [1, 2, 3], "medium": [1, 10], "steps": 25, "lr": 1e-3},
    "concept": {"digits": [0, 1], "styles": dd.STYLES[:3], "per_concept": 2, "n": 20, "heldout": 2, "steps": 25,
                "lr": 1e-3},
    "detune": {"count": 3, "n": 20, "steps": 25, "lr": 5.0},
    "chunk": 4,
}
N_TINY = 1 + 2 * 5 + 2 * 3 * 2 + 3

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from labkit import zoo
store = zoo.build("digit-diffusion", profile="smoke", home=sys.argv[1], **json.loads(sys.argv[2]))
print(store.root)
"""


def _start(home: Path, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LABKIT_PROFILE", None)  # it would override profile="smoke"
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(home), json.dumps(TINY)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> Path:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


def _digests(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if (p.is_file() and p.parent != root) or p.name == dd.SAMPLES_PNG]
    return {str(p.relative_to(root)): sha256_file(p) for p in files}


# ------------------------------------------------------------------------------------------- unit pieces


def test_cosine_schedule_and_sampling_shapes():
    s = cosine_schedule(100)
    assert s.T == 100 and (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()
    assert 0.99 < s.alpha_bar[0] <= 1 and s.alpha_bar[-1] < 1e-3
    g = torch.Generator().manual_seed(0)
    x = sample(lambda x, t: torch.zeros_like(x), (2, 3, 64), s, g)  # leading dims are kept
    assert x.shape == (2, 3, 64) and x.abs().max() <= 1
    # the loss of the exact ε-predictor is zero
    x0, eps, t = torch.rand(5, 64) * 2 - 1, torch.randn(5, 64), torch.randint(0, 100, (5,))
    assert torch.allclose(diffusion_loss(lambda xt, tt: eps, x0, t, eps, s), torch.zeros(5))


def test_styles_and_heldout_concepts():
    x = torch.rand(4, 64)
    assert torch.equal(dd.apply_style(dd.apply_style(x, "mirrored"), "mirrored"), x)
    assert torch.allclose(dd.apply_style(x, "inverted"), 1 - x)
    assert torch.equal(dd.apply_style(x, "shifted left").view(4, 8, 8)[:, :, :6], x.view(4, 8, 8)[:, :, 2:])
    assert (dd.apply_style(x, "thick") >= x).all() and (dd.apply_style(x, "thin") <= x).all()
    for name in dd.STYLES:
        assert not torch.equal(dd.apply_style(x, name), x) or name == "plain"
    with pytest.raises(ValueError, match="unknown style"):
        dd.apply_style(x, "bold")
    held = dd.heldout_concepts(list(range(10)), dd.STYLES, 18)
    assert len(set(held)) == 18
    seen = {(d, s) for d in range(10) for s in dd.STYLES} - set(held)
    assert {d for d, _ in seen} == set(range(10)) and {s for _, s in seen} == set(dd.STYLES)


def test_denoiser_names_cover_lora_targets():
    names = dict(Denoiser().named_modules())
    assert all(isinstance(names[t], torch.nn.Linear) for t in LORA_TARGETS)
    assert 0.6e6 < sum(p.numel() for p in Denoiser().parameters()) < 0.8e6


# ------------------------------------------------------------------------------------------- smoke build


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> ZooStore:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LABKIT_PROFILE", raising=False)
        return zoo.build("digit-diffusion", profile="smoke", home=tmp_path_factory.mktemp("home"))


def test_smoke_build_contents(smoke_store):
    from PIL import Image

    s = zoo.recorded_settings(smoke_store)
    assert s == dd.settings("smoke")
    assert smoke_store.info["settings"] == json.loads(json.dumps(dataclasses.asdict(s)))
    rows = smoke_store.rows()
    assert smoke_store.complete and not smoke_store.verify_all()
    png = smoke_store.root / dd.SAMPLES_PNG
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 8 * 8
    by_zoo = {}
    for r in rows:
        by_zoo.setdefault(r["zoo"], []).append(r)
    z, c = s.size, s.concept
    assert len(by_zoo["root"]) == 1 and by_zoo["root"][0]["parent"] is None
    assert len(by_zoo["size"]) == len(z.digits) * z.picks * (len(z.low) + len(z.medium))
    assert len(by_zoo["concept"]) == len(c.digits) * len(c.styles) * c.per_concept
    assert len(by_zoo["detune"]) == s.detune.count
    for r in rows[1:]:
        assert r["parent"] == "root" and r["kind"] == "adapter" and r["tree"] == "digit-diffusion"
        assert {"split", "labels", "hparams", "train_loss", "eval_loss", "flagged"} <= set(r)
        assert r["flagged"] == (not r["eval_loss"] < r["root_eval_loss"])
    held = [r for r in by_zoo["concept"] if r["heldout"]]
    assert len({r["concept"] for r in held}) == c.heldout and all(r["split"] == "heldout" for r in held)
    assert all(r["description"] == f"a {r['style']} handwritten {dd.DIGIT_NAMES[r['digit']]}"
               for r in by_zoo["concept"])
    # nested subsets: a set's n images include those of its smaller n
    sets = [r for r in by_zoo["size"] if r["set"] == "d0-p0" and r["range"] == "medium"]
    sets.sort(key=lambda r: r["n"])
    for small, big in itertools.pairwise(sets):
        assert big["images"][:small["n"]] == small["images"]
    # personalisation happened: most LoRAs beat the root on their own images
    assert sum(not r["flagged"] for r in rows[1:]) >= 0.8 * (len(rows) - 1)
    # no machine-specific path in any adapter config
    cfg = json.loads((smoke_store.path(rows[1]["id"]) / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == dd.BASE_MODEL_NAME


def test_stored_adapters_load_with_peft_and_equal_the_batched_models(smoke_store):
    from peft import PeftModel

    s = zoo.recorded_settings(smoke_store)
    sched = cosine_schedule(s.T)
    _, pool, _ = dd.digit_pool(s.pool_per_class, s.seed)
    jobs = [j for j in dd._jobs(s, pool) if j["zoo"] == "size"][:s.chunk]
    root = dd.load_root(smoke_store)
    lora, *_ = dd._train_chunk(root, jobs, s, s.size, sched, "cpu")  # retrain the first chunk
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(len(jobs), 6, 64, generator=g), torch.randint(0, 100, (len(jobs), 6), generator=g)
    with torch.no_grad():
        batched = lora(x, t)
    for k in (0, len(jobs) // 2, len(jobs) - 1):
        model = smoke_store.load_adapter(jobs[k]["id"], dd.load_root(smoke_store))
        assert isinstance(model, PeftModel)
        with torch.no_grad():
            assert torch.allclose(model(x[k], t[k]), batched[k], atol=1e-5)
            assert not torch.allclose(root(x[k], t[k]), batched[k], atol=1e-3)  # the adapter changes the model
        factors = lora_factors(smoke_store.load_adapter_weights(jobs[k]["id"])[0])
        assert set(factors) == set(LORA_TARGETS)
        A, B = factors["blocks.1.fc2"]
        assert A.shape == (8, 256) and B.shape == (256, 8)


def test_root_denoises_better_than_chance(smoke_store):
    s = zoo.recorded_settings(smoke_store)
    row = smoke_store.row(dd.ROOT_ID)
    assert row["test_loss"] < 0.5  # predicting ε = 0 scores 1.0
    _, pool, _ = dd.digit_pool(s.pool_per_class, s.seed)
    x0 = to_unit(pool.reshape(-1, 64))[:200]
    sched = cosine_schedule(s.T)
    g = torch.Generator().manual_seed(3)
    t, eps = torch.randint(0, s.T, (200,), generator=g), torch.randn(200, 64, generator=g)
    with torch.no_grad():
        assert diffusion_loss(dd.load_root(smoke_store), x0, t, eps, sched).mean() < 0.5


# ------------------------------------------------------------------------------------------- determinism, resume


def test_two_fresh_builds_are_identical_and_a_killed_build_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    b_proc = _start(tmp_path / "b", "2")  # another process: hash seeds and set orders differ from this one
    store_a = zoo.build("digit-diffusion", profile="smoke", home=tmp_path / "a", **TINY)
    a = store_a.root
    assert len(store_a) == N_TINY and store_a.complete
    detune = [r for r in store_a.rows() if r["zoo"] == "detune"]
    assert detune and all(r["flagged"] for r in detune)  # diverged (lr 5) yet kept and flagged

    proc = _start(tmp_path / "c", "3")
    manifest = tmp_path / "c" / a.name / "manifest.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed = ZooStore(tmp_path / "c" / a.name)
    assert not killed.complete and 6 <= len(killed) < N_TINY
    c = _finish(_start(tmp_path / "c", "4"))
    b = _finish(b_proc)

    digests = {name: _digests(root) for name, root in (("a", a), ("b", b), ("c", c))}
    assert len(digests["a"]) == 3 * N_TINY  # png + model.safetensors + 2 files per adapter, + row.json each
    assert digests["a"] == digests["b"] == digests["c"]
    rows_c = [json.loads(line) for line in (c / "manifest.jsonl").read_text().splitlines()]
    assert len(rows_c) == len({r["id"] for r in rows_c}) == N_TINY  # nothing missing, nothing duplicated
    assert not ZooStore(c).verify_all()
    assert {r["id"]: r["sha256"] for r in rows_c} == {r["id"]: r["sha256"] for r in store_a.rows()}
