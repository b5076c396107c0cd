"""`python -m minimal.bench distributed`: scale-out measured, every ratio side by side in one run.

Shipped `video-df`, 4 steps per chunk (2 for the steps pipeline: one step per process), 2 sink frames, the
interactive mode (one chunk at a time), frames decoded, one thread per process. Medians over rounds; each
round measures both sides of every ratio back to back.

    streams<B>_speedup  continuous batching in one process: frames per second with B streams in the batch
                        over one stream (B = 1 .. 32); streams_speedup_cpu_time the same per second of the
                        process's CPU time, which other jobs on a shared machine do not inflate
    serving_speedup     distributed.serve_rank with 2 processes over 1, at 8 streams per process, on a
                        scripted load with joins and leaves (24 streams arriving one per tick, every fourth
                        leaving early): the extra process serves 8 more streams at once
    pipeline_parallel   the blocks split over 2 processes over the same code on 1, M micro-batches of 2
                        streams; `predicted` is the bubble model fed with the stages' measured busy time per
                        call (T = (P max(M, N) + min(M, N) - 1) x the slowest stage), `ideal` the same with
                        equal stages and free sends (pipeline_parallel.bubble_model); latency_ratio: a
                        chunk's latency on 2 processes over 1
    steps_parallel      the staggered schedule with one denoising step per process, 2 processes, over the
                        same schedule in one process (stream_batch.StreamBatch)
Multi-process parts run CPU processes with gloo, also under --device cuda (which moves only the batching).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from .autoencoder import load_autoencoder
from .checkpoints import load_pretrained
from .continuous_batching import ContinuousBatcher, StreamRequest
from .distributed import launch, scripted_workload, serve_rank
from .pipeline_parallel import blocks_rank, bubble_model, steps_rank
from .stream_batch import StreamBatch
from .timing import cpu_threads, resolve_device

STEPS, N_SINK, CAPACITY = 4, 2, 8
BATCHES = (1, 2, 4, 8, 16, 32)
MICRO = (1, 2, 4)


def _decode(ae, out: dict) -> dict:
    """The chunks' frames as uint8 (c, H, W, 3), as a server sends them."""
    if not out:
        return out
    with torch.inference_mode():
        pixels = ae.decode(torch.cat(list(out.values())).float())
    frames = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return dict(zip(out, frames.split(len(frames) // len(out)), strict=True))


def _batching(model, ae, rounds: int, chunks: int) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Frames per second of B streams batched, for every B, interleaved round by round: per wall-clock second
    and per second of this process's CPU time (which other jobs on a shared machine do not inflate)."""
    batchers = {}
    for B in BATCHES:
        batchers[B] = ContinuousBatcher(model, STEPS, N_SINK, capacity=B)
        for i in range(B):
            batchers[B].join(StreamRequest(i, i, [(i % 5, i % 4)] * (3 + rounds * chunks)))
        for _ in range(3):  # warm-up: the ring fills
            _decode(ae, batchers[B].step())
    fps, cpu = {B: [] for B in BATCHES}, {B: [] for B in BATCHES}
    for _ in range(rounds):
        for B, batcher in batchers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(chunks):
                _decode(ae, batcher.step())
            fps[B].append(B * model.config.chunk * chunks / (time.perf_counter() - t0))
            cpu[B].append(B * model.config.chunk * chunks / (time.process_time() - c0))
    return fps, cpu


def _stagger_alone(model, requests, steps: int) -> float:
    """Frames per second of the staggered schedule in one process (the steps pipeline's reference)."""
    stream, c = StreamBatch(model, steps, 1, len(requests), N_SINK, fuse=True), model.config.chunk
    n_chunks, p = len(requests[0].script), next(model.parameters())
    noise = torch.randn(len(requests), c, *model.config.frame_shape).to(p)
    labels = torch.zeros(len(requests), c, dtype=torch.long)
    t0, out = time.perf_counter(), 0
    while out < n_chunks:
        out += stream.step((noise, labels, labels) if stream.due else None) is not None
    return len(requests) * n_chunks * c / (time.perf_counter() - t0)


def every_scheme(rank: int, world_size: int, model, workload, fixed: list, steps: int, n_sink: int = 0) -> dict:
    """Every scheme on one process group (call on every rank): serving `workload` (capacity 2 per rank), the
    blocks pipeline on `fixed` with 1 and 2 micro-batches, and, when world_size == steps, the steps pipeline."""
    out = {"serve": serve_rank(rank, world_size, model, workload, steps, n_sink, 2)}
    for M in (1, 2):
        out[f"blocks{M}"] = blocks_rank(rank, world_size, model, fixed, steps, n_sink, M)
    if world_size == steps:
        out["steps"] = steps_rank(rank, world_size, model, fixed, steps, n_sink)
    return out


def one_round(rank: int, world_size: int, model, ae, quick: bool) -> dict:
    """Every multi-process scheme on this process group (call on every rank); rank 0 returns the figures."""
    n = 8 if quick else 24
    served = serve_rank(rank, world_size, model, scripted_workload(n, n, seed=1), STEPS, N_SINK, CAPACITY, ae)
    fig = {"serve_fps": served["fps"]} if rank == 0 else {}
    for M in MICRO:
        fixed = [StreamRequest(i, i, [(i % 5, i % 4)] * (4 if quick else 12)) for i in range(2 * M)]
        out = blocks_rank(rank, world_size, model, fixed, STEPS, N_SINK, M)
        busy = [None] * world_size
        torch.distributed.all_gather_object(busy, out["busy_ms"])
        if rank == 0:
            latency = statistics.median(ms for per in out["chunk_ms"].values() for ms in per)
            fig[f"blocks{M}"] = {"fps": out["fps"], "busy_ms": busy, "latency_ms": latency, "calls": out["calls"]}
    fixed = [StreamRequest(i, i, [(i % 5, i % 4)] * (8 if quick else 48)) for i in range(4)]
    if world_size == 1:
        fig["steps_fps"] = _stagger_alone(model, fixed, 2)
    else:
        box = [steps_rank(rank, world_size, model, fixed, world_size, N_SINK).get("fps")]
        torch.distributed.broadcast_object_list(box, world_size - 1)
        fig["steps_fps"] = box[0]
    return fig


def pipeline_figures(r1: list[dict], r2: list[dict]) -> dict:
    """Per micro-batch count, from one_round's results on 1 and 2 processes: measured speedup, the bubble
    model fed with the measured stage times (predicted) and with equal stages (ideal), the latency ratio."""
    rows = {}
    for M in MICRO:
        a, b = [r[f"blocks{M}"] for r in r1], [r[f"blocks{M}"] for r in r2]
        P = a[0]["calls"]
        one = statistics.median(x["busy_ms"][0] for x in a)  # a call of one micro-batch, all blocks
        tick = statistics.median(max(x["busy_ms"]) for x in b)  # the slowest stage's call
        pairs = list(zip(a, b, strict=True))
        rows[M] = {"speedup": statistics.median(y["fps"] / x["fps"] for x, y in pairs),
                   "predicted": P * M * one / ((P * max(M, 2) + min(M, 2) - 1) * tick),
                   "ideal": bubble_model(2, M, P),
                   "latency_ratio": statistics.median(y["latency_ms"] / x["latency_ms"] for x, y in pairs),
                   "stage_ms": [statistics.median(x["busy_ms"][s] for x in b) for s in range(2)], "one_ms": one}
    return rows


def bench(device=None, quick: bool = False) -> tuple[str, dict]:
    device = resolve_device(device)
    load0 = os.getloadavg()
    model, _ = load_pretrained("video-df", device=device)
    ae, _ = load_autoencoder(device)
    with cpu_threads(1, device):
        fps, cpu = _batching(model.eval(), ae, 2 if quick else 5, 2 if quick else 10)
    cpu_model, cpu_ae = model.cpu(), ae.cpu()
    r1, r2 = [], []
    for _ in range(1 if quick else 3):  # rounds: 1 process, then 2, back to back
        r1.append(launch(one_round, 1, cpu_model, cpu_ae, quick, timeout=600)[0])
        r2.append(launch(one_round, 2, cpu_model, cpu_ae, quick, timeout=600)[0])
    med = {B: statistics.median(v) for B, v in fps.items()}
    per_cpu = {B: statistics.median(v) for B, v in cpu.items()}
    pp = pipeline_figures(r1, r2)
    top = pp[MICRO[-1]]
    fig = {f"streams{B}_speedup": med[B] / med[1] for B in BATCHES if B > 1}
    fig.update(streams_fps={str(B): v for B, v in med.items()},
               streams_speedup_cpu_time={str(B): per_cpu[B] / per_cpu[1] for B in BATCHES if B > 1},
               serving_speedup=statistics.median(b["serve_fps"] / a["serve_fps"] for a, b in zip(r1, r2, strict=True)),
               serving_fps=[statistics.median(r["serve_fps"] for r in rs) for rs in (r1, r2)],
               pipeline_parallel={"speedup": top["speedup"], "predicted": top["predicted"],
                                  "latency_ratio": top["latency_ratio"], "micro_batches": MICRO[-1],
                                  "by_micro_batches": {str(M): row for M, row in pp.items()}},
               steps_parallel={"speedup": statistics.median(b["steps_fps"] / a["steps_fps"]
                                                            for a, b in zip(r1, r2, strict=True))},
               device=str(device), torch=torch.__version__, cpu_count=os.cpu_count(), load_avg_before=load0,
               load_avg_after=os.getloadavg())
    rows = [f"scale-out: video-df, {STEPS} steps, chunk by chunk, decoded; one thread per process "
            f"(load average {load0[0]:.1f} before, {fig['load_avg_after'][0]:.1f} after, {os.cpu_count()} CPUs)",
            "continuous batching, 1 process: " + ", ".join(f"{B} streams {med[B]:.0f} fps (x{med[B] / med[1]:.2f})"
                                                          for B in BATCHES),
            "  the same per second of CPU time: " + ", ".join(f"{B}: x{per_cpu[B] / per_cpu[1]:.2f}"
                                                             for B in BATCHES if B > 1),
            f"serving, {CAPACITY} streams per process, joins and leaves: 1 process {fig['serving_fps'][0]:.0f} fps, "
            f"2 processes {fig['serving_fps'][1]:.0f} fps: x{fig['serving_speedup']:.2f}",
            f"{'blocks over 2 processes':>24} | {'speedup':>7} {'predicted':>9} {'ideal':>6} {'latency':>8} "
            f"{'stage ms':>11} {'1-proc ms':>9}"]
    for M, r in pp.items():
        rows.append(f"{f'{M} micro-batch(es) of 2':>24} | {r['speedup']:>7.2f} {r['predicted']:>9.2f} "
                    f"{r['ideal']:>6.2f} {r['latency_ratio']:>7.2f}x {r['stage_ms'][0]:>5.2f}/{r['stage_ms'][1]:<5.2f} "
                    f"{r['one_ms']:>9.2f}")
    rows.append(f"steps over 2 processes (staggered, 2 steps, 4 streams): x{fig['steps_parallel']['speedup']:.2f} "
                "over the same schedule in 1 process")
    return "\n".join(rows), fig
