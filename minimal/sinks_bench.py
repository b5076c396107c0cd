"""Measuring attention sinks and rolling caches: streaming perplexity, attention maps, the benchmark.

`streaming_nll` scores a text stream far past the training context under each cache policy (dense,
window only, sliding window with recompute, sinks + window); `attention_maps` and `sink_mass` read how
much attention lands on the first position. `python -m minimal.bench sinks` runs `bench`: perplexity
per policy over 16 x the context of the shipped char GPT, and the rolling cache's latency and memory
beside a dense cache and recomputation.
"""

from __future__ import annotations

import math

import torch

from .checkpoints import load_pretrained
from .data import CharTokenizer, text_corpus
from .kv_cache import KVCache
from .sinks import SinkCache
from .timing import Timer, measure, percentile, resolve_device
from .transformer import GPT, GPTConfig, apply_rope, attention_weights, causal_mask

POLICIES = ("dense", "window", "recompute", "sinks")


@torch.no_grad()
def streaming_nll(model, ids: torch.Tensor, policy: str, cache_size: int | None = None,
                  n_sink: int = 4) -> torch.Tensor:
    """Per-token negative log-likelihood (nats) of ids[1:] given the stream so far, shape (N - 1,).

    dense:     attend to everything (positions run past the training length)
    window:    rolling cache of the last `cache_size` tokens, no sinks
    recompute: re-run the model on the last `cache_size` tokens at every step (the quality reference)
    sinks:     rolling cache of n_sink sinks + the last cache_size - n_sink tokens
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"ids must be a 1-D stream of >= 2 token ids, got shape {tuple(ids.shape)}")
    c = cache_size or model.config.block_size
    device = next(model.parameters()).device
    ids = ids.to(device)
    if policy == "dense":  # one causal pass == a growing KV cache, token for token
        logits = model(ids[None, :-1])[0]  # (N - 1, V)
    elif policy == "recompute":
        windows = torch.stack([ids[max(0, t - c):t] if t >= c else ids[:c] for t in range(1, len(ids))])
        ends = torch.tensor([min(t, c) - 1 for t in range(1, len(ids))], device=device)
        logits = torch.cat([model(w)[torch.arange(len(w)), e]
                            for w, e in zip(windows.split(256), ends.split(256), strict=True)])
    else:
        sinks = n_sink if policy == "sinks" else 0
        cache = SinkCache.for_model(model, sinks, c - sinks)
        logits = torch.cat([model(ids[None, t:t + 1], cache)[0] for t in range(len(ids) - 1)])
    return torch.nn.functional.cross_entropy(logits.float(), ids[1:], reduction="none")


@torch.no_grad()
def attention_maps(model, idx: torch.Tensor) -> torch.Tensor:
    """Causal attention weights of every layer and head for idx (B, T): (n_layer, B, H, T, T)."""
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: inputs.append((m, args[0], args[1])))
             for b in model.blocks]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for attn, x, pos in inputs:
        q, k, _ = attn.project(x)
        q, k = apply_rope(q, pos, attn.config.rope_base), apply_rope(k, pos, attn.config.rope_base)
        maps.append(attention_weights(q, k, causal_mask(x.shape[1], x.shape[1], x.device)))
    return torch.stack(maps)


def sink_mass(maps: torch.Tensor, first_query: int = 64) -> torch.Tensor:
    """Mean attention on position 0 from queries at positions >= first_query, per layer: (n_layer,).

    For comparison, uniform attention would give 1 / (position + 1) to it."""
    return maps[..., first_query:, 0].mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------
# Benchmark: python -m minimal.bench sinks
# ---------------------------------------------------------------------------------------------------

def _stream_step_times(model, ids: torch.Tensor, cache, device) -> list[float]:
    """Seconds per streamed token when feeding ids one at a time into `cache`."""
    times = []
    with torch.no_grad():
        for t in range(len(ids)):
            with Timer(device) as timer:
                model(ids[None, t:t + 1], cache)
            times.append(timer.seconds)
    return times


def bench(device=None, quick: bool = False, repeats: int = 3) -> tuple[str, dict]:
    """Streaming perplexity per policy over 16x the context; rolling-cache latency and memory vs dense."""
    device = resolve_device(device)
    if quick:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=103, block_size=16, n_layer=1, n_head=2, n_embd=16)).to(device).eval()
        chars = CharTokenizer.from_text(text_corpus()).chars
    else:
        model, meta = load_pretrained("text-gpt", device=device)
        chars = meta["chars"]
    c = model.config.block_size
    n = 16 * c
    ids = CharTokenizer(chars).encode(text_corpus("val")[: n + 1]).to(device)

    ppl = {p: math.exp(streaming_nll(model, ids, p).mean().item()) for p in ("dense", "window", "recompute")}
    for s in (1, 4):
        ppl[f"sinks{s}"] = math.exp(streaming_nll(model, ids, "sinks", n_sink=s).mean().item())

    near = lambda times, m: percentile(times[m - 16:m], 50)  # noqa: E731 latency around token m
    lat = {"sinks": ([], []), "dense": ([], [])}
    for _ in range(repeats):
        for name in lat:
            cache = SinkCache.for_model(model, 4, c - 4) if name == "sinks" else KVCache.for_model(model, capacity=n)
            times = _stream_step_times(model, ids[:n], cache, device)
            lat[name][0].append(near(times, c))
            lat[name][1].append(near(times, n))
    lat = {k: (percentile(a, 50), percentile(b, 50)) for k, (a, b) in lat.items()}
    with torch.no_grad():
        recompute = measure(lambda: model(ids[None, n - c:n]), warmup=2, repeats=10 * repeats, device=device)
    sink_bytes = SinkCache.for_model(model, 4, c - 4).nbytes
    dense_bytes = lambda m: KVCache.for_model(model, capacity=m).nbytes  # noqa: E731 a dense cache holding m tokens

    figures = {
        "context": c, "tokens": n, "device": str(device), "ppl": ppl,
        "ppl_ratio": ppl["sinks4"] / ppl["recompute"],
        "latency_ratio": lat["sinks"][1] / lat["sinks"][0],
        "dense_latency_ratio": lat["dense"][1] / lat["dense"][0],
        "cache_bytes": [sink_bytes, sink_bytes], "dense_cache_bytes": [dense_bytes(c), dense_bytes(n)],
        "speedup_vs_recompute": recompute.median / lat["sinks"][1],
        "ms_per_token": {"sinks_1x": lat["sinks"][0] * 1e3, "sinks_16x": lat["sinks"][1] * 1e3,
                         "dense_1x": lat["dense"][0] * 1e3, "dense_16x": lat["dense"][1] * 1e3,
                         "recompute": recompute.median * 1e3},
    }
    rows = [f"Streaming over {n} tokens = 16 x the training context {c} ({device}, median of {repeats} runs)",
            f"{'policy':<28} {'perplexity':>10}",
            *[f"{name:<28} {value:>10.3f}" for name, value in [
                ("dense (positions past ctx)", ppl["dense"]), ("window only", ppl["window"]),
                ("sliding window + recompute", ppl["recompute"]), ("sinks 1 + window", ppl["sinks1"]),
                ("sinks 4 + window", ppl["sinks4"])]],
            "",
            f"{'per-token latency':<28} {'at 1x':>10} {'at 16x':>10} {'cache bytes 1x -> 16x':>24}",
            f"{'rolling cache (4 + window)':<28} {lat['sinks'][0] * 1e3:>8.3f}ms {lat['sinks'][1] * 1e3:>8.3f}ms "
            f"{sink_bytes:>11} -> {sink_bytes}",
            f"{'dense KV cache':<28} {lat['dense'][0] * 1e3:>8.3f}ms {lat['dense'][1] * 1e3:>8.3f}ms "
            f"{dense_bytes(c):>11} -> {dense_bytes(n)}",
            f"{'sliding window recompute':<28} {recompute.median * 1e3:>8.3f}ms {recompute.median * 1e3:>8.3f}ms",
            f"rolling latency ratio 16x/1x = {figures['latency_ratio']:.2f}; speedup over recompute = "
            f"{figures['speedup_vs_recompute']:.1f}x; ppl ratio sinks/recompute = {figures['ppl_ratio']:.3f}"]
    return "\n".join(rows), figures


