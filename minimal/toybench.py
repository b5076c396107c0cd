"""Scores for generated SpriteWorld frames and video, computed from the pixels alone.

Every score starts from one detection (`detect_sprites`): each pixel is classified to the nearest
colour of the scene (background, palette, player), and each expected sprite is fitted as one
sprite_size x sprite_size square of its colour, allowing it to be partly hidden under sprites drawn
after it (the simulator draws overlapping sprites). A pixel within TOL = 0.2 (L-inf, per channel) of
no scene colour is *unknown*. The colours of any scene are at least 0.4 apart, so with TOL = 0.2 no
pixel can be close to two colours: the tolerance is as loose as it can be while the assignment stays
unambiguous. `python -m minimal.bench toybench` checks the choice on real video (nearly every frame
valid; a frame fails only when a sprite is fully hidden) and on corrupted video (Gaussian pixel noise,
a colour shift, a missing, extra or misshapen sprite, blur), whose figures are in docs/results.md.

A frame is **valid** (`frame_validity`, the one definition every figure uses) when it has no unknown
pixel and every expected sprite is found. Per frame, `frame_scores` gives one score in [0, 1] per idea
in SCORE_METRICS (nan where undefined, e.g. transitions at t = 0):

- validity: the frame is valid;
- count: the number of sprites found is the expected count (count persistence);
- smoothness: each bouncing sprite's moves t-2 -> t-1 -> t follow `_bounce` from one velocity;
- background: the frame's median colour is the scene's background (brightness and colour drift);
- motion: each bouncing sprite made one legal simulator step t-1 -> t (some velocity of the world moves
  it there): a frozen sprite scores 0, one that moves every other frame 0.5, one that jumps about 0;
- action: the player moved as the commanded action says (action following);
- scene: the background nearest to the frame's median colour is the conditioned scene's.

It also returns the raw mean `brightness` per frame, to plot drift. `score_video` averages the scores
over frames and videos; `score_curves` averages each over a batch at every time step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import ACTION_DELTAS, ACTIONS, SCENES, VIDEO_WORLD, SpriteWorldConfig, _bounce

SCORE_METRICS = ("validity", "count", "smoothness", "background", "motion", "action", "scene")
TOL = 0.2  # half the smallest distance between two colours of a scene
_LAYOUTS = {3: "(3, H, W)", 4: "(T, 3, H, W)", 5: "(B, T, 3, H, W)"}


def _check_settings(config, tol) -> None:
    if not isinstance(config, SpriteWorldConfig):
        raise TypeError(f"config must be a SpriteWorldConfig, got {type(config).__name__}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a number, got {type(tol).__name__}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def _check_frames(frames, name: str, ndims: tuple[int, ...], config: SpriteWorldConfig) -> None:
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        got = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise TypeError(f"{name} must be a float tensor, got {got}")
    size = config.size
    if frames.ndim not in ndims or frames.shape[-3:] != (3, size, size) or 0 in frames.shape:
        layouts = " or ".join(_LAYOUTS[n] for n in ndims)
        raise ValueError(f"{name} must be {layouts} with H = W = config.size = {size} and T, B >= 1, "
                         f"got shape {tuple(frames.shape)}")


def _labels(values, name: str, n_classes: int, shapes: dict[tuple[int, ...], tuple[int, int]],
            B: int, T: int) -> torch.Tensor:
    """Integer labels -> (B, T) int64; `shapes` maps each allowed shape to the (B, T) view it broadcasts from."""
    t = torch.as_tensor(values)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if tuple(t.shape) not in shapes:
        allowed = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {allowed}, got {tuple(t.shape)}")
    if not (0 <= int(t.min()) and int(t.max()) < n_classes):
        raise ValueError(f"{name} must be in [0, {n_classes}), got values {t.unique().tolist()}")
    return t.long().reshape(shapes[tuple(t.shape)]).expand(B, T)


def _inputs(frames, scene, actions, config, tol, batch_ok: bool):
    """Check the arguments -> frames (B, T, 3, H, W), scenes (B, T), actions (B, T) or None."""
    _check_settings(config, tol)
    _check_frames(frames, "frames", (4, 5) if batch_ok else (4,), config)
    batched = frames.ndim == 5
    x = frames if batched else frames[None]
    B, T = x.shape[:2]
    if batched:
        scene_shapes = {(): (1, 1), (B,): (B, 1), (B, T): (B, T)}
        action_shapes = {(T,): (1, T), (B, T): (B, T)}
    else:
        scene_shapes = {(): (1, 1), (T,): (1, T)}
        action_shapes = {(T,): (1, T)}
    scenes = _labels(scene, "scene", len(SCENES), scene_shapes, B, T)
    acts = None if actions is None else _labels(actions, "actions", len(ACTIONS), action_shapes, B, T)
    return x, scenes, acts


def _scene_colours(config: SpriteWorldConfig) -> torch.Tensor:
    """(S, K, 3): per scene the background, then each sprite's colour in drawing order (player last)."""
    return torch.tensor([[sc.background, *sc.palette[:config.n_sprites], *([sc.player] if config.player else [])]
                         for sc in SCENES])


def _detect(frames: torch.Tensor, scenes: torch.Tensor, config: SpriteWorldConfig, tol: float) -> dict:
    """Frames (N, 3, H, W) of scenes (N,) -> sprite positions (N, K-1, 2), found (N, K-1), unknown (N,), valid (N,).

    Sprites are in drawing order (palette sprites, then the player). A sprite is found when some
    sprite_size square holds every pixel of its colour and nothing but its colour or later ones; among
    several such squares (possible only with more than one occluder) the first in raster order wins.
    """
    colours = _scene_colours(config)[scenes]  # (N, K, 3)
    N, K = colours.shape[:2]
    s = config.sprite_size
    dist = (frames[:, None] - colours[..., None, None]).abs().amax(2)  # (N, K, H, W), L-inf
    nearest, label = dist.min(1)  # (N, H, W)
    known = nearest <= tol
    label = torch.where(known, label, -1)  # unknown pixels belong to no colour
    k = torch.arange(1, K)[:, None, None]  # (K-1, 1, 1) sprite colour indices
    own = label[:, None] == k  # (N, K-1, H, W) pixels of sprite k's colour
    may_cover = label[:, None] >= k  # (N, K-1, H, W) its colour or one drawn on top of it
    masks = torch.stack([own, may_cover], 2).float().flatten(0, 2)[:, None]  # (N*(K-1)*2, 1, H, W)
    in_square = (F.avg_pool2d(masks, s, stride=1) * s * s).round()  # pixel counts per top-left position
    in_square = in_square.reshape(N, K - 1, 2, -1)  # (N, K-1, 2, P) with P candidate positions
    n_own = own.sum((2, 3))  # (N, K-1)
    fits = (in_square[:, :, 0] == n_own[..., None]) & (in_square[:, :, 1] == s * s) & (n_own[..., None] > 0)
    found = fits.any(-1)  # (N, K-1)
    first = fits.float().argmax(-1)  # (N, K-1) first fitting position, raster order
    width = config.size - s + 1
    positions = torch.stack([first // width, first % width], -1)  # (N, K-1, 2) top-left (y, x)
    unknown = (~known).sum((1, 2))  # (N,)
    return {"positions": positions, "found": found, "unknown": unknown,
            "valid": (unknown == 0) & found.all(-1)}


def detect_sprites(frame: torch.Tensor, scene: int, config: SpriteWorldConfig = VIDEO_WORLD,
                   tol: float = TOL) -> dict:
    """Find the sprites of one frame (3, H, W) of `scene`, allowing occlusion by later-drawn sprites.

    Returns sprites (a top-left (y, x) or None per palette sprite), player ((y, x), or None when
    missing or config.player is False), count (sprites found, player included), unknown (pixels
    within tol of no scene colour) and valid (no unknown pixels and every expected sprite found).
    """
    _check_settings(config, tol)
    _check_frames(frame, "frame", (3,), config)
    scenes = _labels(scene, "scene", len(SCENES), {(): (1, 1)}, 1, 1)[0]
    det = _detect(frame[None], scenes, config, tol)
    found = det["found"][0].tolist()
    tops = [tuple(p) if f else None for p, f in zip(det["positions"][0].tolist(), found, strict=True)]
    n = config.n_sprites
    return {"sprites": tops[:n], "player": tops[n] if config.player else None, "count": sum(found),
            "unknown": int(det["unknown"][0]), "valid": bool(det["valid"][0])}


def frame_validity(frames: torch.Tensor, scene, config: SpriteWorldConfig = VIDEO_WORLD,
                   tol: float = TOL) -> torch.Tensor:
    """Frames (N, 3, H, W) of `config`'s world -> (N,) bool: no unknown pixel and every expected sprite found.

    scene: one index or one per frame (N,)."""
    _check_settings(config, tol)
    _check_frames(frames, "frames", (4,), config)
    scenes = _labels(scene, "scene", len(SCENES), {(): (1, 1), (len(frames),): (1, len(frames))}, 1, len(frames))
    return _detect(frames, scenes[0], config, tol)["valid"]


def validity_rate(frames: torch.Tensor, scene, config: SpriteWorldConfig = VIDEO_WORLD, tol: float = TOL) -> float:
    """The fraction of valid frames among frames (N, 3, H, W) (`frame_validity`)."""
    return float(frame_validity(frames, scene, config, tol).float().mean())


def _velocities(max_speed: int) -> torch.Tensor:
    """(V, 2): every velocity the simulator can draw, components in ±[1, max_speed]."""
    speeds = torch.arange(1, max_speed + 1)
    components = torch.cat([-speeds, speeds])
    return torch.cartesian_prod(components, components)


def _scores(frames: torch.Tensor, scenes: torch.Tensor, actions: torch.Tensor | None,
            config: SpriteWorldConfig, tol: float) -> dict[str, torch.Tensor]:
    """Checked frames (B, T, 3, H, W), scenes (B, T), actions (B, T) or None -> per metric (B, T) floats."""
    B, T = frames.shape[:2]
    n, high = config.n_sprites, config.size - config.sprite_size
    det = _detect(frames.flatten(0, 1), scenes.flatten(), config, tol)
    pos = det["positions"].reshape(B, T, -1, 2)  # (B, T, K-1, 2)
    found = det["found"].reshape(B, T, -1)  # (B, T, K-1)
    out = {name: torch.full((B, T), math.nan) for name in ("smoothness", "motion", "action")}

    out["validity"] = det["valid"].reshape(B, T).float()
    out["count"] = (found.sum(-1) == n + config.player).float()

    median = frames.flatten(-2).median(-1).values  # (B, T, 3) per-channel median colour
    backgrounds = torch.tensor([sc.background for sc in SCENES])  # (S, 3)
    to_scene = (median[..., None, :] - backgrounds).abs().amax(-1)  # (B, T, S), L-inf
    out["background"] = (to_scene.gather(-1, scenes[..., None])[..., 0] <= tol).float()
    out["scene"] = (to_scene.argmin(-1) == scenes).float()
    out["brightness"] = frames.mean((-3, -2, -1))

    sprites, seen = pos[:, :, :n], found[:, :, :n]  # bouncing sprites only: (B, T, n, 2), (B, T, n)
    velocities = _velocities(config.max_speed)  # (V, 2)
    if T > 1:
        step, _ = _bounce(sprites[:, :-1, :, None], velocities, high)  # (B, T-1, n, V, 2): every legal move
        legal = (step == sprites[:, 1:, :, None]).all(-1).any(-1) & seen[:, 1:] & seen[:, :-1]  # (B, T-1, n)
        out["motion"][:, 1:] = legal.float().mean(-1)  # nan when n = 0
    if T > 2:
        p0, p1, p2 = (sprites[:, i:T - 2 + i, :, None] for i in range(3))  # each (B, T-2, n, 1, 2)
        q1, v1 = _bounce(p0, velocities, high)  # (B, T-2, n, V, 2)
        q2, _ = _bounce(p1, v1, high)
        smooth = ((q1 == p1) & (q2 == p2)).all(-1).any(-1)  # (B, T-2, n): some velocity explains both steps
        smooth &= seen[:, :-2] & seen[:, 1:-1] & seen[:, 2:]
        out["smoothness"][:, 2:] = smooth.float().mean(-1)
    if config.player and actions is not None and T > 1:
        player, has = pos[:, :, n], found[:, :, n]  # (B, T, 2), (B, T)
        deltas = torch.tensor(ACTION_DELTAS) * config.player_speed  # (A, 2)
        expected = (player[:, :-1] + deltas[actions[:, 1:]]).clamp(0, high)  # (B, T-1, 2)
        follows = (player[:, 1:] == expected).all(-1) & has[:, 1:] & has[:, :-1]
        out["action"][:, 1:] = follows.float()
    return out


def frame_scores(frames: torch.Tensor, scene, actions=None, config: SpriteWorldConfig = VIDEO_WORLD,
                 tol: float = TOL) -> dict[str, torch.Tensor]:
    """One video (T, 3, H, W) -> per metric (SCORE_METRICS and brightness) a (T,) float tensor.

    scene: one index or one per frame. actions: None or (T,) indices, actions[t] moving the player
    into frame t; `action` is nan without them or without a player. Scores are in [0, 1], nan where
    undefined; `brightness` is the raw mean pixel value of each frame.
    """
    x, scenes, acts = _inputs(frames, scene, actions, config, tol, batch_ok=False)
    return {name: v[0] for name, v in _scores(x, scenes, acts, config, tol).items()}


def score_curves(frames: torch.Tensor, scene, actions=None, config: SpriteWorldConfig = VIDEO_WORLD,
                 tol: float = TOL) -> dict[str, torch.Tensor]:
    """A batch (B, T, 3, H, W) or one video (T, 3, H, W) -> per metric a (T,) curve, nan-mean over videos.

    scene: one index, (B,) or (B, T) for a batch (one index or (T,) for one video); actions: (T,) or
    (B, T). Includes the raw `brightness` curve.
    """
    x, scenes, acts = _inputs(frames, scene, actions, config, tol, batch_ok=True)
    return {name: v.nanmean(0) for name, v in _scores(x, scenes, acts, config, tol).items()}


def score_video(frames: torch.Tensor, scene, actions=None, config: SpriteWorldConfig = VIDEO_WORLD,
                tol: float = TOL) -> dict[str, float]:
    """One video (T, 3, H, W) or a batch (B, T, 3, H, W) -> each SCORE_METRICS score, nan-mean over frames and videos.

    Arguments as in `score_curves`; a metric that is undefined everywhere (e.g. `action` without
    actions) is nan.
    """
    x, scenes, acts = _inputs(frames, scene, actions, config, tol, batch_ok=True)
    scores = _scores(x, scenes, acts, config, tol)
    return {name: float(scores[name].nanmean()) for name in SCORE_METRICS}


def score_interval(frames: torch.Tensor, scene, actions=None, config: SpriteWorldConfig = VIDEO_WORLD,
                   tol: float = TOL, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """A 95% bootstrap interval of each `score_video` score of a batch (B, T, 3, H, W): the videos are
    resampled with replacement n_boot times (seeded), the score recomputed, and the 2.5th and 97.5th
    percentiles kept. Tells whether a difference of a few hundredths between two models is a result."""
    x, scenes, acts = _inputs(frames, scene, actions, config, tol, batch_ok=True)
    scores = _scores(x, scenes, acts, config, tol)
    idx = torch.randint(0, x.shape[0], (n_boot, x.shape[0]), generator=torch.Generator().manual_seed(seed))
    out = {}
    for name in SCORE_METRICS:
        boot = scores[name][idx].flatten(1).nanmean(1)  # (n_boot,) the score of each resampled batch
        boot = boot[~boot.isnan()]
        out[name] = tuple(torch.quantile(boot, torch.tensor([0.025, 0.975])).tolist()) if len(boot) else (math.nan,) * 2
    return out
