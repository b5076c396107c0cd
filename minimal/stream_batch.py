"""Streaming the video model: chunks in flight at staggered noise levels, one batched call per step.

The schedule (diffusion forcing's pyramid, Chen et al. 2024; StreamDiffusion's stream batch, Kodaira
et al. 2023; Rolling Forcing's window, Liu et al. 2025). Chunk k enters `lag` model calls after chunk
k - 1 and takes one Euler step per call on ts = linspace(1, 0, steps + 1): at call g it is at step
g - k lag. Two settings matter:

    lag = steps   one chunk at a time (S = 1 in flight): a new action reaches the next chunk (interactive)
    lag = 1       S = steps chunks in flight at steps 0 .. steps - 1; every call advances all of them and
                  the oldest comes out clean, so a chunk leaves every call (throughput), but a chunk's
                  actions are fixed when it enters, S - 1 calls before it leaves

`video_sampling.sample_pyramid(lag)` is the same schedule recomputing everything: the reference.

One call. The tokens are [refill | in-flight chunks, oldest first]:
  - refill: the chunk that came out clean at the previous call, at t = 0. Its keys and values go into
    the ring of committed frames: the clean-context pass, fused into this call instead of a call of its own;
  - in-flight chunk j at t = ts[its step] sees the ring and the in-flight chunks up to itself
    (block-causal, like training).

The cache (stream_cache.StreamCache) is a ring of sink and recent committed frames followed by a tail
for the frames of a call: fixed memory and a fixed cost per call, however long the stream.
"""

from __future__ import annotations

import torch

from .flow_matching import check_nfe
from .stream_cache import NaiveStreamCache, StreamCache
from .video_model import VideoTransformer


def check_schedule(ts: torch.Tensor, steps: int) -> torch.Tensor:
    """ts (steps + 1,) must run from t = 1 (noise) down to t = 0 (clean), strictly decreasing."""
    if not isinstance(ts, torch.Tensor) or ts.shape != (steps + 1,):
        raise ValueError(f"the schedule must be a tensor of steps + 1 = {steps + 1} times, got "
                         f"{tuple(ts.shape) if isinstance(ts, torch.Tensor) else type(ts).__name__}")
    if float(ts[0]) != 1.0 or float(ts[-1]) != 0.0 or not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"the schedule must fall strictly from 1 to 0, got {ts.tolist()}")
    return ts


def call_frames(steps: int, lag: int, fuse: bool, chunk: int) -> int:
    """Frames one call writes after the kept ones: the S chunks in flight, and the refill if fused."""
    return (in_flight(steps, lag) + fuse) * chunk


def in_flight(steps: int, lag: int) -> int:
    """S, the chunks in flight at once: ceil(steps / lag)."""
    check_nfe(steps)
    if not isinstance(lag, int) or isinstance(lag, bool) or not 1 <= lag <= steps:
        raise ValueError(f"lag must be an int in [1, steps = {steps}], got {lag!r}")
    return -(-steps // lag)


class StreamBatch:
    """The schedule and its cache: `step(new_chunk)` advances every chunk in flight by one Euler step and
    returns the chunk that came out clean (B, c, C, H, W), or None. All buffers are allocated once.

    ts: the times of the steps, steps + 1 of them from 1 down to 0 (default evenly spaced, as the samplers
    of video_sampling.py; a distilled student has its own).
    reference: keep the frames in NaiveStreamCache's lists instead (the slow, obviously correct path).
    graphs: replay captured CUDA graphs of the model calls once the ring has turned (CUDA only): one
    launch instead of hundreds of small kernels, where the GPU would otherwise wait on Python.
    fuse: the refill rides in the same model call as the chunks in flight (one call per step; the ring
    holds one chunk less, since the refill needs room in the tail). Unfused, the refill is a call of its
    own, as in video_sampling.sample_chunks: with lag = steps that is sample_chunks(cache="rolling").
    cache: another cache of committed frames with StreamCache's members (mask, next_positions, update,
    key_positions, advance, reset), room for `call_frames` frames per call after what it keeps; e.g.
    deep_sink.FrameCompressingCache. Default: StreamCache's ring (or NaiveStreamCache's lists).

    `recache(scene)` is LongLive's KV re-cache for a scene switch: the committed frames the ring keeps are
    re-encoded under the new scene, so the past stops pulling toward the old one."""

    def __init__(self, model: VideoTransformer, steps: int, lag: int, batch_size: int = 1, n_sink: int = 0,
                 fuse: bool = True, ts: torch.Tensor | None = None, reference: bool = False, graphs: bool = False,
                 cache=None):
        cfg, p = model.config, next(model.parameters())
        self.model, self.steps, self.lag, self.fuse = model, steps, lag, fuse
        self.S, self.c = in_flight(steps, lag), cfg.chunk
        tail = call_frames(steps, lag, fuse, self.c)  # frames written by one call
        if tail + self.c > cfg.max_frames:
            refill = " and the refill" if fuse else ""
            raise ValueError(f"{self.S} chunks in flight (steps {steps} / lag {lag}){refill} leave no room for context "
                             f"in max_frames = {cfg.max_frames}: raise the lag")
        window = cfg.max_frames - n_sink - tail
        if not isinstance(n_sink, int) or isinstance(n_sink, bool) or n_sink < 0 or window < self.c:
            what = f"{self.S} in flight" + (" and the refill" if fuse else "")
            raise ValueError(f"n_sink must be an int in [0, {cfg.max_frames - tail - self.c}]: max_frames "
                             f"({cfg.max_frames}) must hold the sinks, one recent chunk and the {tail} frames of a "
                             f"call ({what}), got {n_sink!r}")
        if cache is not None and (reference or graphs):
            raise ValueError("give a cache object or ask for the reference lists or CUDA graphs, not both")
        self.cache = cache if cache is not None else \
            NaiveStreamCache(cfg.n_layer, n_sink, window, cfg.tokens_per_frame, self.c) if reference else \
            StreamCache(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, n_sink, window, tail, cfg.tokens_per_frame,
                        self.c, p.device, p.dtype)
        self.kept_chunks = (n_sink // self.c, window // self.c) if cache is None else None  # (sink, recent) chunks
        ts = torch.linspace(1.0, 0.0, steps + 1, device=p.device, dtype=p.dtype) if ts is None else ts
        self.ts = check_schedule(ts, steps).to(p)
        n = (self.S + 1) * self.c  # [refill | S in flight]
        self.z = torch.zeros(batch_size, n, *cfg.frame_shape, device=p.device, dtype=p.dtype)
        self.t = torch.zeros(batch_size, n, device=p.device, dtype=p.dtype)
        self.actions = torch.zeros(batch_size, n, dtype=torch.long, device=p.device)
        self.scene = torch.zeros(batch_size, n, dtype=torch.long, device=p.device)
        if graphs and p.device.type != "cuda":
            raise ValueError("graphs (CUDA graph capture) needs the model on a CUDA device")
        self.graphs = {} if graphs else None
        self.reset()

    def reset(self) -> None:
        self.cache.reset()
        self.levels: list[int] = []  # the step of each chunk in flight, oldest first
        self.refill = False  # a clean chunk waits in z[:, :c] for its context pass
        self.steps_taken = self.calls = 0
        self.history: list[tuple] = []  # (z, actions, scene (B,)) of the chunks the ring keeps, oldest first

    def _remember(self) -> None:
        """Keep the chunk being committed (z[:, :c], clean) for recache, evicted as the ring evicts."""
        if self.kept_chunks is None:
            return
        n_sink, n_recent = self.kept_chunks
        c = self.c
        self.history.append((self.z[:, :c].clone(), self.actions[:, :c].clone(), self.scene[:, 0].clone()))
        del self.history[n_sink:max(n_sink, len(self.history) - n_recent)]

    @torch.inference_mode()
    def recache(self, scene: torch.Tensor, t: float = 0.0, generator: torch.Generator | None = None,
                repaint=None) -> None:
        """KV re-cache (LongLive): empty the cache and re-encode the frames it kept, oldest first, one chunk
        per call as when they were committed, under `scene` (B,); the chunks in flight and the one waiting
        to be committed take the new scene too. One call per kept chunk, once.

        t > 0: the kept frames are re-encoded noised, x_t = (1 - t) x + t e (e from `generator`), so that
        what they show of the old scene weighs less (diffusion forcing trained on noisy context).
        repaint(z (B, c, C, H, W), old (B,), new (B,)) -> z: first turn each kept chunk into the new scene."""
        if self.kept_chunks is None:
            raise ValueError("recache re-encodes the frames of the ring cache; this stream runs another cache")
        if self.graphs:
            self.graphs.clear()  # captured for the turned ring; recaptured when it turns again
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 1:
            raise ValueError(f"t (the noise level of the re-encoded frames) must be a number in [0, 1], got {t!r}")
        if self.refill:  # the chunk that came out last is re-encoded with the others, not committed afterwards
            self._remember()
            self.refill = False
        self.scene[:] = scene[:, None]
        self.cache.reset()
        c, P = self.c, self.model.config.tokens_per_frame
        tz = torch.full_like(self.t[:, :c], t)
        for i, (x, a, old) in enumerate(self.history):
            if repaint is not None:
                x = repaint(x, old, scene)
                self.history[i] = (x, a, scene.clone())
            if t:
                x = (1 - t) * x + t * torch.randn(x.shape, generator=generator).to(x)
            self.model.velocity(x, tz, a, self.scene[:, :c], cache=self.cache, mask=self.cache.mask(c * P))
            self.cache.advance(c * P)

    @property
    def due(self) -> bool:
        """Whether the next step admits a new chunk (every `lag` steps)."""
        return self.steps_taken % self.lag == 0

    def _velocity(self, frames: slice) -> torch.Tensor:
        n = (frames.stop - frames.start) * self.model.config.tokens_per_frame
        return self.model.velocity(self.z[:, frames], self.t[:, frames], self.actions[:, frames],
                                   self.scene[:, frames], cache=self.cache, mask=self.cache.mask(n))

    def _call(self, frames: slice, commit: int):
        """One model call on z[:, frames] with the cache; commits the first `commit` frames. With `graphs`,
        once the ring has turned (its slots and every shape fixed from then on), each kind of call is
        captured once as a CUDA graph and replayed: the inputs are read from the same buffers every time."""
        if self.graphs is None or self.cache.n_seen <= self.cache.s + self.cache.w:
            v = self._velocity(frames)
        else:
            key = (frames.start, frames.stop)
            if key not in self.graphs:
                self.graphs[key] = self._capture(frames)
            graph, v = self.graphs[key]
            self.cache.next_positions((frames.stop - frames.start) * self.model.config.tokens_per_frame)  # lay out
            graph.replay()
        self.cache.advance(commit * self.model.config.tokens_per_frame)
        if commit:
            self._remember()
        self.calls += 1
        return v

    def _capture(self, frames: slice):
        """(graph, its output) for calls on z[:, frames]: warmed up on a side stream, then captured."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._velocity(frames)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            v = self._velocity(frames)
        return graph, v

    @torch.inference_mode()
    def step(self, new_chunk=None) -> torch.Tensor | None:
        """new_chunk = (noise (B, c, C, H, W), actions (B, c), scene (B,) or (B, c)) enters when the schedule
        is due (else it must be None); None when due drains the stream (no new chunk)."""
        c = self.c
        if new_chunk is not None:
            if not self.due:
                raise ValueError(f"a new chunk enters every {self.lag} steps; step {self.steps_taken} admits none")
            noise, actions, scene = new_chunk
            j = slice(c * (1 + len(self.levels)), c * (2 + len(self.levels)))
            self.z[:, j], self.actions[:, j] = noise, actions
            self.scene[:, j] = scene if scene.ndim == 2 else scene[:, None]
            self.levels.append(0)
        self.steps_taken += 1
        n = len(self.levels)
        if self.refill and not self.fuse:  # the clean-context pass on its own
            self._call(slice(0, c), c)
        r = c if self.refill and self.fuse else 0
        if n == 0:
            if r:
                self._call(slice(0, c), c)
            self.refill = False
            return None
        levels = torch.tensor(self.levels, device=self.ts.device)
        self.t[:, c:c * (1 + n)] = self.ts[levels].repeat_interleave(c)  # the refill's t stays 0
        v = self._call(slice(c - r, c * (1 + n)), r)
        dt = (self.ts[levels] - self.ts[levels + 1]).repeat_interleave(c)  # (n c,)
        self.z[:, c:c * (1 + n)] -= dt.view(1, -1, 1, 1, 1) * v[:, r:]  # z_{t - dt} = z_t - dt v
        self.levels = [s + 1 for s in self.levels]
        self.refill = self.levels[0] == self.steps
        if not self.refill:
            return None
        # the oldest chunk is clean: it moves to the refill slot and the others move up one chunk
        for buf in (self.z, self.actions, self.scene):
            buf[:, :c * n] = buf[:, c:c * (1 + n)].clone()
        self.levels.pop(0)
        return self.z[:, :c].clone()


def check_scene(scene, B: int, Fr: int, n_scenes: int) -> torch.Tensor:
    """A scene as an int, one per stream (B,) or one per frame (B, F) -> (B, F) int64, each in [0, n_scenes)."""
    if isinstance(scene, int) and not isinstance(scene, bool):
        scene = torch.full((B,), scene, dtype=torch.long)
    if not isinstance(scene, torch.Tensor) or scene.dtype != torch.long or tuple(scene.shape) not in ((B,), (B, Fr)):
        raise ValueError(f"scene must be an int or an int64 tensor of shape ({B},) or ({B}, {Fr}), got "
                         f"{tuple(scene.shape) if isinstance(scene, torch.Tensor) else type(scene).__name__}")
    if scene.numel() and not 0 <= int(scene.min()) <= int(scene.max()) < n_scenes:
        raise ValueError(f"unknown scene: every scene must be in [0, {n_scenes}), got {scene.unique().tolist()}")
    return scene[:, None].expand(B, Fr) if scene.ndim == 1 else scene


@torch.no_grad()
def sample_stream(model: VideoTransformer, actions: torch.Tensor, scene, steps: int, lag: int, noise: torch.Tensor,
                  n_sink: int = 0, fuse: bool = True, recache: bool | dict = False, **batch) -> torch.Tensor:
    """A whole video (B, F, C, H, W) through StreamBatch: chunk k of `noise` (B, F, C, H, W) enters when
    due with actions (B, F) and scene (int, (B,), or (B, F) to switch scenes mid-stream: a chunk takes the
    scene of its first frame), then the stream drains. Any F: the ring rolls. recache: on a switch, re-encode
    the kept frames under the new scene before the chunk enters (True; a dict: StreamBatch.recache's keyword
    arguments). batch: StreamBatch's other settings (ts, reference, cache)."""
    B, Fr = actions.shape
    c = model.config.chunk
    scene = check_scene(scene, B, Fr, model.config.n_scenes)
    settings = None if recache is False else {} if recache is True else recache  # StreamBatch.recache's keywords
    p = next(model.parameters())
    stream = StreamBatch(model, steps, lag, B, n_sink, fuse, **batch)
    out, k = [], 0
    while len(out) < Fr // c:
        new = None
        if stream.due and k < Fr // c:
            s_k = scene[:, k * c].to(p.device)
            if settings is not None and k and (s_k != scene[:, (k - 1) * c].to(p.device)).any():
                stream.recache(s_k, **settings)
            new = (noise[:, k * c:(k + 1) * c].to(p), actions[:, k * c:(k + 1) * c].to(p.device), s_k)
            k += 1
        x = stream.step(new)
        if x is not None:
            out.append(x)
    return torch.cat(out, 1)
