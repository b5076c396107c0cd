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

The cache (`StreamCache`) is a ring of n_sink sink frames and `window` recent committed frames (sinks.py's
rolling cache) followed by a tail of S c frames for the in-flight chunks, rewritten at every call. Keys
are kept before RoPE and rotated by their position in [ring | tail] (StreamingLLM; LongLive's infinite
mode), so no position ever passes n_sink + window + S c = max_frames: fixed memory and a fixed cost per
call, however long the stream. Every buffer is allocated once.
"""

from __future__ import annotations

import torch

from .flow_matching import check_nfe
from .sinks import check_sizes
from .video_model import VideoTransformer


def call_mask(n: int, kept: int, step: int, device=None) -> torch.Tensor:
    """(n, kept + n) bool for a call of n tokens after `kept` cached ones: all see the cache; among the
    call's chunks (`step` tokens each), block-causal."""
    chunk = torch.arange(n, device=device) // step
    ring = torch.ones(n, kept, dtype=torch.bool, device=device)
    return torch.cat([ring, chunk[None, :] <= chunk[:, None]], 1)


class StreamCache:
    """A ring of committed frames (n_sink sinks + `window` recent, turned one chunk at a time) followed by
    a tail of `tail` frames where every call writes its tokens. Sizes in frames; counts in tokens. Raw keys.

    A call writes its n tokens after the valid ring tokens; `advance(m)` then commits the first m of them
    (one chunk): in place while the ring fills, afterwards copied over the ring's oldest recent chunk.
    So a chunk being committed sees the whole ring, and the chunks after it in the call see it too."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, n_sink: int, window: int,
                 tail: int, tokens_per_frame: int, chunk: int, device=None, dtype=torch.float32):
        check_sizes(n_sink, window, None, chunk)
        if not isinstance(tail, int) or tail < chunk or tail % chunk:
            raise ValueError(f"tail must be an int >= the chunk and a multiple of it ({chunk}), got {tail!r}")
        self.P, self.n_sink, self.window, self.tail = tokens_per_frame, n_sink, window, tail
        self.s, self.w = n_sink * self.P, window * self.P  # ring sizes in tokens
        self.step = chunk * self.P  # tokens committed at a time
        shape = (n_layer, batch_size, n_head, self.s + self.w + tail * self.P, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # raw keys: [ring | tail]
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_seen = 0  # committed tokens so far
        self.seen = torch.zeros((), dtype=torch.long, device=device)  # the same, on the device
        self.n_new = 0  # tokens written by the current call

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def length(self) -> int:
        """Valid ring tokens: the committed ones kept."""
        return min(self.n_seen, self.s + self.w)

    def next_positions(self, n: int) -> torch.Tensor:
        """Positions (n,) of a call's tokens, right after the ring's; laid out for the updates that follow."""
        if not 0 < n <= self.tail * self.P:
            raise ValueError(f"a call writes 1 to {self.tail * self.P} tokens (the tail), got {n}")
        self.n_new = n
        return torch.arange(self.length, self.length + n, device=self.k.device) // self.P

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor | None = None):
        """Write raw k, v (B, H, n, D) after the valid ring tokens; return all valid keys and values."""
        start, end = self.length, self.length + self.n_new
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def key_positions(self) -> torch.Tensor:
        """Position of every key `update` returns: sinks, recent ring tokens oldest first, the call's."""
        device, valid = self.k.device, self.length
        if self.n_seen <= self.s + self.w:  # not wrapped: slot index == position
            ring = torch.arange(valid, device=device)
        else:  # the ring has turned; `seen` is n_seen on the device, so a captured CUDA graph reads it afresh
            oldest = (self.seen - self.s) % self.w  # ring slot of the oldest kept token
            ring = torch.cat([torch.arange(self.s, device=device),
                              self.s + (torch.arange(self.w, device=device) - oldest) % self.w])
        return torch.cat([ring, torch.arange(valid, valid + self.n_new, device=device)]) // self.P

    def mask(self, n: int) -> torch.Tensor:
        return call_mask(n, self.length, self.step, self.k.device)

    def advance(self, n: int) -> None:
        """Commit the first n tokens (0 or one chunk) of the last call."""
        if n not in (0, self.step) or n > self.n_new:
            raise ValueError(f"advance commits one chunk ({self.step} tokens) of the last call, or none; got {n}")
        cap = self.s + self.w
        if n and self.n_seen + n > cap:  # full: the chunk replaces the oldest recent chunk
            slot = self.s + (self.n_seen - self.s) % self.w
            self.k[:, :, :, slot:slot + n] = self.k[:, :, :, cap:cap + n]
            self.v[:, :, :, slot:slot + n] = self.v[:, :, :, cap:cap + n]
        self.n_seen += n
        self.seen.fill_(self.n_seen)

    def reset(self) -> None:
        self.n_seen = self.n_new = 0
        self.seen.zero_()


class NaiveStreamCache:
    """Reference for StreamCache: per layer a list of committed frames, each a (k, v) pair (B, H, P, D),
    evicted by slicing to the sinks + the `window` newest; positions are list indices. Raw keys."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, n_sink: int, window: int, tokens_per_frame: int, chunk: int):
        self.n_sink, self.window, self.P, self.c = n_sink, window, tokens_per_frame, chunk
        self.kept = [[] for _ in range(n_layer)]
        self.new = [[] for _ in range(n_layer)]  # the last call's frames, per layer

    @property
    def length(self) -> int:
        return len(self.kept[0]) * self.P

    def next_positions(self, n: int) -> torch.Tensor:
        self.n_new = n
        return torch.arange(self.length, self.length + n) // self.P

    def update(self, layer, k, v, q=None):
        self.new[layer] = list(zip(k.split(self.P, 2), v.split(self.P, 2), strict=True))
        frames = self.kept[layer] + self.new[layer]
        return torch.cat([f[0] for f in frames], 2), torch.cat([f[1] for f in frames], 2)

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self.length + self.n_new) // self.P

    def mask(self, n: int) -> torch.Tensor:
        chunk = torch.arange(n) // (self.c * self.P)
        return torch.cat([torch.ones(n, self.length, dtype=torch.bool), chunk[None, :] <= chunk[:, None]], 1)

    def advance(self, n: int) -> None:
        for layer, kept in enumerate(self.kept):
            kept += self.new[layer][:n // self.P]
            del kept[self.n_sink:max(self.n_sink, len(kept) - self.window)]

    def reset(self) -> None:
        self.kept = [[] for _ in self.kept]


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
                  n_sink: int = 0, fuse: bool = True, reference: bool = False, ts: torch.Tensor | None = None,
                  recache: bool | dict = False, cache=None) -> torch.Tensor:
    """A whole video (B, F, C, H, W) through StreamBatch: chunk k of `noise` (B, F, C, H, W) enters when
    due with actions (B, F) and scene (int, (B,), or (B, F) to switch scenes mid-stream: a chunk takes the
    scene of its first frame), then the stream drains. Any F: the ring rolls. recache: on a switch, re-encode
    the kept frames under the new scene before the chunk enters (True; a dict: StreamBatch.recache's keyword
    arguments). ts, cache: as StreamBatch's."""
    B, Fr = actions.shape
    c = model.config.chunk
    scene = check_scene(scene, B, Fr, model.config.n_scenes)
    settings = None if recache is False else {} if recache is True else recache  # StreamBatch.recache's keywords
    p = next(model.parameters())
    stream = StreamBatch(model, steps, lag, B, n_sink, fuse, ts=ts, reference=reference, cache=cache)
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
