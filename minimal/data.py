"""Toy worlds that need no download: text, SpriteWorld video, and 2-D point clouds.

- Text: CPython's reference-manual topics (`pydoc_data.topics`), about 465 k characters of English
  technical prose shipped with every CPython. Topics are joined in sorted order; the last 10% of the
  topics form the validation split, so the split is deterministic and never cuts a topic in half.
- SpriteWorld: coloured square sprites bouncing in an RGB frame, an optional player sprite steered by
  actions, and a scene label (background and palette) that plays the role of a text prompt. Positions
  and velocities are integers, so every frame is pixel-exact and generated video can be scored against
  the simulator's rules.
- 2-D toys (checkerboard, moons, spirals) for flow intuition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# ---------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------

TEXT_SPLITS = ("all", "train", "val")


def text_corpus(split: str = "all", val_fraction: float = 0.1) -> str:
    """The reference-manual text: topics in sorted order, the last `val_fraction` of them held out."""
    from pydoc_data.topics import topics

    if split not in TEXT_SPLITS:
        raise ValueError(f"split must be one of {TEXT_SPLITS}, got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    keys = sorted(topics)
    n_val = math.ceil(len(keys) * val_fraction)
    chosen = {"all": keys, "train": keys[:-n_val], "val": keys[-n_val:]}[split]
    return "\n\n".join(topics[k] for k in chosen)


class CharTokenizer:
    """Character-level tokenizer: token id = index of the character in the sorted vocabulary."""

    def __init__(self, chars: str):
        if not isinstance(chars, str) or not chars:
            raise ValueError("chars must be a non-empty string of distinct characters")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat a character")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """str -> (T,) int64 token ids; an unknown character raises ValueError naming it."""
        ids = []
        for i, c in enumerate(text):
            if c not in self.stoi:
                raise ValueError(f"text[{i}] = {c!r} is not in the tokenizer's vocabulary of {self.vocab_size}")
            ids.append(self.stoi[c])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        ids = torch.as_tensor(ids).flatten().tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)


# ---------------------------------------------------------------------------------------------------
# SpriteWorld
# ---------------------------------------------------------------------------------------------------

ACTIONS = ("none", "up", "down", "left", "right")
ACTION_DELTAS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # (dy, dx) per action, in units of speed


@dataclass(frozen=True)
class Scene:
    """A scene label: background colour and the sprite palette (RGB in [0, 1])."""

    name: str
    background: tuple[float, float, float]
    palette: tuple[tuple[float, float, float], ...]
    player: tuple[float, float, float]


SCENES = (
    Scene("night", (0.05, 0.05, 0.15), ((1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (1.0, 1.0, 0.3)), (1.0, 1.0, 1.0)),
    Scene("day", (0.75, 0.85, 1.0), ((0.8, 0.1, 0.1), (0.1, 0.4, 0.1), (0.2, 0.2, 0.7)), (0.0, 0.0, 0.0)),
    Scene("forest", (0.1, 0.4, 0.15), ((1.0, 0.6, 0.0), (0.6, 0.2, 0.8), (0.9, 0.9, 0.9)), (1.0, 1.0, 0.0)),
    Scene("desert", (0.9, 0.75, 0.45), ((0.3, 0.1, 0.5), (0.0, 0.5, 0.6), (0.5, 0.2, 0.1)), (0.1, 0.1, 0.1)),
)
SCENE_NAMES = tuple(s.name for s in SCENES)


@dataclass(frozen=True)
class SpriteWorldConfig:
    size: int = 32  # frame height = width, pixels
    n_sprites: int = 2  # bouncing sprites (not counting the player)
    sprite_size: int = 4  # side of a square sprite, pixels
    max_speed: int = 2  # each velocity component is drawn from [-max_speed, max_speed] \ {0}
    player: bool = False  # add a player sprite steered by actions
    player_speed: int = 2  # pixels moved per action

    def __post_init__(self):
        for name in ("size", "n_sprites", "sprite_size", "max_speed", "player_speed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be an int, got {type(getattr(self, name)).__name__}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if not 1 <= self.sprite_size <= self.size // 2:
            raise ValueError(f"sprite_size must be in [1, size // 2 = {self.size // 2}], got {self.sprite_size}")
        if not 0 <= self.n_sprites <= len(SCENES[0].palette):
            raise ValueError(f"n_sprites must be in [0, {len(SCENES[0].palette)}], got {self.n_sprites}")
        room = self.size - self.sprite_size
        if not 1 <= self.max_speed < room:
            raise ValueError(f"max_speed must be in [1, size - sprite_size = {room}), got {self.max_speed}")
        if not 1 <= self.player_speed < room:
            raise ValueError(f"player_speed must be in [1, {room}), got {self.player_speed}")


# The world the causal video models learn (video_model.py, toybench.py): 16 x 16 frames, one bouncing
# sprite and the player, one pixel per frame, so that a transformer learns it in minutes on a CPU.
VIDEO_WORLD = SpriteWorldConfig(size=16, n_sprites=1, sprite_size=4, max_speed=1, player=True, player_speed=1)


def _as_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    return torch.Generator().manual_seed(seed) if seed is not None else generator


def _bounce(pos: torch.Tensor, vel: torch.Tensor, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of motion in [0, high] with elastic reflection off both walls."""
    pos = pos + vel
    low_hit, high_hit = pos < 0, pos > high
    pos = torch.where(low_hit, -pos, torch.where(high_hit, 2 * high - pos, pos))
    vel = torch.where(low_hit | high_hit, -vel, vel)
    return pos, vel


class SpriteWorld:
    """Procedural video: `rollout` returns frames (T, 3, H, W) in [0, 1] and the true states."""

    def __init__(self, config: SpriteWorldConfig | None = None, **kwargs):
        self.config = config if config is not None else SpriteWorldConfig(**kwargs)

    def _check_labels(self, values, n_frames: int, n_classes: int, name: str) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.long)
        if t.ndim == 0:
            t = t.expand(n_frames)
        if t.shape != (n_frames,):
            raise ValueError(f"{name} must be one label or one per frame ({n_frames}), got shape {tuple(t.shape)}")
        if t.numel() and not (0 <= int(t.min()) and int(t.max()) < n_classes):
            raise ValueError(f"{name} must be in [0, {n_classes}), got values {t.unique().tolist()}")
        return t.clone()

    def rollout(self, n_frames: int, scene=0, actions=None, seed: int | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Simulate `n_frames` frames.

        scene: one scene index or one per frame (a prompt switch mid-stream).
        actions: None (all "none") or one action index per frame; actions[t] moves the player into
            frame t. Ignored unless config.player.
        """
        cfg = self.config
        if not isinstance(n_frames, int) or n_frames < 1:
            raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
        scenes = self._check_labels(scene, n_frames, len(SCENES), "scene")
        acts = self._check_labels(0 if actions is None else actions, n_frames, len(ACTIONS), "actions")
        g = _as_generator(seed, generator)

        n, high = cfg.n_sprites, cfg.size - cfg.sprite_size
        pos = torch.randint(0, high + 1, (n, 2), generator=g)  # (n, 2) top-left (y, x)
        speeds = torch.randint(1, cfg.max_speed + 1, (n, 2), generator=g)
        signs = torch.randint(0, 2, (n, 2), generator=g) * 2 - 1
        vel = speeds * signs  # (n, 2), never zero
        player = torch.tensor([high // 2, high // 2])
        deltas = torch.tensor(ACTION_DELTAS) * cfg.player_speed  # (5, 2)

        positions, velocities, players = [], [], []
        for t in range(n_frames):
            if t > 0:
                pos, vel = _bounce(pos, vel, high)
            if cfg.player:
                player = (player + deltas[acts[t]]).clamp(0, high)
            positions.append(pos)
            velocities.append(vel)
            players.append(player)
        states = {
            "positions": torch.stack(positions),  # (T, n, 2)
            "velocities": torch.stack(velocities),  # (T, n, 2)
            "colors": torch.arange(n),  # palette index of each sprite
            "scene": scenes,  # (T,)
            "actions": acts,  # (T,)
            "player": torch.stack(players) if cfg.player else None,  # (T, 2)
        }
        return self.render(states), states

    def render(self, states: dict) -> torch.Tensor:
        """States -> frames (T, 3, H, W): background, sprites in order, the player on top."""
        cfg, s = self.config, self.config.sprite_size
        scenes = states["scene"]
        frames = torch.empty(len(scenes), 3, cfg.size, cfg.size)
        for t, k in enumerate(scenes.tolist()):
            sc = SCENES[k]
            frames[t] = torch.tensor(sc.background)[:, None, None]
            for i, (y, x) in enumerate(states["positions"][t].tolist()):
                frames[t, :, y:y + s, x:x + s] = torch.tensor(sc.palette[int(states["colors"][i])])[:, None, None]
            if states["player"] is not None:
                y, x = states["player"][t].tolist()
                frames[t, :, y:y + s, x:x + s] = torch.tensor(sc.player)[:, None, None]
        return frames

    def sample_batch(self, batch_size: int, n_frames: int, generator: torch.Generator | None = None,
                     hold: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch: frames (B, T, 3, H, W), actions (B, T), scenes (B,).

        Actions are random and held for `hold` frames, so the player makes visible moves.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(hold, int) or hold < 1:
            raise ValueError(f"hold must be an int >= 1, got {hold!r}")
        frames, actions, scenes = [], [], []
        for _ in range(batch_size):
            scene = int(torch.randint(0, len(SCENES), (1,), generator=generator))
            n_holds = -(-n_frames // hold)
            acts = torch.randint(0, len(ACTIONS), (n_holds,), generator=generator)
            acts = acts.repeat_interleave(hold)[:n_frames]
            x, _ = self.rollout(n_frames, scene=scene, actions=acts, generator=generator)
            frames.append(x)
            actions.append(acts)
            scenes.append(scene)
        return torch.stack(frames), torch.stack(actions), torch.tensor(scenes)


# ---------------------------------------------------------------------------------------------------
# 2-D toys
# ---------------------------------------------------------------------------------------------------

TOYS_2D = ("checkerboard", "moons", "spirals")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points (n, 2) from a 2-D toy distribution, inside [-3, 3]^2 (the checkerboard fills [-2, 2]^2)."""
    if name not in TOYS_2D:
        raise ValueError(f"name must be one of {TOYS_2D}, got {name!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    u = torch.rand(n, 2, generator=generator)
    if name == "checkerboard":
        # 4 x 4 board on [-2, 2]^2; keep the squares whose row + column is even.
        cell = torch.randint(0, 8, (n,), generator=generator)  # one of the 8 dark squares
        row = cell // 2
        col = 2 * (cell % 2) + row % 2
        return torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0
    if name == "moons":
        upper = torch.rand(n, generator=generator) < 0.5
        a = math.pi * u[:, 0]
        x = torch.where(upper, torch.cos(a), 1.0 - torch.cos(a))
        y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
        pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
        return pts + 0.08 * torch.randn(n, 2, generator=generator)
    # spirals: two interleaved arms, radius growing with angle
    arm = (torch.rand(n, generator=generator) < 0.5).float()
    theta = 3 * math.pi * u[:, 0].sqrt()
    r = theta / (3 * math.pi) * 2.0
    phase = math.pi * arm
    pts = torch.stack([r * torch.cos(theta + phase), r * torch.sin(theta + phase)], dim=1)
    return pts + 0.05 * torch.randn(n, 2, generator=generator)
