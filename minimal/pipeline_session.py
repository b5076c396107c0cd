"""Sessions of the real-time pipeline: scripted, recorded, replayed, and written to a GIF.

A session is plain data (JSON): the pipeline's settings (model, steps, n_sink, stagger, batch size),
the seed, the number of frames shown, and the actions and scene of every chunk as it entered the
stream. Replaying it feeds every chunk the same conditioning and the same noise, so the frames come
out identical, whatever threads or timing steered the original. `play_script` drives a pipeline from a
script of (frame, action, scene) changes, the main job's headless session; `save_gif` writes frames
upscaled with nearest-neighbour interpolation, so the 16 x 16 sprites stay crisp squares.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import ACTIONS, SCENE_NAMES
from .pipeline import StreamPipeline, load_pipeline

SETTINGS = ("model", "steps", "n_sink", "stagger", "batch_size")


def save_session(session: dict, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(session))
    return path


def load_session(path) -> dict:
    """Read a session file, checking that it holds what replay needs."""
    session = json.loads(Path(path).read_text())
    missing = [k for k in (*SETTINGS, "seed", "frames", "chunks") if k not in session]
    if missing:
        raise ValueError(f"{path} is not a pipeline session: missing {missing}")
    return session


def replay(session: dict, device=None) -> torch.Tensor:
    """The session's frames again, (N, H, W, 3) uint8 (B > 1: (N, B, H, W, 3)): the same settings, seed and
    device (a CPU session in float32, a CUDA one in bfloat16), chunk k entering with the recorded actions
    and scene."""
    with load_pipeline(**{k: session[k] for k in SETTINGS}, device=device or session.get("device")) as pipe:
        pipe.reset(seed=session["seed"], replay=session["chunks"])
        return torch.stack([pipe.next_frame() for _ in range(session["frames"])])


def demo_script(n_frames: int = 96) -> list[tuple[int, str, str | None]]:
    """The main job's scripted session: (frame, action, scene or None) changes. Every action in turn,
    held 8 frames each, in the night scene, then the forest from half-way."""
    return [(f, ACTIONS[(f // 8) % len(ACTIONS)], {0: "night", n_frames // 2: "forest"}.get(f))
            for f in range(0, n_frames, 8)]


def play_script(pipe: StreamPipeline, script, n_frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         torch.Tensor]:
    """Stream n_frames from a reset pipeline following `script` -> frames (N, H, W, 3) uint8, and the
    action (N,) and scene (N,) in force at every frame."""
    changes = {f: (a, s) for f, a, s in script}
    first_scene = next(s for _, _, s in script if s is not None)
    pipe.reset(scene=first_scene, seed=seed)
    frames, actions, scenes = [], [], []
    action, scene = ACTIONS[0], first_scene
    for f in range(n_frames):
        if f in changes:
            action, new_scene = changes[f]
            if new_scene is not None:
                scene = new_scene
                pipe.set_scene(scene)
        frames.append(pipe.next_frame(action))
        actions.append(ACTIONS.index(action))
        scenes.append(SCENE_NAMES.index(scene))
    return torch.stack(frames), torch.tensor(actions), torch.tensor(scenes)


def save_gif(frames: torch.Tensor, path, scale: int = 8, fps: int = 15) -> Path:
    """frames (N, H, W, 3) uint8 -> an animated GIF, each pixel a scale x scale square (nearest neighbour)."""
    from PIL import Image

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    big = frames.repeat_interleave(scale, 1).repeat_interleave(scale, 2).numpy()
    images = [Image.fromarray(f) for f in big]
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
