"""`python -m minimal.bench speculative`: speculative decoding of the shipped char GPT, measured.

Target: `text-gpt` (4 layers, width 192, context 128). Drafts, side by side in one run:
    n-gram   `NGramDraft` of order 6 counted on the same training text (tens of microseconds a token)
    GPT      the shipped `text-draft` (1 layer, width 96): cheaper than the target, but on a CPU both
             are dominated by per-call overhead, so its cost ratio c is far from 0.
Each sampler writes 256 new tokens at temperature 1 after a 16-character prompt. The target's context
is 128, so all samplers use the same sliding window (`speculative.window_start`: when the context would
pass 128 tokens, the cache is refilled with the last 64): same conditionals, same refill cost, fair.

Figures: speedup = median wall time of target-only sampling / median of speculative sampling (runs
interleaved); alpha = mean of sum_y min(p, q) over judged positions; tokens per target call measured
and predicted (1 - alpha^(gamma + 1)) / (1 - alpha); c = draft time per drafted token / target-only
time per token; speedup_predicted = (1 - alpha^(gamma + 1)) / ((1 - alpha)(gamma c + 1)). The gamma sweep
adds n-gram runs at gamma = 1..6 to the same interleaved runs, each with its measured cost v of verifying
gamma + 1 tokens. The continuous row (speculative_continuous.py) reports the same alpha, there
E_{x~q}[min(1, p(x) / q(x))] over judged drafts, and its acceptance rate accepted / judged. Image tokens
(SJD, GSD and the static-cluster ablation) are `python -m minimal.bench speculative-image`.
"""

from __future__ import annotations

import torch

from .checkpoints import load_pretrained
from .data import CharTokenizer, text_corpus
from .kv_cache import KVCache
from .speculative import GPTDraft, NGramDraft, autoregressive_generate, expected_tokens, speculative_generate
from .timing import Timer, cpu_threads, measure, percentile, resolve_device


def step_costs(target, drafts: dict, context: torch.Tensor, gamma: int, device) -> dict:
    """Median seconds of: one target step (1 token), one verification (gamma + 1 tokens), and one drafted
    token of each draft (propose(context, gamma) / gamma), measured side by side on the same context."""
    g = torch.Generator(device=device).manual_seed(0)
    cache = KVCache.for_model(target)
    target(context[None, :-1], cache)
    n = cache.length

    def target_call(t):
        target(context[None, -t:], cache)
        cache.crop(n)

    costs = {"step": lambda: target_call(1), "verify": lambda: target_call(gamma + 1)}
    costs.update({k: (lambda d=d: d.propose(context, gamma, 1.0, g)) for k, d in drafts.items()})
    out = {k: measure(fn, warmup=5, repeats=100, device=device).median for k, fn in costs.items()}
    return {k: v / gamma if k in drafts else v for k, v in out.items()}


def timed(fn, device):
    """(seconds, fn()) with the device synchronised around the call."""
    with Timer(device) as t:
        out = fn()
    return t.seconds, out


def _continuous(result: dict, quick: bool, repeats: int, device) -> str:
    """Continuous speculative decoding on SpriteWorld trajectories (CPU: torch.distributions in the loop)."""
    from .speculative_continuous import (
        ContinuousARConfig,
        speculative_sample,
        target_sample,
        train_continuous,
        trajectories,
    )

    steps, n_new = (20, 8) if quick else (400, 64)
    data = trajectories(200, 40)
    target = train_continuous(ContinuousARConfig(hidden=256, n_layer=3), data, steps, seed=0)
    draft = train_continuous(ContinuousARConfig(hidden=32, n_layer=1, context=2), data, steps, seed=1)
    prompt = trajectories(1, 40, seed=1)[0, :3]
    times, stats = {"target": [], "spec": []}, []
    for r in range(repeats + 1):  # the first run is a warm-up
        g = torch.Generator().manual_seed(r)
        t_target, _ = timed(lambda g=g: (target_sample(target, prompt, n_new, g), None), "cpu")
        t_spec, (_, st) = timed(lambda g=g: speculative_sample(target, draft, prompt, n_new, 4, g), "cpu")
        if r:
            times["target"].append(t_target)
            times["spec"].append(t_spec)
            stats.append(st)
    speedup = percentile(times["target"], 50) / percentile(times["spec"], 50)
    judged = sum(s["judged"] for s in stats)
    alpha = sum(s["beta_sum"] for s in stats) / judged  # E_{x~q}[min(1, p(x) / q(x))]
    rate, tpc = sum(s["accepted"] for s in stats) / judged, len(stats) * n_new / sum(s["target_calls"] for s in stats)
    result.update(continuous_speedup=speedup, continuous_alpha=alpha, continuous_acceptance_rate=rate,
                  continuous_tokens_per_call=tpc)
    return (f"{'continuous (GMM head)':>26} | {percentile(times['spec'], 50) / n_new * 1e3:>8.3f} {speedup:>6.2f}x | "
            f"{alpha:>5.3f} {tpc:>8.2f}        (2-D trajectories, {n_new} tokens; acceptance rate {rate:.3f})")


def _alpha(sts) -> float:
    """alpha = mean of sum_y min(p, q) over the positions the target judged, across runs' stats."""
    return sum(s.beta_sum for s in sts) / sum(s.beta_count for s in sts)


def _gamma_sweep(target, ngram, context, base: float, times: dict, stats: dict, names: dict,
                 device) -> tuple[list[str], dict]:
    """The n-gram draft at every gamma (names: gamma -> its sampler in the interleaved runs): the fastest
    gamma, and at each how far the measured speedup is from the prediction that assumes verification
    costs one step. base: the median target-only time; context: the tokens step costs are measured on."""
    sweep = {}
    rows = [f"{'gamma sweep, n-gram draft':>26} | speedup | alpha | verify cost v (target steps) | prediction"]
    for k, name in names.items():
        costs = step_costs(target, {"": ngram}, context, k, device)
        alpha = _alpha(stats[name])
        c, v = costs[""] / costs["step"], costs["verify"] / costs["step"]
        speedup, predicted = base / percentile(times[name], 50), expected_tokens(alpha, k) / (k * c + 1)
        sweep[str(k)] = {"speedup": speedup, "alpha": alpha, "verify_cost_ratio": v, "speedup_predicted": predicted,
                         "speedup_predicted_with_verify_cost": expected_tokens(alpha, k) / (k * c + v)}
        rows.append(f"{'n-gram, gamma = ' + str(k):>26} | {speedup:>6.2f}x | {alpha:>5.3f} | v = {v:.2f} | "
                    f"predicted {predicted:.2f}x (v = 1), measured / predicted {speedup / predicted:.2f}")
    return rows, sweep


def bench(device=None, quick: bool = False, repeats: int = 7, gamma: int = 4) -> tuple[str, dict]:
    """On the CPU the run uses one intra-op thread (restored afterwards): these models are so small that
    a second thread only adds synchronisation, and on a shared 2-core machine it makes timings erratic."""
    device = resolve_device(device)
    with cpu_threads(1, device), torch.no_grad():
        return _bench(device, quick, repeats, gamma)


def _bench(device, quick: bool, repeats: int, gamma: int) -> tuple[str, dict]:
    target, meta = load_pretrained("text-gpt", device=device)
    draft_gpt, _ = load_pretrained("text-draft", device=device)
    tok = CharTokenizer(meta["chars"])
    order, n_new, repeats = (3, 32, 1) if quick else (6, 256, repeats)
    ngram = NGramDraft(tok.encode(text_corpus("train")), tok.vocab_size, order=order).to(device)
    prompt = tok.encode(text_corpus("val")[:16]).to(device)
    ngram_name, gpt_name = f"n-gram draft (order {order})", "GPT draft (text-draft)"
    sweep = {k: ngram_name if k == gamma else f"n-gram, gamma = {k}" for k in ((1, 2) if quick else range(1, 7))}
    samplers = {
        "target only": lambda g: (autoregressive_generate(target, prompt, n_new, 1.0, g), None),
        ngram_name: lambda g: speculative_generate(target, ngram, prompt, n_new, gamma, 1.0, g),
        gpt_name: lambda g: speculative_generate(target, draft_gpt, prompt, n_new, gamma, 1.0, g),
        **{name: (lambda g, k=k: speculative_generate(target, ngram, prompt, n_new, k, 1.0, g))
           for k, name in sweep.items() if k != gamma},  # the gamma sweep, in the same interleaved runs
    }
    gen = lambda seed: torch.Generator(device=device).manual_seed(seed)  # noqa: E731
    for fn in samplers.values():  # warm-up
        fn(gen(0))
    times, stats = {k: [] for k in samplers}, {k: [] for k in samplers}
    for r in range(repeats):  # interleaved, so drift in machine speed hits every sampler alike
        for name, fn in samplers.items():
            seconds, (_, st) = timed(lambda fn=fn, r=r: fn(gen(r + 1)), device)
            times[name].append(seconds)
            stats[name].append(st)

    context = torch.cat([prompt, speculative_generate(target, ngram, prompt, 48, gamma, 1.0, gen(0))[0]])
    costs = step_costs(target, {"": ngram, "gpt_": GPTDraft(draft_gpt)}, context, gamma, device)
    v = costs["verify"] / costs["step"]  # the papers assume 1: scoring gamma + 1 tokens costs one step
    base = percentile(times["target only"], 50)
    rows, result = [], {"device": str(device), "new_tokens": n_new, "gamma": gamma, "repeats": repeats,
                        "ms_per_token_target": base / n_new * 1e3, "ms_target_step": costs["step"] * 1e3,
                        "verify_cost_ratio": v}
    header = f"{'sampler':>26} | {'ms/token':>8} {'speedup':>7} | {'alpha':>5} {'tok/call':>8} {'pred':>5} | " \
             f"{'c':>6} {'pred (v=1)':>10} {'pred (v)':>8}"
    rows.append(f"{'target only':>26} | {base / n_new * 1e3:>8.3f} {1.0:>6.2f}x |")
    for name, key in ((ngram_name, ""), (gpt_name, "gpt_")):
        sts = stats[name]
        alpha = _alpha(sts)
        calls = sum(s.target_calls for s in sts)
        tpc = sum(s.emitted for s in sts) / calls
        tpc_pred = sum(s.tokens_per_call_predicted * s.target_calls for s in sts) / calls
        c = costs[key] / costs["step"]
        speedup = base / percentile(times[name], 50)
        predicted = expected_tokens(alpha, gamma) / (gamma * c + 1)  # Leviathan et al.: verify = one step
        predicted_v = expected_tokens(alpha, gamma) / (gamma * c + v)  # with the measured verification cost
        result.update({f"{key}speedup": speedup, f"{key}alpha": alpha, f"{key}tokens_per_call": tpc,
                       f"{key}tokens_per_call_predicted": tpc_pred, f"{key}cost_ratio": c,
                       f"{key}speedup_predicted": predicted, f"{key}speedup_predicted_with_verify_cost": predicted_v})
        rows.append(f"{name:>26} | {percentile(times[name], 50) / n_new * 1e3:>8.3f} {speedup:>6.2f}x | "
                    f"{alpha:>5.3f} {tpc:>8.2f} {tpc_pred:>5.2f} | {c:>6.3f} {predicted:>9.2f}x {predicted_v:>7.2f}x")
    title = (f"Speculative decoding, text-gpt target, gamma = {gamma}, {n_new} new tokens at temperature 1, "
             f"{device}, median of {repeats} interleaved runs")
    sweep_rows, result["gamma_sweep"] = _gamma_sweep(target, ngram, context, base, times, stats, sweep, device)
    rows += sweep_rows
    rows.append(_continuous(result, quick, repeats, device))
    note = (f"target step {costs['step'] * 1e3:.3f} ms, verification of {gamma + 1} tokens "
            f"{costs['verify'] * 1e3:.3f} ms: v = {v:.2f} target steps")
    return "\n".join([title, header, "-" * len(header), *rows, note]), result
