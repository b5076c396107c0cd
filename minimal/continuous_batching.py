"""Continuous batching: many streams in one batched model call, each joining and leaving when it likes.

A server batches its users' streams: one model call for B streams costs far less than B calls, because a
call of a small model is mostly fixed overhead (kernel launches, Python) and its matrix products grow
slowly with the rows they multiply. Orca (Yu et al. 2022) and vLLM (Kwon et al. 2023) showed how to keep
such a batch full while requests come and go: admit and release between iterations, never waiting for
the whole batch to finish, each request in its own *slot* of the batched KV cache. Here an iteration is
one chunk, in the pipeline's interactive mode (pipeline.py: `steps` Euler steps, then the clean chunk's
context pass, which commits it to the cache):

    for every active slot b:  z_b = noise from stream b's own generator (seed), a_b, s_b = its script
    for i in 0 .. steps - 1:  z <- z - (t_i - t_{i+1}) v(z, t_i, a, s | cache)       one call, all slots
    context pass v(z, 0, a, s | cache), then commit each slot's chunk to its own ring  one call

Slots differ in age, so unlike stream_batch.StreamCache (one fill level for the whole batch) the
`SlotCache` keeps a fill level per slot: every slot writes the call's tokens into the same tail columns,
reads the whole ring with the slots it has not filled masked out, and rotates its keys to its own positions
(the per-row form of StreamCache.key_positions). Masked keys get zero weight, so a stream's frames are
those it would get alone (stream_batch with lag = steps, unfused, batch 1: `reference_stream`), whoever
joins or leaves, up to float rounding: the test checks 1e-9 in float64.

Simplified: fixed capacity (free slots still ride in the call, with zero noise), joins and leaves only
between chunks, no paging of the cache (each slot owns a whole ring), no priorities or preemption; a
scene switch is the new label on the chunks that follow, the cached context is not re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import ACTIONS, SCENE_NAMES
from .sinks import check_sizes
from .stream_batch import StreamBatch, check_schedule


@dataclass
class StreamRequest:
    """One user's stream: its noise seed and its script, the (action, scene) of every chunk in order (the
    stream lasts len(script) chunks). Actions and scenes as indices or names."""
    id: int
    seed: int
    script: list

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")
        if not self.script:
            raise ValueError(f"stream {self.id}: the script must hold at least one (action, scene) chunk")
        self.script = [(_index(a, ACTIONS, "action"), _index(s, SCENE_NAMES, "scene")) for a, s in self.script]


def _index(value, names: tuple[str, ...], what: str) -> int:
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise ValueError(f"unknown {what} {value!r}: one of {list(names)} or an index in [0, {len(names)})")


class SlotCache:
    """A ring of n_sink sink frames + `window` recent ones per slot, each slot filled to its own level,
    followed by a tail of `tail` frames that every call writes. Sizes in frames, counts in tokens. Raw keys.
    The kv_cache protocol (next_positions, update, key_positions, advance), with per-slot positions."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, capacity: int, n_head: int, head_dim: int, n_sink: int, window: int, tail: int,
                 tokens_per_frame: int, chunk: int, device=None, dtype=torch.float32):
        check_sizes(n_sink, window, None, chunk)
        self.P, self.n_sink, self.window, self.tail = tokens_per_frame, n_sink, window, tail
        self.s, self.w = n_sink * self.P, window * self.P
        shape = (n_layer, capacity, n_head, self.s + self.w + tail * self.P, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # raw keys: [ring | tail], per slot
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.seen = [0] * capacity  # committed tokens of every slot
        self.n_new = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def reset(self, slot: int) -> None:
        """An empty ring for the stream that takes this slot."""
        self.seen[slot] = 0

    def lengths(self) -> torch.Tensor:
        """(B,) valid ring tokens of every slot."""
        return torch.tensor(self.seen, device=self.k.device).clamp(max=self.s + self.w)

    def next_positions(self, n: int) -> torch.Tensor:
        """(B, n): the call's tokens sit right after each slot's valid ring tokens."""
        if not 0 < n <= self.tail * self.P:
            raise ValueError(f"a call writes 1 to {self.tail * self.P} tokens (the tail), got {n}")
        self.n_new = n
        seen = torch.tensor(self.seen, device=self.k.device)
        lengths = seen.clamp(max=self.s + self.w)
        j = torch.arange(self.s + self.w, device=self.k.device)
        oldest = ((seen - self.s) % self.w)[:, None]  # ring slot of the oldest kept recent token, once turned
        turned = torch.where(j < self.s, j, self.s + (j - self.s - oldest) % self.w)  # (B, s + w)
        ring = torch.where((seen > self.s + self.w)[:, None], turned, j)  # slot index == position until it turns
        new = lengths[:, None] + torch.arange(n, device=self.k.device)  # (B, n)
        self._key_positions = torch.cat([ring, new], 1) // self.P  # (B, s + w + n)
        return new // self.P

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor | None = None):
        """Write k, v (B, H, n, D) into the tail; return every slot's whole ring and the tail."""
        start, end = self.s + self.w, self.s + self.w + self.n_new
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def key_positions(self) -> torch.Tensor:
        return self._key_positions

    def mask(self, n: int, chunk_tokens: int) -> torch.Tensor:
        """(B, 1, n, s + w + n) bool: a slot's valid ring tokens, then block-causal among the call's chunks."""
        ring = torch.arange(self.s + self.w, device=self.k.device)[None] < self.lengths()[:, None]  # (B, s + w)
        chunk = torch.arange(n, device=self.k.device) // chunk_tokens
        tail = chunk[None, :] <= chunk[:, None]  # (n, n)
        B = ring.shape[0]
        return torch.cat([ring[:, None].expand(B, n, -1), tail.expand(B, n, n)], 2)[:, None]

    def advance(self, n: int, slots: list[int]) -> None:
        """Commit the tail's first n tokens into each of `slots`' rings: in place while it fills, then over
        its oldest recent chunk (stream_batch.StreamCache.advance, per slot)."""
        cap, tail = self.s + self.w, self.s + self.w
        for b in slots:
            at = self.seen[b] if self.seen[b] + n <= cap else self.s + (self.seen[b] - self.s) % self.w
            self.k[:, b, :, at:at + n] = self.k[:, b, :, tail:tail + n]
            self.v[:, b, :, at:at + n] = self.v[:, b, :, tail:tail + n]
            self.seen[b] += n


class ContinuousBatcher:
    """Up to `capacity` streams in one batch: `join(request)` and `leave(id)` between chunks, `step()` makes
    one chunk of every active stream and returns {id: latents (c, C, H, W)}; a stream leaves by itself
    after its script's last chunk.

    manual: attention spelled out (q k^T, softmax, @ v; transformer.attention's reference path) instead of
    the fused kernel. Default: on the CPU, where for these tiny heads (8 queries, 72 keys each) the fused
    kernel's per-head overhead grows with the batch (at 32 streams a call took 56 ms fused, 38 ms spelled
    out; the same at 1 stream); the fused kernel on a GPU. Equal up to rounding (tested)."""

    def __init__(self, model, steps: int, n_sink: int = 0, capacity: int = 8, ts: torch.Tensor | None = None,
                 manual: bool | None = None):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        cfg, p = model.config, next(model.parameters())
        self.model, self.steps, self.c, self.capacity = model, steps, cfg.chunk, capacity
        self.manual = p.device.type == "cpu" if manual is None else manual
        window = cfg.max_frames - n_sink - self.c  # as stream_batch's interactive mode: the tail holds one chunk
        if not isinstance(n_sink, int) or isinstance(n_sink, bool) or n_sink < 0 or window < self.c:
            raise ValueError(f"n_sink must be an int in [0, {cfg.max_frames - 2 * self.c}], got {n_sink!r}")
        self.cache = SlotCache(cfg.n_layer, capacity, cfg.n_head, cfg.head_dim, n_sink, window, self.c,
                               cfg.tokens_per_frame, self.c, p.device, p.dtype)
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=p.dtype) if ts is None else ts
        self.ts = check_schedule(ts, steps).to(p)
        self.z = torch.zeros(capacity, self.c, *cfg.frame_shape, device=p.device, dtype=p.dtype)
        self.t = torch.zeros(capacity, self.c, device=p.device, dtype=p.dtype)
        self.actions = torch.zeros(capacity, self.c, dtype=torch.long, device=p.device)
        self.scene = torch.zeros(capacity, self.c, dtype=torch.long, device=p.device)
        self.slots: list[StreamRequest | None] = [None] * capacity
        self.generators: list[torch.Generator | None] = [None] * capacity
        self.made = [0] * capacity  # chunks made by the stream in each slot
        self.calls = 0

    @property
    def active(self) -> list[int]:
        return [b for b, r in enumerate(self.slots) if r is not None]

    @property
    def free(self) -> int:
        return self.capacity - len(self.active)

    def join(self, request: StreamRequest) -> int:
        """Admit a stream into a free slot (its cache emptied); returns the slot."""
        if any(r is not None and r.id == request.id for r in self.slots):
            raise ValueError(f"stream {request.id} is already being served")
        if not self.free:
            raise RuntimeError(f"all {self.capacity} slots are busy: stream {request.id} must wait for a leave")
        b = self.slots.index(None)
        self.slots[b], self.made[b] = request, 0
        self.generators[b] = torch.Generator().manual_seed(request.seed)  # the pipeline's noise for this seed
        self.cache.reset(b)
        return b

    def leave(self, stream_id: int) -> None:
        """Release a stream's slot; the others carry on untouched."""
        for b, r in enumerate(self.slots):
            if r is not None and r.id == stream_id:
                self.slots[b] = self.generators[b] = None
                self.z[b] = 0
                return
        raise ValueError(f"stream {stream_id} is not being served")

    def _call(self, n: int):
        mask = self.cache.mask(n, self.c * self.model.config.tokens_per_frame)
        self.calls += 1
        return self.model.velocity(self.z, self.t, self.actions, self.scene, cache=self.cache, mask=mask,
                                   manual=self.manual)

    @torch.inference_mode()
    def step(self) -> dict[int, torch.Tensor]:
        """One chunk for every active stream: its noise and conditioning enter, `steps` Euler steps, the
        context pass; finished streams leave."""
        active, c = self.active, self.c
        if not active:
            return {}
        shape = self.z.shape[2:]
        for b in active:
            action, scene = self.slots[b].script[self.made[b]]
            self.z[b] = torch.randn(c, *shape, generator=self.generators[b]).to(self.z)
            self.actions[b], self.scene[b] = action, scene
        n = c * self.model.config.tokens_per_frame
        for i in range(self.steps):
            self.t.fill_(float(self.ts[i]))
            v = self._call(n)
            self.z -= (self.ts[i] - self.ts[i + 1]) * v  # z_{t - dt} = z_t - dt v
        self.t.zero_()
        self._call(n)  # the context pass: the clean chunk's keys and values, committed below
        self.cache.advance(n, active)
        out = {}
        for b in active:
            request = self.slots[b]
            out[request.id] = self.z[b].clone()
            self.made[b] += 1
            if self.made[b] == len(request.script):
                self.leave(request.id)
        return out


@torch.no_grad()
def reference_stream(model, request: StreamRequest, steps: int, n_sink: int = 0, stagger: bool = False,
                     ts: torch.Tensor | None = None) -> torch.Tensor:
    """The stream alone, as pipeline.StreamPipeline(batch_size=1) makes it (stream_batch.StreamBatch, noise
    from Generator(seed) c frames at a time, each chunk's conditioning as it enters): latents (F, C, H, W).
    stagger: the throughput mode (lag 1, the refill fused) instead of chunk by chunk."""
    cfg, p = model.config, next(model.parameters())
    stream = StreamBatch(model, steps, 1 if stagger else steps, 1, n_sink, fuse=stagger, ts=ts)
    g, k, out = torch.Generator().manual_seed(request.seed), 0, []
    while len(out) < len(request.script):
        new = None
        if stream.due and k < len(request.script):
            action, scene = request.script[k]
            noise = torch.randn(1, cfg.chunk, *cfg.frame_shape, generator=g).to(p)
            new = (noise, torch.full((1, cfg.chunk), action, device=p.device), torch.tensor([scene], device=p.device))
            k += 1
        x = stream.step(new)
        if x is not None:
            out.append(x[0])
    return torch.cat(out)
