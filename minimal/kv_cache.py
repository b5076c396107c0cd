"""The KV cache: decode one token at a time without recomputing the past.

In a causal transformer the keys and values of token j never change once computed, because token j
only sees tokens <= j. Generating n tokens by recomputing the whole prefix every step costs
sum_{t<=n} O(t) = O(n^2) token-passes (and O(n^3) attention work); keeping every layer's K and V in a
cache makes each step one token-pass plus an attention read of the cache: O(n) per sequence.

`KVCache` is *static*: one buffer per layer preallocated to a fixed capacity (in tokens),
k, v: (n_layer, B, H, capacity, D), with `length` valid slots. Appending writes in place, so no tensor is
reallocated per token (the form CUDA graphs and `torch.compile` need); `crop(n)` rolls back to a shorter
length (speculative decoding rejects drafted tokens this way) and `reset()` empties it.

The cache protocol. A model call with a cache feeds T new tokens through every layer; each attention
layer hands the cache its new keys and values and attends to what the cache returns; after the last
layer the model moves the cache on. Every cache in the library (this one, the rolling caches of
sinks.py and deep_sink.py, the list-based references, the frame caches of the video model) has:

    length                  tokens kept; for this cache also the position of the next token
    next_positions(T)       positions (T,) of the next T tokens (here length + arange(T)), the RoPE angle
                            the model gives their queries and keys
    update(layer, k, v)     store the new (B, H, T, D) keys and values of `layer`; return the keys and values
                            attention must read, (B, H, T_k, D), the T new ones last when a causal mask is
                            used (the model builds it from T and T_k after `update`)
    advance(T)              after every layer has stored its T new tokens, commit them

A cache that decides by itself where each kept key sits (StreamingLLM's rolling cache renumbers the kept
keys 0..n-1 at every step) keeps keys *before* RoPE and says so; the attention layer then rotates the
returned keys by their positions:

    stores_raw_keys = True  (absent or False: keys arrive rotated by next_positions and are kept as they are)
    update(layer, k, v, q)  as above, with raw keys, plus the new tokens' raw queries (B, H, T, D) for
                            caches that rank keys by the attention they receive (deep_sink.CompressingCache)
    key_positions()         the position (T_k,) of every key returned by the last `update`

A position may hold several tokens (a video frame's patches share one: `tokens_per_position`); lengths
count tokens, positions count positions.
"""

from __future__ import annotations

import torch

from .timing import Timer, percentile, resolve_device
from .transformer import GPT, GPTConfig, check_tokens


class KVCache:
    """Preallocated per-layer key/value buffers with a fill length."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, capacity: int,
                 device=None, dtype=torch.float32, tokens_per_position: int = 1):
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_head", n_head),
                            ("head_dim", head_dim), ("capacity", capacity),
                            ("tokens_per_position", tokens_per_position)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.P = tokens_per_position
        shape = (n_layer, batch_size, n_head, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0

    @classmethod
    def for_model(cls, model: GPT, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """A cache shaped for `model`, on its device and dtype; capacity defaults to its block_size."""
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, capacity or cfg.block_size,
                   device=p.device, dtype=p.dtype)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def next_positions(self, n: int) -> torch.Tensor:
        return torch.arange(self.length, self.length + n, device=self.k.device) // self.P

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, D) at [length, length + T); return views of slots [0, length + T)."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; {self.length} are used and "
                             f"{k.shape[2]} more do not fit")
        if k.shape[:2] != self.k.shape[1:3] or k.shape[3] != self.k.shape[4]:
            raise ValueError(f"k has shape {tuple(k.shape)}, the cache expects (B, H, T, D) = "
                             f"({self.k.shape[1]}, {self.k.shape[2]}, T, {self.k.shape[4]})")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        if not 0 <= self.length + n <= self.capacity:
            raise ValueError(f"cannot advance by {n} from length {self.length} (capacity {self.capacity})")
        self.length += n

    def crop(self, n: int) -> None:
        """Roll back to the first n positions (later writes overwrite the rest)."""
        if not isinstance(n, int) or not 0 <= n <= self.length:
            raise ValueError(f"crop length must be an int in [0, length = {self.length}], got {n!r}")
        self.length = n

    def reset(self) -> None:
        self.length = 0


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------

def check_sampling_args(temperature: float, top_k: int | None, vocab_size: int) -> None:
    if not isinstance(temperature, int | float) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, vocab_size = {vocab_size}], got {top_k!r}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B, 1): greedy at temperature 0, else softmax(logits / T)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # (B, 1)


def _check_prompt(model: GPT, prompt, max_new_tokens: int) -> torch.Tensor:
    check_tokens(prompt, model.config.vocab_size, "prompt")
    if prompt.ndim not in (1, 2) or prompt.shape[-1] == 0:
        raise ValueError(f"prompt must be a non-empty (T,) or (B, T) tensor, got shape {tuple(prompt.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    capacity, t = model.config.block_size, prompt.shape[-1]
    if t > capacity:
        raise ValueError(f"prompt length {t} exceeds the cache capacity (block_size = {capacity})")
    if t + max_new_tokens > capacity:
        raise ValueError(f"prompt length {t} + max_new_tokens {max_new_tokens} exceeds the cache capacity "
                         f"(block_size = {capacity}); streaming past the context needs a rolling cache")
    return prompt if prompt.ndim == 2 else prompt[None]


@torch.no_grad()
def decode_steps(model: GPT, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True, generator: torch.Generator | None = None):
    """Yield the next token ids (B, 1) one step at a time (validated inputs assumed: see `generate`).

    With the cache: prefill the prompt once, then feed one token per step.
    Without: re-run the model over the whole sequence every step (the slow, obviously correct path).
    """
    idx = prompt  # (B, T)
    cache = KVCache.for_model(model, idx.shape[0]) if use_cache else None
    logits = model(idx, cache)[:, -1]  # (B, V)
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)  # (B, 1)
        yield nxt
        if i + 1 == max_new_tokens:
            return
        if use_cache:
            logits = model(nxt, cache)[:, -1]
        else:
            idx = torch.cat([idx, nxt], dim=1)
            logits = model(idx)[:, -1]


def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample max_new_tokens after prompt (T,) or (B, T); returns the new ids, (N,) or (B, N).

    temperature=0 is greedy. Put the model in eval() mode first if it uses dropout.
    """
    batched = isinstance(prompt, torch.Tensor) and prompt.ndim == 2
    idx = _check_prompt(model, prompt, max_new_tokens)
    check_sampling_args(temperature, top_k, model.config.vocab_size)
    steps = list(decode_steps(model, idx, max_new_tokens, temperature, top_k, use_cache, generator))
    out = torch.cat(steps, dim=1) if steps else idx.new_zeros(idx.shape[0], 0)  # (B, N)
    return out if batched else out[0]


# ---------------------------------------------------------------------------------------------------
# Benchmark: python -m minimal.bench kv-cache
# ---------------------------------------------------------------------------------------------------

def _step_times(model, n_tokens: int, use_cache: bool, device) -> list[float]:
    """Seconds spent producing each of n_tokens greedy tokens after a one-token prompt."""
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    steps, times = decode_steps(model, prompt, n_tokens, 0.0, None, use_cache), []
    for _ in range(n_tokens):
        with Timer(device) as t:
            next(steps)
        times.append(t.seconds)
    return times


def bench(device=None, quick: bool = False, repeats: int = 3) -> tuple[str, dict]:
    """Per-token latency and tokens/s with and without the cache, side by side, for growing lengths."""
    device = resolve_device(device)
    n = 64 if quick else 1024
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=96, block_size=n + 1, n_layer=4, n_head=6, n_embd=192)  # the text model's size
    model = GPT(cfg).to(device).eval()
    _step_times(model, 8, True, device), _step_times(model, 8, False, device)  # warm-up
    runs = {True: [], False: []}
    for _ in range(repeats):  # interleave the two modes so drift in machine speed hits both alike
        for use_cache in (True, False):
            runs[use_cache].append(_step_times(model, n, use_cache, device))

    lengths = [m for m in (16, 32, 64, 128, 256, 512, 1024) if m <= n]
    rows, result = [], {"tokens": n, "device": str(device), "repeats": repeats}
    header = f"{'tokens':>7} | {'ms/token cache':>14} {'ms/token recompute':>18} | " \
             f"{'tok/s cache':>11} {'tok/s recompute':>15} | {'speedup':>7}"
    for m in lengths:
        stats = {}
        for use_cache in (True, False):
            totals = [sum(r[:m]) for r in runs[use_cache]]  # wall time to generate the first m tokens
            last = [percentile(r[max(0, m - 8):m], 50) for r in runs[use_cache]]  # latency near token m
            stats[use_cache] = (percentile(last, 50), percentile(totals, 50))
        speedup = stats[False][1] / stats[True][1]
        rows.append(f"{m:>7} | {stats[True][0] * 1e3:>14.3f} {stats[False][0] * 1e3:>18.3f} | "
                    f"{m / stats[True][1]:>11.1f} {m / stats[False][1]:>15.1f} | {speedup:>6.1f}x")
        result.update(speedup=speedup, tokens_per_s_cache=m / stats[True][1],
                      tokens_per_s_recompute=m / stats[False][1],
                      ms_per_token_cache_at_end=stats[True][0] * 1e3,
                      ms_per_token_recompute_at_end=stats[False][0] * 1e3)
    title = (f"KV cache vs recompute: greedy decoding, {model.n_params() / 1e6:.2f}M-param GPT, "
             f"{device}, median of {repeats} runs")
    return "\n".join([title, header, "-" * len(header), *rows]), result
