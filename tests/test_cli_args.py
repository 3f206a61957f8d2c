"""The `labkit` command line itself: argparse choices and exclusive groups as one-line errors (exit 2), and the
global ``--debug`` switch that prints the full traceback (the chain of exceptions) before the one-line message."""

from __future__ import annotations

import pytest
import torch

from labkit import cli
from labkit.cli import main


@pytest.mark.parametrize("args, message", [
    ([], "labkit: the following arguments are required: command"),
    (["--debug"], "labkit: the following arguments are required: command"),
    (["report", "--profile", "tiny"], "labkit report: argument --profile: invalid choice: 'tiny'"),
    (["zoo", "build", "toy", "--profile", "big"], "labkit zoo build: argument --profile: invalid choice: 'big'"),
    (["export", "digit-trees", "--format", "csv", "--out", "x"],
     "labkit export: argument --format: invalid choice: 'csv'"),
    (["detune", "--out", "x"], "labkit detune: one of the arguments --lowra --checkpoints is required"),
    (["detune", "--lowra", "a", "--checkpoints", "b", "c", "--out", "x"],
     "argument --checkpoints: not allowed with argument --lowra"),
    (["detune", "--lowra", "a", "--n-loras", "3", "--lora-ids", "1", "2", "--out", "x"],
     "argument --lora-ids: not allowed with argument --n-loras"),
    (["probegen", "--inr", "a", "--cnn-zoo", "b"], "argument --cnn-zoo: not allowed with argument --inr"),
    (["probegen", "--inr", "a", "--method", "magic"], "labkit probegen: argument --method: invalid choice: 'magic'"),
    (["trees", "recover", ".", "--regime", "qlora"], "argument --regime: invalid choice: 'qlora'"),
    (["inspect", "x", "--debug"], "labkit: unrecognized arguments: --debug"),  # a global switch: before the command
])
def test_bad_arguments_are_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("labkit") and message in err and err.rstrip().endswith("--help`)"), err


def test_profile_names_are_normalised_like_resolve_profile():
    assert cli._parser().parse_args(["run", "--profile", " Smoke "]).profile == "smoke"
    assert cli._parser().parse_args(["report"]).profile is None  # $LABKIT_PROFILE or workshop, later


def test_the_parser_choices_match_the_library():
    from labkit.replicate.probegen import METHODS
    from labkit.session import PROFILES
    from labkit.zoo.export import FORMATS

    assert cli.PROFILES == tuple(PROFILES)
    assert cli.EXPORT_FORMATS == tuple(FORMATS)
    assert cli.PROBEGEN_METHODS == tuple(METHODS)


def _multiply(_args) -> int:
    torch.ones(2, 3) @ torch.ones(2, 3)  # torch's RuntimeError, not caught by the command
    return 0


def _corrupt(_args) -> int:
    try:
        torch.ones(2, 3) @ torch.ones(2, 3)
    except RuntimeError:
        raise ValueError("up (2, 3) and down (2, 3) do not multiply; the file is corrupt") from None
    return 0


def test_a_torch_error_is_one_line_without_debug(monkeypatch, capsys):
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_cmd_report", _multiply)
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("labkit report: mat1 and mat2 shapes cannot be multiplied")


@pytest.mark.parametrize("command", [_multiply, _corrupt])
def test_debug_prints_the_whole_chain_then_the_same_line(command, monkeypatch, capsys):
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_cmd_report", command)
    assert main(["report"]) == 2
    quiet = capsys.readouterr().err
    assert main(["--debug", "report"]) == 2  # same exit status
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1] == quiet.rstrip("\n")  # the one-line message still comes last
    # the torch error is shown with the line of labkit code that hit it, also when `from None` hid it
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in err
    assert "torch.ones(2, 3) @ torch.ones(2, 3)" in err and f"in {command.__name__}" in err
    if command is _corrupt:
        assert "During handling of the above exception, another exception occurred" in err
        assert "ValueError: up (2, 3) and down (2, 3) do not multiply" in err


def test_debug_on_an_internal_error_keeps_exit_3(monkeypatch, capsys):
    def missing_key(_args):
        return {}["missing"]  # a KeyError is an input error (exit 2), the TypeError below a bug (exit 3)

    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_cmd_report", lambda _a: None + 1)
    assert main(["--debug", "report"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "TypeError: unsupported operand" in err
    assert err.splitlines()[-1].startswith("labkit report: internal error: TypeError")
    monkeypatch.setattr(cli, "_cmd_report", missing_key)
    assert main(["report"]) == 2 and capsys.readouterr().err == "labkit report: missing\n"


def test_debug_shows_the_torch_error_behind_an_inspect_message(tmp_path, monkeypatch, capsys):
    """A real command: a checkpoint whose storage record is shorter than its pickle declares. torch.load's
    RuntimeError becomes one line; --debug shows it, and where labkit turned it into that line."""
    import zipfile

    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.ones(8)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:4] if info.filename.endswith("/data/0") else data)
    assert main(["inspect", str(bad)]) == 2
    quiet = capsys.readouterr().err
    assert quiet.count("\n") == 1 and "not a readable torch checkpoint (RuntimeError: record size" in quiet
    assert main(["--debug", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "RuntimeError: record size (4 bytes) does not match expected size (32 bytes" in err
    assert "in _torch_load" in err and "torch.load(" in err
    assert err.splitlines()[-1] == quiet.rstrip("\n")
