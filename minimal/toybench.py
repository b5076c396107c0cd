"""Scores for generated SpriteWorld frames, computed from the pixels alone.

`sprite_validity` asks whether a frame could have been drawn by the simulator: every pixel is the
scene's background or one of its palette colours (within a tolerance), each palette colour present
covers exactly one filled sprite_size x sprite_size square, and the number of sprites is right.
Overlapping sprites (which the simulator can draw) fail the square test, so compare a generator's
validity rate with that of real frames passed through the same pipeline.
"""

from __future__ import annotations

import torch

from .data import SCENES


def sprite_validity(frame: torch.Tensor, scene: int = 0, n_sprites: int = 2, sprite_size: int = 4,
                    tol: float = 0.15) -> bool:
    """frame (3, H, W) in [0, 1] -> True when it is a valid SpriteWorld frame of `scene`."""
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"frame must be (3, H, W), got {tuple(frame.shape)}")
    if not 0 <= scene < len(SCENES):
        raise ValueError(f"scene must be in [0, {len(SCENES)}), got {scene}")
    sc = SCENES[scene]
    colours = torch.tensor([sc.background, *sc.palette])  # (1 + P, 3)
    dist = (frame.permute(1, 2, 0)[:, :, None] - colours).abs().amax(-1)  # (H, W, 1 + P)
    nearest = dist.argmin(-1)  # (H, W)
    if dist.amin(-1).max() > tol:
        return False  # a pixel of no known colour
    found = 0
    for k in range(1, len(colours)):
        ys, xs = torch.nonzero(nearest == k, as_tuple=True)
        if len(ys) == 0:
            continue
        found += 1
        h, w = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        if (h, w) != (sprite_size, sprite_size) or len(ys) != sprite_size ** 2:
            return False
    return found == n_sprites


def validity_rate(frames: torch.Tensor, **kwargs) -> float:
    """Fraction of valid frames in (N, 3, H, W)."""
    return sum(sprite_validity(f, **kwargs) for f in frames) / len(frames)
