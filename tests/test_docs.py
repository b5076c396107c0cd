"""The words around the code: tutorials and README teach the reader, and the student's install runs them.

- no tutorial and not the README speaks of the project's own history (a list of phrases, grepped);
- every tutorial has at most 2,500 words of prose; the README at most 1,200 before its link to the results;
- the student's install line (`pip install -e ".[notebooks]"`) provides every package that the library,
  the tutorials, the exercises and the grader import;
- the library imports without Jupyter (only the live view, minimal/live.py, needs the notebooks extra).
"""

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
README = ROOT / "README.md"
MAX_TUTORIAL_WORDS = 2500
MAX_README_WORDS = 1200  # before the link to docs/results.md

# Words about how the project got here, which a reader does not need: they belong in commit messages,
# issues and docs/results.md. Matched case-insensitively, as whole words.
HISTORY = [
    "shipped before", "the checkpoint shipped", "the issue", "issue's", "issue #", "this issue",
    "probes outside", "the bench's goal", "goal within", "its goal", "the goal of", "goal:", "(goal",
    "was missed", "missed", "re-measured", "remeasured", "retrained", "we first tried", "earlier version",
    "old checkpoint", "old figures", "the old check", "used to say", "used to be", "in an earlier",
    "this session", "lab notebook", "no longer ships", "the previous checkpoint", "before the fix",
    "after the fix", "reviewer", "the review", "TODO", "FIXME",
]
_HISTORY = re.compile(r"(?<!\w)(" + "|".join(re.escape(p) for p in HISTORY) + r")(?!\w)", re.IGNORECASE)


def prose(nb_path: Path) -> str:
    """The markdown of a notebook: what the reader reads."""
    return "\n".join(c.source for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "markdown")


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("path", [*TUTORIALS, README], ids=[p.name for p in [*TUTORIALS, README]])
def test_no_word_of_the_projects_history(path):
    text = prose(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    hits = sorted({m.group(0).lower() for m in _HISTORY.finditer(text)})
    assert not hits, (f"{path.relative_to(ROOT)} speaks of the project's history ({hits}); a tutorial teaches: "
                      "move what the experiments taught to docs/results.md")


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_prose_is_short(path):
    n = words(prose(path))
    assert n <= MAX_TUTORIAL_WORDS, f"{path.name}: {n} words of prose (at most {MAX_TUTORIAL_WORDS})"


def test_readme_is_short_before_the_results_link():
    text = README.read_text(encoding="utf-8")
    at = text.find("](docs/results.md")
    assert at >= 0, "the README links to docs/results.md"
    n = words(text[:at])
    assert n <= MAX_README_WORDS, f"README: {n} words before the results link (at most {MAX_README_WORDS})"


# --- the student's install ----------------------------------------------------------------------------

def _imports(source: str) -> set[str]:
    source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _student_imports() -> set[str]:
    found = set()
    for path in [*(ROOT / "minimal").glob("*.py"), *(ROOT / "exercises").glob("*.py"),
                 *(ROOT / "exercises" / "checks").glob("*.py")]:
        found |= _imports(path.read_text(encoding="utf-8"))
    for path in [*TUTORIALS, *(ROOT / "exercises" / "solutions").glob("*.ipynb")]:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                found |= _imports(cell.source)
    local = {"minimal", "checks", "__future__"}
    return {m for m in found - local if m not in sys.stdlib_module_names}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """The distributions installed with `names`: their requirements, recursively (markers for extras skipped)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_student_install_provides_every_import():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    direct = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["notebooks"]}
    installed = _closure(direct)
    providers = md.packages_distributions()
    missing = {}
    for module in sorted(_student_imports()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, ("imported by the library, a tutorial or the exercises, but not installed by "
                         f'pip install -e ".[notebooks]": {missing}; add them to the notebooks extra')


def test_library_imports_without_jupyter():
    """Every minimal module but the live view imports with Jupyter, widgets, matplotlib and scipy absent."""
    blocked = ["jupyterlab", "notebook", "IPython", "ipykernel", "ipywidgets", "anywidget", "traitlets",
               "matplotlib", "scipy", "nbformat", "nbclient"]
    modules = sorted(p.stem for p in (ROOT / "minimal").glob("*.py") if p.stem not in ("live", "__main__", "__init__"))
    code = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module("minimal." + m)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
