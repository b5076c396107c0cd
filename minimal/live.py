"""The live view: the real-time pipeline in JupyterLab, steered with buttons and the arrow keys.

    view = LiveView("video-df", steps=4)
    view            # display it, press start, steer

A small anywidget module draws every frame on a canvas (each pixel a square: no smoothing), takes the
arrow keys (ipywidgets itself has no key events) and holds the buttons of the five actions, a scene
menu, sliders for the denoising steps and the sink frames (a change rebuilds the pipeline: the stream
restarts, and the status line says so), start/stop, and a readout of frames per second and chunk time.

The generator runs in a background thread paced at `fps` by pipeline.Pacer, with torch on one thread, so
the kernel stays free to handle the clicks, which reach the stream through the pipeline's thread-safe
controls. No thread outlives its view: `stop()` joins it, a new view stops the older ones (re-running
the cell), closing the widget stops it, and so does interrupting the kernel (a SIGINT handler put where
ipykernel restores its own after each cell). `history` keeps the last frames with the action in force.

Where no kernel runs (the stored notebook, the book), `recording(frames, actions)` shows a recorded
session instead: an animated GIF with each frame's action written under it.
"""

from __future__ import annotations

import base64
import io
import signal
import threading
import time
import weakref
from collections import deque

import anywidget
import torch
import traitlets

from .data import ACTIONS, SCENE_NAMES
from .pipeline import Pacer, load_pipeline

_ESM = r"""
const ACTIONS = ["up", "left", "none", "right", "down"];
const KEYS = {ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", " ": "none"};

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "minimal-live";
  root.tabIndex = 0;  // focusable, so that it receives the arrow keys
  root.dataset.framesShown = "0";
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 256;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  const buffer = document.createElement("canvas");
  let shown = 0;

  function draw() {
    const view = model.get("frame");
    const size = model.get("size");
    if (!view || view.byteLength !== size * size * 3) return;
    buffer.width = buffer.height = size;
    const image = buffer.getContext("2d").createImageData(size, size);
    for (let i = 0; i < size * size; i++) {
      image.data[4 * i] = view.getUint8(3 * i);
      image.data[4 * i + 1] = view.getUint8(3 * i + 1);
      image.data[4 * i + 2] = view.getUint8(3 * i + 2);
      image.data[4 * i + 3] = 255;
    }
    buffer.getContext("2d").putImageData(image, 0, 0);
    ctx.drawImage(buffer, 0, 0, canvas.width, canvas.height);
    root.dataset.framesShown = String(++shown);
  }

  function send(name, value) {
    model.set(name, value);
    model.save_changes();
  }

  const pad = document.createElement("div");
  pad.className = "minimal-live-pad";
  for (const a of ACTIONS) {
    const b = document.createElement("button");
    b.textContent = a;
    b.dataset.action = a;
    b.onclick = () => { send("action", a); root.focus(); };
    pad.appendChild(b);
  }
  root.addEventListener("keydown", (e) => {
    if (e.key in KEYS) { e.preventDefault(); send("action", KEYS[e.key]); }
  });

  const controls = document.createElement("div");
  const scene = document.createElement("select");
  for (const s of model.get("scenes")) scene.add(new Option(s, s));
  scene.value = model.get("scene");
  scene.onchange = () => send("scene", scene.value);
  function slider(name, label, min, max, step) {
    const wrap = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min, max, step, value: model.get(name)});
    const value = document.createElement("span");
    value.textContent = model.get(name);
    input.onchange = () => { value.textContent = input.value; send(name, Number(input.value)); };
    wrap.append(label + " ", input, value);
    return wrap;
  }
  const toggle = document.createElement("button");
  toggle.className = "minimal-live-toggle";
  const label = () => { toggle.textContent = model.get("running") ? "stop" : "start"; };
  toggle.onclick = () => send("running", !model.get("running"));
  controls.append(scene, slider("steps", "steps", 1, 8, 1), slider("n_sink", "sink frames", 0, 8, 2), toggle);

  const status = document.createElement("div");
  status.className = "minimal-live-status";
  const update = () => { status.textContent = model.get("status") + "  |  action " + model.get("action"); };

  model.on("change:frame", draw);
  model.on("change:running", label);
  model.on("change:status", update);
  model.on("change:action", update);
  root.append(canvas, pad, controls, status);
  el.appendChild(root);
  draw(); label(); update();
}
export default { render };
"""

_CSS = """
.minimal-live { display: inline-block; padding: 6px; outline: none; font-family: monospace; }
.minimal-live canvas { image-rendering: pixelated; border: 1px solid #888; display: block; }
.minimal-live-pad button { margin: 2px; min-width: 56px; }
.minimal-live-status { margin-top: 4px; }
"""

_VIEWS: weakref.WeakSet = weakref.WeakSet()  # every view that may have a running thread


def stop_all() -> None:
    """Stop every live view of this process (their threads end)."""
    for view in list(_VIEWS):
        view.stop()


def _stop_on_interrupt() -> None:
    """Make SIGINT (the kernel's interrupt button) stop every view, then do what it did before. In an
    IPython kernel the handler must replace the one ipykernel restores after each cell."""
    def chain(previous):
        if getattr(previous, "stops_live_views", False):
            return previous

        def handler(signum, frame):
            stop_all()
            if callable(previous):
                previous(signum, frame)
        handler.stops_live_views = True
        return handler

    try:
        kernel = get_ipython().kernel  # noqa: F821 (defined inside IPython)
    except (NameError, AttributeError):
        kernel = None
    if kernel is not None and hasattr(kernel, "saved_sigint_handler"):
        kernel.saved_sigint_handler = chain(kernel.saved_sigint_handler)
    elif threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, chain(signal.getsignal(signal.SIGINT)))


class LiveView(anywidget.AnyWidget):
    """The pipeline streaming into a widget; see the module docstring."""

    _esm = _ESM
    _css = _CSS
    frame = traitlets.Bytes(b"").tag(sync=True)  # the last frame, (H, W, 3) uint8 bytes
    size = traitlets.Int(16).tag(sync=True)
    action = traitlets.Unicode("none").tag(sync=True)
    scene = traitlets.Unicode(SCENE_NAMES[0]).tag(sync=True)
    scenes = traitlets.List(list(SCENE_NAMES)).tag(sync=True)
    steps = traitlets.Int(4).tag(sync=True)
    n_sink = traitlets.Int(0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("stopped").tag(sync=True)

    def __init__(self, model: str = "video-df", steps: int | None = None, n_sink: int = 0, fps: float = 30,
                 seed: int = 0, keep: int = 3000):
        stop_all()  # re-running the cell: the older views stop
        super().__init__()
        self.model_name, self.pacer, self.seed = model, Pacer(fps), seed
        self.history = deque(maxlen=keep)  # (action, frame (H, W, 3) uint8) per frame shown
        self.thread, self.halt, self.pipe = None, threading.Event(), None
        self.pipe = load_pipeline(model, steps, n_sink)
        self.pipe.reset(seed=seed)
        self.steps, self.n_sink, self.size = self.pipe.settings["steps"], n_sink, self.pipe.ae.config.size
        _VIEWS.add(self)
        _stop_on_interrupt()

    @traitlets.observe("action")
    def _on_action(self, change) -> None:
        self.pipe.set_action(change["new"])

    @traitlets.observe("scene")
    def _on_scene(self, change) -> None:
        self.pipe.set_scene(change["new"])

    @traitlets.observe("running")
    def _on_running(self, change) -> None:
        (self.start if change["new"] else self.stop)()

    @traitlets.observe("steps", "n_sink")
    def _on_settings(self, change) -> None:
        """A new schedule or cache needs a new pipeline: the stream restarts."""
        if self.pipe is None or self.pipe.settings[change["name"]] == change["new"]:
            return
        was_running = self.running
        self.stop()
        try:
            self.pipe = load_pipeline(self.model_name, self.steps, self.n_sink)
        except ValueError as e:
            self.status = f"not restarted: {e}"
            return
        self.pipe.reset(scene=self.scene, seed=self.seed, action=self.action)
        self.status = f"restarted: {change['name']} {change['old']} -> {change['new']} (a new stream)"
        if was_running:
            self.start()

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.halt.clear()
        self.thread = threading.Thread(target=self._run, name="minimal-live", daemon=True)
        self.thread.start()
        self.set_trait("running", True)

    def stop(self) -> None:
        self.halt.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)
        self.thread = None
        self.set_trait("running", False)

    def close(self) -> None:
        self.stop()
        super().close()

    def _run(self) -> None:
        torch.set_num_threads(1)
        t_status, shown = time.perf_counter(), 0
        while not self.halt.is_set():
            frame = self.pipe.next_frame()
            self.pacer.wait()
            self.frame = frame.numpy().tobytes()
            self.history.append((self.action, frame))
            shown += 1
            if (now := time.perf_counter()) - t_status > 0.5:
                stats = self.pipe.stats()
                self.status = (f"{shown / (now - t_status):.1f} frames/s shown, chunk {stats['chunk_p50_ms']:.1f} ms "
                               f"(p99 {stats['chunk_p99_ms']:.1f}), {stats['steps']} steps")
                t_status, shown = now, 0


def recording(frames: torch.Tensor, actions, scale: int = 6, fps: int = 15):
    """A recorded session for the page where no kernel runs: frames (N, H, W, 3) uint8 as an animated GIF
    (nearest-neighbour upscaled) with each frame's action (names or indices) written under it; an
    IPython HTML object, well under 1 MB for a few hundred frames."""
    from IPython.display import HTML
    from PIL import Image, ImageDraw

    images = []
    for frame, action in zip(frames, actions, strict=True):
        name = action if isinstance(action, str) else ACTIONS[int(action)]
        big = Image.fromarray(frame.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy())
        canvas = Image.new("RGB", (big.width, big.height + 16), "white")
        canvas.paste(big, (0, 0))
        ImageDraw.Draw(canvas).text((4, big.height + 2), f"action: {name}", fill="black")
        images.append(canvas)
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    data = base64.b64encode(out.getvalue()).decode()
    return HTML(f'<img alt="a recorded session of the live view" src="data:image/gif;base64,{data}">')
