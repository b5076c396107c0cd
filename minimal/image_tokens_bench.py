"""`python -m minimal.bench speculative-image`: SJD, GSD and the static-cluster ablation on image tokens.

Target: the shipped `image-gpt` (2 layers, width 96, 64 tokens per 32 x 32 SpriteWorld frame). Every
sampler completes the bottom half (32 tokens) of the same n_frames held-out frames from their top half,
at temperature 1, side by side: the samplers run interleaved, `repeats` times, repeat r drawing with the
sampling seeds of r, on one CPU thread. The samplers:

    target alone            `autoregressive_generate`: one target call per token
    SJD, L = 16             `jacobi_generate` with the exact rule (the official window 16; also 4, 8, 32)
    SJD + GSD               GSD's per-position groups, official constants (window 7, 0.15, 0.5)
    SJD + GSD, no e-filter  the same with d_threshold = inf: the rank window and probability filter only
    SJD + static clusters   the ablation: codebook clusters of radius 1, blind to the target's p
    n-gram, exact / + GSD   `speculative_generate` with the order-3 n-gram draft, gamma = 4

Figures per sampler: speedup = median wall time of target alone / the sampler's median; tokens and
accepted drafts per target call (pooled over all runs); alpha = E[sum_y min(p, q)] (the exact rule's
acceptance probability) and the acceptance rate of the rule that ran (accepted / judged); validity =
`toybench.validity_rate` of the decoded frames (config `image_tokens.FRAMES`, scene 0): the mean over
the repeats, each one sampling seed, with the min and max over them.

Why GSD gains little here, measured: one untimed SJD + GSD pass records at every judged position the
exact and the grouped acceptance probability, the group size (with and without the embedding filter),
whether the draft was a fresh random token or the target's own guess, and the target's max p; the
embedding filter's scale (squared distances between the embeddings of tokens that occur); and the costs
of one target call on 1 and on L + 1 tokens and of building GSD's groups for one call.
"""

from __future__ import annotations

from functools import partial

import torch

from .image_tokens import (
    FRAMES,
    codebook_clusters,
    embedding_sq_distances,
    group_accept_reject,
    gsd_accept_reject,
    gsd_groups,
    load_setup,
    make_setup,
    static_cluster_accept_reject,
)
from .speculative import accept_reject, autoregressive_generate, speculative_generate
from .speculative_bench import step_costs, timed
from .speculative_jacobi import jacobi_generate
from .timing import cpu_threads, measure, percentile, resolve_device
from .toybench import validity_rate

GSD_PAPER_SPEEDUP = 3.7  # So et al. 2025: average speedup at equal image quality, Lumina-mGPT (7B)


def _samplers(s, device, windows: tuple[int, ...]) -> dict:
    """name -> fn(prompt, generator) -> (new tokens, stats or None)."""
    sq = embedding_sq_distances(s.target)
    gsd = partial(gsd_accept_reject, sq_dist=sq)
    no_filter = partial(gsd_accept_reject, sq_dist=sq, d_threshold=float("inf"))
    static = partial(static_cluster_accept_reject, clusters=codebook_clusters(s.tokenizer, 1.0).to(device))
    sjd = lambda L, rule: lambda x, g: jacobi_generate(s.target, x, 32, L, 1.0, g, accept=rule)  # noqa: E731
    ngram = lambda rule: lambda x, g: speculative_generate(s.target, s.draft, x, 32, 4, 1.0, g, accept=rule)  # noqa: E731
    return {"target": lambda x, g: (autoregressive_generate(s.target, x, 32, 1.0, g), None),
            "sjd": sjd(16, accept_reject), "sjd_gsd": sjd(16, gsd), "sjd_gsd_no_embedding_filter": sjd(16, no_filter),
            "sjd_static": sjd(16, static), "ngram": ngram(accept_reject), "ngram_gsd": ngram(gsd),
            **{f"sjd_L{L}": sjd(L, accept_reject) for L in windows}}


def _complete(fn, s, n_frames: int, seed: int, device):
    """Complete the bottom half of the first n_frames held-out frames -> (tokens (n_frames, 64), stats list)."""
    out, stats = [], []
    for i in range(n_frames):
        prompt = s.tokens[i, :32]
        new, st = fn(prompt, torch.Generator(device=device).manual_seed(1000 * seed + i))
        out.append(torch.cat([prompt, new]))
        stats.append(st)
    return torch.stack(out), stats


class _GroupRecorder:
    """GSD's step that also records, at every judged position: the exact and the grouped acceptance
    probability, |G| with and without the embedding filter, whether d was a fresh token, the target's max p."""

    def __init__(self, sq_dist: torch.Tensor):
        self.sq_dist, self.rows = sq_dist, []

    def __call__(self, p, q, d, generator=None):
        groups = gsd_groups(p, d, self.sq_dist)
        n, t = group_accept_reject(p, q, d, groups, generator)
        j = min(n + 1, d.shape[0])
        i, g = torch.arange(j, device=p.device), groups[:j].to(p.dtype)  # (j, V)
        exact = (p[i, d[:j]] / q[i, d[:j]]).clamp(max=1)
        grouped = ((p[:j] * g).sum(-1) / (q[:j] * g).sum(-1)).clamp(max=1)
        unfiltered = gsd_groups(p, d[:j], self.sq_dist, d_threshold=float("inf")).sum(-1)
        fresh = (q[:j] > 0).sum(-1) == 1  # one-hot q: a fresh random token, not the target's guess
        self.rows.append(torch.stack([exact, grouped, g.sum(-1), unfiltered, fresh, p[:j].max(-1).values], 1))
        return n, t


def _diagnose(s, n_frames: int, device) -> dict:
    """Where GSD's groups could help: per judged position of one SJD + GSD pass (seed 0)."""
    rec = _GroupRecorder(embedding_sq_distances(s.target))
    _complete(lambda x, g: jacobi_generate(s.target, x, 32, 16, 1.0, g, accept=rec), s, n_frames, 0, device)
    r = torch.cat(rec.rows).double().cpu()  # (positions, 6)
    out = {"judged_positions": len(r), "fresh_fraction": float(r[:, 4].mean())}
    for name, m in (("all", torch.ones(len(r), dtype=torch.bool)), ("fresh", r[:, 4] == 1), ("guess", r[:, 4] == 0)):
        x = r[m] if m.any() else torch.full((1, 6), float("nan"), dtype=torch.float64)
        out[name] = {"exact_acceptance": float(x[:, 0].mean()), "gsd_acceptance": float(x[:, 1].mean()),
                     "group_size": float(x[:, 2].mean()), "group_size_no_embedding_filter": float(x[:, 3].mean()),
                     "grouped_fraction": float((x[:, 2] > 1).double().mean()), "target_max_p": float(x[:, 5].mean())}
    return out


def _embedding_scale(s) -> dict:
    """What d_threshold = 0.5 means here: squared distances between embeddings of the held-out tokens."""
    sq = embedding_sq_distances(s.target).cpu()
    used = torch.bincount(s.tokens.flatten().cpu(), minlength=sq.shape[0]) > 0
    pairs = sq[used][:, used]
    off = pairs[~torch.eye(len(pairs), dtype=torch.bool)]
    return {"tokens_used": int(used.sum()), "median_sq_dist": float(off.median()),
            "fraction_pairs_below_0_5": float((off < 0.5).double().mean()),
            "median_tokens_within_0_5": float((pairs < 0.5).sum(1).double().median())}  # counting itself


def _costs(s, L: int, device) -> dict:
    """Seconds: one target call on 1 token and on L + 1 tokens after a 32-token context; GSD's groups."""
    costs = step_costs(s.target, {}, s.tokens[0, :33], L, device)
    p = torch.softmax(s.target(s.tokens[:1, :L + 1])[0].float(), -1)  # (L + 1, V)
    d, sq = s.tokens[0, 1:L + 1], embedding_sq_distances(s.target)
    costs["gsd_groups"] = measure(lambda: gsd_groups(p, d, sq), warmup=5, repeats=100, device=device).median
    return costs


def bench(device=None, quick: bool = False, repeats: int = 5, n_frames: int = 100) -> tuple[str, dict]:
    """On the CPU the run uses one intra-op thread (restored afterwards), as the text benchmark does."""
    device = resolve_device(device)
    with cpu_threads(1, device), torch.no_grad():
        return _bench(device, quick, repeats, n_frames)


def _bench(device, quick: bool, repeats: int, n_frames: int) -> tuple[str, dict]:
    s = make_setup(quick=True) if quick else load_setup()
    repeats, n_frames, windows = (1, 2, (4,)) if quick else (repeats, n_frames, (4, 8, 32))
    s.target.to(device)
    s.draft.to(device)
    s.tokens = s.tokens.to(device)
    samplers = _samplers(s, device, windows)
    for fn in samplers.values():  # warm-up
        _complete(fn, s, 1, 0, device)
    times, stats, valid = ({k: [] for k in samplers} for _ in range(3))
    for r in range(repeats):  # interleaved, so drift in machine speed hits every sampler alike
        for name, fn in samplers.items():
            seconds, (tokens, sts) = timed(lambda fn=fn, r=r: _complete(fn, s, n_frames, r, device), device)
            times[name].append(seconds)
            stats[name] += sts
            valid[name].append(validity_rate(s.tokenizer.decode(tokens.cpu()), 0, FRAMES))
    base = percentile(times["target"], 50)
    result = {"device": str(device), "n_frames": n_frames, "repeats": repeats, "new_tokens": 32, "window": 16,
              "ngram_gamma": 4, "gsd_paper_speedup": GSD_PAPER_SPEEDUP,
              "valid_real": validity_rate(s.tokenizer.decode(s.tokens[:n_frames].cpu()), 0, FRAMES), "samplers": {}}
    header = (f"{'sampler':>28} | {'speedup':>7} | {'tok/call':>8} {'acc/call':>8} {'alpha':>5} {'rate':>5} | "
              f"valid (mean, min-max over {repeats} seeds)")
    rows = [f"Image tokens: image-gpt completes the bottom half of {n_frames} held-out frames, {device}, "
            f"median of {repeats} interleaved runs", header, "-" * len(header)]
    for name in samplers:
        sts = [st for st in stats[name] if st is not None]
        calls = sum(st.target_calls for st in sts) or len(stats[name]) * 32
        judged, accepted = max(1, sum(st.beta_count for st in sts)), sum(st.accepted for st in sts)
        fig = {"speedup": base / percentile(times[name], 50), "seconds": percentile(times[name], 50),
               "tokens_per_call": len(stats[name]) * 32 / calls, "accepted_per_call": accepted / calls,
               "alpha": sum(st.beta_sum for st in sts) / judged, "acceptance_rate": accepted / judged,
               "valid": sum(valid[name]) / repeats, "valid_min": min(valid[name]), "valid_max": max(valid[name])}
        result["samplers"][name] = fig
        rows.append(f"{name:>28} | {fig['speedup']:>6.2f}x | {fig['tokens_per_call']:>8.2f} "
                    f"{fig['accepted_per_call']:>8.2f} {fig['alpha']:>5.3f} {fig['acceptance_rate']:>5.3f} | "
                    f"{fig['valid']:.1%} ({fig['valid_min']:.1%}-{fig['valid_max']:.1%})")
    result.update(diagnostics=_diagnose(s, n_frames, device), embedding_scale=_embedding_scale(s),
                  costs=_costs(s, 16, device))
    dg, sc, c, fig = result["diagnostics"], result["embedding_scale"], result["costs"], result["samplers"]
    pair = lambda key: f"{dg['fresh'][key]:.3f} / {dg['guess'][key]:.3f}"  # noqa: E731
    rows += [f"real frames through the tokenizer: {result['valid_real']:.1%} valid; GSD paper: {GSD_PAPER_SPEEDUP}x "
             f"at equal quality (Lumina-mGPT); ours: SJD + GSD {fig['sjd_gsd']['speedup']:.2f}x, exact SJD "
             f"{fig['sjd']['speedup']:.2f}x",
             f"why: {dg['fresh_fraction']:.0%} of judged drafts are fresh random tokens; per judged position, fresh / "
             f"guess: exact acceptance {pair('exact_acceptance')}, GSD acceptance {pair('gsd_acceptance')}, |G| "
             f"{pair('group_size')} (no embedding filter {pair('group_size_no_embedding_filter')}), target max p "
             f"{pair('target_max_p')}",
             f"embedding filter: median squared distance between used tokens {sc['median_sq_dist']:.2f}, "
             f"{sc['fraction_pairs_below_0_5']:.2%} of pairs below 0.5, median used token has "
             f"{sc['median_tokens_within_0_5']:.0f} token(s) within 0.5 (itself included)",
             f"costs: target call {c['step'] * 1e3:.3f} ms on 1 token, {c['verify'] * 1e3:.3f} ms on 17; GSD groups "
             f"{c['gsd_groups'] * 1e3:.3f} ms per call"]
    return "\n".join(rows), result
