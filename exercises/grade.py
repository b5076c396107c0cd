"""Run exercise notebooks and report their checks: for students checking their work and for grading.

    python exercises/grade.py exercises/student/01_kv_cache.ipynb        # one notebook
    python exercises/grade.py submissions/*/01_kv_cache.ipynb --csv grades.csv

Each notebook runs top to bottom in a fresh kernel whose working directory is exercises/student/, so it
imports the checks from this repository's exercises/checks/. Before it runs:

- every cell tagged `check` is replaced by the official one from the student copy of the same exercise
  (matched by cell id; a deleted check is appended at the end), so an edited check cannot pass;
- every check cell is armed: it starts by dropping the `checks` modules the notebook imported (so the
  check imports them fresh, and a check name or function the notebook rebound or patched is gone), then
  refuses to run if the notebook replaced a function of `minimal` or `torch` with its own, and ends by
  printing a secret token.

A check passes when its cell runs to its end: no error, and the token printed (a notebook that swallows
errors, say with a custom exception handler, stops the cell before the token and fails). The checks
themselves fail a function that is, or calls, the library's own answer (checks/common.py, `answers`).
Exit status: 0 if every check of every notebook passed, else 1.
"""

from __future__ import annotations

import argparse
import copy
import csv
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
STUDENT = HERE / "student"
CHECK_TAG = "check"


def is_check(cell) -> bool:
    return cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", [])


@dataclass
class CellResult:
    index: int
    cell_id: str
    source: str
    check: bool
    error: str | None = None  # exception class name, None if the cell ran cleanly
    message: str = ""
    stdout: str = ""


@dataclass
class Report:
    path: Path
    cells: list[CellResult] = field(default_factory=list)

    @property
    def checks(self) -> list[CellResult]:
        return [c for c in self.cells if c.check]

    @property
    def score(self) -> tuple[int, int]:
        return sum(c.error is None for c in self.checks), len(self.checks)


def with_official_checks(nb, official) -> nbformat.NotebookNode:
    """A copy of nb whose check cells are the official ones (by id); missing checks are appended."""
    nb = copy.deepcopy(nb)
    checks = {c.id: c for c in official.cells if is_check(c)}
    seen = set()
    for i, cell in enumerate(nb.cells):
        if cell.get("id") in checks:
            nb.cells[i] = copy.deepcopy(checks[cell.id])
            seen.add(cell.id)
        elif is_check(cell):  # a check cell the student copy does not have: not graded
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != CHECK_TAG]
    nb.cells += [copy.deepcopy(c) for cid, c in checks.items() if cid not in seen]
    return nb


PROLOGUE = """\
# -- armed by exercises/grade.py: the checks are imported fresh, the library must be as shipped --
import sys as _grade_sys
_grade_sys.path.insert(0, {exercises!r})
for _grade_m in [m for m in _grade_sys.modules if m == "checks" or m.startswith("checks.")]:
    del _grade_sys.modules[_grade_m]
with __import__("warnings").catch_warnings():
    __import__("warnings").simplefilter("ignore")
    _grade_patched = [f"{{n}}.{{a}}" for n, mod in list(_grade_sys.modules.items())
                      if n.split(".")[0] in ("minimal", "torch") and mod is not None
                      for a, v in list(getattr(mod, "__dict__", {{}}).items())
                      if getattr(v, "__module__", None) == "__main__"]
if _grade_patched:
    raise RuntimeError("the notebook replaced library functions with its own, which the checks rely on: "
                       + ", ".join(_grade_patched[:5]))
# -- the official check --
"""
EPILOGUE = "\n# -- armed by exercises/grade.py --\nprint({token!r})\n"
NOT_COMPLETED = "CheckNotCompleted"


def arm(nb, exercises: Path = HERE) -> tuple[nbformat.NotebookNode, dict[str, str]]:
    """A copy of nb whose check cells import their checks fresh and print a token at their end."""
    nb, tokens = copy.deepcopy(nb), {}
    for cell in nb.cells:
        if is_check(cell):
            token = f"check completed {secrets.token_hex(8)}"
            tokens[cell.get("id", "")] = token
            cell.source = PROLOGUE.format(exercises=str(exercises)) + cell.source + EPILOGUE.format(token=token)
    return nb, tokens


def run_notebook(nb, cwd: Path = STUDENT, timeout: int = 300) -> list[CellResult]:
    """Execute nb, check cells armed, in a fresh kernel (errors allowed) and report every code cell."""
    originals = [c.source for c in nb.cells]
    nb, tokens = arm(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    results = []
    for index, (cell, source) in enumerate(zip(nb.cells, originals, strict=True)):
        if cell.cell_type != "code":
            continue
        result = CellResult(index, cell.get("id", ""), source, is_check(cell))
        for out in cell.outputs:
            if out.output_type == "error":
                result.error, result.message = out.ename, out.evalue
            elif out.output_type == "stream" and out.name == "stdout":
                result.stdout += out.text
        if result.check:
            token = tokens[result.cell_id]
            if token + "\n" in result.stdout:
                result.stdout = result.stdout.replace(token + "\n", "")
            elif result.error is None:
                result.error = NOT_COMPLETED
                result.message = ("the check cell stopped before its end without an error shown: something "
                                  "in the notebook hid the check's failure")
        results.append(result)
    return results


def grade(path: Path, official: Path | None = None, timeout: int = 300) -> Report:
    nb = nbformat.read(path, as_version=4)
    official = official or STUDENT / path.name
    if official.exists():
        nb = with_official_checks(nb, nbformat.read(official, as_version=4))
    else:
        print(f"warning: no official copy {official}; grading with the notebook's own checks", file=sys.stderr)
    return Report(Path(path), run_notebook(nb, timeout=timeout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--exercise", type=Path, help="official student copy (default: by file name)")
    parser.add_argument("--csv", type=Path, help="write one row per notebook: path, passed, total, failed")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = parser.parse_args(argv)
    rows, ok = [], True
    for path in args.notebooks:
        report = grade(path, args.exercise, args.timeout)
        passed, total = report.score
        ok &= passed == total
        print(f"== {path}: {passed}/{total} checks passed")
        for c in report.checks:
            first = c.source.strip().splitlines()[0] if c.source.strip() else c.cell_id
            if c.error is None:
                print(f"  PASS  {first}")
            else:
                print(f"  FAIL  {first}\n        {c.error}: " + c.message.replace("\n", "\n        "))
        for c in report.cells:
            if not c.check and c.error is not None:
                print(f"  note: cell {c.index} ({c.cell_id}) raised {c.error}: {c.message.splitlines()[0]}")
        failed = [c.cell_id for c in report.checks if c.error is not None]
        rows.append([str(path), passed, total, " ".join(failed)])
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([["notebook", "passed", "total", "failed_checks"], *rows])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
