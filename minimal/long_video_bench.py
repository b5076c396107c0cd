"""`python -m minimal.bench long`: ten thousand frames from models trained on sixteen, and scene switches.

Drift. Every shipped video model streams 10,000 frames (625 x its training length) on held-out actions
(video_recipes.eval_actions, seed 0) and scenes, under each long-horizon policy of long_video.py, and
toybench scores every 512-frame window of the decoded frames (validity, action following, motion). All
run at 4 steps per chunk (the teachers too: the few-step regime where drift shows) but `video-sf1` (1).
Two stages, so that the long runs fit an hour on one CPU thread: a screen of every model on the rolling
cache and every policy on the best 4-step model and on the 1-step student (SCREEN_VIDEOS videos x the
seeds); then the best 4-step method and the 1-step student's best policy again on VIDEOS videos x the seeds.
For a method, `kept` = its last 512 frames' score over its frames 16-47 (the first after the cache is
full), per noise seed, reported as the mean over the seeds with their spread (max - min); `level` = the
last 512 frames' absolute scores.

Scene switches. The best 4-step model streams 1024 frames whose scene alternates between two (A, B,
A, B) every 256 frames, under each re-cache mode (none, long_video.RECACHE); the same noise and actions
streamed in scene A throughout and in scene B throughout give the frames without a switch. For 1, 2 and 4
chunks after a switch, the ratio of valid frames in the new scene to those of the stream that was in that
scene all along (pooled over the switches, videos and seeds), and the sprites still drawn in the old
scene's palette (toybench's detector run with the old scene), per frame of the first 4 chunks.
"""

from __future__ import annotations

import torch

from .autoencoder import load_autoencoder
from .long_video import POLICIES, RECACHE, long_rollout, recache_settings
from .timing import resolve_device
from .toybench import detect_sprites, score_video
from .video_recipes import eval_actions, load_video_model

MODELS = {"teacher_forcing": ("video-tf", 4), "diffusion_forcing": ("video-df", 4), "self_forcing": ("video-sf", 4),
          "self_forcing_pp": ("video-sfpp", 4), "self_forcing_1": ("video-sf1", 1)}
FRAMES, WINDOW, EARLY = 10_000, 512, (16, 48)
VIDEOS, SCREEN_VIDEOS, SEEDS = 32, 4, (1, 2)
SWITCH_FRAMES, SWITCH_EVERY, SWITCH_VIDEOS, AFTER = 1024, 256, 16, (1, 2, 4)
METRICS = ("validity", "action", "motion")


def _noise(model, n_videos: int, n_frames: int, seeds) -> torch.Tensor:
    """The seeds' noise side by side: (len(seeds) n_videos, F, C, H, W), seed i's videos in rows i n .. (i+1) n."""
    return torch.cat([torch.randn(n_videos, n_frames, *model.config.frame_shape,
                                  generator=torch.Generator().manual_seed(s)) for s in seeds])


def _schedule(meta: dict, steps: int):
    schedules = meta.get("schedules")
    return torch.tensor(schedules[str(steps)]) if schedules else None


def drift(model, meta, ae, steps: int, policy: str, n_videos: int, seeds, n_frames: int = FRAMES,
          window: int = WINDOW) -> dict:
    """One method's long rollouts, every seed in one batch -> per window and metric the mean over the seeds
    ("curve"), and per seed the early, late (last window) and kept scores, summarised over the seeds."""
    p = next(model.parameters())
    actions, scenes = eval_actions(n_videos, n_frames, seed=0)
    S = len(seeds)
    a, s = actions.repeat(S, 1), scenes.repeat(S)
    z = long_rollout(model, a.to(p.device), s.to(p.device), steps, _noise(model, n_videos, n_frames, seeds).to(p),
                     policy, ts=_schedule(meta, steps))
    spans = [(w, min(w + window, n_frames)) for w in range(0, n_frames, window)]
    spans = [EARLY] + spans if n_frames > EARLY[1] else spans
    per_seed = {span: [] for span in spans}
    with torch.no_grad():
        for span in spans:
            x = ae.decode_video(z[:, span[0]:span[1]].float()).cpu()
            for i in range(S):
                rows = slice(i * n_videos, (i + 1) * n_videos)
                per_seed[span].append(score_video(x[rows], scenes, actions[:, span[0]:span[1]]))
    early, late = per_seed[spans[0]], per_seed[(n_frames - window, n_frames)] if n_frames % window == 0 else \
        per_seed[spans[-1]]
    kept = [{m: late[i][m] / max(early[i][m], 1e-9) for m in METRICS} for i in range(S)]

    def summary(scores):
        return {**{m: sum(sc[m] for sc in scores) / S for m in METRICS},
                "spread": {m: max(sc[m] for sc in scores) - min(sc[m] for sc in scores) for m in METRICS}}

    return {"steps": steps, "policy": policy, "videos": n_videos, "seeds": list(seeds), "frames": n_frames,
            "windows": [list(sp) for sp in spans[1:]],
            "curve": {m: [sum(sc[m] for sc in per_seed[sp]) / S for sp in spans[1:]] for m in METRICS},
            "early": summary(early), "late": summary(late), "kept": summary(kept)}


def _old_palette_sprites(frames: torch.Tensor, old: torch.Tensor) -> float:
    """Mean sprites per frame found in the old scene's palette: frames (B, T, 3, H, W), old (B,)."""
    counts = [detect_sprites(frames[b, t], int(old[b]))["count"] for b in range(frames.shape[0])
              for t in range(frames.shape[1])]
    return sum(counts) / len(counts)


def switch_test(model, meta, ae, steps: int, policy: str, n_videos: int, seeds, n_frames: int = SWITCH_FRAMES,
                every: int = SWITCH_EVERY) -> dict:
    """Valid frames in the new scene 1, 2 and 4 chunks after each switch, over those of the stream that was in
    that scene all along, per re-cache mode; and sprites left in the old palette (see the module docstring)."""
    p, c = next(model.parameters()), model.config.chunk
    actions, scene_a = eval_actions(n_videos, n_frames, seed=0)
    scene_b = (scene_a + 1 + torch.randint(0, 3, (n_videos,), generator=torch.Generator().manual_seed(5))) % 4
    S = len(seeds)
    a, A, Bs = actions.repeat(S, 1), scene_a.repeat(S), scene_b.repeat(S)
    segment = (torch.arange(n_frames) // every) % 2  # 0: A, 1: B
    switched = torch.where(segment.bool(), Bs[:, None], A[:, None])  # (S n, F)
    noise = _noise(model, n_videos, n_frames, seeds).to(p)
    ts = _schedule(meta, steps)

    def stream(scene, mode=None):
        settings = None if mode is None else recache_settings(mode, ae, torch.Generator().manual_seed(7))
        z = long_rollout(model, a.to(p.device), scene.to(p.device), steps, noise, policy, ts=ts, recache=settings)
        return ae.decode_video(z.float()).cpu()

    with torch.no_grad():
        alone = {0: stream(A), 1: stream(Bs)}
        switches = list(range(every, n_frames, every))
        out = {}
        for mode in (None, *RECACHE):
            x = stream(switched, mode)
            ratios, old_sprites = {}, []
            for j in AFTER:
                ok, ref = [], []
                for f in switches:
                    new = int(segment[f])
                    span = slice(f + (j - 1) * c, f + j * c)
                    scene_new = (Bs if new else A)[:, None].expand(-1, c)
                    ok.append(score_video(x[:, span], scene_new)["validity"])
                    ref.append(score_video(alone[new][:, span], scene_new)["validity"])
                ratios[str(j)] = sum(ok) / max(sum(ref), 1e-9)
            for f in switches:
                new = int(segment[f])
                old_sprites.append(_old_palette_sprites(x[:, f:f + max(AFTER) * c], A if new else Bs))
            out["no_recache" if mode is None else mode] = {**ratios,
                                                           "old_palette_sprites": sum(old_sprites) / len(old_sprites)}
    return {"recache": out["repaint"], **out, "videos": n_videos, "seeds": list(seeds), "frames": n_frames,
            "every": every, "policy": policy}


def _job(job: tuple) -> dict:
    """One measurement in a worker process (one CPU thread): ("drift", key, policy, n_videos, seeds, frames,
    window) or ("switch", key, policy, n_videos, seeds, frames, every)."""
    kind, key, policy, n_videos, seeds, n_frames, other, device = job
    torch.set_num_threads(1)
    ae, _ = load_autoencoder(device)
    model, meta = load_video_model(MODELS[key][0], device)
    fn = drift if kind == "drift" else switch_test
    return fn(model, meta, ae, MODELS[key][1], policy, n_videos, seeds, n_frames, other)


def _run(jobs: list[tuple], workers: int) -> list[dict]:
    """The jobs on `workers` processes (side by side on the CPU's cores), or in this one."""
    if workers == 1:
        return [_job(j) for j in jobs]
    with torch.multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_job, jobs, chunksize=1)


def bench(device=None, quick: bool = False, workers: int = 2) -> tuple[str, dict]:
    """The JSON holds best, kept, level (with their spreads), best_1step, kept_1step, methods and switch.
    workers: processes running the measurements side by side (1 on a GPU, or in tests)."""
    device = resolve_device(device)
    frames, window, videos, screen, seeds = (64, 32, 2, 2, (1,)) if quick else (FRAMES, WINDOW, VIDEOS, SCREEN_VIDEOS,
                                                                                 SEEDS)
    workers = 1 if quick or device.type == "cuda" else workers

    def drift_job(name, n_videos):
        key, policy = name.split("/")
        return ("drift", key, policy, n_videos, seeds, frames, window, device)

    four = [k for k in MODELS if MODELS[k][1] == 4]
    names = [f"{key}/rolling" for key in MODELS]  # the screen: every model on the rolling cache
    methods = dict(zip(names, _run([drift_job(n, screen) for n in names], workers), strict=True))
    best_model = max(four, key=lambda k: methods[f"{k}/rolling"]["late"]["validity"])
    names = [f"{key}/{policy}" for key in (best_model, "self_forcing_1") for policy in POLICIES if policy != "rolling"]
    methods.update(zip(names, _run([drift_job(n, screen) for n in names], workers), strict=True))

    def best_of(keys):
        return max((name for name in methods if name.split("/")[0] in keys),
                   key=lambda name: methods[name]["late"]["validity"])

    best, best_1 = best_of(four), best_of(["self_forcing_1"])
    key, policy = best.split("/")
    switch_policy = "rolling" if policy == "compress" else policy  # the re-cache needs the ring's frames
    jobs = [drift_job(best, videos), drift_job(best_1, videos),  # the finalists on the full protocol
            ("switch", key, switch_policy, 2 if quick else SWITCH_VIDEOS, seeds, 64 if quick else SWITCH_FRAMES,
             16 if quick else SWITCH_EVERY, device)]
    final_best, final_1, switch = _run(jobs, workers)
    methods[best] = {**final_best, "screen": methods[best]["late"]}
    methods[best_1] = {**final_1, "screen": methods[best_1]["late"]}
    result = {"best": best, "kept": methods[best]["kept"], "level": methods[best]["late"],
              "best_1step": best_1, "kept_1step": methods[best_1]["kept"], "methods": methods, "switch": switch,
              "device": str(device)}

    header = f"{'method':<34} {'videos':>6} | " + " ".join(f"{'kept ' + m:>14}" for m in METRICS) + " | " + \
        " ".join(f"{'last ' + m:>14}" for m in METRICS)
    lines = [f"{frames} frames per video, toybench per {window}-frame window, seeds {list(seeds)} (mean, spread "
             f"max - min over seeds); kept = last {window} frames / frames 16-47, {device}", header, "-" * len(header)]
    for name, r in methods.items():
        lines.append(f"{name:<34} {r['videos']:>6} | " +
                     " ".join(f"{r['kept'][m]:>8.3f} +{r['kept']['spread'][m]:.3f}" for m in METRICS) + " | " +
                     " ".join(f"{r['late'][m]:>8.3f} +{r['late']['spread'][m]:.3f}" for m in METRICS))
    lines.append(f"best 4-step: {best}; best 1-step: {best_1}")
    lines.append(f"scene switch every {switch['every']} frames ({key}, {switch_policy}): valid frames in the new scene "
                 "1, 2, 4 chunks after, over the stream that was in it all along; sprites in the old palette per frame")
    for mode in ("no_recache", *RECACHE):
        r = switch[mode]
        lines.append(f"  {mode:<12} " + " ".join(f"{j} chunk: {r[str(j)]:.3f}" for j in AFTER) +
                     f"  old-palette sprites {r['old_palette_sprites']:.3f}")
    return "\n".join(lines), result
