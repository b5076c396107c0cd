"""The real-time pipeline: a SpriteWorld game generated frame by frame while the player steers.

Everything the earlier chapters built, put together: a shipped causal video model (checkpoints.SHIPPED,
by name) samples the frame autoencoder's latents chunk by chunk through stream_batch.StreamBatch (the
rolling frame cache with optional sink frames, fixed memory forever, the clean-context pass that
refills it), and the autoencoder decodes each finished chunk into pixels.

    pipe = load_pipeline("video-df", steps=4)       # the checkpoint's own schedule by default
    pipe.reset(scene="forest", seed=0)
    frame = pipe.next_frame("right")               # (H, W, 3) uint8; an action holds until the next one

Two modes:
    interactive (default)  one chunk at a time (lag = steps), its clean-context pass a call of its own:
                           exactly video_sampling.sample_chunks(cache="rolling"). An action given at a
                           frame reaches the screen at that frame or, mid-chunk, the next chunk's first.
    stagger=True           throughput (StreamDiffusion's stream batch, Rolling Forcing's window): S =
                           steps chunks in flight at staggered noise levels, one batched call per emitted
                           chunk with the refill fused into it: exactly video_sampling.sample_pyramid(lag=1)
                           within max_frames. A chunk's actions are fixed when it enters, S - 1 calls
                           before it leaves, so actions show about (S - 1) c frames later.

The controls (`set_action`, `set_scene`) may be called from another thread while one thread streams: a
lock guards them, and a chunk reads them once, when it enters. A scene switch re-caches the context
(long_video.py: the kept frames repainted into the new scene and re-encoded under its label, LongLive's
KV re-cache), so the switch takes within a chunk or two instead of when the old frames leave the window.
Each stream of a batch has its own actions, scene, noise generator (seed + i) and cache rows.
`session()` records every chunk's conditioning; pipeline_session.replay plays it back to identical
frames. `Pacer` shows frames on a steady clock. On CUDA the model runs in bfloat16 and its calls are
replayed as captured CUDA graphs.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import torch

from .autoencoder import load_autoencoder
from .checkpoints import load_pretrained, shipped
from .data import ACTIONS, SCENE_NAMES
from .flow_matching import check_nfe
from .long_video import RECACHE, recache_settings
from .stream_batch import StreamBatch
from .timing import percentile, resolve_device, synchronize


def _labels(value, names: tuple[str, ...], what: str, batch_size: int) -> torch.Tensor:
    """An action or scene as an index or a name, one for every stream or a list of one per stream -> (B,)."""
    values = value if isinstance(value, (list, tuple)) else [value] * batch_size
    if len(values) != batch_size:
        raise ValueError(f"give one {what} for every stream or a list of {batch_size}, got {len(values)}")
    out = []
    for v in values:
        if isinstance(v, str) and v in names:
            out.append(names.index(v))
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
            out.append(v)
        else:
            raise ValueError(f"unknown {what} {v!r}: one of {list(names)} or an index in [0, {len(names)})")
    return torch.tensor(out, dtype=torch.long)


class StreamPipeline:
    """B streams of frames from a video model and a frame autoencoder; see the module docstring."""

    def __init__(self, model, autoencoder, name: str, steps: int, n_sink: int = 0, stagger: bool = False,
                 batch_size: int = 1, ts: torch.Tensor | None = None, graphs: bool | None = None,
                 recache: str | None = "repaint"):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if recache is not None and recache not in RECACHE:
            raise ValueError(f"recache must be one of {RECACHE} or None, got {recache!r}")
        self.model, self.ae, self.name, self.B = model, autoencoder, name, batch_size
        self.device = next(model.parameters()).device
        most = model.config.max_frames // model.config.chunk - 2  # in flight, with the refill and one past chunk
        if stagger and steps > most:
            raise ValueError(f"stagger=True keeps all {steps} steps' chunks in flight; with max_frames = "
                             f"{model.config.max_frames} at most {most} fit: give steps <= {most}")
        self.stream = StreamBatch(model, steps, 1 if stagger else steps, batch_size, n_sink, fuse=stagger, ts=ts,
                                  graphs=self.device.type == "cuda" if graphs is None else graphs)
        self.settings = {"model": name, "steps": steps, "n_sink": n_sink, "stagger": stagger, "batch_size": batch_size,
                         "recache": recache, "device": self.device.type}
        self.lock = threading.Lock()
        self.seed = None  # set by reset
        self.closed = False

    # -- controls (thread-safe) --------------------------------------------------------------------

    def set_action(self, action) -> None:
        """The action of every stream (an index or a name), or a list of one per stream; it holds."""
        actions = _labels(action, ACTIONS, "action", self.B)
        with self.lock:
            self.actions = actions

    def set_scene(self, scene) -> None:
        """The scene of every stream, or a list of one per stream; chunks that have not started use it."""
        scenes = _labels(scene, SCENE_NAMES, "scene", self.B)
        with self.lock:
            self.scene = scenes

    # -- streaming -------------------------------------------------------------------------------------

    def reset(self, scene=0, seed: int = 0, action=0, replay: list | None = None) -> None:
        """Start new streams: empty caches and buffers, stream i's noise from seed + i. replay: a recorded
        session's chunks ([actions, scene] per chunk, `session()["chunks"]`) to condition on instead of
        the live controls."""
        self._check_open()
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.set_scene(scene)
        self.set_action(action)
        self.seed = seed
        self.replay = None if replay is None else [(torch.tensor(a), torch.tensor(s)) for a, s in replay]
        self.generators = [torch.Generator().manual_seed(seed + i) for i in range(self.B)]
        self.stream.reset()
        self.frames = deque()  # decoded frames waiting to be shown, (B, H, W, 3) each
        self.record = []  # the session: per chunk that entered, its B actions then its B scenes, as plain ints
        self.entered = 0  # chunks that entered the stream
        self.chunk_seconds = deque(maxlen=100_000)  # generation time of each emitted chunk, the newest kept
        self.shown, self.busy = 0, 0.0  # busy: generation time since the last chunk
        self.nonfinite = 0  # chunks with a NaN or an infinity
        self.last_scene, self.recaches = None, 0  # the scene of the last chunk that entered; scene switches re-cached
        self.recache_noise = torch.Generator().manual_seed(seed)  # for recache="noised"
        self.t_reset, self.t_first = time.perf_counter(), None

    def next_frame(self, action=None) -> torch.Tensor:
        """The next frame of every stream, (H, W, 3) uint8 on the CPU, or (B, H, W, 3) for B > 1.
        `action` (optional) is set first and holds until another is given."""
        self._check_open()
        if self.seed is None:
            raise RuntimeError("call reset(scene, seed) before next_frame")
        if action is not None:
            self.set_action(action)
        while not self.frames:
            self._step()
        frame = self.frames.popleft()
        self.shown += 1
        if self.t_first is None:
            self.t_first = time.perf_counter()
        return frame if self.B > 1 else frame[0]

    def _conditioning(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (B,) and scene (B,) of chunk k as it enters: the controls now, or the replayed ones."""
        if self.replay is not None:
            if k >= len(self.replay):
                raise ValueError(f"the replayed session recorded {len(self.replay)} chunks; chunk {k} is not in it")
            return self.replay[k]
        with self.lock:
            return self.actions.clone(), self.scene.clone()

    def _step(self) -> None:
        """One step of the schedule; a finished chunk is decoded into the frame buffer."""
        t0, new = time.perf_counter(), None
        if self.stream.due:
            actions, scene = self._conditioning(self.entered)
            mode = self.settings["recache"]
            if mode and self.last_scene is not None and (scene != self.last_scene).any():
                self.stream.recache(scene.to(self.device), **recache_settings(mode, self.ae, self.recache_noise))
                self.recaches += 1
            self.last_scene = scene
            self.record += actions.tolist() + scene.tolist()  # ints: nothing for the garbage collector to scan
            self.entered += 1
            c, shape = self.stream.c, self.model.config.frame_shape
            noise = torch.stack([torch.randn(c, *shape, generator=g) for g in self.generators])  # (B, c, ...)
            new = (noise.to(self.stream.z), actions[:, None].expand(-1, c).to(self.device), scene.to(self.device))
        x = self.stream.step(new)
        if x is not None:
            self.nonfinite += int(not torch.isfinite(x).all())
            with torch.inference_mode():
                pixels = self.ae.decode(x.flatten(0, 1).float())  # (B c, 3, H, W) in [0, 1]
            frames = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()  # (B c, H, W, 3)
            self.frames.extend(frames.unflatten(0, (self.B, -1)).unbind(1))
        synchronize(self.device)
        self.busy += time.perf_counter() - t0
        if x is not None:  # the time spent on this chunk: every step since the last one came out
            self.chunk_seconds.append(self.busy)
            self.busy = 0.0

    # -- reports ---------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """What the pipeline did since reset: frames, chunks, model calls, time to first frame, chunk times."""
        s, times = self.stream, self.chunk_seconds
        out = {**self.settings, "in_flight": s.S, "frames_shown": self.shown, "chunks": len(times),
               "model_calls": s.calls, "cache_bytes": s.cache.nbytes,
               "action_lag_frames": (s.S - 1) * s.c,  # a key pressed at a chunk's first frame; up to c - 1 more
               "nonfinite_chunks": self.nonfinite, "recaches": self.recaches}
        if self.t_first is not None:
            out["ttff_ms"] = (self.t_first - self.t_reset) * 1e3
        if times:
            out.update(chunk_p50_ms=percentile(times, 50) * 1e3, chunk_p99_ms=percentile(times, 99) * 1e3,
                       fps=s.c * len(times) / sum(times))
        return out

    def session(self) -> dict:
        """The session so far as plain data (JSON): settings, seed, and every chunk's actions and scene."""
        return {**self.settings, "seed": self.seed, "frames": self.shown,
                "chunks": [[self.record[i:i + self.B], self.record[i + self.B:i + 2 * self.B]]
                           for i in range(0, len(self.record), 2 * self.B)]}

    # -- lifetime --------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this pipeline is closed")

    def close(self) -> None:
        """Release the caches and buffers; the pipeline cannot stream afterwards."""
        self.closed = True
        self.stream = self.frames = None

    def __enter__(self) -> StreamPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_pipeline(model: str = "video-df", steps: int | None = None, n_sink: int = 0, stagger: bool = False,
                  batch_size: int = 1, device=None, graphs: bool | None = None,
                  recache: str | None = "repaint") -> StreamPipeline:
    """A StreamPipeline for a shipped video model by checkpoint name. steps=None: the checkpoint's own
    schedule (registry default, or the student's fixed schedule in its meta); a student accepts only
    the step counts it was distilled for. graphs: CUDA graph capture (default: on a CUDA device).
    recache: what a scene switch does to the context (long_video.RECACHE), None to leave it."""
    entry = shipped(model, kind="video")
    device = resolve_device(device)
    net, meta = load_pretrained(model, device=device)
    schedules = meta.get("schedules")  # a distilled student: {"steps": [t_0 = 1, ..., t_n = 0]}
    if steps is None:
        steps = int(next(iter(schedules))) if schedules else entry.steps
    check_nfe(steps)
    if schedules and str(steps) not in schedules:
        raise ValueError(f"{model} samples with {sorted(map(int, schedules))} steps (its distilled schedule), "
                         f"got {steps}")
    ts = torch.tensor(schedules[str(steps)]) if schedules else None
    ae, _ = load_autoencoder(device)
    if device.type == "cuda":
        net = net.to(torch.bfloat16)
    return StreamPipeline(net, ae, model, steps, n_sink, stagger, batch_size, ts, graphs, recache)


class Pacer:
    """Show frames on a steady clock at `fps`: `wait()` sleeps until the next frame is due and returns
    how late it leaves (seconds; negative never). Policy when generation falls behind by more than a
    frame: slow down, never drop. The late frame is shown at once and the clock restarts from it, so
    every generated frame is seen (a game must not skip the player's moves) and the stream is smooth
    again right after a hiccup."""

    def __init__(self, fps: float):
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
            raise ValueError(f"fps must be a number > 0, got {fps!r}")
        self.period, self.next = 1.0 / fps, None

    def wait(self) -> float:
        now = time.perf_counter()
        behind = 0.0 if self.next is None else now - self.next
        if self.next is None or behind > self.period:  # the first frame, or more than a frame behind
            self.next = now
        while (left := self.next - time.perf_counter()) > 0:
            time.sleep(left - 1e-3 if left > 2e-3 else 0)  # sleep, then spin the last millisecond
        late = max(time.perf_counter() - self.next, behind)
        self.next += self.period
        return late
