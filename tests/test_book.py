"""The HTML book (book/): it builds offline with warnings as errors, and every tutorial page holds its figures.

Reuses book/_build/html when its last successful build (build-ok.txt) is newer than every source;
otherwise builds into a temporary folder. Needs the `book` extra (jupyter-book<2); skipped without it.
"""

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("jupyter_book", reason='the book needs the "book" extra: pip install -e ".[book]"')

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "book" / "build.py"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
IMG_SRC = re.compile(r'<img\b[^>]*?\bsrc="([^"]+)"')


def _sources(root: Path) -> list[Path]:
    files = [root / "README.md", *(root / "book").glob("*.*"), *(root / "tutorials").glob("*.ipynb"),
             *(root / "exercises" / "student").glob("*.ipynb"), root / "exercises" / "README.md",
             *(root / "minimal").glob("*.py")]
    return [f for f in files if f.is_file()]


def build(root: Path, output: Path) -> Path:
    proc = subprocess.run([sys.executable, str(BUILD), "--root", str(root), "--output", str(output)],
                          capture_output=True, text=True, timeout=600)
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "book build failed:\n" + "\n".join(warnings or [proc.stdout[-3000:], proc.stderr])
    return output / "_build" / "html"


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    existing = ROOT / "book" / "_build" / "html"
    stamp = existing / "build-ok.txt"
    if stamp.exists() and stamp.stat().st_mtime > max(f.stat().st_mtime for f in _sources(ROOT)):
        return existing
    return build(ROOT, tmp_path_factory.mktemp("book"))


def image_outputs(nb_path: Path) -> int:
    nb = nbformat.read(nb_path, as_version=4)
    return sum(any(m in out.get("data", {}) for m in IMAGE_MIMES)
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def images_on_page(page: Path) -> list[str]:
    """The img sources of a page that point at files present in the built site."""
    found = []
    for src in IMG_SRC.findall(page.read_text(encoding="utf-8")):
        if src.startswith("data:image/"):
            found.append(src[:30])
        elif not re.match(r"^[a-z]+:", src) and (page.parent / src.split("#")[0]).is_file():
            found.append(src)
    return found


def check_pages(html: Path, root: Path) -> None:
    for nb in sorted((root / "tutorials").glob("*.ipynb")):
        page = html / "tutorials" / f"{nb.stem}.html"
        assert page.is_file(), f"no page for {nb.name}"
        expected, found = image_outputs(nb), images_on_page(page)
        assert len(found) >= expected, f"{page.name}: {expected} stored figures, {len(found)} images shown: {found}"


def test_book_has_every_tutorial_with_its_figures(html):
    tutorials = sorted((ROOT / "tutorials").glob("*.ipynb"))
    assert tutorials, "no tutorials/*.ipynb"
    check_pages(html, ROOT)


def test_book_has_intro_exercises_and_map(html):
    assert (html / "README.html").is_file() and (html / "index.html").is_file()
    assert (html / "map.html").is_file() and (html / "exercises" / "README.html").is_file()
    assert "Measured figures" in (html / "docs" / "results.html").read_text(encoding="utf-8")
    for nb in (ROOT / "exercises" / "student").glob("*.ipynb"):
        page = html / "exercises" / "student" / f"{nb.stem}.html"
        assert page.is_file(), f"no page for exercise {nb.name}"
        assert "NotImplementedError" in page.read_text(encoding="utf-8"), "the book must show the student copy"
    map_page = (html / "map.html").read_text(encoding="utf-8")
    for nb in (ROOT / "tutorials").glob("*.ipynb"):
        assert f"tutorials/{nb.stem}.html" in map_page, f"the map does not link {nb.name}"


def _figure_png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_builder_on_a_dummy_tutorial(tmp_path):
    """The builder itself, on a throwaway repository copy (a dummy tutorial 01 stands in for the real
    one, which the exercise links to): stored figures and widget outputs render from
    the notebook without execution, links to folders/sources are adapted, and a broken link fails."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "minimal", root / "minimal", ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.copytree(ROOT / "exercises", root / "exercises", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "docs", root / "docs")
    (root / "tutorials").mkdir()
    (root / "README.md").write_text(
        "# Dummy\n\nSee [the tutorial](tutorials/01_kv_cache.ipynb), [the library](minimal), "
        "[the cache](minimal/kv_cache.py) and [the exercises](exercises/README.md).\n\n## The map\n",
        encoding="utf-8")
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Dummy tutorial\n\nA figure and a widget."),
                nbformat.v4.new_code_cell("from minimal.kv_cache import KVCache\nplot()", execution_count=1),
                nbformat.v4.new_code_cell("slider", execution_count=2)]
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={"image/png": _figure_png(),
                                                                       "text/plain": "<Figure>"})]
    nb.cells[2].outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "IntSlider(value=3)"})]
    nbformat.write(nb, root / "tutorials" / "01_kv_cache.ipynb")
    for real in (ROOT / "tutorials").glob("*.ipynb"):  # the exercises link to every tutorial: stand-ins
        if real.name != "01_kv_cache.ipynb":
            stand_in = nbformat.v4.new_notebook(metadata=nb.metadata)
            stand_in.cells = [nbformat.v4.new_markdown_cell(f"# Stand-in for {real.stem}")]
            nbformat.write(stand_in, root / "tutorials" / real.name)
    html = build(root, tmp_path / "out")
    check_pages(html, root)
    assert len(images_on_page(html / "tutorials" / "01_kv_cache.html")) >= 1
    assert "minimal-kv_cache.html" in (html / "README.html").read_text(encoding="utf-8")

    (root / "README.md").write_text("# Dummy\n\n[broken](tutorials/99_missing.ipynb)\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="book build failed"):
        build(root, tmp_path / "out2")
