"""The flow models' data and scores: the 2-D checkerboard and single SpriteWorld frames, sampled by name.

Sampling: a flow-matching network v(z, t) is integrated with Euler steps (`euler_sample`); a network of
the average velocity u(z, r, t), whichever MeanFlow loss trained it, jumps (`mean_flow_sample`). Either
way `steps` is the number of network evaluations (NFE).

Checkerboard: quality is the sliced Wasserstein distance to held-out points (`evaluate_2d`); its floor is
the distance between two independent data samples of the same size (`floor_2d`): no generator beats it
by more than chance.

Frames: single 16 x 16 SpriteWorld frames with two sprites (FRAME_WORLD), conditioned on the scene
label. Quality is the fraction of generated frames that are valid frames of their scene
(`toybench.frame_validity`: the one definition of a valid frame, occlusion-aware). Each figure is taken
over several noise seeds (EVAL_SEEDS, 400 frames each, scenes cycling) and reported as the mean and
standard deviation over the seeds (`validity_spread`); real frames scored the same way are the ceiling.
"""

from __future__ import annotations

import statistics

import torch

from .data import SCENES, SpriteWorld, SpriteWorldConfig, toy_2d
from .flow_matching import euler_sample, sliced_wasserstein
from .mean_flow import mean_flow_sample
from .toybench import validity_rate

SAMPLERS = ("flow_matching", "mean_flow")  # Euler steps of v, or jumps of u
NFES = (1, 2, 4, 8, 32)
FRAME_WORLD = SpriteWorldConfig(size=16, n_sprites=2, sprite_size=4)
EVAL_SEEDS = (0, 1, 2)  # the noise (or, for real frames, data) seeds of every frame figure
EVAL_FRAMES = 400  # frames per seed, 100 per scene


def check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return sampler


def sample(sampler: str, net, e: torch.Tensor, steps: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euler steps for "flow_matching", jumps for "mean_flow": `steps` network evaluations from noise e."""
    fn = euler_sample if check_sampler(sampler) == "flow_matching" else mean_flow_sample
    return fn(net, e, steps, y)


# ---------------------------------------------------------------------------------------------------
# 2-D checkerboard
# ---------------------------------------------------------------------------------------------------

def checkerboard(batch_size: int, generator=None) -> tuple[torch.Tensor, None]:
    """Training data (x (B, 2), no labels)."""
    return toy_2d("checkerboard", batch_size, generator=generator), None


def evaluate_2d(sampler: str, net, n: int = 16384, seed: int = 123, nfes=NFES) -> dict[int, float]:
    """Sliced Wasserstein distance to n held-out checkerboard points, for each NFE, from the same noise."""
    g = torch.Generator().manual_seed(seed)
    ref, e = toy_2d("checkerboard", n, generator=g), torch.randn(n, 2, generator=g)
    dev = next(net.parameters()).device
    return {k: sliced_wasserstein(sample(sampler, net, e.to(dev), k).cpu(), ref,
                                  generator=torch.Generator().manual_seed(0)) for k in nfes}


def floor_2d(n: int = 16384, seed: int = 7) -> float:
    """SW between two independent data samples of size n: the noise floor of `evaluate_2d`."""
    g = torch.Generator().manual_seed(seed)
    a, b = toy_2d("checkerboard", n, generator=g), toy_2d("checkerboard", n, generator=g)
    return sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# SpriteWorld frames, conditioned on the scene
# ---------------------------------------------------------------------------------------------------

def frames(batch_size: int, generator=None, label_dropout: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Single FRAME_WORLD frames (B, 3, 16, 16) scaled to [-1, 1] and scene labels (B,); a fraction
    `label_dropout` of the labels is replaced by the "no label" class len(SCENES), as trained for
    classifier-free guidance (the samplers here do not guide)."""
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
    world = SpriteWorld(FRAME_WORLD)
    scenes = torch.randint(0, len(SCENES), (batch_size,), generator=generator)
    x = torch.stack([world.rollout(1, scene=int(s), generator=generator)[0][0] for s in scenes])
    drop = torch.rand(batch_size, generator=generator) < label_dropout
    return 2 * x - 1, torch.where(drop, len(SCENES), scenes)


def generate_frames(sampler: str, net, steps: int, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Frames (N, 3, S, S) in [0, 1], on the CPU, for scene labels y (N,), from noise seeded by `seed`."""
    g = torch.Generator().manual_seed(seed)
    dev = next(net.parameters()).device
    e = torch.randn(len(y), 3, FRAME_WORLD.size, FRAME_WORLD.size, generator=g).to(dev)
    return ((sample(sampler, net, e, steps, y.to(dev)) + 1) / 2).clamp(0, 1).cpu()


def generated_validity(sampler: str, net, steps: int, n: int = EVAL_FRAMES, seed: int = 0) -> float:
    """Fraction of n generated frames (scenes cycling 0..3) that are valid frames of their scene."""
    y = torch.arange(n) % len(SCENES)
    return validity_rate(generate_frames(sampler, net, steps, y, seed), y, FRAME_WORLD)


def real_validity(n: int = EVAL_FRAMES, seed: int = 0) -> float:
    """The same score on n real frames drawn with `seed`: the ceiling of `generated_validity`."""
    x, y = frames(n, torch.Generator().manual_seed(seed), label_dropout=0.0)
    return validity_rate((x + 1) / 2, y, FRAME_WORLD)


def validity_spread(rate, seeds=EVAL_SEEDS) -> dict:
    """rate(seed) -> float, over `seeds`: {"mean", "std" (sample std over the seeds), "per_seed"}."""
    rates = {str(s): rate(s) for s in seeds}
    values = list(rates.values())
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": rates}


def frame_grid(sampler: str, net, steps: int, per_scene: int = 6, seed: int = 0) -> torch.Tensor:
    """An image (len(SCENES) * S, per_scene * S, 3): one row of generated frames per scene."""
    n_scenes, size = len(SCENES), FRAME_WORLD.size
    x = generate_frames(sampler, net, steps, torch.arange(n_scenes).repeat_interleave(per_scene), seed)
    x = x.view(n_scenes, per_scene, 3, size, size).permute(0, 3, 1, 4, 2)  # (scene, row, frame, column, rgb)
    return x.reshape(n_scenes * size, per_scene * size, 3)
