"""The house rules of minimal/, checked: one idea per file, short signatures, imports that point down."""

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "minimal"
FILES = sorted(ROOT.glob("*.py"))
FOUNDATIONS = {"__init__", "data", "transformer", "kv_cache", "timing", "checkpoints", "training", "toybench"}
SYSTEM = {"__main__", "bench", "train", "pipeline", "pipeline_session", "pipeline_bench", "terminal_game", "live",
          "distributed", "serve", "continuous_batching", "pipeline_parallel", "distributed_bench"}


def imported_modules(path: Path) -> set[str]:
    """The minimal.* modules a file imports (relative or absolute), at any depth of the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("minimal."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("minimal."))
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_reads_in_one_sitting(path):
    n = len(path.read_text().splitlines())
    assert n <= 350, f"{path.name} has {n} lines: one idea per file, readable top to bottom in <= 350"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_imports_point_down(path):
    """A foundation imports only foundations; nothing outside the system layer imports the system layer;
    no file imports from tutorials/, tests/ or exercises/."""
    name, deps = path.stem, imported_modules(path)
    if name in FOUNDATIONS:
        assert deps <= FOUNDATIONS, f"foundation {name} imports {sorted(deps - FOUNDATIONS)}"
    if name not in SYSTEM:
        assert not deps & SYSTEM, f"{name} imports the system layer {sorted(deps & SYSTEM)}"
    text = path.read_text()
    assert not any(f"from {d}" in text or f"import {d}" in text for d in ("tutorials", "tests", "exercises"))


def test_no_public_function_takes_more_than_ten_parameters():
    import importlib

    long = []
    for path in FILES:
        if path.stem == "__main__":
            continue
        module = importlib.import_module(f"minimal.{path.stem}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            functions = [(name, obj)] if inspect.isfunction(obj) else \
                [(f"{name}.{m}", f) for m, f in vars(obj).items() if inspect.isfunction(f) and not m.startswith("_")] \
                if inspect.isclass(obj) else []
            for fname, f in functions:
                params = [p for p in inspect.signature(f).parameters if p != "self"]
                if len(params) > 10:
                    long.append(f"{path.stem}.{fname} ({len(params)})")
    assert not long, f"public functions over 10 parameters: {long}"


def test_checkpoints_load_safely():
    for path in FILES:
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "torch.load":
                kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
                assert kw.get("weights_only") == "True", f"{path.name}: torch.load without weights_only=True"
