"""One LoRA merge with peft's rules (``labkit.lora.adapter_deltas``): equal to ``merge_and_unload()`` for plain,
rsLoRA, ``rank_pattern`` and ``alpha_pattern`` adapters; the same merge inside ``labkit trees recover`` and
``labkit detune``; what it cannot merge is one ``ValueError`` line naming the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from labkit.lora import _pattern_value, adapter_deltas, read_adapter, scaled_factors
from labkit.tensor_files import save_safetensors

TARGETS = ["inp", "fc1", "fc2", "head_fc1"]  # peft: a list entry matches a name or a dotted suffix of it


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Net(nn.Module):
    """Modules ``inp``, ``blocks.{0,1}.fc{1,2}``, ``head_fc1`` (ends with ``fc1`` but is not ``*.fc1``), ``out``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.head_fc1 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(self.head_fc1(x))


ADAPTERS = {
    "plain": {"r": 4, "lora_alpha": 8},
    "rslora": {"r": 4, "lora_alpha": 8, "use_rslora": True},
    # first matching key wins: blocks.0.fc2 takes 3 (the regex), not 5; head_fc1 and inp keep r = 4
    "rank_pattern": {"r": 4, "lora_alpha": 8, "rank_pattern": {"blocks.1.fc1": 2, r"blocks\.0\.fc\d": 3, "fc2": 5}},
    # "fc1" is blocks.*.fc1 for peft, not head_fc1 (which merely ends with "fc1")
    "alpha_pattern": {"r": 4, "lora_alpha": 8, "alpha_pattern": {"fc1": 32, r"^inp": 2}},
    "rslora_patterns": {"r": 4, "lora_alpha": 8, "use_rslora": True, "rank_pattern": {"fc2": 2},
                        "alpha_pattern": {"fc1": 3}},
}


def _saved_adapter(folder: Path, base: nn.Module, config: dict, seed: int = 0) -> None:
    """A real peft adapter of ``base`` with random non-zero ``lora_B`` (peft starts it at 0), saved to ``folder``."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=TARGETS, lora_dropout=0.0, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    model.save_pretrained(str(folder))


def _peft_merged(base: nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).merge_and_unload().state_dict()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> tuple[nn.Module, dict[str, Path]]:
    torch.manual_seed(0)
    base = _Net()
    root = tmp_path_factory.mktemp("adapters")
    folders = {}
    for k, (name, config) in enumerate(ADAPTERS.items()):
        folders[name] = root / name
        _saved_adapter(folders[name], base, config, seed=k)
    return base, folders


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_deltas_equal_peft_merge_and_unload(name, adapters):
    base, folders = adapters
    config, tensors = read_adapter(folders[name])
    deltas = adapter_deltas(config, tensors, str(folders[name]), dtype=torch.float32)
    assert sorted(deltas) == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "head_fc1", "inp"]
    merged = _peft_merged(base, folders[name])
    original = base.state_dict()
    assert sorted(merged) == sorted(original)
    for key, W in original.items():
        module = key.removesuffix(".weight")
        expected = W + deltas[module] if key.endswith(".weight") and module in deltas else W
        torch.testing.assert_close(expected, merged[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


def test_pattern_rules_per_module(adapters):
    _, folders = adapters
    factors = {name: scaled_factors(*read_adapter(folders[name]), "adapter") for name in ADAPTERS}
    ranks = {m: A.shape[0] for m, (A, _, _) in factors["rank_pattern"].items()}
    assert ranks == {"blocks.0.fc1": 3, "blocks.0.fc2": 3, "blocks.1.fc1": 2, "blocks.1.fc2": 5, "head_fc1": 4,
                     "inp": 4}
    scaling = {m: s for m, (_, _, s) in factors["alpha_pattern"].items()}
    assert scaling == {"blocks.0.fc1": 8.0, "blocks.1.fc1": 8.0, "blocks.0.fc2": 2.0, "blocks.1.fc2": 2.0,
                       "head_fc1": 2.0, "inp": 0.5}
    assert factors["rslora"]["inp"][2] == 8 / 2  # alpha / sqrt(r), r = 4
    assert factors["rslora_patterns"]["blocks.0.fc2"][2] == pytest.approx(8 / 2 ** 0.5)
    assert factors["rslora_patterns"]["blocks.0.fc1"][2] == 3 / 2


def test_a_suffix_without_a_dot_is_not_a_match(adapters):
    """The old detune rule (``module.endswith(key)``) gave head_fc1 the alpha of "fc1"; peft does not."""
    base, folders = adapters
    folder = folders["alpha_pattern"]
    config, tensors = read_adapter(folder)
    A, B, scaling = scaled_factors(config, tensors, "adapter")["head_fc1"]
    assert "head_fc1".endswith("fc1") and scaling == 8 / 4
    merged = _peft_merged(base, folder)["head_fc1.weight"]
    endswith_rule = base.head_fc1.weight + (32 / 4) * (B @ A)
    assert not torch.allclose(endswith_rule, merged, atol=1e-3)
    torch.testing.assert_close(base.head_fc1.weight + scaling * (B @ A), merged, rtol=0, atol=1e-6)


@pytest.mark.parametrize("patterns, module", [
    ({"fc1": 1}, "fc1"), ({"fc1": 1}, "blocks.0.fc1"), ({"fc1": 1}, "head_fc1"), ({"fc1": 1}, "fc1.x"),
    ({r"blocks\.0\.fc\d": 1, "fc2": 2}, "blocks.0.fc2"), ({"fc2": 2, r"blocks\.0\.fc\d": 1}, "blocks.0.fc2"),
    ({"blocks.1.fc1": 1}, "blocks.0.fc1"), ({"blocks.1.fc1": 1}, "blocksx1.fc1"), ({"^inp": 1}, "inp"),
    ({"^inp": 1}, "a.inp"), ({"q_proj|v_proj": 1}, "model.layers.3.self_attn.v_proj"), ({}, "fc1"),
    ({"layers.3.self_attn.q_proj": 1}, "model.layers.3.self_attn.q_proj"), ({"proj": 1}, "model.q_proj"),
])
def test_pattern_value_is_peft_get_pattern_key(patterns, module):
    from peft.utils.other import get_pattern_key

    assert _pattern_value(patterns, module, 0) == patterns.get(get_pattern_key(patterns.keys(), module), 0)


def test_trees_recover_and_detune_merge_the_same_way(adapters, tmp_path):
    """``labkit trees recover`` used to merge rsLoRA adapters with ``alpha / r``: now both commands merge as peft."""
    from labkit.replicate.detune import _MergedAdapter, _Weights
    from labkit.replicate.trees import load_folder

    base, folders = adapters
    save_safetensors(tmp_path / "base.safetensors", base.state_dict())
    for name in ("rslora", "rslora_patterns"):
        folder = tmp_path / name
        folder.mkdir()
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            (folder / f).write_bytes((folders[name] / f).read_bytes())
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "base"}))
    ids, states = load_folder(tmp_path)
    assert ids == ["base", "rslora", "rslora_patterns"]
    weights = _Weights(tmp_path / "base.safetensors")
    for name in ("rslora", "rslora_patterns"):
        merged = _peft_merged(base, folders[name])
        detuned = _MergedAdapter(tmp_path / name, weights)
        for key in ("inp.weight", "blocks.0.fc2.weight", "head_fc1.weight", "out.weight"):
            # float64 merge vs peft's float32 one: equal to float32 rounding
            torch.testing.assert_close(states[ids.index(name)][key].float(), merged[key], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(detuned.get(key), merged[key], rtol=0, atol=1e-6)


def test_zoo_forests_merge_a_stored_adapter_as_peft(adapters, tmp_path):
    """``labkit.forests.merged_state``: a ``ZooStore`` adapter merged onto its (stored) parent, as peft merges it."""
    from peft import PeftModel

    from labkit.forests import merged_state
    from labkit.zoo.store import ZooStore

    base, folders = adapters
    store = ZooStore.open("merge", "smoke", {"n": 1}, home=tmp_path)
    store.save_model("base", base.state_dict(), {"parent": None})
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folders["rank_pattern"]))
    store.save_adapter("ad", peft_model, {"parent": "base"}, base_model="base")
    state = merged_state(store, "ad", verify=True)
    merged = _peft_merged(base, folders["rank_pattern"])
    assert sorted(state) == sorted(merged) and all(v.dtype == torch.float64 for v in state.values())
    for key, W in merged.items():
        torch.testing.assert_close(state[key].float(), W, rtol=1e-6, atol=1e-6, msg=key)


# ---------------------------------------------------------------------------------------------- refusals

_A, _B = "base_model.model.fc.lora_A.weight", "base_model.model.fc.lora_B.weight"


@pytest.mark.parametrize("config, tensors, message", [
    ({"use_dora": True}, None, "only plain LoRA adapters can be merged"),
    ({"peft_type": "LOHA"}, None, "peft_type 'LOHA'"),
    ({"fan_in_fan_out": True}, None, "fan_in_fan_out"),
    ({"lora_bias": True}, None, "lora_bias"),
    ({"r": 0}, None, "'r' (the LoRA rank) must be a positive integer"),
    ({"lora_alpha": float("nan")}, None, "'lora_alpha' must be a number"),
    ({"rank_pattern": {"fc": 1.5}}, None, "'rank_pattern' must be an object of module names and positive integer"),
    ({"alpha_pattern": {"fc": "2"}}, None, "'alpha_pattern' must be an object of module names and alphas"),
    ({"alpha_pattern": {"fc(": 2}}, None, "the alpha_pattern key 'fc(' is not a regex"),
    ({}, {_A: torch.ones(2, 3, 1, 1), _B: torch.ones(4, 2, 1, 1)}, "'fc' is not a linear LoRA"),
    ({}, {_A: torch.ones(3, 6), _B: torch.ones(4, 3)}, "'fc' has factors of rank 3 / 3 but the config gives r = 2"),
    ({"rank_pattern": {"fc": 3}}, None, "'fc' has factors of rank 2 / 2 but the config gives r = 3"),
    ({}, {_A: torch.ones(2, 6), _B: torch.ones(4, 2), "base_model.model.fc.lora_magnitude_vector": torch.ones(4)},
     "1 tensor(s) that are not LoRA factors (e.g. 'base_model.model.fc.lora_magnitude_vector')"),
    ({}, {_A: torch.ones(2, 6)}, "have only one of lora_A / lora_B"),
])
def test_what_cannot_be_merged_is_one_line_naming_the_file(config, tensors, message):
    full = {"r": 2, "lora_alpha": 4, "peft_type": "LORA", **config}
    tensors = tensors or {_A: torch.ones(2, 6), _B: torch.ones(4, 2)}
    with pytest.raises(ValueError) as info:
        adapter_deltas(full, tensors, "some/adapter")
    text = str(info.value)
    assert text.startswith("some/adapter") and message in text and "\n" not in text, text


def test_the_base_must_hold_the_adapted_weight():
    tensors = {_A: torch.ones(2, 6), _B: torch.ones(4, 2)}
    config = {"r": 2, "lora_alpha": 4}
    assert adapter_deltas(config, tensors, "ad", base_shapes={"fc.weight": (4, 6)})["fc"].shape == (4, 6)
    with pytest.raises(ValueError, match=r"^ad: the adapter changes 'fc' but the base model has no 2-D weight"):
        adapter_deltas(config, tensors, "ad", base_shapes={"other.weight": (4, 6)})
    with pytest.raises(ValueError, match=r"^ad: the LoRA update of 'fc' is \[4, 6\] but the base weight is \[6, 4\]"):
        adapter_deltas(config, tensors, "ad", base_shapes={"fc.weight": (6, 4)})
