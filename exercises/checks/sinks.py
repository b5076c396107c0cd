"""Checks for exercise 02, attention sinks and a rolling KV cache (exercises/solutions/02_attention_sinks.ipynb).

Every check compares the student's code with an independent reference: a brute-force eviction rule,
`minimal.sinks.SinkCache` (the library's ring buffer) slot by slot, and `minimal.sinks.NaiveSinkCache`
(Python lists, evict by slicing) through `minimal.transformer.GPT` streaming far past the cache. They
probe the classic mistakes: evicting a sink, a ring that ignores the sink slots, keys left at their slot
index or their stream position instead of their position inside the cache, a cache that grows.
"""

from __future__ import annotations

import torch

from minimal import sinks as library_sinks
from minimal.sinks import NaiveSinkCache, SinkCache

from .common import (
    answers,
    expect_close,
    expect_equal,
    expect_shape,
    expect_tensor,
    fail,
    kv_pair,
    passed,
    random_kv,
    single_thread,
)
from .kv_cache import _tiny_gpt

ATOL_LOGITS = 1e-4


@answers(kept_tokens=())
@single_thread
def check_kept_tokens(kept_tokens) -> None:
    """kept_tokens(s, n_sink, window) == the sinks and the window newest of tokens 0..s."""
    cases = 0
    for n_sink in (0, 1, 4):
        for window in (1, 3, 8):
            for s in range(0, 30):
                expected = sorted(set(range(min(n_sink, s + 1))) | set(range(max(0, s - window + 1), s + 1)))
                got = kept_tokens(s, n_sink, window)
                if not isinstance(got, list | tuple) or [int(t) for t in got] != expected:
                    fail(f"kept_tokens({s}, n_sink={n_sink}, window={window})", expected, got,
                         hint="the sinks are tokens 0..n_sink-1; the recent ones are s - window + 1 .. s; "
                              "before the cache is full it holds every token 0..s")
                cases += 1
    passed("check_kept_tokens", f"{cases} (s, n_sink, window) cases: the sinks + the window newest tokens")


@answers(RollingCache=(library_sinks.SinkCache, library_sinks.NaiveSinkCache))
@single_thread
def check_update(RollingCache) -> None:
    """update writes like SinkCache: prefill at [n_seen, n_seen + T), then one token into the ring slot."""
    B, H, D, L = 1, 2, 3, 2
    for n_sink, window in ((2, 4), (0, 3), (3, 1)):
        ours, ref = RollingCache(L, B, H, D, n_sink, window), SinkCache(L, B, H, D, n_sink, window)
        k_buffer = ours.k
        steps = [3] + [1] * 20 if n_sink + window >= 3 else [1] * 20  # a prefill chunk, then token by token
        for i, n in enumerate(steps):
            k, v = random_kv(B, H, n, D, seed=100 + i)
            for layer in range(L):
                what = (f"n_sink={n_sink}, window={window}: update(layer={layer}, ...) with {n} new token(s) "
                        f"after {ref.n_seen} streamed")
                ks, vs = kv_pair(what, ours.update(layer, k * (layer + 1), v * (layer + 1)))
                rk, rv = ref.update(layer, k * (layer + 1), v * (layer + 1))
                hint = ("before the cache is full, write slots [n_seen, n_seen + T) and return slots [0, n_seen + T); "
                        "once full, the new token overwrites slot n_sink + (n_seen - n_sink) % window (the oldest "
                        "recent token; the sinks stay) and all capacity slots are returned")
                expect_shape(what + ": returned keys", ks, tuple(rk.shape), hint)
                expect_close(what + ": returned keys, slot by slot", ks, rk, 0.0, hint)
                expect_close(what + ": returned values, slot by slot", vs, rv, 0.0, hint)
            expect_equal(f"n_sink={n_sink}, window={window}: n_seen after update (update must not move it: the "
                         "model calls advance(T) once, after every layer)", ours.n_seen, ref.n_seen)
            ours.advance(n)
            ref.advance(n)
        expect_equal("cache.k is still the preallocated buffer (write in place, no torch.cat)",
                     ours.k is k_buffer, True)
    passed("check_update", "prefill chunks and 20 one-token steps per cache: the same slots as SinkCache, "
                           "sinks never overwritten, written in place")


@answers(RollingCache=(library_sinks.SinkCache, library_sinks.NaiveSinkCache))
@single_thread
def check_key_positions(RollingCache) -> None:
    """key_positions() after every update equals SinkCache's: positions inside the cache, < capacity."""
    B, H, D = 1, 1, 2
    for n_sink, window in ((2, 5), (0, 4), (4, 1), (1, 3)):
        ours, ref = RollingCache(1, B, H, D, n_sink, window), SinkCache(1, B, H, D, n_sink, window)
        steps = [2] + [1] * 25
        for i, n in enumerate(steps):
            k, v = random_kv(B, H, n, D, seed=200 + i)
            ours.update(0, k, v)
            ref.update(0, k, v)
            what = (f"n_sink={n_sink}, window={window}: key_positions() after {ref.n_seen} streamed + {n} new "
                    f"(one position per returned slot, in slot order)")
            got = expect_tensor(what, ours.key_positions())
            expected = ref.key_positions()
            hint = ("slot i holds position i until the cache is full; then sinks 0..n_sink-1 and a recent token "
                    "at capacity - 1 - age (age 0 = the token just written)")
            expect_shape(what, got, tuple(expected.shape), hint)
            if got.max() >= ours.capacity:
                fail(what + ": every position inside the cache", f"< capacity = {ours.capacity}",
                     f"max position {int(got.max())}", hint="positions are inside the cache, not in the stream")
            expect_close(what, got, expected, 0.0, hint)
            if sorted(got.tolist()) != list(range(len(got))):
                fail(what + ": each position used once", list(range(len(got))), sorted(got.tolist()), hint)
            ours.advance(n)
            ref.advance(n)
    passed("check_key_positions", "after every step, the positions inside the cache (sinks first, newest last), "
                                  "never reaching the capacity")


def _stream(model, ids: torch.Tensor, cache, prefill: int) -> torch.Tensor:
    with torch.no_grad():
        chunks = [model(ids[None, :prefill], cache)[0]] if prefill else []
        chunks += [model(ids[None, t:t + 1], cache)[0] for t in range(prefill, len(ids))]
    return torch.cat(chunks)


@answers(RollingCache=(library_sinks.SinkCache, library_sinks.NaiveSinkCache))
@single_thread
def check_matches_reference(RollingCache) -> None:
    """GPT streaming through the student's cache == through NaiveSinkCache, many evictions, <= 1e-4."""
    model = _tiny_gpt(0)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (160,), generator=g)
    worst = 0.0
    for n_sink, window, prefill in ((4, 12, 10), (1, 7, 0), (0, 16, 5), (8, 8, 16)):
        ref = _stream(model, ids, NaiveSinkCache(model.config.n_layer, n_sink, window), prefill)
        got = _stream(model, ids, RollingCache.for_model(model, n_sink, window), prefill)
        worst = max(worst, expect_close(
            f"logits streaming {len(ids)} tokens (prefill {prefill}, then one at a time) through "
            f"n_sink={n_sink} + window={window}, vs minimal.sinks.NaiveSinkCache", got, ref, ATOL_LOGITS,
            hint="if check_update and check_key_positions pass, look at the prefill: update must return "
                 "slots [0, n_seen + T) and key_positions one position per returned slot"))
    passed("check_matches_reference", f"4 caches x {len(ids)} tokens (up to {len(ids) - 9} evictions each) "
                                      f"match NaiveSinkCache, max |diff| {worst:.1e} <= {ATOL_LOGITS:g}")


@answers(RollingCache=(library_sinks.SinkCache, library_sinks.NaiveSinkCache))
@single_thread
def check_fixed_memory(RollingCache) -> None:
    """The buffers never grow or move while streaming 300 tokens through a 3 + 13 cache."""
    model = _tiny_gpt(1)
    cache = RollingCache.for_model(model, 3, 13)
    k_ptr, v_ptr, nbytes = cache.k.data_ptr(), cache.v.data_ptr(), cache.nbytes
    ids = torch.randint(0, model.config.vocab_size, (300,), generator=torch.Generator().manual_seed(3))
    max_pos = 0
    with torch.no_grad():
        for t in range(len(ids)):
            model(ids[None, t:t + 1], cache)
            max_pos = max(max_pos, int(cache.key_positions().max()))
            if cache.nbytes != nbytes or cache.k.data_ptr() != k_ptr or cache.v.data_ptr() != v_ptr:
                fail(f"cache buffers after {t + 1} tokens", f"the same {nbytes} bytes, never reallocated",
                     f"{cache.nbytes} bytes, buffer moved: {cache.k.data_ptr() != k_ptr}",
                     hint="write into self.k[layer, ...] in place")
    expect_equal("cache.length after 300 tokens", cache.length, 16)
    if max_pos >= 16:
        fail("largest key position over 300 tokens", "< 16 (the capacity)", max_pos)
    passed("check_fixed_memory", f"300 tokens in {nbytes} bytes, never reallocated; positions stay < 16")
