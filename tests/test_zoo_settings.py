"""Recipe settings are frozen dataclasses: what zoo.json records is what the build read (labkit.zoo.settings)."""

import dataclasses
import json

import pytest

from labkit import zoo
from labkit.zoo.recipes import digit_diffusion, digit_trees
from labkit.zoo.settings import from_record, with_overrides


@pytest.mark.parametrize("recipe", sorted(zoo.RECIPES))
@pytest.mark.parametrize("profile", ["smoke", "workshop"])
def test_settings_survive_the_json_record(recipe, profile):
    s = zoo.recipe_module(recipe).settings(profile)
    assert dataclasses.is_dataclass(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    record = json.loads(json.dumps(dataclasses.asdict(s)))  # what zoo.json holds
    assert from_record(type(s), record) == s and with_overrides(s, {}) == s


def test_overrides_change_nested_fields_and_name_unknown_ones():
    s = digit_diffusion.settings("smoke")
    t = with_overrides(s, {"root": {"steps": 7}, "size": {"digits": [4]}, "chunk": 3})
    assert (t.root.steps, t.root.lr, t.size.digits, t.chunk) == (7, s.root.lr, (4,), 3)
    assert t.concept == s.concept
    with pytest.raises(ValueError, match="unknown setting 'stepz'"):
        with_overrides(s, {"root": {"stepz": 7}})
    with pytest.raises(ValueError, match="missing settings"):
        from_record(type(s), {k: v for k, v in dataclasses.asdict(s).items() if k != "T"})


def test_the_root_batch_size_recorded_is_the_one_trained_with(tmp_path, monkeypatch):
    """Change root_batch_size: zoo.json, the roots' rows and metadata, and the roots' training all follow it."""
    used = []
    real = digit_trees.fit_batched

    def spy(*args, **kwargs):
        used.append(kwargs["batch_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(digit_trees, "fit_batched", spy)
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    tiny = {"roots": ["mlp_a", "ae_mlp"], "root_epochs": 2, "children": 0, "lora_children": 0, "grand_parents": 0}
    store = zoo.build("digit-trees", profile="smoke", home=tmp_path, **tiny, root_batch_size=48)
    assert used == [48, 48, 48]  # mlp_a; ae_mlp's autoencoder and classifier
    assert store.info["settings"]["root_batch_size"] == 48
    assert zoo.recorded_settings(store) == dataclasses.replace(
        digit_trees.settings("smoke"), roots=("mlp_a", "ae_mlp"), root_epochs=2, children=0, lora_children=0,
        grand_parents=0, root_batch_size=48)
    for root in ("mlp_a", "ae_mlp"):
        assert store.row(root)["hparams"]["batch_size"] == 48
        assert store.load_model(root)[1]["batch_size"] == "48"
