"""The shipped causal video models: their config, training recipes, evaluation and checkpoints.

`video-tf` (teacher forcing), `video-df` (diffusion forcing) and `video-tfn` (teacher forcing with a
noisy context, GameNGen's noise augmentation) are diffusion_forcing.py's `train` on frame-ae's latents
(autoencoder.py), at equal compute; `evaluate` scores decoded samples with toybench, from scratch and
continuing a real first chunk. `python -m minimal.train video-tf` / `video-df` / `video-tfn`
reproduces them.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from .autoencoder import FrameAutoencoder, load_autoencoder
from .checkpoints import load_pretrained, save_checkpoint
from .data import ACTIONS, VIDEO_WORLD, SpriteWorld
from .diffusion_forcing import VideoRecipe, train, video_clips
from .video_model import VideoConfig, VideoTransformer
from .video_sampling import sample_video

# The shipped models work on frame-ae's latents (8, 4, 4): patch 2 gives P = 4 tokens per frame, a
# 64-token 16-frame clip, against 256 tokens for 16 x 16 pixels at patch 4. toybench at 16 frames, 128
# videos (`evaluate`, figures in each checkpoint's meta): diffusion forcing from scratch 0.77 valid frames,
# action following 0.85, continuing a real first chunk with history guidance 0.88 and 0.89; teacher
# forcing 0.60 and 0.77 from scratch. The same transformer on pixels, fresh rollouts each step, the same
# hour: 0.10 and 0.45 (diffusion forcing).
CONFIG = VideoConfig(size=4, channels=8, patch=2)
# Equal compute, under an hour each on one CPU thread. 40,000 rollouts of 32 frames are simulated and
# encoded once (about 6 minutes); a step is then only the model's work on 16-frame windows of them, where
# simulating and encoding fresh clips took most of a diffusion-forcing step (7000 steps in the same hour,
# 0.58 valid frames). A teacher-forcing step runs the doubled [clean | noisy] sequence: about 2x a
# diffusion-forcing step (2.3 against 4.8 steps/s).
# Each shipped model by name: its training method (diffusion_forcing.METHODS), recipe and checkpoint.
METHODS = {"teacher_forcing": "teacher_forcing", "diffusion_forcing": "diffusion_forcing",
           "noisy_teacher_forcing": "teacher_forcing"}
RECIPES = {"teacher_forcing": VideoRecipe(steps=7000, n_rollouts=40000),
           "diffusion_forcing": VideoRecipe(steps=14000, n_rollouts=40000),
           "noisy_teacher_forcing": VideoRecipe(steps=7000, n_rollouts=40000, context_noise=0.5)}
CHECKPOINTS = {"teacher_forcing": "video-tf", "diffusion_forcing": "video-df", "noisy_teacher_forcing": "video-tfn"}
MODELS = tuple(RECIPES)
GUIDANCE = 0.5  # the history guidance w of the guided figures (meta["guided"]); past it the gain fades


def check_model(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return name


def training_method(name: str) -> str:
    """The method a shipped model trains with (noisy_teacher_forcing: teacher forcing with context_noise)."""
    return METHODS[check_model(name)]


def eval_actions(n_videos: int, n_frames: int, seed: int = 0, hold: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out conditioning: random actions held for `hold` frames (B, F) and scenes (B,)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randint(0, len(ACTIONS), (n_videos, -(-n_frames // hold)), generator=g)
    scenes = torch.randint(0, CONFIG.n_scenes, (n_videos,), generator=g)
    return acts.repeat_interleave(hold, 1)[:, :n_frames], scenes


def evaluate(model: VideoTransformer, ae: FrameAutoencoder, n_videos: int = 128, history_guidance: float = 0.0) -> dict:
    """toybench of decoded 16-frame samples, 8 steps per chunk (optionally with history guidance), two ways:
    "toybench_16"             from scratch, on held-out actions and scenes (eval_actions);
    "toybench_16_real_start"  continuing the first chunk of held-out real clips, scored on the 14
                              generated frames (the issue's calibration protocol: two clean context frames)."""
    from .toybench import score_video

    p = next(model.parameters())
    actions, scenes = eval_actions(n_videos, CONFIG.max_frames)
    z = sample_video(model, actions.to(p.device), scenes.to(p.device), generator=torch.Generator().manual_seed(1),
                     history_guidance=history_guidance)
    c = CONFIG.chunk
    x, a, s = video_clips(SpriteWorld(VIDEO_WORLD), n_videos, CONFIG.max_frames, torch.Generator().manual_seed(1000))
    start = ae.encode_video(x[:, :c].to(p.device))
    z_real = sample_video(model, a.to(p.device), s.to(p.device), start=start,
                          generator=torch.Generator().manual_seed(2), history_guidance=history_guidance)
    return {"toybench_16": score_video(ae.decode_video(z).cpu(), scenes, actions),
            "toybench_16_real_start": score_video(ae.decode_video(z_real[:, c:]).cpu(), s, a[:, c:])}


def train_video(name: str, out=None, device=None, steps: int | None = None) -> dict:
    """Train CONFIG with RECIPES[name] on frame-ae's latents, save, score it (`evaluate`, plain and with
    history guidance GUIDANCE: meta["guided"]), save the scores."""
    recipe = VideoRecipe(**{**asdict(RECIPES[check_model(name)]), **({"steps": steps} if steps else {})})
    ae, _ = load_autoencoder(device)
    method = training_method(name)
    torch.manual_seed(recipe.seed)  # the initial weights too (train seeds only its own draws)
    model, losses, seconds = train(method, VideoTransformer(CONFIG), recipe, device, autoencoder=ae)
    out = out or f"minimal/pretrained/{CHECKPOINTS[name]}.pt"
    meta = {"method": method, "recipe": asdict(recipe), "autoencoder": "frame-ae", "train_seconds": round(seconds, 1),
            "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4), "n_params": model.n_params()}
    save_checkpoint(out, model, meta)
    meta.update(evaluate(model, ae))
    meta["guided"] = {"history_guidance": GUIDANCE, **evaluate(model, ae, history_guidance=GUIDANCE)}
    save_checkpoint(out, model, meta)
    return meta


def train_teacher_forcing(out=None, device=None, steps: int | None = None) -> dict:
    return train_video("teacher_forcing", out, device, steps)


def train_diffusion_forcing(out=None, device=None, steps: int | None = None) -> dict:
    return train_video("diffusion_forcing", out, device, steps)


def train_noisy_teacher_forcing(out=None, device=None, steps: int | None = None) -> dict:
    return train_video("noisy_teacher_forcing", out, device, steps)


def load_video_model(name: str, device=None) -> tuple[VideoTransformer, dict]:
    """A shipped model by name (MODELS) and its meta."""
    return load_pretrained(CHECKPOINTS[check_model(name)], VideoTransformer, VideoConfig, device)
