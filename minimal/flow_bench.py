"""Flow matching vs MeanFlow, trained side by side: the 2-D checkerboard bench and the frame models.

`python -m minimal.bench flows`: both methods train the same `FlowMLP` for the same number of steps on
the checkerboard, then sample at NFE in {1, 2, 4, 8, 32} from the same noise. Quality is the sliced
Wasserstein distance to held-out data; the floor is the distance between two independent data samples
of the same size (no generator can beat it by more than chance).

`python -m minimal.train flow-frames` / `mean-flow-frames`: the same `FrameDiT`, conditioned on the
scene label, trained on single 16 x 16 SpriteWorld frames with each method; quality is the fraction
of generated frames that pass `toybench.sprite_validity` for their scene.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .checkpoints import PRETRAINED_DIR, load_pretrained, save_checkpoint
from .data import SCENES, SpriteWorld, toy_2d
from .flow_matching import FlowMLP, FlowMLPConfig, FrameDiT, FrameDiTConfig, euler_sample, fm_loss, \
    sliced_wasserstein
from .mean_flow import mean_flow_loss, mean_flow_sample
from .timing import measure, resolve_device
from .toybench import validity_rate

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
    seed: int = 0


def train(method: str, net: torch.nn.Module, data, recipe: TrainRecipe, device=None, progress: bool = True,
          desc: str = "") -> tuple[torch.nn.Module, list[float], float]:
    """Train net with `method`; data(batch_size, generator) -> (x, y). Returns (EMA net, losses, seconds).

    AdamW with a cosine learning-rate decay; the loss of each method is the only difference.
    """
    check_method(method)
    device = resolve_device(device)
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
        else:
            loss = mean_flow_loss(net, x, y, ratio_neq=recipe.ratio_neq, p=recipe.p)
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


def bench(device=None, quick: bool = False):
    device = resolve_device(device)
    recipe = TrainRecipe(steps=20, batch_size=64) if quick else TrainRecipe()
    n_eval = 512 if quick else 16384
    figures = {"steps": recipe.steps, "floor": floor_2d(n_eval), "train_seconds": {}, "ms_per_1k_samples": {}}
    for method in METHODS:
        net, _, seconds = train(method, FlowMLP(FlowMLPConfig()), checkerboard, recipe, device, progress=False)
        figures[method] = {str(k): v for k, v in evaluate_2d(method, net, n_eval).items()}
        figures["train_seconds"][method] = seconds
        e = torch.randn(1000, 2, device=device)
        figures["ms_per_1k_samples"][method] = {
            str(k): 1e3 * measure(lambda k=k: sample(method, net, e, k), warmup=2, repeats=3 if quick else 11,
                                  device=device).median for k in NFES}
    fm, mf = figures["flow_matching"], figures["mean_flow"]
    figures["mean_flow_1_over_flow_matching_32"] = mf["1"] / fm["32"]
    figures["flow_matching_1_over_32"] = fm["1"] / fm["32"]
    rows = [f"checkerboard, {recipe.steps} training steps each, sliced Wasserstein to {n_eval} held-out points "
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
