"""Flow matching against MeanFlow on the 2-D checkerboard, trained side by side.

`python -m minimal.bench flows`: the shipped recipes of flow-2d (flow matching) and mean-flow-2d
(improved MeanFlow, `imf_loss`) train the same `FlowMLP` for the same number of steps, then sample at
NFE in {1, 2, 4, 8, 32} from the same noise. Quality is the sliced Wasserstein distance to held-out data
(flow_metrics.evaluate_2d) beside its data-vs-data floor.

`python -m minimal.bench flows-weight`: mean-flow-2d's recipe with r = t for every pair (pure flow
matching), with and without MeanFlow's adaptive weight. `python -m minimal.bench flows-imf`: MeanFlow's
own loss (`mean_flow_loss`) against iMF's (`imf_loss`) under mean-flow-2d's recipe.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .flow_matching import FlowMLP, FlowMLPConfig
from .flow_metrics import NFES, checkerboard, evaluate_2d, floor_2d, sample
from .flow_recipes import RECIPES, FlowRecipe, sampler_of, train
from .timing import measure, resolve_device


def _train_variants(variants: dict[str, FlowRecipe], sampler: str, device, quick: bool) -> dict:
    """Train a fresh FlowMLP once per recipe in `variants` {name: recipe}; sliced W of each at NFES, sampled
    by `sampler` (None: each recipe's own). Returns (figures, {name: trained network})."""
    device = resolve_device(device)
    n_eval = 512 if quick else 16384
    figures, nets = {"floor": floor_2d(n_eval), "train_seconds": {}}, {}
    for name, recipe in variants.items():
        recipe = replace(recipe, steps=20, batch_size=64) if quick else recipe
        torch.manual_seed(recipe.seed)
        net, _, seconds = train(FlowMLP(FlowMLPConfig()), checkerboard, recipe, device, progress=False)
        figures[name] = {str(k): v for k, v in evaluate_2d(sampler or sampler_of(recipe.method), net, n_eval).items()}
        figures["train_seconds"][name] = seconds
        nets[name] = net
        figures["steps"] = recipe.steps
    return figures, nets


def bench(device=None, quick: bool = False):
    device = resolve_device(device)
    variants = {"flow_matching": RECIPES["flow-2d"], "mean_flow": RECIPES["mean-flow-2d"]}
    figures, nets = _train_variants(variants, None, device, quick)
    figures["method"] = {name: recipe.method for name, recipe in variants.items()}
    figures["lr"] = {name: recipe.lr for name, recipe in variants.items()}
    e = torch.randn(1000, 2, device=device)
    figures["ms_per_1k_samples"] = {
        name: {str(k): 1e3 * measure(lambda k=k, s=name, n=nets[name]: sample(s, n, e, k), warmup=2,
                                     repeats=3 if quick else 11, device=device).median for k in NFES}
        for name in variants}
    fm, mf = figures["flow_matching"], figures["mean_flow"]
    figures["mean_flow_1_over_flow_matching_32"] = mf["1"] / fm["32"]
    figures["flow_matching_1_over_32"] = fm["1"] / fm["32"]
    ms = figures["ms_per_1k_samples"]
    rows = [f"checkerboard, {figures['steps']} training steps each, sliced Wasserstein to {512 if quick else 16384} "
            f"held-out points (data-vs-data floor {figures['floor']:.4f}); MeanFlow trained by iMF's loss",
            f"{'NFE':>5} | {'flow matching':>14} {'ms/1k':>7} | {'MeanFlow':>9} {'ms/1k':>7}"]
    for k in map(str, NFES):
        rows.append(f"{k:>5} | {fm[k]:>14.4f} {ms['flow_matching'][k]:>7.2f} | "
                    f"{mf[k]:>9.4f} {ms['mean_flow'][k]:>7.2f}")
    took = figures["train_seconds"]
    rows.append(f"train seconds: flow matching {took['flow_matching']:.0f}, MeanFlow {took['mean_flow']:.0f}")
    rows.append(f"MeanFlow 1 NFE / flow matching 32 NFE = {figures['mean_flow_1_over_flow_matching_32']:.2f}; "
                f"flow matching 1 NFE / 32 NFE = {figures['flow_matching_1_over_32']:.2f}")
    return "\n".join(rows), figures


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

    mean-flow-2d's recipe with every pair at r = t (ratio_neq = 0): the target is exactly flow matching's
    e - x and the JVP term is multiplied by t - r = 0, so the two runs differ only in the weight power p
    (0: squared error, the shipped recipe's; 1: MeanFlow's). Both are sampled with Euler steps on u(z, t, t).
    """
    base = replace(RECIPES["mean-flow-2d"], ratio_neq=0.0)
    figures, _ = _train_variants({f"p={p:g}": replace(base, p=p) for p in (0.0, 1.0)}, "flow_matching", device, quick)
    figures["p1_over_p0_at_32"] = figures["p=1"]["32"] / figures["p=0"]["32"]
    title = (f"checkerboard, MeanFlow loss with r = t for every pair (pure flow matching), {figures['steps']} steps, "
             f"lr {base.lr:g}; sliced Wasserstein of Euler samples (floor {figures['floor']:.4f})")
    return _variants_table(figures, title, {"p=0": "p = 0 (squared error)", "p=1": "p = 1 (adaptive weight)"}), figures


def bench_imf(device=None, quick: bool = False):
    """`python -m minimal.bench flows-imf`: MeanFlow's loss against improved MeanFlow's, same recipe.

    mean-flow-2d's recipe twice, differing only in the loss: `mean_flow_loss` regresses u onto
    sg(v - (t - r) du/dt) along v = e - x; `imf_loss` regresses V = u + (t - r) du/dt onto e - x along the
    model's own velocity, with the gradient through the JVP. Both sampled with MeanFlow jumps.
    """
    base = RECIPES["mean-flow-2d"]
    figures, _ = _train_variants({"mean_flow": replace(base, method="mean_flow"), "imf": base}, "mean_flow", device,
                                 quick)
    figures["mean_flow_over_imf_at_1"] = figures["mean_flow"]["1"] / figures["imf"]["1"]
    title = (f"checkerboard, {figures['steps']} steps each; sliced Wasserstein of MeanFlow jumps "
             f"(floor {figures['floor']:.4f})")
    labels = {"mean_flow": "MeanFlow's loss (stop-gradient target)", "imf": "iMF's loss, gradient through JVP"}
    return _variants_table(figures, title, labels), figures
