import ast

import pytest
import torch

import labkit
from labkit import report
from labkit.exercise_bank import header_line, ladder_table, register
from labkit.exercises import EXERCISES, check, hint, run_cases, which
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
    status, message, detail = run_cases(EXERCISES["00.energy"], wrong)
    assert status == "failed" and "expected:" in message and "got:" in message and "case 1/6" in message
    assert message.startswith("✗ Exercise 00.energy failed")
    assert "diagnosis: summed the singular values themselves" in message and "diagnosis" in detail


def test_crashing_answer_is_reported_not_raised():
    status, message, detail = run_cases(EXERCISES["00.energy"], lambda W, k: W[100])
    assert status == "failed" and "raised IndexError" in message and message.startswith("✗")
    assert detail.startswith("case 1/6")


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


@pytest.mark.parametrize("ex_id", sorted(EXERCISES))
def test_every_typical_mistake_is_failed_and_diagnosed(ex_id):
    """Each exercise foresees at least one typical mistake; feeding it gives ✗ and its one-line diagnosis."""
    ex = EXERCISES[ex_id]
    assert ex.mistakes, f"{ex_id} has no typical mistake to diagnose"
    for diagnosis, wrong in ex.mistakes:
        status, message, detail = run_cases(ex, wrong)
        assert status == "failed" and message.startswith(f"✗ Exercise {ex_id} failed"), (ex_id, message)
        assert f"diagnosis: {diagnosis}" in message and diagnosis in detail, (ex_id, message)


def test_a_right_answer_is_never_diagnosed_as_a_mistake():
    for ex in EXERCISES.values():
        status, message, detail = run_cases(ex, ex.reference)
        assert status == "passed" and "diagnosis" not in message and detail == ""


def test_hints_come_one_level_at_a_time_and_never_contain_code_symbols(capsys):
    ex = EXERCISES["05.m_step"]
    shown = [hint("05.m_step") for _ in ex.hints]
    assert [h.split(":", 1)[0] for h in shown] == [f"Hint {i}/{len(ex.hints)} for 05.m_step"
                                                   for i in range(1, len(ex.hints) + 1)]
    assert hint("05.m_step").startswith("No more hints for 05.m_step")
    for e in EXERCISES.values():
        assert 1 <= len(e.hints) <= 3 and all(h.isascii() for h in e.hints), e.id


def test_register_refuses_non_ascii_hints_and_bad_ladder_numbers():
    common = {"title": "t", "importance": 3, "minutes": 5, "mistakes": ()}
    with pytest.raises(ValueError, match="plain ASCII"):
        register("99.x", abs, list, difficulty=1, hints=("W \u2212 V",), **common)
    with pytest.raises(ValueError, match="difficulty must be 1-5"):
        register("99.y", abs, list, difficulty=6, hints=("ok",), **common)
    assert "99.x" not in EXERCISES and "99.y" not in EXERCISES


def test_which_says_whose_function_runs(capsys):
    def stub(merged, M):
        raise NotImplementedError

    with pytest.warns(UserWarning):
        check("05.w_step", stub)
    assert which("05.w_step", "w_step") == "the reference `w_step` (your exercise 05.w_step is not passing yet)"
    check("05.w_step", EXERCISES["05.w_step"].reference)
    assert which("05.w_step", "w_step") == "your `w_step`"


def test_header_line_and_ladder_table():
    assert header_line("04.majority_vote") == ("**Exercise 04.majority_vote: Majority vote with the official tie rule** "
                                               "| difficulty 2/5 | importance 4/5 | ~5 min")
    table = ladder_table("04")
    lab04 = [e for e in EXERCISES.values() if e.lab == "04"]
    assert table.count("\n| 04.") == len(lab04)
    assert f"**{sum(e.minutes for e in lab04)}**" in table.splitlines()[-1]
