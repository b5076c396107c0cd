"""`python -m minimal.bench toybench`: are toybench's scores right? Real video against corrupted video.

Validity (toybench.frame_validity, tolerance TOL) on real frames of the three worlds the library
generates (the video world, the 2-sprite frames of the flow models, the 32 x 32 frames of the image-token
GPT) and on the same frames corrupted: Gaussian pixel noise, a uniform colour shift, a sprite erased
(painted over with the background), a sprite drawn twice, a sprite one pixel short, a 3 x 3 box blur.
Motion on real video, frozen video (frame 0 repeated), slowed video (every frame shown twice) and
shuffled video (frames in random order). A good metric scores real video near 1 and every corruption
near 0 (slowed video: 0.5, half the steps are stalls).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import SCENES, VIDEO_WORLD, SpriteWorld, SpriteWorldConfig
from .toybench import TOL, score_video, validity_rate

WORLDS = {"video": VIDEO_WORLD, "frames": SpriteWorldConfig(size=16, n_sprites=2, sprite_size=4),
          "image": SpriteWorldConfig(n_sprites=2)}


def _paint(frames: torch.Tensor, states: dict, size: int, colour_of, shift: int = 0,
           short: bool = False) -> torch.Tensor:
    """A copy of frames (T, 3, H, W) with the first sprite's size x size square, moved by `shift` pixels
    down and right (cyclically), painted in colour_of(scene); with `short`, its last pixel in the background's."""
    out, H = frames.clone(), frames.shape[-1]
    for t in range(len(frames)):
        y, x = ((states["positions"][t, 0] + shift) % (H - size + 1)).tolist()
        scene = SCENES[int(states["scene"][t])]
        out[t, :, y:y + size, x:x + size] = torch.tensor(colour_of(scene))[:, None, None]
        if short:
            out[t, :, y + size - 1, x + size - 1] = torch.tensor(scene.background)
    return out


def corruptions(config: SpriteWorldConfig, n: int = 64, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (frames (N, 3, H, W), scenes (N,))}: real frames of `config`'s world and corrupted copies."""
    world, g = SpriteWorld(config), torch.Generator().manual_seed(seed)
    frames, scenes, states = [], [], []
    for i in range(n):
        x, st = world.rollout(4, scene=i % len(SCENES), generator=g)
        frames.append(x)
        scenes.append(st["scene"])
        states.append(st)
    x, s = torch.cat(frames), torch.cat(scenes)
    noise = torch.randn(x.shape, generator=g)

    def per_rollout(**kwargs):
        return torch.cat([_paint(f, st, config.sprite_size, **kwargs) for f, st in zip(frames, states, strict=True)])

    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return {"real": (x, s), "noise 0.05": (x + 0.05 * noise, s), "noise 0.1": (x + 0.1 * noise, s),
            "shift 0.15": (x + 0.15, s), "shift 0.25": (x + 0.25, s),
            "sprite erased": (per_rollout(colour_of=lambda sc: sc.background), s),
            "sprite twice": (per_rollout(colour_of=lambda sc: sc.palette[0], shift=config.size // 2), s),
            "sprite short": (per_rollout(colour_of=lambda sc: sc.palette[0], short=True), s),
            "blurred": (blur, s)}


def motion_videos(n: int = 16, n_frames: int = 64, seed: int = 0) -> dict[str, tuple]:
    """{name: (frames (B, T, 3, H, W), scenes (B,), actions (B, T))}: real, frozen, slowed, shuffled."""
    x, a, s = SpriteWorld(VIDEO_WORLD).sample_batch(n, n_frames, generator=torch.Generator().manual_seed(seed))
    order = torch.randperm(n_frames, generator=torch.Generator().manual_seed(seed + 1))
    return {"real": (x, s, a), "frozen": (x[:, :1].expand_as(x), s, a),
            "slowed": (x[:, torch.arange(n_frames) // 2], s, a), "shuffled": (x[:, order], s, a)}


def bench(device=None, quick: bool = False) -> tuple[str, dict]:
    """Validity of real and corrupted frames in each world; motion of real, frozen, slowed, shuffled video."""
    n = 8 if quick else 64
    validity = {world: {name: validity_rate(f, sc, cfg) for name, (f, sc) in corruptions(cfg, n).items()}
                for world, cfg in WORLDS.items()}
    motion = {name: score_video(*v)["motion"] for name, v in motion_videos(4 if quick else 16).items()}
    names = list(validity["video"])
    rows = [f"toybench validity (tolerance {TOL}) on {4 * n} frames per world",
            f"{'frames':>14} | " + " ".join(f"{w:>7}" for w in WORLDS),
            *[f"{name:>14} | " + " ".join(f"{validity[w][name]:>7.3f}" for w in WORLDS) for name in names],
            "motion: " + ", ".join(f"{k} {v:.3f}" for k, v in motion.items())]
    return "\n".join(rows), {"tol": TOL, "validity": validity, "motion": motion}
