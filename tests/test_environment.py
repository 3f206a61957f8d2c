"""One source of truth for the pins: requirements.txt; environment.yml and pyproject.toml must agree with it."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"requirements.txt must pin exactly: {line!r}"
            name, version = line.split("==")
            out[_name(name)] = version
    return out


def test_torch_is_pinned_with_the_rest_of_the_stack():
    p = pins()
    assert p["torch"].startswith("2.13.0")
    for required in ("jupyterlab", "ipywidgets", "torch", "matplotlib", "papermill", "nbval", "peft",
                     "safetensors", "huggingface-hub", "pyarrow", "networkx", "scikit-learn", "scipy", "tqdm"):
        assert required in p, f"{required} is missing from requirements.txt"


def test_environment_yml_installs_the_same_pins_through_pip():
    text = (ROOT / "environment.yml").read_text()
    pip_lines = [ln.strip()[2:].strip() for ln in text.splitlines() if ln.strip().startswith("- ")]
    assert "-r requirements.txt" in pip_lines and "-e ." in pip_lines
    stray = [ln for ln in pip_lines if "==" in ln or (_name(ln) in pins())]
    assert not stray, f"environment.yml pins packages itself; keep them in requirements.txt: {stray}"


def test_pyproject_ranges_are_covered_by_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    p = pins()
    missing = [d for d in project["dependencies"] if _name(d) not in p]
    assert not missing, f"pyproject dependencies without an exact pin in requirements.txt: {missing}"
    assert project["scripts"]["labkit"] == "labkit.cli:main"


def test_generated_state_is_git_ignored():
    ignored = (ROOT / ".gitignore").read_text().split()
    for path in (".venv/", ".labkit/", "runs/"):
        assert path in ignored
