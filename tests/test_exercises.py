"""The classroom exercises (exercises/): solutions pass, student copies are fresh, every stub fails.

For every exercises/solutions/NN_topic.ipynb:
- the solution notebook runs in a fresh kernel (cwd = its folder) without any error, so every check passes;
- the committed student copy equals a fresh `make_student` generation;
- the student copy runs in a fresh kernel, every check cell fails (NotImplementedError or AssertionError)
  and no other cell fails, so no check passes vacuously;
- each known wrong solution in NN_topic.mutants.json (an off-by-one, a missing mask offset...) fails at
  least one check: the checks are meaningful, not only "not a stub";
- every check cell imports its checks itself, every check names the library's answers (`@answers`), and
  the library's own function in the student's place fails its check, imported or wrapped;
- the grader fails a submission that rebinds a check, patches the checks or the library, swallows the
  checks' errors, or imports the answers from `minimal`, and an empty skeleton.
"""

import ast
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
SOLUTIONS = sorted((EXERCISES / "solutions").glob("*.ipynb"))
IDS = [p.stem for p in SOLUTIONS]
CHECK_CALL = re.compile(r"^\s*check_\w+\(", re.MULTILINE)
STUB_ERRORS = {"NotImplementedError", "AssertionError"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"exercises_{name}", EXERCISES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


make_student = _load("make_student")
grade = _load("grade")


def _describe(results) -> str:
    return "\n".join(f"cell {r.index} ({r.cell_id}): {r.error}: {r.message}" for r in results if r.error)


def test_there_are_exercises():
    assert SOLUTIONS, "no exercises/solutions/*.ipynb found"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_solution_passes_its_checks(solution):
    nb = nbformat.read(solution, as_version=4)
    results = grade.run_notebook(nb, cwd=solution.parent)
    assert not any(r.error for r in results), "the solution notebook raised:\n" + _describe(results)
    checks = [r for r in results if r.check]
    assert checks, "no cell tagged 'check'"
    for r in checks:
        assert "✓" in r.stdout, f"check cell {r.cell_id} printed no ✓ line: {r.stdout!r}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_student_copy_is_fresh(solution):
    student = EXERCISES / "student" / solution.name
    assert student.exists(), f"{student} missing: run python exercises/make_student.py"
    assert student.read_text(encoding="utf-8") == make_student.render(solution), (
        f"{student.relative_to(ROOT)} is stale: run python exercises/make_student.py")


def test_no_orphan_student_copies():
    names = {p.name for p in SOLUTIONS}
    orphans = [p.name for p in (EXERCISES / "student").glob("*.ipynb") if p.name not in names]
    assert not orphans, f"student copies without a solution: {orphans}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_check_cells_are_tagged_and_identical(solution):
    """Cells that call a check_ function are tagged 'check', and the student gets them verbatim."""
    sol = nbformat.read(solution, as_version=4)
    stu = nbformat.read(EXERCISES / "student" / solution.name, as_version=4)
    for cell in sol.cells:
        if cell.cell_type == "code" and CHECK_CALL.search(cell.source):
            assert grade.is_check(cell), f"cell {cell.id} calls a check but is not tagged 'check'"
    sol_checks = [(c.id, c.source) for c in sol.cells if grade.is_check(c)]
    stu_checks = [(c.id, c.source) for c in stu.cells if grade.is_check(c)]
    assert sol_checks == stu_checks
    for cell in stu.cells:
        assert make_student.BEGIN not in cell.source, f"solution marker left in student cell {cell.id}"
        assert not cell.get("outputs"), f"student cell {cell.id} has outputs"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_every_student_check_fails(solution):
    student = EXERCISES / "student" / solution.name
    results = grade.run_notebook(nbformat.read(student, as_version=4), cwd=student.parent)
    others = [r for r in results if not r.check and r.error]
    assert not others, "cells that are not checks must run in the student copy:\n" + _describe(others)
    for r in (r for r in results if r.check):
        assert r.error in STUB_ERRORS, (
            f"check cell {r.cell_id} ({r.source.strip()}) should fail on the stubs with NotImplementedError "
            f"or AssertionError, got {r.error or 'no error'}")


def _run_in_process(nb, cwd: Path, monkeypatch, only: set[str] | None = None) -> dict[str, BaseException | None]:
    """Execute the notebook's code cells in this process (much faster than a kernel); check cell -> error.

    The check cells are armed as the grader arms them; with `only`, the other check cells are skipped."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "checks" or m.startswith("checks.")]:
        monkeypatch.delitem(sys.modules, name)
    armed, _ = grade.arm(nb)
    namespace, results = {"__name__": "__main__"}, {}
    for cell in armed.cells:
        if cell.cell_type != "code" or (only is not None and grade.is_check(cell) and cell.id not in only):
            continue
        source = "\n".join(line for line in cell.source.split("\n") if not line.lstrip().startswith(("%", "!")))
        try:
            exec(compile(source, f"<cell {cell.id}>", "exec"), namespace)
            error = None
        except Exception as e:  # noqa: BLE001 - any failure of a check counts
            error = e
        if grade.is_check(cell):
            results[cell.id] = error
        elif error is not None:
            raise AssertionError(f"non-check cell {cell.id} raised {type(error).__name__}: {error}") from error
    for name in [m for m in sys.modules if m == "checks" or m.startswith("checks.")]:
        del sys.modules[name]
    return results


def _mutants():
    for solution in SOLUTIONS:
        path = solution.with_suffix(".mutants.json")
        if not path.exists():
            yield pytest.param(solution, None, id=f"{solution.stem}-missing-mutants")
            continue
        for mutant in json.loads(path.read_text(encoding="utf-8")):
            yield pytest.param(solution, mutant, id=f"{solution.stem}-{mutant['name']}")


@pytest.mark.parametrize(("solution", "mutant"), list(_mutants()))
def test_wrong_solution_fails_a_check(solution, mutant, monkeypatch):
    assert mutant is not None, (f"add {solution.with_suffix('.mutants.json').name}: a list of subtly wrong "
                                "solutions ({name, old, new}) that the checks must catch (see exercises/README.md)")
    nb = nbformat.read(solution, as_version=4)
    hits = [c for c in nb.cells if c.cell_type == "code" and mutant["old"] in c.source]
    assert len(hits) == 1 and hits[0].source.count(mutant["old"]) == 1, (
        f"mutant {mutant['name']!r}: its 'old' text must occur exactly once in the solution's code cells")
    hits[0].source = hits[0].source.replace(mutant["old"], mutant["new"])
    results = _run_in_process(nb, solution.parent, monkeypatch)
    assert any(e is not None for e in results.values()), f"no check caught the mutant {mutant['name']!r}"


def test_unmodified_solution_passes_in_process(monkeypatch):
    """The in-process runner used for the mutants agrees with the kernel: the solutions pass."""
    for solution in SOLUTIONS:
        results = _run_in_process(nbformat.read(solution, as_version=4), solution.parent, monkeypatch)
        assert not any(results.values()), {k: repr(v) for k, v in results.items() if v}


# --- make_student on small synthetic cells -----------------------------------------------------------

def test_stub_keeps_signature_and_indentation():
    src = ("class A:\n    def f(self, x):\n        \"\"\"doc\"\"\"\n        ### BEGIN SOLUTION\n"
           "        return x + 1\n        ### END SOLUTION\n\n    def g(self):\n        return 2")
    out = make_student.stub_source(src)
    assert "return x + 1" not in out and "def f(self, x):" in out and '"""doc"""' in out
    assert '        raise NotImplementedError("A.f: your code here")' in out
    assert "    def g(self):\n        return 2" in out
    compile(out, "<stub>", "exec")


@pytest.mark.parametrize("src", [
    "def f():\n    ### BEGIN SOLUTION\n    return 1",  # unclosed
    "def f():\n    return 1\n    ### END SOLUTION",  # END without BEGIN
    "### BEGIN SOLUTION\nx = 1\n### END SOLUTION",  # not inside a function
    "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION",  # nested
])
def test_bad_markers_are_rejected(src):
    with pytest.raises(ValueError):
        make_student.stub_source(src)


def test_grading_restores_tampered_and_deleted_checks():
    official = nbformat.read(EXERCISES / "student" / SOLUTIONS[0].name, as_version=4)
    submission = nbformat.read(EXERCISES / "student" / SOLUTIONS[0].name, as_version=4)
    checks = [c for c in submission.cells if grade.is_check(c)]
    checks[0].source = "pass  # the student 'fixed' the check"
    submission.cells.remove(checks[-1])
    graded = grade.with_official_checks(submission, official)
    want = [(c.id, c.source) for c in official.cells if grade.is_check(c)]
    got = [(c.id, c.source) for c in graded.cells if grade.is_check(c)]
    assert sorted(got) == sorted(want)


# --- the checks measure the student's work, not the library's --------------------------------------------

def _check_calls(cell) -> list[tuple[str, str, list[str]]]:
    """(module, check, [argument names]) for every check_ call in a check cell."""
    tree = ast.parse(cell.source)
    modules = {alias.name: node.module.split(".", 1)[1] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("checks.")
               for alias in node.names}
    return [(modules.get(node.func.id), node.func.id, [a.id for a in node.args if isinstance(a, ast.Name)])
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_")]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_check_cells_import_their_checks_and_name_the_answers(solution, monkeypatch):
    """Each check cell imports its check (so rebinding the name before does nothing); each check has @answers."""
    monkeypatch.syspath_prepend(str(EXERCISES))
    nb = nbformat.read(solution, as_version=4)
    for cell in (c for c in nb.cells if grade.is_check(c)):
        for module, check, _ in _check_calls(cell):
            assert module is not None, (f"check cell {cell.id} calls {check} without importing it in the same "
                                        f"cell: add `from checks.<topic> import {check}` at its top")
            fn = getattr(importlib.import_module(f"checks.{module}"), check)
            assert hasattr(fn, "answers"), (f"checks/{module}.py: {check} has no @answers(...) naming the library "
                                            "objects that answer each argument (() for none)")
    for name in [m for m in sys.modules if m == "checks" or m.startswith("checks.")]:
        monkeypatch.delitem(sys.modules, name)


def _answer_cases():
    sys.path.insert(0, str(EXERCISES))
    try:
        for solution in SOLUTIONS:
            nb = nbformat.read(solution, as_version=4)
            for cell in (c for c in nb.cells if grade.is_check(c)):
                for module, check, args in _check_calls(cell):
                    fn = getattr(importlib.import_module(f"checks.{module}"), check)
                    params, declared = list(inspect.signature(fn).parameters), getattr(fn, "answers", {})
                    for name, param in zip(args, params, strict=False):
                        library = next((a for a in declared.get(param, ()) if callable(a)), None)
                        if library is None:
                            continue
                        for how in ("imported", "wrapped"):
                            yield pytest.param(solution, cell.id, name, library.__module__, library.__name__, how,
                                               id=f"{solution.stem}-{cell.id}-{name}-{how}")
    finally:
        sys.path.remove(str(EXERCISES))
        for name in [m for m in sys.modules if m == "checks" or m.startswith("checks.")]:
            del sys.modules[name]


@pytest.mark.parametrize(("solution", "cell_id", "name", "module", "attr", "how"), list(_answer_cases()))
def test_library_answer_fails_its_check(solution, cell_id, name, module, attr, how, monkeypatch):
    """The solution with the library's answer put in the student's place (imported, or wrapped) fails."""
    nb = nbformat.read(solution, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if c.get("id") == cell_id)
    if how == "imported":
        source = f"from {module} import {attr} as {name}"
    else:
        source = (f"from {module} import {attr} as _library\n"
                  f"if isinstance(_library, type):\n    class {name}(_library):\n        pass\n"
                  f"else:\n    def {name}(*args, **kwargs):\n        return _library(*args, **kwargs)")
    cheat = nbformat.v4.new_code_cell(source)
    cheat.id = "library-answer"
    nb.cells.insert(at, cheat)
    results = _run_in_process(nb, solution.parent, monkeypatch, only={cell_id})
    error = results[cell_id]
    assert error is not None, f"check cell {cell_id} passed with {module}.{attr} {how} as {name}"
    assert isinstance(error, AssertionError), repr(error)
    # refused as the library's; a wrapper around a function of another signature may fail on its call first
    assert "not the library's" in str(error) or (how == "wrapped" and "TypeError" in str(error)), repr(error)


# --- the grader, end to end in a kernel: a submission cannot pass without the work -----------------------

WRONG = ("def accept_reject_batched(p, q, d, generator=None):\n"
         "    return torch.zeros(len(d), dtype=torch.long), d[:, 0]\n\n"
         "def expected_tokens(alpha, gamma):\n    return 0.0\n\n"
         "def best_gamma(alpha, c, gamma_max=16):\n    return 1, 0.0\n\n"
         "def accept_multi(p, q, x, generator=None):\n    return 0, x[:1]\n")
CHECKS_03 = ("check_accept_reject_batched", "check_expected_tokens", "check_best_gamma", "check_accept_multi")
TAMPER = {
    "rebinds the checks": " = ".join(CHECKS_03) + " = lambda *args, **kwargs: print('✓ passed')",
    "patches the checks module": "import checks.speculative\n\n" + "\n".join(
        f"checks.speculative.{name} = lambda *args, **kwargs: None" for name in CHECKS_03),
    "patches the library it is compared with": ("import minimal.speculative\n\n"
                                                "minimal.speculative.expected_tokens = expected_tokens"),
    "swallows the checks' errors": "get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)",
    "imports the answers from minimal": ("from minimal.speculative import accept_reject as accept_reject_batched\n"
                                         "from minimal.speculative import accept_reject as accept_multi\n"
                                         "from minimal.speculative import expected_tokens"),
}


@pytest.mark.parametrize("tamper", list(TAMPER), ids=[t.replace(" ", "-") for t in TAMPER])
def test_grader_fails_a_tampered_submission(tamper, tmp_path):
    """Exercise 03 with wrong answers in place of the stubs and a cell that tries to pass anyway: 0 of 4."""
    official = EXERCISES / "student" / "03_speculative.ipynb"
    nb = nbformat.read(official, as_version=4)
    nb.cells = [c for c in nb.cells if c.get("id") not in ("accept-reject", "expected-tokens",
                                                           "best-gamma", "accept-multi")]
    cell = nbformat.v4.new_code_cell(WRONG + "\n" + TAMPER[tamper])
    cell.id = "tamper"
    nb.cells.insert(next(i for i, c in enumerate(nb.cells) if c.get("id") == "setup") + 1, cell)
    path = tmp_path / official.name
    nbformat.write(nb, path)
    report = grade.grade(path)
    assert report.score == (0, len(CHECKS_03)), [(c.cell_id, c.error, c.message) for c in report.checks]
    assert not any(c.error for c in report.cells if not c.check), "the tampering cell itself must run"
    assert grade.main([str(path)]) == 1


def test_grader_fails_an_empty_skeleton_and_passes_the_solution(tmp_path, capsys):
    student = EXERCISES / "student" / "03_speculative.ipynb"
    assert grade.main([str(student)]) == 1
    assert f"0/{len(CHECKS_03)} checks passed" in capsys.readouterr().out
    solution = tmp_path / student.name  # the solution, handed in under the exercise's name
    nbformat.write(nbformat.read(EXERCISES / "solutions" / student.name, as_version=4), solution)
    assert grade.main([str(solution)]) == 0
    assert f"{len(CHECKS_03)}/{len(CHECKS_03)} checks passed" in capsys.readouterr().out
