"""Build the HTML book offline with Jupyter Book 1, warnings as errors.

    python book/build.py                       # -> book/_build/html/index.html
    python book/build.py --root DIR --output OUT

Sphinx only reads files inside its source folder, so this script stages one: it copies book/_config.yml,
book/_toc.yml and book/map.md next to the repository's README.md (the introduction), tutorials/*.ipynb
(with their stored outputs: nothing is executed), exercises/README.md, exercises/student/*.ipynb, the
results page docs/results.md and a source page per minimal/*.py, keeping the repository's relative
layout so that links between them work. Links are adapted in the staged copies only: a link to
minimal/X.py goes to X's source page, other existing files (an image, data) are copied and become
downloads, a link to a folder or to a markdown file outside the book keeps its text but loses the link;
a link to a missing file stays, and fails the build. The map page is book/map.md with a table generated
from the notebooks (their minimal/ imports and matching exercise). Then it runs

    jupyter-book build <stage> --path-output OUT --warningiserror --nitpick --keep-going

The staged copy lives in OUT/_build/src and the site in OUT/_build/html (OUT defaults to book/); a
successful build writes OUT/_build/html/build-ok.txt.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

BOOK = Path(__file__).resolve().parent
MD_LINK = re.compile(r'(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(\s+"[^"]*")?\s*\)')
IMG_TAG = re.compile(r'<img[^>]*\bsrc="([^"]+)"')
DOC_SUFFIXES = (".md", ".ipynb")


def _title(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return nb_path.stem


def _imports(nb_path: Path) -> list[str]:
    """minimal modules a notebook imports (from minimal.x import ..., import minimal.x)."""
    found = set()
    for cell in nbformat.read(nb_path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minimal."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "minimal":
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("minimal."))
    return sorted(found)


def _fix_links(text: str, rel: Path, root: Path, src: Path, pages: set[Path]) -> str:
    """Adapt a staged page's relative links to the book: pages stay links, minimal/*.py links go to the
    source pages, other existing files (images, data) are copied and become downloads, links to folders or
    to markdown outside the book lose their link but keep their text; missing targets stay (and fail)."""

    def target_path(target: str) -> Path | None:
        path = target.split("#")[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path, re.I) or path.startswith("/"):
            return None
        full = (root / rel.parent / path).resolve()
        try:
            return full.relative_to(root.resolve())
        except ValueError:
            return None

    def copy(repo_rel: Path) -> None:
        if (root / repo_rel).is_file() and not (src / repo_rel).exists():
            (src / repo_rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / repo_rel, src / repo_rel)

    def replace(m: re.Match) -> str:
        bang, label, target = m.group(1), m.group(2), m.group(3)
        repo_rel = target_path(target)
        if repo_rel is None or repo_rel in pages:
            return m.group(0)
        if bang:
            copy(repo_rel)
            return m.group(0)
        anchor = target[len(target.split("#")[0]):]
        if repo_rel.parent == Path("minimal") and repo_rel.suffix == ".py" and (src / "code" /
                                                                                 f"minimal-{repo_rel.stem}.md").exists():
            page = Path(*[".."] * len(rel.parent.parts), "code", f"minimal-{repo_rel.stem}.md")
            return f"[{label}]({page.as_posix()}{anchor})"
        full = root / repo_rel
        if full.is_dir() or (full.is_file() and full.suffix in DOC_SUFFIXES):
            return label  # a folder or a page outside the book: keep the text, drop the link
        copy(repo_rel)
        return m.group(0)

    for m in IMG_TAG.finditer(text):
        repo_rel = target_path(m.group(1))
        if repo_rel is not None:
            copy(repo_rel)
    return MD_LINK.sub(replace, text)


def _stage_links(root: Path, src: Path, rel: Path, pages: set[Path]) -> None:
    path = src / rel
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = _fix_links(cell.source, rel, root, src, pages)
        nbformat.write(nb, path)
    else:
        path.write_text(_fix_links(path.read_text(encoding="utf-8"), rel, root, src, pages), encoding="utf-8")


def stage(root: Path, src: Path) -> list[Path]:
    """Copy everything the book shows into src; returns the staged pages (relative paths)."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    readme = root / "README.md"
    if not readme.is_file():
        raise SystemExit(f"{readme} is missing: the book's introduction is the repository README")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(BOOK / name, src / name)
    pages = [Path("README.md")]
    shutil.copy2(readme, src / "README.md")
    tutorials = sorted((root / "tutorials").glob("*.ipynb"))
    exercises = sorted((root / "exercises" / "student").glob("*.ipynb"))
    for nb in tutorials + exercises + [root / "exercises" / "README.md", root / "docs" / "results.md"]:
        if nb.is_file():
            rel = nb.relative_to(root)
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(nb, src / rel)
            pages.append(rel)

    # one page per library file, showing its source
    modules = sorted(p for p in (root / "minimal").glob("*.py") if p.name != "__init__.py")
    (src / "code").mkdir()
    (src / "minimal").mkdir(exist_ok=True)
    index = ["# The library, file by file", "",
             "Every technique is one readable file of `minimal/`; each page shows one of them in full.", ""]
    for py in modules:
        shutil.copy2(py, src / "minimal" / py.name)
        doc = ast.get_docstring(ast.parse(py.read_text(encoding="utf-8"))) or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        index.append(f"- [`minimal/{py.name}`](minimal-{py.stem}.md): {summary}")
        (src / "code" / f"minimal-{py.stem}.md").write_text(
            f"# `minimal/{py.name}`\n\n```{{literalinclude}} ../minimal/{py.name}\n:language: python\n"
            f":linenos:\n```\n", encoding="utf-8")
    (src / "code" / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")

    # the map: the committed page plus a table generated from the notebooks
    module_names = {p.stem for p in modules}
    exercise_by_stem = {p.stem: p for p in exercises}
    rows = ["| tutorial | minimal/ files it imports | exercise |", "|---|---|---|"]
    for nb in tutorials:
        files = ", ".join(f"[`{m}.py`](code/minimal-{m}.md)" if m in module_names else f"`{m}`"
                          for m in _imports(nb)) or "-"
        ex = exercise_by_stem.get(nb.stem)
        ex_link = f"[{_title(ex)}](exercises/student/{ex.name})" if ex else "-"
        rows.append(f"| [{_title(nb)}](tutorials/{nb.name}) | {files} | {ex_link} |")
    if not tutorials:
        rows.append("| (no tutorials yet) | | |")
    text = (BOOK / "map.md").read_text(encoding="utf-8").replace("{{ generated_table }}", "\n".join(rows))
    (src / "map.md").write_text(text, encoding="utf-8")

    for rel in pages:
        _stage_links(root, src, rel, set(pages))
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=BOOK.parent, help="repository root (default: ..)")
    parser.add_argument("--output", type=Path, default=BOOK, help="the site goes to OUTPUT/_build/html")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    src = args.output.resolve() / "_build" / "src"
    html = args.output.resolve() / "_build" / "html"
    if html.exists():
        shutil.rmtree(html)  # a fresh build: stale pages of removed notebooks must not linger
    stage(args.root.resolve(), src)
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if jb is None:
        raise SystemExit('jupyter-book not found: pip install -e ".[book]"')
    cmd = [jb, "build", str(src), "--path-output", str(args.output.resolve()), "--builder", "html",
           "--warningiserror", "--nitpick", "--keep-going"]
    rc = subprocess.call(cmd)
    stamp = html / "build-ok.txt"  # tests reuse a build that succeeded after the last source change
    if rc == 0:
        stamp.write_text(f"built from {args.root.resolve()}\n", encoding="utf-8")
    print(f"book build {'ok' if rc == 0 else 'FAILED'} in {time.perf_counter() - start:.1f} s: {html / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
