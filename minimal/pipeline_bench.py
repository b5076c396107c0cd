"""`python -m minimal.bench pipeline` and `soak`: the real-time pipeline, measured.

pipeline (shipped `video-df`, 4 steps per chunk, after a warm-up, on 1 or 2 threads, whichever streams
faster, reported as `threads`):
    fps                 throughput mode (stagger, 4 chunks in flight), frames per second over 2048
                        frames, decoding included; fps_interactive the same one chunk at a time
    chunk_p50_ms/p99    generation time of each emitted chunk (throughput mode; interactive in "interactive")
    ttff_ms             reset -> first frame, the pipeline's fill included (median of 20)
    overhead            the pipeline's time per chunk over the bare model and decoder calls it makes
    stagger_speedup     fps / fps_interactive
    flatness            mean chunk time over the last 256 of 10,000 frames / over the first 256
    action_latency_frames(_stagger)  frames from the one where "right" replaces "none" to the first frame
                        in which the player moves right (toybench's detector), mean over 24 switches
    paced_jitter_ms     p99 of how late a frame leaves pipeline.Pacer at 30 FPS (interactive, 300 frames)
    quality             toybench of 512 16-frame clips (4 steps) sampled chunk by chunk and staggered, on
                        the same noise and actions, with 95% bootstrap intervals
soak (`--frames`, default 100,000, throughput mode, a scene change every 1000 frames): resident memory
growth (from /proc/self/statm), chunk-time drift (1000 more frames of the soaked stream over 1000 of a
fresh stream on the same weights, interleaved 100 at a time: this shared machine's own speed drifts over
minutes, so the soak's first 1000 frames, also compared, ran on a different machine), and chunks holding
a NaN or an infinity.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from .autoencoder import load_autoencoder
from .data import SCENE_NAMES
from .pipeline import Pacer, StreamPipeline, load_pipeline
from .stream_batch import sample_stream
from .timing import cpu_threads, measure, percentile, resolve_device
from .toybench import detect_sprites, score_interval, score_video
from .video_recipes import eval_actions
from .video_sampling import sample_video

STEPS = 4


def _stream(pipe, n_frames: int, seed: int = 0) -> float:
    """Reset, then stream n_frames; returns frames per second."""
    pipe.reset(seed=seed)
    t0 = time.perf_counter()
    for _ in range(n_frames):
        pipe.next_frame()
    return n_frames / (time.perf_counter() - t0)


def _ttff(pipe, repeats: int = 20) -> float:
    times = []
    for r in range(repeats):
        pipe.reset(seed=r)
        pipe.next_frame()
        times.append(pipe.stats()["ttff_ms"])
    return percentile(times, 50)


def _bare_chunk_seconds(pipe) -> float:
    """Median seconds of the model calls and the decode that one emitted chunk costs, made directly on the
    pipeline's own buffers in its steady state (no schedule, no bookkeeping): `lag` calls of S chunks
    (and the refill, fused), a context pass of its own when not fused, one decode."""
    s, ae = pipe.stream, pipe.ae
    c, P = s.c, s.model.config.tokens_per_frame
    r = c if s.fuse else 0
    calls = [slice(c - r, c * (1 + s.S))] * s.lag + ([] if s.fuse else [slice(0, c)])

    def chunk():
        with torch.inference_mode():
            for frames in calls:
                n = (frames.stop - frames.start) * P
                s.cache.next_positions(n)
                s.model.velocity(s.z[:, frames], s.t[:, frames], s.actions[:, frames], s.scene[:, frames],
                                 cache=s.cache, mask=s.cache.mask(n))
            (ae.decode(s.z[:, :c].flatten(0, 1).float()) * 255).round().to(torch.uint8)

    return measure(chunk, warmup=3, repeats=50, device=pipe.device).median


def _action_latency(pipe, trials: int = 24) -> float:
    """Mean frames from the switch none -> right to the first frame whose player moved right."""
    lags = []
    for trial in range(trials):
        pipe.reset(scene=trial % len(SCENE_NAMES), seed=100 + trial, action="none")
        switch = 16 + trial % 4  # on and off chunk boundaries
        xs = []
        for f in range(switch + 24):
            frame = pipe.next_frame("right" if f == switch else None).permute(2, 0, 1).float() / 255
            player = detect_sprites(frame, trial % len(SCENE_NAMES))["player"]
            xs.append(None if player is None else player[1])
        moved = [f for f in range(switch, len(xs)) if xs[f] is not None and xs[f - 1] is not None and xs[f] > xs[f - 1]]
        if moved:
            lags.append(moved[0] - switch)
    return statistics.fmean(lags) if lags else float("nan")


def _paced_jitter(pipe, n_frames: int = 300) -> float:
    pipe.reset(seed=0)
    pacer, late = Pacer(30), []
    for _ in range(n_frames):
        pipe.next_frame()
        late.append(pacer.wait())
    return percentile(late[1:], 99) * 1e3


def _quality(model, ae, n_videos: int) -> dict:
    """toybench of n_videos 16-frame clips, chunk by chunk and staggered, on the same noise and actions."""
    p = next(model.parameters())
    actions, scenes = eval_actions(n_videos, model.config.max_frames, seed=7)
    noise = torch.randn(n_videos, model.config.max_frames, *model.config.frame_shape,
                        generator=torch.Generator().manual_seed(8))
    videos = {"sequential": sample_video(model, actions.to(p.device), scenes.to(p.device), STEPS, noise=noise),
              "stagger": sample_stream(model, actions.to(p.device), scenes.to(p.device), STEPS, 1, noise.to(p))}
    out = {}
    for name, z in videos.items():
        frames = ae.decode_video(z.float()).cpu()
        out[name] = {**score_video(frames, scenes, actions), "ci95": score_interval(frames, scenes, actions)}
    return out


def bench(device=None, quick: bool = False) -> tuple[str, dict]:
    device = resolve_device(device)
    n_fps, n_flat = (64, 96) if quick else (2048, 10_000)
    pipes = {mode: load_pipeline("video-df", STEPS, stagger=mode == "stagger", device=device)
             for mode in ("stagger", "interactive")}
    threads_before = torch.get_num_threads()
    rates = {}
    for threads in (1, 2):  # whichever streams faster
        torch.set_num_threads(threads)
        _stream(pipes["stagger"], 32)
        rates[threads] = _stream(pipes["stagger"], 1024 if not quick else 32)
    threads = max(rates, key=rates.get)
    torch.set_num_threads(threads)
    try:
        fig = {"device": str(device), "steps": STEPS, "threads": threads}
        for mode, pipe in pipes.items():
            _stream(pipe, 32)  # warm-up
            fps = _stream(pipe, n_fps)
            stats = pipe.stats()  # the chunk times of this stream: read before anything resets the pipeline
            fig[mode] = {"fps": fps, "chunk_p50_ms": stats["chunk_p50_ms"], "chunk_p99_ms": stats["chunk_p99_ms"],
                         "overhead": stats["chunk_p50_ms"] / 1e3 / _bare_chunk_seconds(pipe),
                         "ttff_ms": _ttff(pipe, 3 if quick else 20),
                         "action_latency_frames": _action_latency(pipe, 2 if quick else 24)}
        pipe = pipes["stagger"]
        _stream(pipe, n_flat)
        times, per = list(pipe.chunk_seconds), 256 // pipe.stream.c
        flatness = statistics.fmean(times[-per:]) / statistics.fmean(times[16:16 + per])
        jitter = _paced_jitter(pipes["interactive"], 30 if quick else 300)
        model, ae = pipe.model, load_autoencoder(device)[0]
        quality = _quality(model, ae, 8 if quick else 512)
    finally:
        torch.set_num_threads(threads_before)
    s, i = fig["stagger"], fig["interactive"]
    fig.update(fps=s["fps"], fps_interactive=i["fps"], chunk_p50_ms=s["chunk_p50_ms"], chunk_p99_ms=s["chunk_p99_ms"],
               ttff_ms=s["ttff_ms"], overhead=s["overhead"], stagger_speedup=s["fps"] / i["fps"], flatness=flatness,
               action_latency_frames=i["action_latency_frames"],
               action_latency_frames_stagger=s["action_latency_frames"],
               paced_jitter_ms=jitter, quality=quality, threads_fps={str(k): v for k, v in rates.items()})
    rows = [f"real-time pipeline: video-df, {STEPS} steps per chunk, {device}, {threads} thread(s) "
            f"(stagger fps at 1 / 2 threads: {rates[1]:.0f} / {rates[2]:.0f})",
            f"{'mode':>12} | {'fps':>7} {'chunk p50':>9} {'p99':>7} {'ttff':>7} {'overhead':>8} {'action lag':>10}"]
    for mode in ("interactive", "stagger"):
        m = fig[mode]
        rows.append(f"{mode:>12} | {m['fps']:>7.1f} {m['chunk_p50_ms']:>7.2f}ms {m['chunk_p99_ms']:>5.2f}ms "
                    f"{m['ttff_ms']:>5.1f}ms {m['overhead']:>8.2f} {m['action_latency_frames']:>7.2f} fr")
    rows.append(f"stagger speedup {fig['stagger_speedup']:.2f}x, flatness over {n_flat} frames {flatness:.3f}, "
                f"paced jitter p99 at 30 FPS {jitter:.2f} ms")
    for name, q in quality.items():
        cells = (f"{k} {q[k]:.3f} [{q['ci95'][k][0]:.3f}, {q['ci95'][k][1]:.3f}]"
                 for k in ("validity", "count", "action", "motion"))
        rows.append(f"{name:>12} toybench: " + ", ".join(cells))
    return "\n".join(rows), fig


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak(device=None, quick: bool = False, frames: int = 100_000) -> tuple[str, dict]:
    """Throughput mode for `frames` frames on one thread, a scene change every 1000: memory growth, drift,
    non-finite chunks."""
    device = resolve_device(device)
    frames = 2000 if quick else frames
    with cpu_threads(1, device):  # the steadier of the two (pipeline: similar speed, tighter tails)
        return _soak(device, frames)


def _soak(device, frames: int) -> tuple[str, dict]:
    pipe = load_pipeline("video-df", STEPS, stagger=True, device=device)
    _stream(pipe, 256)  # warm-up: allocator and caches settle
    pipe.reset(seed=0)
    rss0, t0 = _rss_bytes(), time.perf_counter()
    for f in range(frames):
        if f % 1000 == 0:
            pipe.set_scene((f // 1000) % len(SCENE_NAMES))
        pipe.next_frame()
    seconds, rss1 = time.perf_counter() - t0, _rss_bytes()
    per = 1000 // pipe.stream.c
    times = list(pipe.chunk_seconds)
    fresh = StreamPipeline(pipe.model, pipe.ae, "video-df", STEPS, stagger=True)  # a new stream, same weights
    _stream(fresh, 256)
    soaked, new = [], []
    for _ in range(10):  # interleaved, 100 frames each: both streams see the machine at the same moments
        n = len(pipe.chunk_seconds)
        for _ in range(100):
            pipe.next_frame()
        soaked += list(pipe.chunk_seconds)[n:]
        n = len(fresh.chunk_seconds)
        for _ in range(100):
            fresh.next_frame()
        new += list(fresh.chunk_seconds)[n:]
    fig = {"frames": frames, "seconds": seconds, "fps": frames / seconds, "rss_growth_mb": (rss1 - rss0) / 2**20,
           "drift": statistics.fmean(soaked) / statistics.fmean(new),
           "drift_first_to_last": statistics.fmean(times[-per:]) / statistics.fmean(times[:per]),
           "nonfinite_chunks": pipe.stats()["nonfinite_chunks"], "threads": torch.get_num_threads()}
    table = (f"soak: {frames} frames in {seconds:.0f} s ({fig['fps']:.0f} fps), resident memory growth "
             f"{fig['rss_growth_mb']:.2f} MB, chunk-time drift {fig['drift']:.3f} (1000 more frames of the soaked "
             f"stream over a fresh stream's, interleaved; its last 1000 over its first: "
             f"{fig['drift_first_to_last']:.3f}), "
             f"non-finite chunks {fig['nonfinite_chunks']}")
    return table, fig
