"""Attention sinks and rolling KV caches: stream past the training context in fixed memory.

StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks") keeps the
first `n_sink` tokens plus the `window` most recent ones, and evicts everything in between:

    kept(s) = {0, ..., n_sink - 1}  U  {s - window + 1, ..., s}        (s = index of the newest token)

Two details make it work:
- Positions are assigned *inside the cache*: the kept keys sit at positions 0..n-1 and the query at the
  last of them, so no position ever exceeds what the model was trained on (dense attention past the
  training length meets RoPE angles it never saw). For that, keys are cached *before* RoPE and rotated
  by their current cache position at every step: `stores_raw_keys` tells the attention layer so.
- The first tokens stay: trained LMs park surplus attention on them ("attention sinks"); evicting them
  (window only) moves that mass onto content tokens and can wreck the output.

`SinkCache` is a ring buffer: slots [0, n_sink) hold the sinks, slots [n_sink, n_sink + window) are
reused cyclically by the recent tokens, so memory is fixed and nothing is reallocated or moved. The
physical slot order is not the logical order, which is fine: attention is a sum over keys, so only each
key's position must be right. `NaiveSinkCache` is the obviously-correct reference: Python lists, evict
by slicing, positions 0..n-1 in list order. A test checks they agree.

A cache slot need not hold one token. For video (Self Forcing's rolling KV cache, LongLive's frame sink)
a position is a frame: its P = `tokens_per_position` patch tokens share one RoPE position, n_sink and
window count frames, and the ring turns one chunk of c frames (c P tokens) at a time. The denoising
steps of a chunk write after the kept frames without advancing, each overwriting the last; once the
cache is full they write into the oldest recent chunk's slots, which the chunk's context pass then
keeps (`video_model.py`). Text is the case P = c = 1.

Streaming perplexity, attention maps and the benchmark are in sinks_bench.py.

Simplifications vs the paper: batch streams advance in lockstep; prefill may not evict (feed tokens one
at a time, or one chunk at a time, once the cache is full).
"""

from __future__ import annotations

import torch

from .kv_cache import check_sampling_args, sample_next
from .transformer import check_tokens


def check_sizes(n_sink: int, window: int, max_positions: int | None, chunk: int = 1) -> None:
    unit = f" and a multiple of the chunk ({chunk})" if chunk > 1 else ""
    if not isinstance(n_sink, int) or n_sink < 0 or n_sink % chunk:
        raise ValueError(f"n_sink must be an int >= 0{unit}, got {n_sink!r}")
    if not isinstance(window, int) or window < 1 or window % chunk:
        raise ValueError(f"window must be an int >= 1{unit}, got {window!r}")
    if max_positions is not None and n_sink + window > max_positions:
        raise ValueError(f"n_sink + window = {n_sink + window} exceeds the capacity of {max_positions} "
                         f"positions the model was trained on")


class SinkCache:
    """Fixed-memory rolling cache: n_sink sink positions + a ring of `window` recent ones, raw keys.

    A position holds P = tokens_per_position tokens (a character: 1; a frame: its patches); the ring
    evicts `chunk` positions at a time. Sizes in positions; length, capacity and n_seen in tokens."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, n_sink: int, window: int,
                 max_positions: int | None = None, device=None, dtype=torch.float32,
                 tokens_per_position: int = 1, chunk: int = 1):
        for name, value in (("tokens_per_position", tokens_per_position), ("chunk", chunk)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        check_sizes(n_sink, window, max_positions, chunk)
        self.n_sink, self.window, self.P = n_sink, window, tokens_per_position
        self.capacity = (n_sink + window) * self.P  # token slots
        self.step = chunk * self.P  # tokens written per step once the cache is full
        shape = (n_layer, batch_size, n_head, self.capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # raw (un-rotated) keys
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_seen = 0  # tokens streamed so far
        self._n_last = 0  # tokens in the step being processed

    @classmethod
    def for_model(cls, model, n_sink: int, window: int, batch_size: int = 1) -> SinkCache:
        cfg, p = model.config, next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, n_sink, window,
                   max_positions=cfg.block_size, device=p.device, dtype=p.dtype)

    @property
    def length(self) -> int:
        """Kept tokens (valid slots)."""
        return min(self.n_seen, self.capacity)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def _evicting(self, n: int) -> bool:
        if self.n_seen + n <= self.capacity:
            return False
        if n != self.step or (self.n_seen - self.capacity) % self.step:
            what = "one token" if self.step == 1 else f"one chunk ({self.step} tokens, from a full cache)"
            raise ValueError(f"{n} tokens would overflow the {self.capacity} slots: once the cache is full, "
                             f"feed {what} at a time")
        return True

    def next_positions(self, n: int) -> torch.Tensor:
        """Positions of the next n tokens: after the kept ones, or the last slots once full."""
        start = self.capacity - n if self._evicting(n) else self.n_seen
        return torch.arange(start, start + n, device=self.k.device) // self.P

    def place(self, n: int) -> tuple[int, int]:
        """(first slot of the next n tokens, slots `update` returns): after the kept tokens, or once full
        over the oldest recent chunk, every slot returned."""
        self._n_last = n
        if self._evicting(n):
            s, w = self.n_sink * self.P, self.window * self.P
            return s + (self.n_seen - s) % w, self.capacity  # the oldest recent chunk's first slot
        return self.n_seen, self.n_seen + n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor | None = None):
        """Store raw k, v (B, H, n, D); return all valid slots (B, H, T_k, D) in physical order.

        The queries q are not needed here (see `deep_sink.CompressingCache`, which ranks keys by them)."""
        start, end = self.place(k.shape[2])
        self.k[layer, :, :, start:start + k.shape[2]] = k
        self.v[layer, :, :, start:start + k.shape[2]] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def key_positions(self) -> torch.Tensor:
        """Cache position of every slot returned by the last `update` (before `advance`)."""
        device = self.k.device
        if self.n_seen + self._n_last <= self.capacity:  # not wrapped: slot index == token position
            return torch.arange(self.n_seen + self._n_last, device=device) // self.P
        s, w = self.n_sink * self.P, self.window * self.P
        oldest = (self.n_seen + self._n_last - s) % w  # ring slot of the oldest kept token
        order = (torch.arange(w, device=device) - oldest) % w  # 0 for the oldest, w - 1 for the newest
        return torch.cat([torch.arange(s, device=device), s + order]) // self.P  # (capacity,)

    def advance(self, n: int) -> None:
        self.n_seen += n

    def reset(self) -> None:
        self.n_seen = 0


class NaiveSinkCache:
    """Reference: lists of raw keys per layer, one entry per position (its P tokens), evict by slicing,
    positions 0..n-1 in list order. A step's update is kept only once `advance` commits it."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, n_sink: int, window: int, tokens_per_position: int = 1):
        check_sizes(n_sink, window, None)
        self.n_sink, self.window, self.P = n_sink, window, tokens_per_position
        self.capacity = n_sink + window  # positions
        self.ks, self.vs = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]  # each (B, H, P, D)
        self.new = [None] * n_layer  # (ks, vs) after the last update, not yet committed

    @property
    def length(self) -> int:
        return len(self.ks[0]) * self.P

    def next_positions(self, n: int) -> torch.Tensor:
        end = min(len(self.ks[0]) + n // self.P, self.capacity)
        return torch.arange(end - n // self.P, end).repeat_interleave(self.P)

    def update(self, layer, k, v, q=None):
        kept = [self.ks[layer] + list(k.split(self.P, 2)), self.vs[layer] + list(v.split(self.P, 2))]
        for x in kept:
            del x[self.n_sink:max(self.n_sink, len(x) - self.window)]  # evict all but sinks + recent
        self.new[layer] = kept
        self._n_keys = len(kept[0])
        return torch.cat(kept[0], 2), torch.cat(kept[1], 2)

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self._n_keys).repeat_interleave(self.P)

    def advance(self, n: int) -> None:
        for layer, (ks, vs) in enumerate(self.new):
            self.ks[layer], self.vs[layer] = ks, vs


@torch.no_grad()
def stream_generate(model, prompt: torch.Tensor, max_new_tokens: int, n_sink: int = 4, window: int | None = None,
                    temperature: float = 1.0, top_k: int | None = None, generator=None, cache=None) -> torch.Tensor:
    """Generate without end in fixed memory: the prompt (T,) then one token at a time through a rolling
    cache (default: n_sink sinks + window = block_size - n_sink recent tokens). Returns the new ids (N,)."""
    check_tokens(prompt, model.config.vocab_size, "prompt")
    if prompt.ndim != 1 or len(prompt) == 0:
        raise ValueError(f"prompt must be a non-empty (T,) tensor, got shape {tuple(prompt.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    check_sampling_args(temperature, top_k, model.config.vocab_size)
    if cache is None:
        cache = SinkCache.for_model(model, n_sink, window or model.config.block_size - n_sink)
    fit = max(0, min(len(prompt), cache.capacity - cache.length))  # prefill what fits, then stream
    tokens = [prompt[None, :fit]] if fit else []
    tokens += list(prompt[fit:].view(-1, 1, 1))
    for chunk in tokens:
        logits = model(chunk.to(next(model.parameters()).device), cache)[:, -1]
    out = []
    for i in range(max_new_tokens):
        out.append(sample_next(logits, temperature, top_k, generator))  # (1, 1)
        if i + 1 < max_new_tokens:
            logits = model(out[-1], cache)[:, -1]
    return torch.cat(out, 1)[0] if out else prompt.new_zeros(0)
