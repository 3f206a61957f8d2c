import random
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit
from labkit.session import PROFILES, ProfileError, kit_home, pick_device, resolve_profile


def test_profiles_exist_with_budgets():
    assert set(PROFILES) == {"smoke", "workshop", "full"}
    assert PROFILES["smoke"].budget_cpu_s <= 90
    assert PROFILES["workshop"].budget_cpu_s <= 600


def test_env_overrides_notebook_parameter(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    assert resolve_profile("workshop") == "smoke"
    monkeypatch.delenv("LABKIT_PROFILE")
    assert resolve_profile("full") == "full"


@pytest.mark.parametrize("bad", ["tiny", "SMOKEY", "gpu"])
def test_unknown_profile_is_one_clear_error(monkeypatch, bad):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    with pytest.raises(ProfileError, match="unknown profile .* choose one of smoke, workshop, full"):
        resolve_profile(bad)


def test_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device().type == "cpu"
    assert pick_device("cpu").type == "cpu"


def test_setup_seeds_everything_and_prints_banner(kit_home, capsys):
    cfg = labkit.setup("smoke", lab="00", seed=7)
    a = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    labkit.setup("smoke", lab="00", seed=7)
    b = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "profile=smoke" in line and "device=cpu" in line and "min expected" in line
    assert cfg.home == kit_home and cfg.expected_minutes == 0.5
    assert cfg.pick(smoke=1, workshop=2) == 1


def test_setup_rejects_unknown_lab(kit_home):
    with pytest.raises(ValueError, match="unknown lab '99'"):
        labkit.setup("smoke", lab="99")


def test_kit_home_default_is_the_checkout(monkeypatch):
    monkeypatch.delenv("LABKIT_HOME", raising=False)
    assert kit_home().name == ".labkit" and (kit_home().parent / "pyproject.toml").is_file()



def test_kit_home_and_data_root_share_one_rule(monkeypatch, tmp_path):
    from labkit import paths
    from labkit.datasets import data_root

    monkeypatch.delenv("LABKIT_HOME", raising=False)
    monkeypatch.setenv("LABKIT_DATA", "")  # empty counts as unset
    assert (kit_home(), data_root()) == (paths.CHECKOUT / ".labkit", paths.CHECKOUT / "data")
    assert data_root("lora-wise") == paths.CHECKOUT / "data" / "lora_wise"
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABKIT_DATA", "~/benchmarks")
    assert (kit_home(), data_root()) == (tmp_path / "home", Path.home() / "benchmarks")
    monkeypatch.delenv("LABKIT_HOME")
    monkeypatch.delenv("LABKIT_DATA")
    monkeypatch.setattr(paths, "CHECKOUT", tmp_path / "site-packages")  # an installed labkit: no checkout
    monkeypatch.chdir(tmp_path)
    assert (kit_home(), data_root()) == (tmp_path.resolve() / ".labkit", tmp_path.resolve() / "data")
