"""`python -m minimal.bench self-forcing`: the Self Forcing students against their teacher, side by side.

Quality from scratch at the training length: toybench of decoded 16-frame samples on held-out actions
and scenes (video_recipes.eval_actions, seed 0), one figure per noise seed, reported as the mean over
the seeds and their spread (max - min): the teacher `video-df` at 1, 2, 4 and 8 Euler steps, with
history guidance at 8, and the students `video-sf` (4 steps) and `video-sf1` (1 step).

Holding over a long run: 1024-frame rollouts on the rolling frame cache; `kept` = the score of the
last 128 frames / the score of frames 16-47 (the first frames after the cache fills), per metric.

Latency: seconds per chunk on the rolling cache once it is full (its denoising calls plus the clean
context pass), one stream, runs interleaved, median over chunks and repeats; a student's ratio is its
latency over the 8-step teacher's.
"""

from __future__ import annotations

import torch

from .autoencoder import load_autoencoder
from .self_forcing import check_student
from .timing import percentile, resolve_device
from .toybench import score_video
from .video_bench import chunk_latencies
from .video_recipes import GUIDANCE, eval_actions, load_video_model
from .video_sampling import rollout, sample_video

METRICS = ("validity", "count", "action", "motion")
KEPT_METRICS = ("validity", "action", "motion")
STUDENTS = {"student_4": ("video-sf", 4), "student_1": ("video-sf1", 1)}


def scores(model, ae, steps: int, seeds, n_videos: int, history_guidance: float = 0.0) -> dict:
    """toybench of 16-frame samples from scratch, mean over noise seeds -> {metric: mean, "spread": {...}}."""
    device = next(model.parameters()).device
    actions, scenes = eval_actions(n_videos, model.config.max_frames, seed=0)
    per_seed = []
    for seed in seeds:
        z = sample_video(model, actions.to(device), scenes.to(device), steps, history_guidance=history_guidance,
                         generator=torch.Generator().manual_seed(seed))
        per_seed.append(score_video(ae.decode_video(z).cpu(), scenes, actions))
    return {**{m: sum(s[m] for s in per_seed) / len(per_seed) for m in METRICS},
            "spread": {m: max(s[m] for s in per_seed) - min(s[m] for s in per_seed) for m in METRICS}}


def kept(model, ae, steps: int, seeds, n_videos: int, n_frames: int = 1024, last: int = 128) -> dict:
    """Score of the last `last` frames of n_frames-frame rolling-cache rollouts over frames 16-47, pooled seeds."""
    device = next(model.parameters()).device
    actions, scenes = eval_actions(n_videos, n_frames, seed=0)
    early, late = {m: [] for m in KEPT_METRICS}, {m: [] for m in KEPT_METRICS}
    for seed in seeds:
        z = rollout(model, actions.to(device), scenes.to(device), steps, cache="rolling",
                    generator=torch.Generator().manual_seed(seed))
        x = ae.decode_video(z).cpu()
        s_early = score_video(x[:, 16:48], scenes, actions[:, 16:48])
        s_late = score_video(x[:, -last:], scenes, actions[:, -last:])
        for m in KEPT_METRICS:
            early[m].append(s_early[m])
            late[m].append(s_late[m])
    return {m: sum(late[m]) / max(sum(early[m]), 1e-9) for m in KEPT_METRICS}


def bench(device=None, quick: bool = False, repeats: int = 5) -> tuple[str, dict]:
    """The JSON holds teacher {"1", "2", "4", "8"}, teacher_guided, student_4, student_1 (each {metric:
    seed mean, "spread"}), latency_ratio_4 / _1, kept_4 / kept_1 (and kept_teacher, the 8-step teacher's)."""
    device = resolve_device(device)
    seeds, n_videos, n_long, long_seeds, long_frames = (((1,), 4, 2, (1,), 64) if quick
                                                        else ((1, 2, 3), 128, 32, (1, 2), 1024))
    teacher, _ = load_video_model("video-df", device)
    ae, _ = load_autoencoder(device)
    students = {}
    for key, (name, _) in STUDENTS.items():
        students[key], _ = load_video_model(name, device)
        check_student(students[key], teacher)
    result = {"teacher": {str(n): scores(teacher, ae, n, seeds, n_videos) for n in (1, 2, 4, 8)},
              "teacher_guided": scores(teacher, ae, 8, seeds, n_videos, GUIDANCE)}
    for key, (_, steps) in STUDENTS.items():
        result[key] = scores(students[key], ae, steps, seeds, n_videos)
    result["kept_teacher"] = kept(teacher, ae, 8, long_seeds, n_long, long_frames)
    for key, (_, steps) in STUDENTS.items():
        result[f"kept_{steps}"] = kept(students[key], ae, steps, long_seeds, n_long, long_frames)
    runs = {"teacher": (teacher, 8), **{key: (students[key], steps) for key, (_, steps) in STUDENTS.items()}}
    n_lat = 2 * teacher.config.max_frames
    times = {key: [] for key in runs}
    for _ in range(repeats):  # interleaved; the chunks after the cache is full
        for key, (model, steps) in runs.items():
            times[key] += chunk_latencies(model, n_lat, "rolling", 0, steps, device)[teacher.config.max_frames //
                                                                                      teacher.config.chunk:]
    ms = {key: percentile(t, 50) * 1e3 for key, t in times.items()}
    result.update({"ms_per_chunk": ms, "latency_ratio_4": ms["student_4"] / ms["teacher"],
                   "latency_ratio_1": ms["student_1"] / ms["teacher"], "seeds": list(seeds), "videos": n_videos,
                   "long": {"videos": n_long, "seeds": list(long_seeds), "frames": long_frames}, "device": str(device)})
    rows = [(f"teacher, {n} steps", result["teacher"][n]) for n in ("1", "2", "4", "8")]
    rows += [(f"teacher, 8 steps, guided w={GUIDANCE}", result["teacher_guided"]),
             ("video-sf, 4 steps", result["student_4"]), ("video-sf1, 1 step", result["student_1"])]
    header = f"{'model':<30} | " + " ".join(f"{m:>15}" for m in METRICS)
    lines = [f"Self Forcing students vs the video-df teacher: toybench of 16-frame samples from scratch, "
             f"{n_videos} videos x {len(seeds)} noise seeds (mean +- spread/2), {device}", header, "-" * len(header)]
    lines += [f"{label:<30} | " + " ".join(f"{s[m]:>9.3f} +-{s['spread'][m] / 2:.3f}" for m in METRICS)
              for label, s in rows]
    lines.append(f"kept over {long_frames} frames (last 128 / frames 16-47), {n_long} videos x {len(long_seeds)} "
                 "seeds: " + "; ".join(f"{k} " + ", ".join(f"{m} {v:.3f}" for m, v in result[k].items())
                                       for k in ("kept_teacher", "kept_4", "kept_1")))
    lines.append("ms per chunk on the rolling cache: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()) +
                 f"; ratio to the 8-step teacher: 4 steps {result['latency_ratio_4']:.2f}, "
                 f"1 step {result['latency_ratio_1']:.2f}")
    return "\n".join(lines), result
