"""The classroom exercises (exercises/): solutions pass, student copies are fresh, every stub fails.

For every exercises/solutions/NN_topic.ipynb:
- the solution notebook runs in a fresh kernel (cwd = its folder) without any error, so every check passes;
- the committed student copy equals a fresh `make_student` generation;
- the student copy runs in a fresh kernel, every check cell fails (NotImplementedError or AssertionError)
  and no other cell fails, so no check passes vacuously;
- each known wrong solution in NN_topic.mutants.json (an off-by-one, a missing mask offset...) fails at
  least one check: the checks are meaningful, not only "not a stub".
"""

import importlib.util
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


def _run_in_process(nb, cwd: Path, monkeypatch) -> dict[str, BaseException | None]:
    """Execute the notebook's code cells in this process (much faster than a kernel); check cell -> error."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "checks" or m.startswith("checks.")]:
        monkeypatch.delitem(sys.modules, name)
    namespace, results = {"__name__": "__main__"}, {}
    for cell in nb.cells:
        if cell.cell_type != "code":
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
