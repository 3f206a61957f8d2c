import ast

import pytest
import torch

import labkit
from labkit import report
from labkit.exercises import EXERCISES, check, run_cases
from labkit.nbtools import exercise_ids, read_notebook
from labkit.runner import default_notebooks


@pytest.fixture(autouse=True)
def _fresh_run(kit_home):
    labkit.setup("smoke", quiet=True)


def test_every_reference_passes_its_own_check(capsys):
    assert EXERCISES
    for ex in EXERCISES.values():
        assert run_cases(ex, ex.reference)[0] == "passed", ex.id


def test_correct_answer_is_returned_and_logged(capsys):
    def mine(W, k):
        s = torch.linalg.svdvals(W)
        return float((s[:k] ** 2).sum() / (s**2).sum())  # a float is fine where the reference gives a tensor

    assert check("00.energy", mine) is mine
    assert "✓ Exercise 00.energy passed (6/6 cases)" in capsys.readouterr().out
    assert report._RUN.exercises == {"00.energy": "passed"}


def test_wrong_answer_shows_expected_vs_got_and_falls_back():
    def wrong(W, k):
        s = torch.linalg.svdvals(W)
        return (s[:k]).sum() / s.sum()  # forgot the squares

    with pytest.warns(UserWarning, match="continues with the reference"):
        fn = check("00.energy", wrong)
    assert fn is EXERCISES["00.energy"].reference
    status, message = run_cases(EXERCISES["00.energy"], wrong)
    assert status == "failed" and "expected:" in message and "got:" in message and "case 1/6" in message


def test_crashing_answer_is_reported_not_raised():
    status, message = run_cases(EXERCISES["00.energy"], lambda W, k: W[100])
    assert status == "failed" and "raised IndexError" in message


def test_stub_is_not_attempted(capsys):
    def stub(W, k):
        raise NotImplementedError("Exercise 00.energy: ...")

    with pytest.warns(UserWarning):
        check("00.energy", stub)
    assert "not attempted" in capsys.readouterr().out
    assert report._RUN.exercises["00.energy"] == "not attempted"


def test_unknown_exercise():
    with pytest.raises(KeyError, match="unknown exercise 'nope'"):
        check("nope", lambda: None)


def test_every_notebook_exercise_is_registered_and_matches_its_reference_signature():
    for path in default_notebooks():
        nb = read_notebook(path)
        for ex_id in exercise_ids(nb):
            assert ex_id in EXERCISES, f"{path.name}: exercise {ex_id} has no registered reference"
            cell = next(c for c in nb.cells if f'check("{ex_id}"' in c.source)
            fn = next(n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef))
            ref = EXERCISES[ex_id].reference
            assert [a.arg for a in fn.args.args] == list(ref.__code__.co_varnames[: ref.__code__.co_argcount])
