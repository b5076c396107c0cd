"""The live view in a real browser: JupyterLab on a local port, headless Chromium driven by Playwright.

A one-cell notebook starts the live view; the browser presses "right" and later "down" on the page; then
code sent to the notebook's kernel from the page reads the view's history and writes where the player
was (toybench's detector, median position over the frames of each phase). With the action wiring cut
(`broken`), the same movement check must fail: the test proves it can. The page counts the frames it
drew (a counter the widget keeps on its element); the count is reported, not asserted. A screenshot is
saved under browser-artifacts/. Without Chromium the test is skipped, except under CI (CI=true), where
a missing browser fails.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "browser-artifacts"

START = """from minimal.live import LiveView
view = LiveView("video-df", steps=4, seed=1)
if {broken}:  # cut the wiring from the buttons to the stream
    view.pipe.set_action = lambda action: None
view.start()
view"""

CHECK = """import json, statistics
from minimal.toybench import detect_sprites
view.stop()
where = {{}}
for action, frame in view.history:
    player = detect_sprites(frame.permute(2, 0, 1).float() / 255, 0)["player"]
    if player is not None:
        where.setdefault(action, []).append(player)
median = {{a: [statistics.median(p[i] for p in ps) for i in (0, 1)] for a, ps in where.items()}}
json.dump({{"median": median, "frames": len(view.history)}}, open({out!r}, "w"))"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Chromium: .ci/run installs Debian's chromium")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free local port with a token, serving tmp_path; shut down afterwards."""
    port, token = _free_port(), "minimal-browser-test"
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={tmp_path}", "--LabApp.expose_app_in_browser=True",
                             "--ServerApp.allow_root=True"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    assert proc.poll() is None, "JupyterLab did not start"
    yield url, token, tmp_path
    proc.terminate()
    proc.wait(timeout=30)


def _write_notebook(folder: Path, broken: bool) -> Path:
    out = folder / "where.json"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(START.format(broken=broken))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "live.ipynb")
    return out


def _wait_for_kernel(page, seconds: float = 120) -> None:
    """Until the notebook's kernel is idle, accepting the kernel dialog JupyterLab may show on the way."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if page.query_selector(".jp-Dialog .jp-mod-accept"):
            page.click(".jp-Dialog .jp-mod-accept")
        status = page.evaluate("document.querySelector('.jp-StatusBar-Widget') ? "
                               "document.querySelector('#jp-main-statusbar').innerText : ''")
        if "Idle" in status and page.query_selector(".jp-Notebook .jp-Cell"):
            return
        time.sleep(0.5)
    raise AssertionError("the notebook's kernel did not become idle")


def _run_cell(page, command: str) -> None:
    """Run a JupyterLab notebook command without waiting on it."""
    page.evaluate(f"() => {{ window.jupyterapp.commands.execute('{command}'); }}")


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True], ids=["wired", "broken"])
def test_the_live_view_steers_the_stream_in_a_browser(browser, lab, broken):
    url, token, folder = lab
    out = _write_notebook(folder, broken)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{url}/lab/tree/live.ipynb?token={token}")
    _wait_for_kernel(page)
    _run_cell(page, "notebook:run-cell")  # the cell that starts the view
    page.wait_for_function("Number(document.querySelector('.minimal-live')?.dataset.framesShown) > 30",
                           timeout=180_000)
    page.click(".minimal-live button[data-action='right']")
    time.sleep(3)
    page.click(".minimal-live button[data-action='down']")
    t0, n0 = time.time(), int(page.eval_on_selector(".minimal-live", "e => e.dataset.framesShown"))
    time.sleep(3)
    shown = int(page.eval_on_selector(".minimal-live", "e => e.dataset.framesShown")) - n0
    print(f"\nthe page drew {shown} frames in {time.time() - t0:.1f} s ({shown / (time.time() - t0):.1f} frames/s)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"live_view_{'broken' if broken else 'wired'}.png"))
    reply = page.evaluate("code => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                          ".requestExecute({code}).done.then(r => r.content)", CHECK.format(out=str(out)))
    assert reply["status"] == "ok", reply  # the check ran in the notebook's kernel
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:
        time.sleep(0.5)
    page.close()
    result = json.loads(out.read_text())
    median = result["median"]  # action -> median (y, x) of the player over the frames shown under it
    moved = ("right" in median and "down" in median and "none" in median and median["right"][1] > median["none"][1]
             and median["down"][0] > median["right"][0])
    assert result["frames"] > 100
    if broken:  # the same check fails when the buttons do not reach the stream
        assert not moved, median
    else:
        assert moved, median
