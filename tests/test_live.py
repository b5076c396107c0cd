"""The live view's threads: clicks reach the stream, and no thread outlives its view, whether it is stopped,
closed, replaced by re-running its cell, or the kernel is interrupted. The last two run in a real IPython
kernel (jupyter_client), as in JupyterLab; the browser test drives the page itself."""

import threading
import time

import pytest

from minimal.live import LiveView, recording, stop_all


def live_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "minimal-live" and t.is_alive()]


@pytest.fixture
def view():
    v = LiveView("video-df", steps=2, fps=60)
    yield v
    stop_all()


@pytest.mark.slow
def test_start_stop_close_and_controls(view):
    view.start()
    time.sleep(1.0)
    assert len(live_threads()) == 1 and view.running and len(view.history) > 5 and len(view.frame) == 16 * 16 * 3
    view.action = "left"  # what a click sets: the stream hears it
    view.scene = "desert"
    time.sleep(0.3)
    assert view.pipe.actions.tolist() == [3] and view.pipe.scene.tolist() == [3]
    view.stop()
    assert not live_threads() and not view.running
    view.running = True  # the start/stop button
    time.sleep(0.3)
    assert len(live_threads()) == 1
    view.close()
    assert not live_threads()


@pytest.mark.slow
def test_a_new_view_stops_the_old_one_and_settings_restart_the_stream(view):
    view.start()
    time.sleep(0.5)
    view.steps = 4  # a new schedule: the stream restarts, and says so
    assert view.pipe.settings["steps"] == 4 and "restarted" in view.status and len(live_threads()) == 1
    view.n_sink = 3  # not a multiple of the chunk: the pipeline refuses, the status says why
    assert "not restarted" in view.status and "n_sink" in view.status and view.pipe.settings["n_sink"] == 0
    again = LiveView("video-df", steps=2)  # re-running the cell
    assert not view.running and not live_threads()
    again.start()
    time.sleep(0.3)
    assert len(live_threads()) == 1


def test_the_recording_is_a_small_animation():
    import torch

    frames = torch.randint(0, 255, (40, 16, 16, 3), dtype=torch.uint8)
    html = recording(frames, ["none", "up"] * 20).data
    assert html.startswith("<img") and "data:image/gif;base64," in html and len(html) < 1_000_000


@pytest.mark.slow
def test_in_a_kernel_rerunning_the_cell_and_interrupting_leave_no_thread():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        def run(code: str) -> str:
            out = []
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda m: out.append(
                m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(out)

        count = "import threading; print(sum(t.name == 'minimal-live' for t in threading.enumerate()))"
        run("from minimal.live import LiveView\nview = LiveView('video-df', steps=2, fps=60)\nview.start()")
        time.sleep(1.0)
        assert run(count).strip() == "1"
        run("view = LiveView('video-df', steps=2, fps=60)\nview.start()")  # the cell, re-run
        time.sleep(0.5)
        assert run(count).strip() == "1"  # the new view's thread only
        km.interrupt_kernel()  # the kernel is idle, the view streams: the interrupt stops it
        time.sleep(2.0)
        assert run(count).strip() == "0" and run("print(view.running)").strip() == "False"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
