"""The stream's cache: a ring of committed frames and a tail for the frames in flight (stream_batch.py).

`StreamCache` is a ring of n_sink sink frames and `window` recent committed frames (sinks.py's rolling
cache) followed by a tail of S c frames for the chunks in flight, rewritten at every call. Keys are kept
before RoPE and rotated by their position in [ring | tail] (StreamingLLM; LongLive's infinite mode), so
no position ever passes n_sink + window + S c = max_frames: fixed memory and a fixed cost per call,
however long the stream. Every buffer is allocated once. `NaiveStreamCache` is the reference: lists of
frames evicted by slicing. `call_mask` is the mask of a call: every token sees the kept frames, and among
the call's chunks attention is block-causal.
"""

from __future__ import annotations

import torch

from .sinks import check_sizes


def call_mask(n: int, kept: int, step: int, device=None) -> torch.Tensor:
    """(n, kept + n) bool for a call of n tokens after `kept` cached ones: all see the cache; among the
    call's chunks (`step` tokens each), block-causal."""
    chunk = torch.arange(n, device=device) // step
    ring = torch.ones(n, kept, dtype=torch.bool, device=device)
    return torch.cat([ring, chunk[None, :] <= chunk[:, None]], 1)


class StreamCache:
    """A ring of committed frames (n_sink sinks + `window` recent, turned one chunk at a time) followed by
    a tail of `tail` frames where every call writes its tokens. Sizes in frames; counts in tokens. Raw keys.

    A call writes its n tokens after the valid ring tokens; `advance(m)` then commits the first m of them
    (one chunk): in place while the ring fills, afterwards copied over the ring's oldest recent chunk.
    So a chunk being committed sees the whole ring, and the chunks after it in the call see it too."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, n_sink: int, window: int,
                 tail: int, tokens_per_frame: int, chunk: int, device=None, dtype=torch.float32):
        check_sizes(n_sink, window, None, chunk)
        if not isinstance(tail, int) or tail < chunk or tail % chunk:
            raise ValueError(f"tail must be an int >= the chunk and a multiple of it ({chunk}), got {tail!r}")
        self.P, self.n_sink, self.window, self.tail = tokens_per_frame, n_sink, window, tail
        self.s, self.w = n_sink * self.P, window * self.P  # ring sizes in tokens
        self.step = chunk * self.P  # tokens committed at a time
        shape = (n_layer, batch_size, n_head, self.s + self.w + tail * self.P, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # raw keys: [ring | tail]
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_seen = 0  # committed tokens so far
        self.seen = torch.zeros((), dtype=torch.long, device=device)  # the same, on the device
        self.n_new = 0  # tokens written by the current call

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def length(self) -> int:
        """Valid ring tokens: the committed ones kept."""
        return min(self.n_seen, self.s + self.w)

    def next_positions(self, n: int) -> torch.Tensor:
        """Positions (n,) of a call's tokens, right after the ring's; laid out for the updates that follow."""
        if not 0 < n <= self.tail * self.P:
            raise ValueError(f"a call writes 1 to {self.tail * self.P} tokens (the tail), got {n}")
        self.n_new = n
        return torch.arange(self.length, self.length + n, device=self.k.device) // self.P

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor | None = None):
        """Write raw k, v (B, H, n, D) after the valid ring tokens; return all valid keys and values."""
        start, end = self.length, self.length + self.n_new
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def key_positions(self) -> torch.Tensor:
        """Position of every key `update` returns: sinks, recent ring tokens oldest first, the call's."""
        device, valid = self.k.device, self.length
        if self.n_seen <= self.s + self.w:  # not wrapped: slot index == position
            ring = torch.arange(valid, device=device)
        else:  # the ring has turned; `seen` is n_seen on the device, so a captured CUDA graph reads it afresh
            oldest = (self.seen - self.s) % self.w  # ring slot of the oldest kept token
            ring = torch.cat([torch.arange(self.s, device=device),
                              self.s + (torch.arange(self.w, device=device) - oldest) % self.w])
        return torch.cat([ring, torch.arange(valid, valid + self.n_new, device=device)]) // self.P

    def mask(self, n: int) -> torch.Tensor:
        return call_mask(n, self.length, self.step, self.k.device)

    def advance(self, n: int) -> None:
        """Commit the first n tokens (0 or one chunk) of the last call."""
        if n not in (0, self.step) or n > self.n_new:
            raise ValueError(f"advance commits one chunk ({self.step} tokens) of the last call, or none; got {n}")
        cap = self.s + self.w
        if n and self.n_seen + n > cap:  # full: the chunk replaces the oldest recent chunk
            slot = self.s + (self.n_seen - self.s) % self.w
            self.k[:, :, :, slot:slot + n] = self.k[:, :, :, cap:cap + n]
            self.v[:, :, :, slot:slot + n] = self.v[:, :, :, cap:cap + n]
        self.n_seen += n
        self.seen.fill_(self.n_seen)

    def reset(self) -> None:
        self.n_seen = self.n_new = 0
        self.seen.zero_()


class NaiveStreamCache:
    """Reference for StreamCache: per layer a list of committed frames, each a (k, v) pair (B, H, P, D),
    evicted by slicing to the sinks + the `window` newest; positions are list indices. Raw keys."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, n_sink: int, window: int, tokens_per_frame: int, chunk: int):
        self.n_sink, self.window, self.P, self.c = n_sink, window, tokens_per_frame, chunk
        self.kept = [[] for _ in range(n_layer)]
        self.new = [[] for _ in range(n_layer)]  # the last call's frames, per layer

    @property
    def length(self) -> int:
        return len(self.kept[0]) * self.P

    def next_positions(self, n: int) -> torch.Tensor:
        self.n_new = n
        return torch.arange(self.length, self.length + n) // self.P

    def update(self, layer, k, v, q=None):
        self.new[layer] = list(zip(k.split(self.P, 2), v.split(self.P, 2), strict=True))
        frames = self.kept[layer] + self.new[layer]
        return torch.cat([f[0] for f in frames], 2), torch.cat([f[1] for f in frames], 2)

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self.length + self.n_new) // self.P

    def mask(self, n: int) -> torch.Tensor:
        chunk = torch.arange(n) // (self.c * self.P)
        return torch.cat([torch.ones(n, self.length, dtype=torch.bool), chunk[None, :] <= chunk[:, None]], 1)

    def advance(self, n: int) -> None:
        for layer, kept in enumerate(self.kept):
            kept += self.new[layer][:n // self.P]
            del kept[self.n_sink:max(self.n_sink, len(kept) - self.window)]

    def reset(self) -> None:
        self.kept = [[] for _ in self.kept]
