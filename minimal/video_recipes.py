"""The shipped causal video models: their config, training recipes and evaluation.

`video-tf` (teacher forcing), `video-df` (diffusion forcing) and `video-tfn` (teacher forcing with a
noisy context, GameNGen's noise augmentation) are diffusion_forcing.py's `train` on frame-ae's latents
(autoencoder.py), at equal compute: under an hour each on one CPU thread. 40,000 rollouts of 32 frames
are simulated and encoded once, so that a step is only the model's work on 16-frame windows of them; a
teacher-forcing step runs the doubled [clean | noisy] sequence, about twice a diffusion-forcing step, so
it gets half the steps. `evaluate` scores decoded samples with toybench, from scratch and continuing a
real first chunk, with a bootstrap interval over the videos. `python -m minimal.train video-tf` /
`video-df` / `video-tfn` reproduces them (checkpoints.SHIPPED); docs/results.md has their figures.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from .autoencoder import FrameAutoencoder, load_autoencoder
from .checkpoints import load_pretrained
from .data import ACTIONS, VIDEO_WORLD, SpriteWorld
from .diffusion_forcing import VideoRecipe, train, video_clips
from .toybench import score_interval, score_video
from .video_model import VideoConfig, VideoTransformer
from .video_sampling import sample_video

# frame-ae's latents are (8, 4, 4): patch 2 gives P = 4 tokens per frame, a 64-token 16-frame clip.
CONFIG = VideoConfig(size=4, channels=8, patch=2)
# Each shipped model by checkpoint name: its training method (diffusion_forcing.METHODS) and recipe.
METHODS = {"video-tf": "teacher_forcing", "video-df": "diffusion_forcing", "video-tfn": "teacher_forcing"}
RECIPES = {"video-tf": VideoRecipe(steps=7000, n_rollouts=40000),
           "video-df": VideoRecipe(steps=14000, n_rollouts=40000),
           "video-tfn": VideoRecipe(steps=7000, n_rollouts=40000, context_noise=0.5)}
MODELS = tuple(RECIPES)
GUIDANCE = 0.5  # the history guidance w of the guided figures (meta["guided"]); past it the gain fades
EVAL_SEEDS = {"actions": 0, "noise": 1, "real_clips": 1000, "noise_real_start": 2}


def check_model(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"model must be one of the shipped video models {MODELS}, got {name!r}")
    return name


def eval_actions(n_videos: int, n_frames: int, seed: int = 0, hold: int = 4,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out conditioning: random actions held for `hold` frames (B, F) and scenes (B,), drawn from
    `generator` if given (training conditions), else from a generator seeded with `seed`."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    acts = torch.randint(0, len(ACTIONS), (n_videos, -(-n_frames // hold)), generator=g)
    scenes = torch.randint(0, CONFIG.n_scenes, (n_videos,), generator=g)
    return acts.repeat_interleave(hold, 1)[:, :n_frames], scenes


def _scores(frames: torch.Tensor, scenes: torch.Tensor, actions: torch.Tensor) -> dict:
    """toybench's scores of decoded video, and their 95% bootstrap interval over the videos ("ci95")."""
    return {**score_video(frames, scenes, actions), "ci95": score_interval(frames, scenes, actions)}


def evaluate(model: VideoTransformer, ae: FrameAutoencoder, n_videos: int = 128, history_guidance: float = 0.0,
             steps: int = 8) -> dict:
    """toybench of decoded 16-frame samples, `steps` per chunk (optionally with history guidance), two ways:
    "toybench_16"             from scratch, on held-out actions and scenes (eval_actions);
    "toybench_16_real_start"  continuing the first chunk of held-out real clips, scored on the 14
                              generated frames (two clean context frames).
    Seeds in EVAL_SEEDS; each score comes with its 95% bootstrap interval over the n_videos videos."""
    p = next(model.parameters())
    actions, scenes = eval_actions(n_videos, CONFIG.max_frames, EVAL_SEEDS["actions"])
    z = sample_video(model, actions.to(p.device), scenes.to(p.device), steps, history_guidance=history_guidance,
                     generator=torch.Generator().manual_seed(EVAL_SEEDS["noise"]))
    c = CONFIG.chunk
    x, a, s = video_clips(SpriteWorld(VIDEO_WORLD), n_videos, CONFIG.max_frames,
                          torch.Generator().manual_seed(EVAL_SEEDS["real_clips"]))
    start = ae.encode_video(x[:, :c].to(p.device))
    z_real = sample_video(model, a.to(p.device), s.to(p.device), steps, start=start, history_guidance=history_guidance,
                          generator=torch.Generator().manual_seed(EVAL_SEEDS["noise_real_start"]))
    return {"toybench_16": _scores(ae.decode_video(z).cpu(), scenes, actions),
            "toybench_16_real_start": _scores(ae.decode_video(z_real[:, c:]).cpu(), s, a[:, c:])}


def evaluation_meta(model: VideoTransformer, ae: FrameAutoencoder, n_videos: int = 128) -> dict:
    """What a video checkpoint's meta records of its quality: `evaluate`, plain and with history guidance."""
    return {**evaluate(model, ae, n_videos), "eval_seeds": EVAL_SEEDS, "eval_videos": n_videos,
            "guided": {"history_guidance": GUIDANCE, **evaluate(model, ae, n_videos, history_guidance=GUIDANCE)}}


def train_video(name: str, device=None, steps: int | None = None) -> tuple[VideoTransformer, dict]:
    """Train CONFIG with RECIPES[name] on frame-ae's latents and score it -> (model, meta)."""
    recipe = RECIPES[check_model(name)]
    recipe = recipe if steps is None else replace(recipe, steps=steps)
    ae, _ = load_autoencoder(device)
    torch.manual_seed(recipe.seed)  # the initial weights too (train seeds only its own draws)
    model, losses, seconds = train(METHODS[name], VideoTransformer(CONFIG), recipe, device, autoencoder=ae)
    meta = {"method": METHODS[name], "recipe": asdict(recipe), "autoencoder": "frame-ae",
            "train_seconds": round(seconds, 1), "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
            "n_params": model.n_params()}
    return model, {**meta, **evaluation_meta(model, ae)}


def train_teacher_forcing(device=None, steps: int | None = None):
    return train_video("video-tf", device, steps)


def train_diffusion_forcing(device=None, steps: int | None = None):
    return train_video("video-df", device, steps)


def train_noisy_teacher_forcing(device=None, steps: int | None = None):
    return train_video("video-tfn", device, steps)


def load_video_model(name: str, device=None) -> tuple[VideoTransformer, dict]:
    """A shipped video model by checkpoint name ("video-df", ...) and its meta."""
    return load_pretrained(name, device=device, kind="video")
