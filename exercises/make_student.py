"""Generate the student copies of the exercises from their solution notebooks (nbgrader-style markers).

    python exercises/make_student.py           # (re)write exercises/student/*.ipynb
    python exercises/make_student.py --check   # exit 1 if a committed student copy is stale or orphaned

In a solution notebook (exercises/solutions/NN_topic.ipynb), the lines between `### BEGIN SOLUTION` and
`### END SOLUTION` inside a function body are replaced, at the same indentation, by

    # YOUR CODE HERE
    raise NotImplementedError("<function name>: your code here")

so the signature and docstring stay. In a markdown cell a region becomes "YOUR ANSWER HERE". Outputs,
execution counts and cell metadata other than tags are dropped; the JSON is written by nbformat, so a
fresh generation is byte-identical to the committed copy.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOLUTIONS, STUDENT = HERE / "solutions", HERE / "student"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_TAG = "check"
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+(\w+)")
_CLASS = re.compile(r"^(\s*)class\s+(\w+)")


def _owner(lines: list[str], i: int, indent: int) -> str:
    """Name of the function (Class.method) whose body holds line i."""
    name, level = None, indent
    for line in reversed(lines[:i]):
        for pattern in (_DEF, _CLASS):
            m = pattern.match(line)
            if m and len(m.group(1)) < level:
                if name is None and pattern is _DEF:
                    name, level = m.group(2), len(m.group(1))
                elif name is not None and pattern is _CLASS:
                    return f"{m.group(2)}.{name}"
                elif name is not None:
                    level = len(m.group(1))
    if name is None:
        raise ValueError
    return name


def stub_source(source: str, markdown: bool = False, where: str = "cell") -> str:
    """Replace every solution region of one cell's source."""
    lines, out, i = source.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == END:
            raise ValueError(f"{where}: '{END}' without a '{BEGIN}' (line {i + 1})")
        if line.strip() != BEGIN:
            out.append(line)
            i += 1
            continue
        try:
            j = next(j for j in range(i + 1, len(lines)) if lines[j].strip() in (BEGIN, END))
        except StopIteration:
            raise ValueError(f"{where}: '{BEGIN}' (line {i + 1}) has no '{END}'") from None
        if lines[j].strip() == BEGIN:
            raise ValueError(f"{where}: nested '{BEGIN}' at line {j + 1}")
        indent = line[: len(line) - len(line.lstrip())]
        if markdown:
            out.append("YOUR ANSWER HERE")
        else:
            try:
                owner = _owner(lines, i, len(indent))
            except ValueError:
                raise ValueError(f"{where}: the solution region at line {i + 1} is not inside a function body; "
                                 "put it in a function so the stub keeps its signature") from None
            out += [f"{indent}# YOUR CODE HERE", f'{indent}raise NotImplementedError("{owner}: your code here")']
        i = j + 1
    return "\n".join(out)


def make_student(solution: Path) -> nbformat.NotebookNode:
    """The student copy of one solution notebook."""
    nb = nbformat.read(solution, as_version=4)
    cells, n_regions, n_checks = [], 0, 0
    for index, cell in enumerate(nb.cells):
        where = f"{solution.name}, cell {index} ({cell.get('id', '?')})"
        source = cell.source
        n_regions += source.count(BEGIN)
        tags = list(cell.metadata.get("tags", []))
        n_checks += CHECK_TAG in tags
        if cell.cell_type == "code":
            source = stub_source(source, where=where)
            if BEGIN in cell.source and not any(s.lstrip().startswith(("%", "!")) for s in source.split("\n")):
                ast.parse(source)  # the stub must still be valid Python
            new = nbformat.v4.new_code_cell(source)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(stub_source(source, markdown=True, where=where))
        else:
            new = nbformat.v4.new_raw_cell(source)
        new.id = cell.get("id") or f"cell-{index}"
        if tags:
            new.metadata["tags"] = tags
        cells.append(new)
    if n_regions == 0:
        raise ValueError(f"{solution.name}: no '{BEGIN}' region, so the student copy would be the solution")
    if n_checks == 0:
        raise ValueError(f"{solution.name}: no code cell tagged '{CHECK_TAG}'")
    metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    student = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.validate(student)
    return student


def render(solution: Path) -> str:
    return nbformat.writes(make_student(solution)) + "\n"


def solutions(solutions_dir: Path = SOLUTIONS) -> list[Path]:
    return sorted(p for p in solutions_dir.glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the committed copies are fresh")
    args = parser.parse_args(argv)
    stale = []
    for solution in solutions():
        target, text = STUDENT / solution.name, render(solution)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target)
        if not args.check:
            STUDENT.mkdir(exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target.relative_to(HERE.parent)}")
    orphans = sorted(set(STUDENT.glob("*.ipynb")) - {STUDENT / s.name for s in solutions()})
    for orphan in orphans:
        print(f"{orphan.relative_to(HERE.parent)} has no solution in exercises/solutions/", file=sys.stderr)
    if args.check:
        for target in stale:
            print(f"{target.relative_to(HERE.parent)} is stale: run python exercises/make_student.py",
                  file=sys.stderr)
        return 1 if stale or orphans else 0
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
