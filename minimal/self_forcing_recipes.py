"""The shipped Self Forcing students: `video-sf` (4 steps per chunk), `video-sf1` (1 step) and `video-sfpp`
(`video-sf` fine-tuned by Self-Forcing++ on its own long rollouts, 4 steps).

`video-sf` and `video-sf1` start from the diffusion-forcing teacher `video-df` (and frame-ae's latent
space) and are trained by self_forcing.train_student on their own 16-frame rollouts, with the guided
teacher as DMD's real score, under an hour each on one CPU thread. `video-sfpp` starts from `video-sf`
and rolls out up to HORIZON frames per step on the rolling cache, judging the last 16 (train_student
with `horizon`). No video data is read: the conditioning (random held actions, random scenes) is all a
training step draws. `python -m minimal.train video-sf` / `video-sf1` / `video-sfpp` reproduces them
(checkpoints.SHIPPED); the schedule a student samples with is in its meta, where
pipeline.load_pipeline finds it.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from .autoencoder import load_autoencoder
from .self_forcing import SelfForcingRecipe, schedule, train_student
from .video_recipes import CONFIG, eval_actions, evaluate, load_video_model

TEACHER = "video-df"
STUDENT_STEPS = {"video-sf": 4, "video-sf1": 1, "video-sfpp": 4}
STARTS = {"video-sfpp": "video-sf"}  # where a student starts, if not from the teacher
HORIZON = 64  # Self-Forcing++'s longest training rollout, frames (4 x the teacher's 16)
RECIPES = {"video-sf": SelfForcingRecipe(steps=400, lr=1e-4, critic_lr=2e-4),
           "video-sf1": SelfForcingRecipe(steps=500, lr=2e-4, critic_lr=2e-4),
           "video-sfpp": SelfForcingRecipe(steps=120, critic_ratio=4, lr=5e-5, critic_lr=2e-4, horizon=HORIZON)}


def train_recipe(name: str, device=None, steps: int | None = None):
    """Distil TEACHER into the student `name` -> (student, meta)."""
    n = STUDENT_STEPS[name]
    recipe = RECIPES[name] if steps is None else replace(RECIPES[name], steps=steps)
    teacher, _ = load_video_model(TEACHER, device)
    ae, _ = load_autoencoder(device)
    batch = recipe.batch_size

    n_frames = recipe.horizon or CONFIG.max_frames

    def conditions(generator):
        return eval_actions(batch, n_frames, generator=generator)

    start = load_video_model(STARTS[name], device)[0] if name in STARTS else None
    student, log, seconds = train_student(teacher, n, recipe, conditions, device, student=start)
    every = max(1, len(log["dmd"]) // 50)  # the logged curves, 50 points each
    meta = {"method": "self_forcing_pp" if recipe.horizon else "self_forcing", "teacher": TEACHER,
            "start": STARTS.get(name, TEACHER), "autoencoder": "frame-ae",
            "schedules": {str(n): list(schedule(n))}, "recipe": asdict(recipe), "train_seconds": round(seconds, 1),
            "dmd_loss": [round(sum(log["dmd"][i:i + every]) / every, 4) for i in range(0, len(log["dmd"]), every)],
            "critic_loss": [round(sum(log["critic"][i:i + every * recipe.critic_ratio]) / (every * recipe.critic_ratio),
                                  4) for i in range(0, len(log["critic"]), every * recipe.critic_ratio)],
            "n_params": student.n_params()}
    return student, {**meta, **evaluate(student, ae, steps=n)}


def train_video_sf(device=None, steps: int | None = None):
    return train_recipe("video-sf", device, steps)


def train_video_sf1(device=None, steps: int | None = None):
    return train_recipe("video-sf1", device, steps)


def train_video_sfpp(device=None, steps: int | None = None):
    return train_recipe("video-sfpp", device, steps)
