"""`python -m minimal.bench video`: per-chunk latency of the causal video transformer's samplers, measured.

Side by side up to 64 frames, runs interleaved: the rolling frame cache (window = the 16 trained frames,
without and with sink frames), the re-encoding sliding window, a growing 64-frame KV cache, and
recomputing the whole past at every denoising step (video_sampling.sample_chunks' `cache` options).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from .timing import Timer, percentile, resolve_device
from .video_model import VideoConfig, VideoTransformer
from .video_recipes import CONFIG
from .video_sampling import sample_chunks


def chunk_latencies(model, n_frames: int, cache="static", n_sink: int = 0, steps: int = 8, device=None) -> list[float]:
    """Seconds to produce each chunk of one n_frames video (denoising steps plus, cached, the context
    pass), with sample_chunks' `cache` and `n_sink`; device defaults to the model's."""
    device = next(model.parameters()).device if device is None else device
    actions = torch.zeros(1, n_frames, dtype=torch.long, device=device)
    chunks = sample_chunks(model, actions, 0, steps, cache=cache, n_sink=n_sink,
                           generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(n_frames // model.config.chunk):
        with Timer(device) as t:
            next(chunks)
        times.append(t.seconds)
    return times


def bench(device=None, quick: bool = False, repeats: int = 5, n_sink: int = 2) -> tuple[str, dict]:
    """Per-chunk latency up to 64 frames: the rolling frame cache (window = the max_frames = 16 trained
    frames; without and with n_sink sink frames), the re-encoding sliding window, a growing 64-frame KV
    cache, and recomputation.

    Latency does not depend on the weights: CONFIG's size, random weights (shared by a 64-frame copy
    for the growing cache and recomputation). flatness = rolling latency at frame 64 / at frame 8;
    speedup = recompute / rolling at frame 64; the growing cache's under their own keys.
    speedup_reencode = re-encoding window / rolling at frame 64.
    """
    device = resolve_device(device)
    n, steps = (16, 2) if quick else (64, 8)
    torch.manual_seed(0)
    model = VideoTransformer(CONFIG).to(device).eval()
    growing = VideoTransformer(VideoConfig(**{**asdict(CONFIG), "max_frames": n})).to(device).eval()
    growing.load_state_dict(model.state_dict())
    c = CONFIG.chunk
    runs = {  # name: (label, model, cache, n_sink)
        "rolling": ("rolling", model, "rolling", 0),
        "rolling_sinks": (f"rolling {n_sink} sinks", model, "rolling", n_sink),
        "reencode": ("re-encode", model, "reencode", 0),
        "growing_cache": ("growing cache", growing, "static", 0),
        "recompute": ("recompute", growing, None, 0)}
    for _, m, cache, sinks in runs.values():  # warm-up
        chunk_latencies(m, 4 * c, cache, sinks, steps, device)
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drift in machine speed hits all alike
        for name, (_, m, cache, sinks) in runs.items():
            times[name].append(chunk_latencies(m, n, cache, sinks, steps, device))

    def latency(name: str, frame: int) -> float:
        """Median over repeats of the time of the chunk that ends at `frame`."""
        return percentile([r[frame // c - 1] for r in times[name]], 50)

    frames = [m for m in (8, 16, 32, 64) if m <= n]
    first = frames[0]
    rolling_bytes = model.new_rolling_cache(1).nbytes
    growing_bytes = {m: model.new_cache(1, m).nbytes for m in (first, n)}  # the slots holding m frames
    header = f"{'frame':>6} | " + " ".join(f"{label:>16}" for label, *_ in runs.values()) + " | ms per chunk"
    rows = [f"{m:>6} | " + " ".join(f"{latency(name, m) * 1e3:>16.2f}" for name in runs) for m in frames]
    result = {"frames": n, "chunk": c, "steps": steps, "window": CONFIG.max_frames, "n_sink": n_sink,
              "device": str(device), "repeats": repeats,
              **{f"ms_per_chunk_{name}": {m: latency(name, m) * 1e3 for m in frames} for name in runs},
              "flatness": latency("rolling", n) / latency("rolling", first),
              "flatness_sinks": latency("rolling_sinks", n) / latency("rolling_sinks", first),
              "flatness_growing_cache": latency("growing_cache", n) / latency("growing_cache", first),
              "speedup": latency("recompute", n) / latency("rolling", n),
              "speedup_growing_cache": latency("recompute", n) / latency("growing_cache", n),
              "speedup_reencode": latency("reencode", n) / latency("rolling", n),
              "cache_bytes": {first: rolling_bytes, n: rolling_bytes},
              "cache_bytes_growing": growing_bytes}
    title = (f"Rolling frame cache vs re-encoding window, growing KV cache, recompute: {steps} Euler steps per "
             f"{c}-frame chunk, {model.n_params() / 1e6:.2f}M-param video transformer, {device}, "
             f"median of {repeats} runs")
    summary = [f"flatness (frame {n} / frame {first}): rolling {result['flatness']:.2f}, growing cache "
               f"{result['flatness_growing_cache']:.2f}",
               f"speedup at frame {n}: rolling over recompute {result['speedup']:.1f}x (growing cache "
               f"{result['speedup_growing_cache']:.1f}x), rolling over re-encode {result['speedup_reencode']:.1f}x",
               f"cache bytes at frame {first} -> {n}: rolling {rolling_bytes} -> {rolling_bytes}, growing "
               f"{growing_bytes[first]} -> {growing_bytes[n]}"]
    return "\n".join([title, header, "-" * len(header), *rows, *summary]), result
