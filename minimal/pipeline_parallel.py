"""Pipeline parallelism: the model's blocks, or its denoising steps, spread over processes.

Over blocks (GPipe, Huang et al. 2019; StreamDiffusionV2, Feng et al. 2025, splits a video DiT's blocks
across GPUs and streams chunks through them). The n_layer blocks are cut into N equal stages, one per rank.
The streams are cut into M micro-batches. Every model call of a micro-batch (a denoising step, or the
context pass) enters at stage 0 (embedding + its blocks), is sent point to point to stage 1, ..., and the
last stage (its blocks + the head) sends the predicted clean frames back to stage 0, which takes the Euler
step and can start that micro-batch's next call. Each stage keeps the KV cache of its own blocks, for
every micro-batch, on its own rank. With equal stage times t, P calls per micro-batch and a return trip
of d extra ticks (0 here; a link between nodes), the ring keeps every stage busy once M >= N + d, and
the bubble model (`blocks_schedule` draws it tick by tick; fill and drain included) gives

    T = (P - 1) max(M, N + d) + M + N - 1  ticks of t,     speedup = N P M / T

over one process running the same calls (P M N ticks of t): about N for M >= N + d and long runs, about
M N / (N + d) below (the stages wait for a call to come back round). A chunk's latency does not shrink:
its calls still cross every block in turn, plus the sends.

Over denoising steps (Live Avatar, Huang et al. 2025, assigns denoising steps to devices): the staggered
schedule of stream_batch.py (lag 1, S = steps chunks in flight, the refill fused) with rank r holding the
chunk at step r. A chunk moves to the next rank after each call; the last rank emits it clean and runs its
refill. In the fused call a chunk attends to the older chunks in flight, so at every layer each rank sends
its keys and values to the ranks holding younger chunks (inside the cache protocol's `update`): a
wavefront, the oldest chunk's rank never waits. Every rank keeps a replica of the ring of clean frames.

Both equal the single-process pipeline on the same seeds and scripts (checked in float64 to 1e-9).
Simplified: equal stages only, fixed streams (no joins; continuous batching is in distributed.py), blocking
receives, one sender thread per rank; no overlap of a stage's sends with its compute beyond gloo's own.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .continuous_batching import StreamRequest
from .distributed import check_world, guarded
from .flow_matching import time_features
from .stream_batch import StreamBatch, StreamCache
from .video_model import T_MIN, patchify, unpatchify


def split_blocks(n_layer: int, stages: int) -> list[range]:
    """The blocks of each stage: `stages` equal runs of consecutive blocks."""
    check_world(stages, "stages (the world size)")
    if n_layer % stages:
        raise ValueError(f"stages (the world size, {stages}) must divide the model's {n_layer} blocks: "
                         f"give one of {[d for d in range(1, n_layer + 1) if n_layer % d == 0]}")
    per = n_layer // stages
    return [range(s * per, (s + 1) * per) for s in range(stages)]


def bubble_model(stages: int, micro_batches: int, calls: int, delay: int = 0) -> float:
    """Predicted speedup of `stages` pipelined stages over one process (module docstring), the return trip
    from the last stage to stage 0 taking `delay` extra ticks: N P M / T, T = len(blocks_schedule(...))."""
    N, M, P = stages, micro_batches, calls
    return N * P * M / ((P - 1) * max(M, N + delay) + M + N - 1)


def blocks_schedule(stages: int, micro_batches: int, calls: int, delay: int = 0) -> list[list]:
    """Tick by tick, what each stage works on: (micro-batch, call) or None (a bubble). Stage 0 takes the calls
    round-robin over the micro-batches (the order blocks_rank runs), call j of micro-batch m only once call
    j - 1 has left the last stage and come back (`delay` ticks later); a stage takes one call per tick."""
    for name, value, low in (("stages", stages, 1), ("micro_batches", micro_batches, 1), ("calls", calls, 1),
                             ("delay", delay, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    order = [(m, j) for j in range(calls) for m in range(micro_batches)]
    start = []  # tick at which stage 0 takes each call of `order`
    for i in range(len(order)):
        back = start[i - micro_batches] + stages + delay if i >= micro_batches else 0  # the previous call is back
        start.append(max(start[-1] + 1 if start else 0, back))
    grid = [[None] * stages for _ in range(start[-1] + stages)]
    for i, item in enumerate(order):
        for s in range(stages):
            grid[start[i] + s][s] = item  # a call crosses one stage per tick
    return grid


# ---------------------------------------------------------------------------------------------------
# The video transformer's velocity, cut at the blocks (video_model.VideoTransformer.velocity, in parts)
# ---------------------------------------------------------------------------------------------------

def embed(model, z, t, actions, scene):
    """Tokens x (B, F P, C) and per-token conditions (B, F P, C): the part of velocity before the blocks."""
    cfg = model.config
    B, Fr = z.shape[:2]
    x = model.patch_in(patchify(z, cfg.patch)) + model.spatial.repeat(Fr, 1)
    c = model.time_mlp(time_features(t.reshape(-1).to(x.dtype), cfg.n_embd)).view(B, Fr, -1)
    c = c + model.action_emb(actions) + model.scene_emb(scene)
    return x, c.repeat_interleave(cfg.tokens_per_frame, dim=1)


def head(model, x, c, n_frames: int):
    """The clean frames x_hat (B, F, C, H, W) predicted from the last block's tokens."""
    shift, scale = model.ada_f(F.silu(c)).chunk(2, dim=-1)
    x = model.patch_out(model.ln_f(x) * (1 + scale) + shift)
    return unpatchify(x, n_frames, model.config.size, model.config.patch)


def velocity_from(z, t, x_hat):
    """v = (z_t - x_hat) / max(t, T_MIN), as VideoTransformer.velocity returns it."""
    return (z - x_hat) / t.clamp(min=T_MIN).to(z.dtype)[..., None, None, None]


class _Layers:
    """A cache for a run of blocks [first, ...): the blocks name their global layer index."""

    def __init__(self, cache, first: int):
        self.cache, self.first = cache, first
        self.stores_raw_keys = cache.stores_raw_keys

    def update(self, layer, k, v, q=None):
        return self.cache.update(layer - self.first, k, v, q)

    def __getattr__(self, name):
        return getattr(self.cache, name)


def _check_streams(requests: list[StreamRequest], groups: int, what: str) -> int:
    lengths = {len(r.script) for r in requests}
    if len(lengths) != 1:
        raise ValueError(f"the pipelined streams run in step: give every script the same length, got {sorted(lengths)}")
    if not isinstance(groups, int) or isinstance(groups, bool) or not 1 <= groups <= len(requests):
        raise ValueError(f"{what} must be an int in [1, {len(requests)}] (the streams), got {groups!r}")
    return lengths.pop()


def _chunk_inputs(requests, generators, k: int, model):
    """Chunk k of each stream: noise from its generator (as the pipeline draws it), its actions and scene."""
    cfg, p = model.config, next(model.parameters())
    noise = torch.stack([torch.randn(cfg.chunk, *cfg.frame_shape, generator=g) for g in generators]).to(p)
    actions = torch.tensor([[r.script[k][0]] * cfg.chunk for r in requests], device=p.device)
    scene = torch.tensor([[r.script[k][1]] * cfg.chunk for r in requests], device=p.device)
    return noise, actions, scene


# ---------------------------------------------------------------------------------------------------
# Over blocks
# ---------------------------------------------------------------------------------------------------

@torch.inference_mode()
def blocks_rank(rank: int, world_size: int, model, requests: list[StreamRequest], steps: int, n_sink: int = 0,
                micro_batches: int = 1) -> dict:
    """Stage `rank` of the blocks pipeline (call on every rank). Every rank returns busy_ms, its working time per
    call of a micro-batch (waits excluded); rank 0 also frames {id: latents (F, C, H, W)}, chunk_ms
    {micro-batch: [latency of each chunk]}, seconds, fps and calls (per micro-batch)."""
    cfg, p = model.config, next(model.parameters())
    n_chunks = _check_streams(requests, micro_batches, "micro_batches")
    blocks = split_blocks(cfg.n_layer, world_size)[rank]
    last, c, P, M = rank == world_size - 1, cfg.chunk, cfg.tokens_per_frame, micro_batches
    groups = [requests[m::M] for m in range(M)]
    n = c * P  # tokens of one call of one micro-batch
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=p.dtype, device=p.device)
    window = cfg.max_frames - n_sink - c  # the interactive pipeline's ring: the tail holds one chunk
    caches = [_Layers(StreamCache(len(blocks), len(g), cfg.n_head, cfg.head_dim, n_sink, window, c, P, c, p.device,
                                  p.dtype), blocks.start) for g in groups]
    gens = [[torch.Generator().manual_seed(r.seed) for r in g] for g in groups]
    state = [None] * M  # stage 0: (z, t, actions, scene) of each micro-batch's call in flight
    frames, chunk_ms, started, sends = {r.id: [] for r in requests}, {m: [] for m in range(M)}, [0.0] * M, []
    order = [(k, i, m) for k in range(n_chunks) for i in range(steps + 1) for m in range(M)]  # i = steps: context

    def finish(k, i, m, x_hat):  # stage 0: the call's result is back
        z, t, a, s = state[m]
        if i < steps:
            z = z - (ts[i] - ts[i + 1]) * velocity_from(z, t, x_hat)  # z_{t - dt} = z_t - dt v
            state[m] = (z, t, a, s)
        if i == steps - 1:  # clean: the chunk is out
            for r, x in zip(groups[m], z, strict=True):
                frames[r.id].append(x.clone())
            chunk_ms[m].append((time.perf_counter() - started[m]) * 1e3)

    dist.barrier()
    t0 = time.perf_counter()
    busy = 0.0  # seconds of work on this rank, waits for the other stages excluded
    for j, (k, i, m) in enumerate(order):
        B, ta = len(groups[m]), time.perf_counter()
        if rank == 0:
            if j >= M and world_size > 1:  # this micro-batch's previous call must be back first
                buf = torch.empty(B, c, *cfg.frame_shape, dtype=p.dtype, device=p.device)
                guarded(rank, f"call {j - M}'s return from the last stage", dist.recv, buf, world_size - 1)
                ta = time.perf_counter()
                finish(*order[j - M], buf)
            if i == 0:
                started[m] = time.perf_counter()
                noise, a, s = _chunk_inputs(groups[m], gens[m], k, model)
                state[m] = (noise, None, a, s)
            z, _, a, s = state[m]
            t = torch.full((B, c), float(ts[i]) if i < steps else 0.0, dtype=p.dtype, device=p.device)
            state[m] = (z, t, a, s)
            x, cond = embed(model, z, t, a, s)
        else:
            buf = torch.empty(B, n, 2 * cfg.n_embd, dtype=p.dtype, device=p.device)
            guarded(rank, f"call {j}'s receive from stage {rank - 1}", dist.recv, buf, rank - 1)
            ta = time.perf_counter()
            x, cond = buf.chunk(2, dim=-1)
        cache = caches[m]
        mask = cache.mask(n)
        pos = cache.next_positions(n)
        for b in blocks:
            x = model.blocks[b](x, pos, mask, cache, False, cond)
        if i == steps:
            cache.advance(n)  # the context pass commits the clean chunk to this stage's cache
        if last:
            out = head(model, x, cond, c)
            if world_size == 1:
                finish(k, i, m, out)
                busy += time.perf_counter() - ta
                continue
            sends.append(guarded(rank, f"call {j}'s send to stage 0", dist.isend, out.contiguous(), 0))
        else:
            sends.append(guarded(rank, f"call {j}'s send to stage {rank + 1}", dist.isend,
                                 torch.cat([x, cond], -1).contiguous(), rank + 1))
        busy += time.perf_counter() - ta
        while len(sends) > 2 * M:
            guarded(rank, f"call {j}: an earlier call's send", sends.pop(0).wait)
    if rank == 0 and world_size > 1:
        for j in range(max(0, len(order) - M), len(order)):
            k, i, m = order[j]
            buf = torch.empty(len(groups[m]), c, *cfg.frame_shape, dtype=p.dtype, device=p.device)
            guarded(rank, f"call {j}'s return from the last stage", dist.recv, buf, world_size - 1)
            finish(k, i, m, buf)
    for h in sends:
        guarded(rank, "the last calls' sends", h.wait)
    seconds = time.perf_counter() - t0
    busy_ms = busy / len(order) * 1e3  # per call of one micro-batch
    if rank != 0:
        return {"busy_ms": busy_ms}
    return {"frames": {sid: torch.cat(f) for sid, f in frames.items()}, "chunk_ms": chunk_ms, "seconds": seconds,
            "fps": len(requests) * n_chunks * c / seconds, "busy_ms": busy_ms, "calls": n_chunks * (steps + 1)}


# ---------------------------------------------------------------------------------------------------
# Over denoising steps
# ---------------------------------------------------------------------------------------------------

class _StepCache:
    """Rank r's view of one fused call: its own tokens [a, b) of the call, the older ranks' keys and values
    received layer by layer, its own sent to the younger ranks; a replica StreamCache holds them all."""

    stores_raw_keys = True

    def __init__(self, cache: StreamCache, rank: int, spans: dict[int, tuple[int, int]], n_total: int):
        self.cache, self.rank, self.spans, self.sends = cache, rank, spans, []
        self.L = cache.length
        cache.next_positions(n_total)  # lays out the whole call, as the single process does
        self.end = self.L + spans[rank][1] if rank in spans else self.L
        self.positions = cache.key_positions()[:self.end]

    def _write(self, layer, a, b, k, v):
        self.cache.k[layer, :, :, self.L + a:self.L + b] = k
        self.cache.v[layer, :, :, self.L + a:self.L + b] = v

    def absorb(self, layer: int) -> None:
        """Receive this layer's keys and values from every older rank that holds tokens."""
        B, H, _, D = self.cache.k.shape[1:]
        for src in sorted(r for r in self.spans if r > self.rank):
            a, b = self.spans[src]
            kv = torch.empty(2, B, H, b - a, D, dtype=self.cache.k.dtype, device=self.cache.k.device)
            guarded(self.rank, f"layer {layer}'s keys from rank {src}", dist.recv, kv, src, tag=layer)
            self._write(layer, a, b, kv[0], kv[1])

    def update(self, layer, k, v, q=None):
        a, b = self.spans[self.rank]
        self._write(layer, a, b, k, v)
        kv = torch.stack([k, v]).contiguous()
        self.sends += [guarded(self.rank, f"layer {layer}'s keys to rank {dst}", dist.isend, kv, dst, tag=layer)
                       for dst in range(self.rank)]
        self.absorb(layer)
        return self.cache.k[layer, :, :, :self.end], self.cache.v[layer, :, :, :self.end]

    def key_positions(self):
        return self.positions


@torch.inference_mode()
def steps_rank(rank: int, world_size: int, model, requests: list[StreamRequest], steps: int, n_sink: int = 0) -> dict:
    """Rank `rank` of the steps pipeline: it takes every chunk's step `rank` (call on every rank; world_size
    must equal steps). The last rank returns frames {id: latents (F, C, H, W)}, seconds, fps; the others {}."""
    if world_size != steps:
        raise ValueError(f"steps ({steps}) must equal the world size ({world_size}): one denoising step per rank")
    cfg, p = model.config, next(model.parameters())
    n_chunks = _check_streams(requests, 1, "the stream count")
    S, c, P, last = steps, cfg.chunk, cfg.tokens_per_frame, rank == steps - 1
    sb = StreamBatch(model, steps, 1, len(requests), n_sink, fuse=True)  # its cache and schedule, as one process
    cache, ts = sb.cache, sb.ts
    gens = [torch.Generator().manual_seed(r.seed) for r in requests]
    frames, sends, held, refill = {r.id: [] for r in requests}, [], None, None
    dist.barrier()
    t0 = time.perf_counter()
    for g in range(n_chunks + S - 1):
        k_min, k_max = max(0, g - S + 1), min(g, n_chunks - 1)  # the chunks in flight, oldest first
        has_refill = 0 <= g - S < n_chunks
        r0 = c if has_refill else 0
        spans = {g - k: ((r0 + c * (k - k_min)) * P, (r0 + c * (k - k_min + 1)) * P) for k in range(k_min, k_max + 1)}
        if has_refill:  # the last rank also runs the refill, the first tokens of the call
            spans[S - 1] = (0, spans.get(S - 1, (0, r0 * P))[1])
        if rank == 0 and g < n_chunks:
            held = _chunk_inputs(requests, gens, g, model)
        elif 0 <= g - rank < n_chunks and rank > 0:  # the chunk the previous rank stepped last tick
            z = torch.empty(len(requests), c, *cfg.frame_shape, dtype=p.dtype, device=p.device)
            labels = torch.empty(2, len(requests), c, dtype=torch.long, device=p.device)
            guarded(rank, f"tick {g}'s chunk from rank {rank - 1}", dist.recv, z, rank - 1)
            guarded(rank, f"tick {g}'s labels from rank {rank - 1}", dist.recv, labels, rank - 1)
            held = (z, labels[0], labels[1])
        view = _StepCache(cache, rank, spans, (r0 + c * (k_max - k_min + 1)) * P)
        if rank in spans:
            a, b = spans[rank]
            mine = []  # (z, t, actions, scene) of the refill (at t = 0) and of this rank's chunk (at t = ts[rank])
            if has_refill and rank == S - 1:
                mine.append((refill[0], torch.zeros(refill[1].shape, dtype=p.dtype, device=p.device), *refill[1:]))
            if 0 <= g - rank < n_chunks:
                mine.append((held[0], torch.full(held[1].shape, float(ts[rank]), dtype=p.dtype, device=p.device),
                             held[1], held[2]))
            z, t, acts, scene = (torch.cat(parts, 1) for parts in zip(*mine, strict=True))
            mask = cache.mask(cache.n_new)[a:b, :view.end]  # this rank's rows of the whole call's mask
            frame_pos = (torch.arange(a, b, P, device=p.device) + view.L) // P
            v = model.velocity(z, t, acts, scene, frame_pos=frame_pos, cache=view, mask=mask)
            if 0 <= g - rank < n_chunks:
                own = slice(z.shape[1] - c, z.shape[1])
                z_new = z[:, own] - (ts[rank] - ts[rank + 1]) * v[:, own]  # z_{t - dt} = z_t - dt v
                if last:
                    refill = (z_new, held[1], held[2])
                    for r, x in zip(requests, z_new, strict=True):
                        frames[r.id].append(x.clone())
                else:
                    sends.append(guarded(rank, f"tick {g}'s chunk to rank {rank + 1}", dist.isend, z_new.contiguous(),
                                         rank + 1))
                    sends.append(guarded(rank, f"tick {g}'s labels to rank {rank + 1}", dist.isend,
                                         torch.stack([held[1], held[2]]).contiguous(), rank + 1))
        else:
            for layer in range(cfg.n_layer):  # no chunk here this tick: keep the ring in step with the others
                view.absorb(layer)
        if has_refill:
            cache.advance(c * P)  # the refill's keys and values, now in every rank's replica, join the ring
        sends += view.sends
        for h in sends:
            guarded(rank, f"tick {g}'s sends to rank {', '.join(str(r) for r in range(world_size) if r != rank)}",
                    h.wait)
        sends = []
    seconds = time.perf_counter() - t0
    if not last:
        return {}
    return {"frames": {sid: torch.cat(f) for sid, f in frames.items()}, "seconds": seconds,
            "fps": len(requests) * n_chunks * c / seconds}
