"""Training recipes of the flow models: one loop for every loss, and the four shipped checkpoints.

A recipe (`FlowRecipe`) names its loss by `method`, one published loss each (METHODS):

    flow_matching  flow matching / rectified flow (Lipman et al. 2022; Liu et al. 2022), `fm_loss`
    mean_flow      MeanFlow (Geng, Deng, Bai, Kolter, He 2025), `mean_flow_loss`
    imf            improved MeanFlow, iMF (Geng, Lu, Wu, Shechtman, Kolter, He 2025), `imf_loss`
    split          interval splitting, SplitMeanFlow (Guo et al. 2025), `split_loss`

`train` runs any of them the same way: AdamW, a cosine learning-rate decay (training.warmup_cosine, no
warm-up) and an exponential moving average of the weights (training.EMA), which is what gets sampled. The
loss is the only difference. A recipe may start from a shipped checkpoint (`init`) and, for `split`,
distil from a shipped flow-matching one (`teacher`).

The shipped checkpoints (RECIPES; checkpoints.SHIPPED names the functions at the bottom, and
`python -m minimal.train NAME` saves what they return):

    flow-2d           flow matching on the checkerboard (FlowMLP)
    mean-flow-2d      imf, with flow-2d's steps, batch, learning rate and seed
    flow-frames       flow matching on single 16 x 16 SpriteWorld frames (FrameUNet, scene-conditioned)
    mean-flow-frames  split, fine-tuned from flow-frames with flow-frames as the teacher

Each returns (model, meta): the meta names the loss and its paper, the recipe, and the figures of
flow_metrics (sliced Wasserstein per NFE; frame validity per NFE as a mean and std over EVAL_SEEDS).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoints import load_pretrained
from .flow_matching import FlowMLP, FlowMLPConfig, FrameUNet, FrameUNetConfig, fm_loss
from .flow_metrics import (
    EVAL_FRAMES,
    EVAL_SEEDS,
    FRAME_WORLD,
    NFES,
    checkerboard,
    evaluate_2d,
    floor_2d,
    frames,
    generated_validity,
    real_validity,
    validity_spread,
)
from .mean_flow import imf_loss, mean_flow_loss, split_loss
from .timing import resolve_device
from .training import EMA, check_steps, set_lr, warmup_cosine

METHODS = {  # the loss of each method, and where it is published
    "flow_matching": "flow matching / rectified flow (Lipman et al. 2022; Liu et al. 2022): flow_matching.fm_loss",
    "mean_flow": "MeanFlow (Geng, Deng, Bai, Kolter, He 2025): mean_flow.mean_flow_loss",
    "imf": "improved MeanFlow, iMF (Geng, Lu, Wu, Shechtman, Kolter, He 2025), with the gradient through the "
           "JVP: mean_flow.imf_loss",
    "split": "interval splitting, SplitMeanFlow (Guo et al. 2025; shortcut models, Frans et al. 2024): "
             "mean_flow.split_loss",
}


@dataclass(frozen=True)
class FlowRecipe:
    """One training run of a flow model: the loss `method` (one of METHODS) and its settings only."""

    method: str  # the loss: one of METHODS
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 1e-3
    ema: float = 0.999  # the EMA of the weights is what gets sampled
    ratio_neq: float | None = None  # MeanFlow losses: fraction of pairs with r != t (None for flow matching)
    p: float | None = None  # MeanFlow losses: adaptive-weight power, 0 = squared error (None for flow matching)
    t_dist: str = "uniform"  # the distribution of the time draws
    teacher: str | None = None  # split: a shipped flow-matching checkpoint whose velocity replaces e - x
    init: str | None = None  # a shipped checkpoint to start from (None: fresh weights seeded by `seed`)
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        check_steps(self.steps)
        mean_flow = self.method != "flow_matching"
        for name in ("ratio_neq", "p"):  # the MeanFlow losses' settings: flow matching has neither
            if (getattr(self, name) is not None) != mean_flow:
                raise ValueError(f"{name} must be set for {self.method!r}" if mean_flow else
                                 f"flow matching has no {name}: leave it None, got {getattr(self, name)!r}")
        if self.teacher is not None and self.method != "split":
            raise ValueError(f"only the split loss distils from a teacher, got teacher={self.teacher!r} "
                             f"with method {self.method!r}")


def sampler_of(method: str) -> str:
    """How a model trained by `method` is sampled (flow_metrics.SAMPLERS): Euler steps of v, or jumps of u."""
    return "flow_matching" if method == "flow_matching" else "mean_flow"


def load_teacher(name: str, device=None) -> nn.Module:
    """A shipped flow-matching checkpoint, frozen."""
    net, meta = load_pretrained(name, device=device)
    if meta.get("method") != "flow_matching":
        raise ValueError(f"a teacher must be a flow-matching checkpoint, {name!r} was trained by "
                         f"{meta.get('method')!r}")
    return net.requires_grad_(False)


def _loss(recipe: FlowRecipe, net, x, y, teacher) -> torch.Tensor:
    """The recipe's loss on one batch x (B, ...), labels y (B,) or None."""
    r = recipe
    if r.method == "flow_matching":
        return fm_loss(net, x, y, r.t_dist)
    if r.method == "mean_flow":
        return mean_flow_loss(net, x, y, r.ratio_neq, r.p, r.t_dist)
    if r.method == "imf":
        return imf_loss(net, x, y, r.ratio_neq, r.p, r.t_dist)
    return split_loss(net, x, y, r.ratio_neq, r.p, r.t_dist, teacher)


def train(net: nn.Module, data, recipe: FlowRecipe, device=None, progress: bool = True,
          desc: str = "") -> tuple[nn.Module, list[float], float]:
    """Train net by recipe.method on data(batch_size, generator) -> (x, y); returns (EMA net, losses, seconds)."""
    if not isinstance(recipe, FlowRecipe):
        raise TypeError(f"recipe must be a FlowRecipe, got {type(recipe).__name__}")
    device = resolve_device(device)
    teacher = None if recipe.teacher is None else load_teacher(recipe.teacher, device)
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # the losses' own draws
    net = net.to(device).train()
    ema = EMA(net, recipe.ema)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for step in tqdm(range(recipe.steps), desc=desc or recipe.method, disable=not progress):
        set_lr(opt, warmup_cosine(step, recipe.steps, recipe.lr))
        x, y = data(recipe.batch_size, g)
        x, y = x.to(device), None if y is None else y.to(device)
        loss = _loss(recipe, net, x, y, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net)
        losses.append(loss.item())
    return ema.model, losses, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# The shipped checkpoints
# ---------------------------------------------------------------------------------------------------

# flow-2d and mean-flow-2d: same steps, batch, learning rate and seed; the EMA is each method's better of
# 0.999 and 0.995. mean-flow-2d: iMF with (r, t) uniform on the triangle, 75% r != t, squared error (p = 0);
# `flow_bench.bench_imf` runs MeanFlow's own loss under the same recipe.
RECIPES = {
    "flow-2d": FlowRecipe("flow_matching"),
    "mean-flow-2d": FlowRecipe("imf", ema=0.995, ratio_neq=0.75, p=0.0),
    "flow-frames": FlowRecipe("flow_matching", batch_size=64, ema=0.995),
    "mean-flow-frames": FlowRecipe("split", steps=3000, batch_size=64, lr=3e-4, ema=0.995, ratio_neq=0.75, p=0.0,
                                   teacher="flow-frames", init="flow-frames"),
}
FRAME_NFES = {"flow-frames": NFES, "mean-flow-frames": (1, 2, 4, 8)}  # the NFEs each frame model is scored at


def recipe_of(name: str, steps: int | None = None) -> FlowRecipe:
    """RECIPES[name], with `steps` optimiser steps instead of its own if given."""
    if name not in RECIPES:
        raise ValueError(f"unknown flow checkpoint {name!r}; available: {sorted(RECIPES)}")
    return RECIPES[name] if steps is None else replace(RECIPES[name], steps=steps)


def describe(recipe: FlowRecipe) -> dict:
    """What a checkpoint's meta says of its training: the method, its loss and paper, the recipe."""
    return {"method": recipe.method, "loss": METHODS[recipe.method], "recipe": asdict(recipe)}


def initial_net(recipe: FlowRecipe, fresh) -> nn.Module:
    """The shipped checkpoint recipe.init, or fresh() built after seeding with recipe.seed."""
    if recipe.init is not None:
        return load_pretrained(recipe.init)[0]
    torch.manual_seed(recipe.seed)  # the initial weights too (train seeds only its own draws)
    return fresh()


def frame_figures(sampler: str, net, nfes) -> dict:
    """A frame model's validity at each NFE and the real-frame ceiling, each over EVAL_SEEDS (mean, std)."""
    validity = {str(k): validity_spread(lambda seed, k=k: generated_validity(sampler, net, k, EVAL_FRAMES, seed))
                for k in nfes}
    return {"validity": validity, "real_validity": validity_spread(lambda seed: real_validity(EVAL_FRAMES, seed)),
            "eval": {"seeds": list(EVAL_SEEDS), "frames_per_seed": EVAL_FRAMES, "scenes": "cycling 0..3",
                     "score": "toybench.validity_rate (occlusion-aware, tol 0.2); mean and std over the seeds"}}


def train_2d(name: str, device=None, steps: int | None = None) -> tuple[nn.Module, dict]:
    """Train FlowMLP on the checkerboard by RECIPES[name] and score it -> (model, meta)."""
    recipe = recipe_of(name, steps)
    net, _, seconds = train(initial_net(recipe, lambda: FlowMLP(FlowMLPConfig())), checkerboard, recipe, device,
                            desc=name)
    sw = evaluate_2d(sampler_of(recipe.method), net)
    return net, {**describe(recipe), "train_seconds": seconds, "sliced_wasserstein": {str(k): v for k, v in sw.items()},
                 "floor": floor_2d()}


def train_frames(name: str, device=None, steps: int | None = None) -> tuple[nn.Module, dict]:
    """Train FrameUNet on scene-labelled frames by RECIPES[name] and score it -> (model, meta)."""
    recipe = recipe_of(name, steps)
    net, losses, seconds = train(initial_net(recipe, lambda: FrameUNet(FrameUNetConfig())), frames, recipe,
                                 device, desc=name)
    meta = {**describe(recipe), "world": asdict(FRAME_WORLD), "train_seconds": seconds,
            "final_loss": sum(losses[-100:]) / len(losses[-100:])}
    return net, {**meta, **frame_figures(sampler_of(recipe.method), net, FRAME_NFES[name])}


def train_flow_2d(device=None, steps: int | None = None):
    return train_2d("flow-2d", device, steps)


def train_mean_flow_2d(device=None, steps: int | None = None):
    return train_2d("mean-flow-2d", device, steps)


def train_flow_frames(device=None, steps: int | None = None):
    return train_frames("flow-frames", device, steps)


def train_mean_flow_frames(device=None, steps: int | None = None):
    """Needs the shipped flow-frames: its initialisation and its teacher."""
    return train_frames("mean-flow-frames", device, steps)
