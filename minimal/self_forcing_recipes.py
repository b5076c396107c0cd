"""The shipped Self Forcing students: `video-sf` (4 steps per chunk) and `video-sf1` (1 step).

Both start from the diffusion-forcing teacher `video-df` (and frame-ae's latent space) and are trained by
self_forcing.train_student on their own 16-frame rollouts, with the guided teacher as DMD's real score,
under an hour each on one CPU thread. No video data is read: the conditioning (random held actions,
random scenes) is all a training step draws. `python -m minimal.train video-sf` / `video-sf1`
reproduces them (checkpoints.SHIPPED); the schedule a student samples with is in its meta, where
pipeline.load_pipeline finds it.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from .autoencoder import load_autoencoder
from .self_forcing import SelfForcingRecipe, schedule, train_student
from .video_recipes import CONFIG, eval_actions, evaluate, load_video_model

TEACHER = "video-df"
STUDENT_STEPS = {"video-sf": 4, "video-sf1": 1}
RECIPES = {"video-sf": SelfForcingRecipe(steps=400, lr=1e-4, critic_lr=2e-4),
           "video-sf1": SelfForcingRecipe(steps=500, lr=2e-4, critic_lr=2e-4)}


def train_recipe(name: str, device=None, steps: int | None = None):
    """Distil TEACHER into the student `name` -> (student, meta)."""
    n = STUDENT_STEPS[name]
    recipe = RECIPES[name] if steps is None else replace(RECIPES[name], steps=steps)
    teacher, _ = load_video_model(TEACHER, device)
    ae, _ = load_autoencoder(device)
    batch = recipe.batch_size

    def conditions(generator):
        return eval_actions(batch, CONFIG.max_frames, generator=generator)

    student, log, seconds = train_student(teacher, n, recipe, conditions, device)
    every = max(1, len(log["dmd"]) // 50)  # the logged curves, 50 points each
    meta = {"method": "self_forcing", "teacher": TEACHER, "autoencoder": "frame-ae",
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
