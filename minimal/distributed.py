"""Serving many streams across processes with torch.distributed: rank 0 admits, every rank batches its share.

When one process is not enough, the work spreads over processes (one per GPU, or per CPU core), which
talk through `torch.distributed`: collectives and point-to-point sends over gloo (CPU) or NCCL (GPU),
started by `torchrun` (or, in the tests and the tutorial, by `launch`, which spawns the processes itself).
Nothing here is a transport of its own.

Serving (`serve_rank`, the same function on every rank), one tick per chunk:

    rank 0:     admit the streams that arrived, each to the rank with the fewest active streams and a free
                slot (least-loaded balancing); release those that leave          -> broadcast the orders
    every rank: apply its joins and leaves, make one chunk of each of its streams (continuous_batching)
                                                                                    -> gather to rank 0
    rank 0:     frames and per-chunk times of every stream, in arrival order

A stream lives on one rank from its join to its leave (its cache is there), so its frames are those it
would get alone, on whichever rank. The collectives wait for the slowest rank, so a rank that dies makes
the others' next collective fail: gloo sees the closed connection at once, and the process group's
timeout bounds the wait otherwise; `serve_rank` turns either into a RuntimeError that names the rank.

Simplified against a production server: lockstep ticks (a slow rank slows the tick), no migration of
streams between ranks, a fixed capacity per rank, frames returned through the gather (a real server would
send them to the user from the rank that made them). Pipeline parallelism is in pipeline_parallel.py.
"""

from __future__ import annotations

import io
import os
import queue
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .continuous_batching import ContinuousBatcher, StreamRequest


def check_world(world_size, what: str = "world_size") -> int:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"{what} must be an int >= 1 (processes), got {world_size!r}")
    return world_size


# ---------------------------------------------------------------------------------------------------
# Starting processes: torchrun does it from the shell; `launch` from Python (tests, notebooks)
# ---------------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    """Some ranks failed; `errors` maps each failed rank to (its message, the time.time() it stopped)."""

    def __init__(self, errors: dict[int, tuple[str, float]]):
        self.errors = errors
        super().__init__("; ".join(f"rank {r}: {msg}" for r, (msg, _) in sorted(errors.items())))


def _entry(fn, rank: int, world_size: int, init_method: str, backend: str, peer_timeout: float, results, args):
    torch.set_num_threads(1)  # one process per core: more threads would only fight over it
    try:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=peer_timeout))
        out = fn(rank, world_size, *args)
        buffer = io.BytesIO()
        torch.save(out, buffer)  # tensors as bytes: nothing to keep alive in shared memory after exit
        results.put((rank, "ok", buffer.getvalue(), time.time()))
    except BaseException as e:  # noqa: BLE001 - whatever stops a worker is reported to the launcher
        results.put((rank, "error", f"{type(e).__name__}: {e}", time.time()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn, world_size: int, *args, timeout: float = 300.0, peer_timeout: float = 8.0,
           backend: str = "gloo") -> list:
    """Run fn(rank, world_size, *args) in `world_size` fresh processes joined in one process group, and
    return their results by rank. fn must be importable (a module-level function). Rendezvous through a
    temporary file (no port to choose); every process is ended before this returns. Raises WorkerError if
    any rank fails or dies, TimeoutError after `timeout` seconds."""
    check_world(world_size)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = "file://" + os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_entry, daemon=True,
                             args=(fn, r, world_size, init, backend, peer_timeout, results, args))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        got, deadline = {}, time.monotonic() + timeout
        try:
            while len(got) < world_size:
                try:
                    rank, status, payload, when = results.get(timeout=0.2)
                    got[rank] = (status, payload, when)
                    continue
                except queue.Empty:
                    pass
                if all(not p.is_alive() for p in procs):  # whatever was sent has arrived: the rest died silently
                    while True:
                        try:
                            rank, status, payload, when = results.get(timeout=0.5)
                        except queue.Empty:
                            break
                        got[rank] = (status, payload, when)
                    for r, p in enumerate(procs):
                        got.setdefault(r, ("error", f"exited with code {p.exitcode} without a result", time.time()))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {world_size} workers did not finish within {timeout} s")
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
    errors = {r: (payload, when) for r, (status, payload, when) in got.items() if status != "ok"}
    if errors:
        raise WorkerError(errors)
    return [torch.load(io.BytesIO(got[r][1]), weights_only=True) for r in range(world_size)]


# ---------------------------------------------------------------------------------------------------
# Serving across ranks
# ---------------------------------------------------------------------------------------------------

@dataclass
class Workload:
    """The streams to serve: each arrives at a tick (default 0) and leaves after its script, or earlier at
    the tick given in `leave`."""
    requests: list[StreamRequest]
    arrive: dict[int, int] = field(default_factory=dict)
    leave: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        ids = [r.id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"stream ids must be unique, got {ids}")
        unknown = (set(self.arrive) | set(self.leave)) - set(ids)
        if unknown:
            raise ValueError(f"arrive and leave name streams that are not in requests: {sorted(unknown)}")


def scripted_workload(n_streams: int, chunks: int, seed: int = 0, arrive_every: int = 1,
                      churn: bool = True) -> Workload:
    """A load to serve: stream i (seed i) arrives at tick i * arrive_every and lasts chunks / 2 .. 3 chunks / 2
    chunks, its action held for 2 to 4 chunks at a time and its scene switched once midway; with churn every
    fourth stream leaves early, halfway through its script."""
    import random

    if not isinstance(n_streams, int) or n_streams < 1 or not isinstance(chunks, int) or chunks < 2:
        raise ValueError(f"need n_streams >= 1 and chunks >= 2, got n_streams={n_streams!r}, chunks={chunks!r}")
    rng, requests, leave = random.Random(seed), [], {}
    for i in range(n_streams):
        n, script, scenes = rng.randint(chunks // 2, chunks + chunks // 2), [], rng.sample(range(4), 2)
        while len(script) < n:
            script += [(rng.randrange(5), scenes[len(script) >= n // 2])] * rng.randint(2, 4)
        requests.append(StreamRequest(i, i, [(a, scenes[k >= n // 2]) for k, (a, _) in enumerate(script[:n])]))
        if churn and i % 4 == 3:
            leave[i] = i * arrive_every + n // 2
    return Workload(requests, {i: i * arrive_every for i in range(n_streams)}, leave)


def guarded(rank: int, what: str, fn, *args, **kwargs):
    """Run a collective or a receive; a dead or silent peer becomes an error that says what happened."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - gloo and NCCL raise several kinds for a lost peer
        raise RuntimeError(f"rank {rank}: {what} failed, a peer process has stopped or stopped answering "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); this rank stops") from e


class _Admission:
    """Rank 0's bookkeeping: who is waiting, who is where, least-loaded placement."""

    def __init__(self, workload: Workload, world_size: int, capacity: int):
        self.waiting = sorted(workload.requests, key=lambda r: workload.arrive.get(r.id, 0))
        self.workload, self.capacity = workload, capacity
        self.load = [0] * world_size  # active streams per rank
        self.where: dict[int, int] = {}  # stream id -> rank, while active
        self.placement: dict[int, int] = {}
        self.joined: dict[int, int] = {}  # stream id -> the tick it joined

    def orders(self, tick: int) -> list[dict]:
        orders = [{"join": [], "leave": []} for _ in self.load]
        for sid, rank in list(self.where.items()):
            if self.workload.leave.get(sid, 1 << 62) <= tick:
                orders[rank]["leave"].append(sid)
                self.finished(sid)
        self.waiting = [r for r in self.waiting if self.workload.leave.get(r.id, 1 << 62) > tick]  # gone unserved
        while self.waiting and self.workload.arrive.get(self.waiting[0].id, 0) <= tick:
            rank = min(range(len(self.load)), key=lambda r: (self.load[r], r))
            if self.load[rank] >= self.capacity:
                break  # every rank is full: the stream waits for a leave
            request = self.waiting.pop(0)
            orders[rank]["join"].append(request)
            self.load[rank] += 1
            self.where[request.id] = self.placement[request.id] = rank
            self.joined[request.id] = tick
        return orders

    def finished(self, sid: int) -> None:
        self.load[self.where.pop(sid)] -= 1

    @property
    def done(self) -> bool:
        return not self.waiting and not self.where


def serve_rank(rank: int, world_size: int, model, workload: Workload, steps: int, n_sink: int = 0,
               capacity: int = 8, decoder=None) -> dict | None:
    """Serve `workload` over the process group (call it on every rank; rank 0's workload is the one used).
    Returns, on rank 0: frames {id: (F, ...)} (latents, or uint8 frames (F, H, W, 3) with a decoder),
    chunk_ms {id: [generation time of each chunk on its rank]}, placement {id: rank}, joined {id: tick},
    ticks, seconds, frames_total, fps; on the other ranks {"chunks": chunks made}."""
    check_world(world_size)
    batcher = ContinuousBatcher(model, steps, n_sink, capacity)
    admission = _Admission(workload, world_size, capacity) if rank == 0 else None
    frames, chunk_ms, made, tick = {}, {}, 0, 0
    length = {r.id: len(r.script) for r in workload.requests}
    guarded(rank, "the start barrier", dist.barrier)
    t0 = time.perf_counter()
    while True:
        box = [None]
        if rank == 0:
            orders = admission.orders(tick)
            box = [None if admission.done else orders]
        guarded(rank, f"tick {tick}'s broadcast of the orders", dist.broadcast_object_list, box, 0)
        if box[0] is None:
            break
        mine = box[0][rank]
        for sid in mine["leave"]:
            batcher.leave(sid)
        for request in mine["join"]:
            batcher.join(request)
        t_chunk = time.perf_counter()
        out = batcher.step()
        if decoder is not None and out:
            with torch.inference_mode():
                pixels = decoder.decode(torch.cat(list(out.values())).float())  # (n c, 3, H, W) in [0, 1]
            pixels = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            out = dict(zip(out, pixels.split(batcher.c), strict=True))
        ms = (time.perf_counter() - t_chunk) * 1e3
        made += len(out)
        gathered = [None] * world_size if rank == 0 else None
        guarded(rank, f"tick {tick}'s gather of the frames", dist.gather_object, (out, ms), gathered, 0)
        if rank == 0:
            for part, part_ms in gathered:
                for sid, x in part.items():
                    frames.setdefault(sid, []).append(x.cpu())
                    chunk_ms.setdefault(sid, []).append(part_ms)
                    if len(frames[sid]) == length[sid]:
                        admission.finished(sid)
        tick += 1
    seconds = time.perf_counter() - t0
    if rank != 0:
        return {"chunks": made}
    total = sum(len(f) for f in frames.values()) * batcher.c
    return {"frames": {sid: torch.cat(f) for sid, f in frames.items()}, "chunk_ms": chunk_ms,
            "placement": admission.placement, "joined": admission.joined, "ticks": tick, "seconds": seconds,
            "frames_total": total, "fps": total / seconds}
