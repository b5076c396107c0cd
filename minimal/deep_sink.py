"""Deep Sink and Participative Compression (Deep Forcing, Yi et al. 2025): smarter use of a fixed cache.

Deep Sink. StreamingLLM keeps a handful of sink tokens; Deep Forcing keeps a *deep* sink, 40-60% of the
cache, and re-rotates the sink keys in RoPE phase by delta = s_tail - s_sink so that they sit just
before the recent tokens instead of at their far-away absolute positions. In `sinks.SinkCache` every key
is cached before RoPE and placed at its position inside the cache, so the sinks always occupy positions
0..S-1 directly before the recent ones: a deep sink is that cache with a large `n_sink`
(`deep_sink_cache`).

Participative Compression. Let the cache grow to `capacity` slots; when it is full, keep, per layer,

    the S sinks  +  the R most recent tokens  +  the N - S - R middle tokens j with the largest
    importance  phi_j = sum_{r in recent} sum_heads softmax_j(q_r . k_j / sqrt(d))

(the attention that the R newest queries pay to token j), compacted in their original order, with
positions renumbered 0..N-1 (N = `budget`). Compression runs only when the cache is full, so its cost
is paid once every capacity - budget tokens. `NaiveCompressingCache` is the reference: Python lists and
a per-token loop for the importances.

Simplification: Deep Forcing compresses video frames at the first denoising step; here the same rule
runs on tokens (a frame is just a group of tokens, see the video chapters).
"""

from __future__ import annotations

import math

import torch

from .sinks import SinkCache
from .transformer import apply_rope


def deep_sink_cache(model, budget: int, sink_fraction: float = 0.5, batch_size: int = 1) -> SinkCache:
    """A rolling cache of `budget` slots whose first round(sink_fraction * budget) are sinks."""
    if not 0.0 <= sink_fraction < 1.0:
        raise ValueError(f"sink_fraction must be in [0, 1), got {sink_fraction}")
    n_sink = round(sink_fraction * budget)
    return SinkCache.for_model(model, n_sink, budget - n_sink, batch_size)


def _check_budget(n_sink: int, recent: int, budget: int, capacity: int, max_positions: int | None) -> None:
    for name, value in (("n_sink", n_sink), ("recent", recent)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if recent < 1:
        raise ValueError(f"recent must be >= 1 (the queries that rank the keys), got {recent}")
    if not isinstance(budget, int) or budget < n_sink + recent:
        raise ValueError(f"budget must be an int >= n_sink + recent = {n_sink + recent}, got {budget!r}")
    if not isinstance(capacity, int) or capacity <= budget:
        raise ValueError(f"capacity must be an int > budget = {budget}, got {capacity!r}")
    if max_positions is not None and capacity > max_positions:
        raise ValueError(f"capacity {capacity} exceeds the {max_positions} positions the model was trained on")


def importance(q_recent: torch.Tensor, k: torch.Tensor, rope_base: float, tokens_per_position: int = 1,
               chunk: int = 1) -> torch.Tensor:
    """phi (B, T_k): attention paid to each key by the R recent queries (the last R of the T_k tokens).

    q_recent (B, H, R, D) and k (B, H, T_k, D) are raw (before RoPE); token j sits at position j // P
    (P = tokens_per_position; a video frame's patches share one), and a query sees the keys up to the end of
    its own chunk of positions (block-causal; for P = chunk = 1, causal)."""
    t_k, r = k.shape[2], q_recent.shape[2]
    pos = torch.arange(t_k, device=k.device) // tokens_per_position  # (T_k,)
    q = apply_rope(q_recent, pos[t_k - r:], rope_base)
    k = apply_rope(k, pos, rope_base)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # (B, H, R, T_k)
    visible = pos[None, :] // chunk <= pos[t_k - r:, None] // chunk  # (R, T_k)
    att = att.masked_fill(~visible, float("-inf")).softmax(-1)
    return att.sum(dim=(1, 2))  # (B, T_k)


class CompressingCache:
    """Fixed-memory cache with Participative Compression; raw keys, positions 0..n-1 in slot order."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, n_sink: int, recent: int,
                 budget: int, capacity: int, max_positions: int | None = None, rope_base: float = 10000.0,
                 device=None, dtype=torch.float32):
        _check_budget(n_sink, recent, budget, capacity, max_positions)
        self.n_sink, self.recent, self.budget, self.capacity = n_sink, recent, budget, capacity
        self.rope_base = rope_base
        shape = (n_layer, batch_size, n_head, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # raw keys, kept tokens in stream order
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.q = torch.zeros(shape, device=device, dtype=dtype)  # raw queries of the same tokens
        self.length = 0
        self.compressions = 0

    @classmethod
    def for_model(cls, model, n_sink: int, recent: int, budget: int, capacity: int | None = None,
                  batch_size: int = 1) -> CompressingCache:
        cfg, p = model.config, next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, n_sink, recent, budget,
                   capacity or cfg.block_size, cfg.block_size, cfg.rope_base, p.device, p.dtype)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.q.nbytes

    def _start(self, n: int) -> int:
        """Where the next n tokens go: after the kept ones, or after `budget` once compressed."""
        if self.length + n <= self.capacity:
            return self.length
        if self.budget + n > self.capacity:
            raise ValueError(f"{n} new tokens do not fit even after compressing to {self.budget} slots")
        return self.budget

    def next_positions(self, n: int) -> torch.Tensor:
        start = self._start(n)
        return torch.arange(start, start + n, device=self.k.device)

    def _compress(self, layer: int) -> None:
        """Keep sinks, the top-importance middle tokens and the recent ones; compact them to the front."""
        n, s, r = self.length, self.n_sink, self.recent
        k, v, q = self.k[layer, :, :, :n], self.v[layer, :, :, :n], self.q[layer, :, :, :n]  # (B, H, n, D)
        phi = importance(q[:, :, n - r:], k, self.rope_base)[:, s:n - r]  # (B, n - s - r) middle tokens
        top = phi.topk(self.budget - s - r, dim=-1).indices.sort(dim=-1).values + s  # (B, n_keep)
        B = k.shape[0]
        keep = torch.cat([torch.arange(s, device=k.device).expand(B, s), top,
                          torch.arange(n - r, n, device=k.device).expand(B, r)], dim=1)  # (B, budget)
        idx = keep[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, H, budget, D)
        for buf, src in ((self.k, k), (self.v, v), (self.q, q)):
            buf[layer, :, :, :self.budget] = src.gather(2, idx)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor):
        """Store raw k, v, q (B, H, n, D), compressing first if they do not fit; return keys and values."""
        n = k.shape[2]
        start = self._start(n)
        if start != self.length:
            self._compress(layer)
        self._end = start + n
        self.k[layer, :, :, start:self._end] = k
        self.v[layer, :, :, start:self._end] = v
        self.q[layer, :, :, start:self._end] = q
        return self.k[layer, :, :, :self._end], self.v[layer, :, :, :self._end]

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self._end, device=self.k.device)

    def advance(self, n: int) -> None:
        start = self._start(n)
        self.compressions += start != self.length
        self.length = start + n

    def reset(self) -> None:
        self.length = self.compressions = 0


class NaiveCompressingCache:
    """Reference: per-layer lists of (q, k, v) per token; importances by an explicit loop over tokens."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, n_sink: int, recent: int, budget: int, capacity: int,
                 rope_base: float = 10000.0):
        _check_budget(n_sink, recent, budget, capacity, None)
        self.n_sink, self.recent, self.budget, self.capacity = n_sink, recent, budget, capacity
        self.rope_base = rope_base
        self.tokens = [[] for _ in range(n_layer)]  # tokens[layer] = [(q, k, v), ...], each (B, H, D)
        self.length = 0

    def next_positions(self, n: int) -> torch.Tensor:
        start = self.length if self.length + n <= self.capacity else self.budget
        return torch.arange(start, start + n)

    def update(self, layer, k, v, q):
        kept = self.tokens[layer]
        if len(kept) + k.shape[2] > self.capacity:
            n, s, r = len(kept), self.n_sink, self.recent
            for b in range(k.shape[0]):  # each stream keeps its own tokens
                keys = torch.stack([t[1][b] for t in kept], 1)  # (H, n, D)
                scores = []
                for j in range(s, n - r):  # phi_j: attention from the r newest queries to token j
                    total = 0.0
                    for i in range(n - r, n):
                        qi = apply_rope(kept[i][0][b][:, None], torch.tensor([i]), self.rope_base)  # (H, 1, D)
                        ks = apply_rope(keys[:, :i + 1], torch.arange(i + 1), self.rope_base)  # (H, i+1, D)
                        w = ((qi @ ks.transpose(-2, -1)) / math.sqrt(ks.shape[-1])).softmax(-1)  # (H, 1, i+1)
                        total += w[:, 0, j].sum().item()
                    scores.append((total, j))
                chosen = sorted(j for _, j in sorted(scores, reverse=True)[: self.budget - s - r])
                keep_b = list(range(s)) + chosen + list(range(n - r, n))
                if b == 0:
                    new = [tuple(x.clone() for x in kept[j]) for j in keep_b]
                else:
                    for slot, j in enumerate(keep_b):
                        for x, y in zip(new[slot], kept[j], strict=True):
                            x[b] = y[b]
            kept[:] = new
        kept += list(zip(q.unbind(2), k.unbind(2), v.unbind(2), strict=True))
        self._n_keys = len(kept)
        return torch.stack([t[1] for t in kept], 2), torch.stack([t[2] for t in kept], 2)

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self._n_keys)

    def advance(self, n: int) -> None:
        self.length = len(self.tokens[0])
