"""Flow matching vs MeanFlow, trained side by side: the 2-D checkerboard bench and the frame models.

`python -m minimal.bench flows`: both methods train the same `FlowMLP` for the same number of steps on
the checkerboard, then sample at NFE in {1, 2, 4, 8, 32} from the same noise. Quality is the sliced
Wasserstein distance to held-out data; the floor is the distance between two independent data samples
of the same size (no generator can beat it by more than chance). `python -m minimal.bench flows-weight`
trains the MeanFlow recipe with r = t everywhere (pure flow matching) with and without the adaptive weight.

`python -m minimal.train flow-frames` / `mean-flow-frames`: the same `FrameUNet`, conditioned on the
scene label, trained on single 16 x 16 SpriteWorld frames with each method (MeanFlow: fine-tuned from
`flow-frames` by interval splitting, with `flow-frames` as the teacher); quality is the fraction of
generated frames that pass `toybench.sprite_validity` for their scene.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

from .checkpoints import PRETRAINED_DIR, load_pretrained, save_checkpoint
from .data import SCENES, SpriteWorld, toy_2d
from .flow_matching import (
    FlowMLP,
    FlowMLPConfig,
    FrameUNet,
    FrameUNetConfig,
    euler_sample,
    fm_loss,
    sliced_wasserstein,
)
from .mean_flow import mean_flow_loss, mean_flow_sample, split_loss
from .timing import measure, resolve_device
from .toybench import sprite_validity

METHODS = ("flow_matching", "mean_flow")
NFES = (1, 2, 4, 8, 32)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def sample(method: str, net, e: torch.Tensor, steps: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euler steps for flow matching, MeanFlow jumps for MeanFlow: `steps` network evaluations."""
    sampler = euler_sample if check_method(method) == "flow_matching" else mean_flow_sample
    return sampler(net, e, steps, y)


@dataclass
class TrainRecipe:
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 1e-3
    ema: float = 0.999  # the EMA of the weights is what gets sampled
    ratio_neq: float = 0.25  # MeanFlow: fraction of pairs with r != t
    p: float = 1.0  # MeanFlow: adaptive-weight power
    t_dist: str = "logit_normal"  # MeanFlow: the distribution of the two time draws
    residual: bool = False  # MeanFlow: regress V = u + (t - r) du/dt with the gradient through the JVP
    split: bool = False  # MeanFlow: train u by interval splitting (`split_loss`) instead of the JVP identity
    distill: bool = False  # MeanFlow: the flow-matching teacher's velocity replaces e - x
    seed: int = 0


def train(method: str, net: torch.nn.Module, data, recipe: TrainRecipe, device=None, progress: bool = True,
          desc: str = "", teacher: torch.nn.Module | None = None) -> tuple[torch.nn.Module, list[float], float]:
    """Train net with `method`; data(batch_size, generator) -> (x, y). Returns (EMA net, losses, seconds).

    AdamW with a cosine learning-rate decay; the loss of each method is the only difference.
    A recipe with `distill` needs the flow-matching `teacher`.
    """
    check_method(method)
    if recipe.distill != (teacher is not None):
        raise ValueError(f"a teacher is needed exactly when recipe.distill is True, got distill={recipe.distill} "
                         f"and teacher={'a network' if teacher is not None else None}")
    if recipe.split and recipe.residual:
        raise ValueError("recipe.split and recipe.residual are two different MeanFlow losses: set at most one")
    device = resolve_device(device)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    net = net.to(device).train()
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    losses, t0 = [], time.perf_counter()
    for _ in tqdm(range(recipe.steps), desc=desc or method, disable=not progress):
        x, y = data(recipe.batch_size, g)
        x, y = x.to(device), None if y is None else y.to(device)
        if method == "flow_matching":
            loss = fm_loss(net, x, y, generator=None)
        elif recipe.split:
            loss = split_loss(net, x, y, ratio_neq=recipe.ratio_neq, p=recipe.p, dist=recipe.t_dist, teacher=teacher)
        else:
            loss = mean_flow_loss(net, x, y, ratio_neq=recipe.ratio_neq, p=recipe.p, dist=recipe.t_dist,
                                  residual=recipe.residual, teacher=teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - recipe.ema)
        losses.append(loss.item())
    return ema, losses, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# 2-D checkerboard
# ---------------------------------------------------------------------------------------------------

def checkerboard(batch_size: int, generator=None) -> tuple[torch.Tensor, None]:
    return toy_2d("checkerboard", batch_size, generator=generator), None


def evaluate_2d(method: str, net, n: int = 16384, seed: int = 123, nfes=NFES) -> dict[int, float]:
    """Sliced Wasserstein distance to n held-out checkerboard points, for each NFE."""
    g = torch.Generator().manual_seed(seed)
    ref, e = toy_2d("checkerboard", n, generator=g), torch.randn(n, 2, generator=g)
    dev = next(net.parameters()).device
    return {k: sliced_wasserstein(sample(method, net, e.to(dev), k).cpu(), ref,
                                  generator=torch.Generator().manual_seed(0)) for k in nfes}


def floor_2d(n: int = 16384, seed: int = 7) -> float:
    """SW between two independent data samples of size n: the noise floor of `evaluate_2d`."""
    g = torch.Generator().manual_seed(seed)
    a, b = toy_2d("checkerboard", n, generator=g), toy_2d("checkerboard", n, generator=g)
    return sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))


CHECKPOINTS_2D = {"flow_matching": "flow-2d", "mean_flow": "mean-flow-2d"}
# Same steps, batch, learning rate and seed; the EMA is each method's better of 0.999 and 0.995 (flow
# matching at 32 NFE: 0.045 against 0.050; MeanFlow at 1 NFE: 0.067 against 0.058). MeanFlow: the residual
# form with the gradient through the JVP, (r, t) uniform on the triangle, 75% r != t, squared error
# (p = 0); `bench_residual` runs the paper's stop-gradient form under the same recipe.
RECIPES_2D = {"flow_matching": TrainRecipe(),
              "mean_flow": TrainRecipe(ema=0.995, ratio_neq=0.75, p=0.0, t_dist="uniform", residual=True)}


def train_2d(method: str, out=None, device=None, steps: int | None = None) -> dict:
    """Train FlowMLP on the checkerboard with the bench recipe and save minimal/pretrained/<name>.pt."""
    recipe = replace(RECIPES_2D[check_method(method)], **({} if steps is None else {"steps": steps}))
    torch.manual_seed(recipe.seed)  # the initial weights too (train seeds only its own draws)
    net, losses, seconds = train(method, FlowMLP(FlowMLPConfig()), checkerboard, recipe, device,
                                 desc=CHECKPOINTS_2D[method])
    sw = {str(k): v for k, v in evaluate_2d(method, net).items()}
    meta = {"recipe": asdict(recipe), "train_seconds": seconds, "sliced_wasserstein": sw, "floor": floor_2d()}
    path = save_checkpoint(out or PRETRAINED_DIR / f"{CHECKPOINTS_2D[method]}.pt", net, meta)
    return {"path": str(path), **meta}


def train_flow_2d(out=None, device=None, steps: int | None = None) -> dict:
    """`python -m minimal.train flow-2d`."""
    return train_2d("flow_matching", out, device, steps)


def train_mean_flow_2d(out=None, device=None, steps: int | None = None) -> dict:
    """`python -m minimal.train mean-flow-2d`."""
    return train_2d("mean_flow", out, device, steps)


def bench(device=None, quick: bool = False):
    device = resolve_device(device)
    recipes = {m: replace(r, steps=20, batch_size=64) if quick else r for m, r in RECIPES_2D.items()}
    n_eval = 512 if quick else 16384
    figures = {"steps": recipes["mean_flow"].steps, "floor": floor_2d(n_eval), "train_seconds": {},
               "ms_per_1k_samples": {}, "lr": {m: r.lr for m, r in recipes.items()}}
    for method, recipe in recipes.items():
        torch.manual_seed(recipe.seed)
        net, _, seconds = train(method, FlowMLP(FlowMLPConfig()), checkerboard, recipe, device, progress=False)
        figures[method] = {str(k): v for k, v in evaluate_2d(method, net, n_eval).items()}
        figures["train_seconds"][method] = seconds
        e = torch.randn(1000, 2, device=device)
        repeats = 3 if quick else 11
        figures["ms_per_1k_samples"][method] = {
            str(k): 1e3 * measure(lambda k=k, m=method, n=net, e=e: sample(m, n, e, k), warmup=2, repeats=repeats,
                                  device=device).median for k in NFES}
    fm, mf = figures["flow_matching"], figures["mean_flow"]
    figures["mean_flow_1_over_flow_matching_32"] = mf["1"] / fm["32"]
    figures["flow_matching_1_over_32"] = fm["1"] / fm["32"]
    rows = [f"checkerboard, {figures['steps']} training steps each, sliced Wasserstein to {n_eval} held-out points "
            f"(data-vs-data floor {figures['floor']:.4f})",
            f"{'NFE':>5} | {'flow matching':>14} {'ms/1k':>7} | {'MeanFlow':>9} {'ms/1k':>7}"]
    for k in map(str, NFES):
        rows.append(f"{k:>5} | {fm[k]:>14.4f} {figures['ms_per_1k_samples']['flow_matching'][k]:>7.2f} | "
                    f"{mf[k]:>9.4f} {figures['ms_per_1k_samples']['mean_flow'][k]:>7.2f}")
    rows.append(f"train seconds: flow matching {figures['train_seconds']['flow_matching']:.0f}, "
                f"MeanFlow {figures['train_seconds']['mean_flow']:.0f}")
    rows.append(f"MeanFlow 1 NFE / flow matching 32 NFE = {figures['mean_flow_1_over_flow_matching_32']:.2f}; "
                f"flow matching 1 NFE / 32 NFE = {figures['flow_matching_1_over_32']:.2f}")
    return "\n".join(rows), figures


def _train_variants(variants: dict, sampler: str, device, quick: bool) -> dict:
    """Train FlowMLP with MeanFlow once per recipe in `variants` {name: recipe}; sliced W of each at NFES."""
    device = resolve_device(device)
    n_eval = 512 if quick else 16384
    figures = {"floor": floor_2d(n_eval), "train_seconds": {}}
    for name, recipe in variants.items():
        recipe = replace(recipe, steps=20, batch_size=64) if quick else recipe
        torch.manual_seed(recipe.seed)
        net, _, seconds = train("mean_flow", FlowMLP(FlowMLPConfig()), checkerboard, recipe, device, progress=False)
        figures[name] = {str(k): v for k, v in evaluate_2d(sampler, net, n_eval).items()}
        figures["train_seconds"][name] = seconds
        figures["steps"] = recipe.steps
    return figures


def _variants_table(figures: dict, title: str, labels: dict) -> str:
    """The report of `_train_variants` for two variants {name: label}: one row per NFE, then the seconds."""
    (a, label_a), (b, label_b) = labels.items()
    rows = [title, f"{'NFE':>5} | {label_a} | {label_b}"]
    width_a, width_b = len(label_a), len(label_b)
    rows += [f"{k:>5} | {figures[a][k]:>{width_a}.4f} | {figures[b][k]:>{width_b}.4f}" for k in map(str, NFES)]
    took = figures["train_seconds"]
    rows.append(f"train seconds: {label_a} {took[a]:.0f}, {label_b} {took[b]:.0f}")
    return "\n".join(rows)


def bench_weight(device=None, quick: bool = False):
    """`python -m minimal.bench flows-weight`: MeanFlow's adaptive weight on its own, without any jump.

    MeanFlow's 2-D recipe with every pair at r = t (ratio_neq = 0): the target is exactly flow matching's
    e - x and the JVP term is multiplied by t - r = 0, so the two runs differ only in the weight power p
    (0: squared error, the shipped recipe's; 1: the paper's). Both are sampled with Euler steps on u(z, t, t).
    """
    base = replace(RECIPES_2D["mean_flow"], ratio_neq=0.0)
    figures = _train_variants({f"p={p:g}": replace(base, p=p) for p in (0.0, 1.0)}, "flow_matching", device, quick)
    figures["p1_over_p0_at_32"] = figures["p=1"]["32"] / figures["p=0"]["32"]
    title = (f"checkerboard, MeanFlow loss with r = t for every pair (pure flow matching), {figures['steps']} steps, "
             f"lr {base.lr:g}; sliced Wasserstein of Euler samples (floor {figures['floor']:.4f})")
    return _variants_table(figures, title, {"p=0": "p = 0 (squared error)", "p=1": "p = 1 (adaptive weight)"}), figures


def bench_residual(device=None, quick: bool = False):
    """`python -m minimal.bench flows-residual`: the paper's stop-gradient loss against the residual form.

    MeanFlow's 2-D recipe twice, differing only in `residual`: False regresses u onto sg(v - (t - r) du/dt)
    along v = e - x; True regresses V = u + (t - r) du/dt onto e - x along the model's own velocity, with
    the gradient through the JVP. Both sampled with MeanFlow jumps.
    """
    base = RECIPES_2D["mean_flow"]
    variants = {"stop_gradient": replace(base, residual=False), "residual": replace(base, residual=True)}
    figures = _train_variants(variants, "mean_flow", device, quick)
    figures["stop_gradient_over_residual_at_1"] = figures["stop_gradient"]["1"] / figures["residual"]["1"]
    title = (f"checkerboard, MeanFlow, {figures['steps']} steps each; sliced Wasserstein of MeanFlow jumps "
             f"(floor {figures['floor']:.4f})")
    labels = {"stop_gradient": "stop-gradient target (paper)", "residual": "residual, gradient through JVP"}
    return _variants_table(figures, title, labels), figures


# ---------------------------------------------------------------------------------------------------
# SpriteWorld frames, conditioned on the scene
# ---------------------------------------------------------------------------------------------------

FRAME_WORLD = dict(size=16, n_sprites=2, sprite_size=4)
FRAME_RECIPES = {  # MeanFlow starts from the flow-matching weights and learns from them as its teacher
    "flow_matching": TrainRecipe(steps=4000, batch_size=64, lr=1e-3, ema=0.995),
    "mean_flow": TrainRecipe(steps=3000, batch_size=64, lr=3e-4, ema=0.995, ratio_neq=0.75, p=0.0, t_dist="uniform",
                             split=True, distill=True),
}
FRAME_CHECKPOINTS = {"flow_matching": "flow-frames", "mean_flow": "mean-flow-frames"}


def frames(batch_size: int, generator=None, label_dropout: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Single SpriteWorld frames (B, 3, 16, 16) scaled to [-1, 1], scene labels (B,); a fraction
    `label_dropout` of labels is replaced by the "no label" class (len(SCENES)) for guidance."""
    world = SpriteWorld(**FRAME_WORLD)
    scenes = torch.randint(0, len(SCENES), (batch_size,), generator=generator)
    x = torch.stack([world.rollout(1, scene=int(s), generator=generator)[0][0] for s in scenes])
    drop = torch.rand(batch_size, generator=generator) < label_dropout
    return 2 * x - 1, torch.where(drop, len(SCENES), scenes)


def scene_validity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of frames x (N, 3, S, S) in [0, 1] that are valid frames of their scene y (N,)."""
    return sum(sprite_validity(f, scene=int(k), n_sprites=FRAME_WORLD["n_sprites"]) for f, k in zip(x, y, strict=True)
               ) / len(x)


def generate_frames(method: str, net, steps: int, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Frames (N, 3, S, S) in [0, 1], on the CPU, for scene labels y (N,), from seeded noise."""
    g = torch.Generator().manual_seed(seed)
    dev = next(net.parameters()).device
    e = torch.randn(len(y), 3, FRAME_WORLD["size"], FRAME_WORLD["size"], generator=g).to(dev)
    return ((sample(method, net, e, steps, y.to(dev)) + 1) / 2).clamp(0, 1).cpu()


def frame_validity(method: str, net, steps: int, n: int = 400, seed: int = 0) -> float:
    """Fraction of n generated frames (scenes cycling 0..3) that are valid frames of their scene."""
    y = torch.arange(n) % len(SCENES)
    return scene_validity(generate_frames(method, net, steps, y, seed), y)


def frame_grid(method: str, net, steps: int, per_scene: int = 6, seed: int = 0) -> torch.Tensor:
    """An image (len(SCENES) * S, per_scene * S, 3): one row of generated frames per scene."""
    n_scenes, size = len(SCENES), FRAME_WORLD["size"]
    x = generate_frames(method, net, steps, torch.arange(n_scenes).repeat_interleave(per_scene), seed)
    x = x.view(n_scenes, per_scene, 3, size, size).permute(0, 3, 1, 4, 2)  # (scene, row, frame, column, rgb)
    return x.reshape(n_scenes * size, per_scene * size, 3)


def real_frame_validity(n: int = 400, seed: int = 0) -> float:
    """The same check on real frames: overlapping sprites fail it, so this is the ceiling."""
    x, y = frames(n, torch.Generator().manual_seed(seed), label_dropout=0.0)
    return scene_validity((x + 1) / 2, y)


def train_frames(method: str, out=None, device=None, steps: int | None = None) -> dict:
    """Train (MeanFlow: fine-tune the shipped flow-frames) and save minimal/pretrained/<name>.pt."""
    recipe = replace(FRAME_RECIPES[check_method(method)], **({} if steps is None else {"steps": steps}))
    teacher = None
    if method == "mean_flow":
        net, _ = load_pretrained(FRAME_CHECKPOINTS["flow_matching"], FrameUNet, FrameUNetConfig)
        if recipe.distill:
            teacher = copy.deepcopy(net)  # frozen by train()
    else:
        torch.manual_seed(recipe.seed)  # the initial weights too (train seeds only its own draws)
        net = FrameUNet(FrameUNetConfig())
    net, losses, seconds = train(method, net, frames, recipe, device, desc=FRAME_CHECKPOINTS[method],
                                 teacher=teacher)
    nfes = (1, 2, 4, 8, 32) if method == "flow_matching" else (1, 2, 4)
    validity = {str(k): frame_validity(method, net, k) for k in nfes}
    meta = {"recipe": asdict(recipe), "world": FRAME_WORLD, "train_seconds": seconds, "validity": validity,
            "real_validity": real_frame_validity(), "final_loss": sum(losses[-100:]) / len(losses[-100:]),
            "init": "flow-frames" if method == "mean_flow" else "random"}
    path = save_checkpoint(out or PRETRAINED_DIR / f"{FRAME_CHECKPOINTS[method]}.pt", net, meta)
    return {"path": str(path), **meta}


def train_flow_frames(out=None, device=None, steps: int | None = None) -> dict:
    """`python -m minimal.train flow-frames`."""
    return train_frames("flow_matching", out, device, steps)


def train_mean_flow_frames(out=None, device=None, steps: int | None = None) -> dict:
    """`python -m minimal.train mean-flow-frames` (needs the shipped flow-frames as its initialisation)."""
    return train_frames("mean_flow", out, device, steps)
