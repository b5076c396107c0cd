"""Checks for exercise 01, the KV cache (exercises/solutions/01_kv_cache.ipynb).

Every check compares the student's code with an independent reference: the model run without a cache
(recompute), full causal attention over the whole sequence, or `minimal.kv_cache` itself. Each one also
probes the classic mistakes: writing one slot off, moving `length` in `update`, rejecting a write that
exactly fills the cache, a mask without the cache offset, re-feeding the whole sequence every step.
"""

from __future__ import annotations

import torch

from minimal import kv_cache as library_kv_cache
from minimal import transformer as library_transformer
from minimal.kv_cache import KVCache as ReferenceKVCache
from minimal.kv_cache import generate
from minimal.transformer import GPT, GPTConfig, attention, causal_mask

from .common import (
    answers,
    expect_close,
    expect_equal,
    expect_raises,
    expect_shape,
    fail,
    kv_pair,
    passed,
    random_kv,
    single_thread,
)

ATOL_LOGITS = 1e-4  # cache vs recompute, float32
ATOL_ATTENTION = 1e-5


def _tiny_gpt(seed: int = 0) -> GPT:
    """A tiny GPT with large random weights and an untied head, so that greedy decoding does not just
    repeat one token (as a freshly initialised GPT does) and wrong positions or tokens change the output."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=17, block_size=32, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.startswith("tok_emb"):
                p.normal_(0.0, cfg.n_embd ** -0.5)
        model.head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.n_embd))
    return model


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@answers(KVCache=library_kv_cache.KVCache)
@single_thread
def check_update(KVCache) -> None:
    """update(layer, k, v) writes at [length, length + T) of one layer, in place, and returns views."""
    B, H, D = 2, 3, 4
    cache = KVCache(2, B, H, D, 8)  # n_layer, batch_size, n_head, head_dim, capacity
    k_buffer, k_ptr = cache.k, cache.k.data_ptr()
    k1, v1 = random_kv(B, H, 5, D, seed=1)

    ks, vs = kv_pair("update(1, k, v) returns", cache.update(1, k1, v1))
    expect_close("keys returned by the first update(1, k, v), T = 5 new positions", ks, k1, 0.0)
    expect_close("values returned by the first update(1, k, v)", vs, v1, 0.0)
    expect_equal("cache.length after update(...) (update must not move it: the model calls advance(T) "
                 "once, after every layer has stored its keys)", cache.length, 0)
    expect_close("layer 0 after update(1, ...) (only layer 1 may change)", cache.k[0], torch.zeros(B, H, 8, D),
                 0.0, hint="write into self.k[layer], not into every layer")

    cache.update(0, 2 * k1, 2 * v1)
    cache.advance(5)
    k2, v2 = random_kv(B, H, 1, D, seed=2)
    ks, vs = kv_pair("update(1, k, v) returns", cache.update(1, k2, v2))
    hint = "the T new positions go to slots [length, length + T); return slots [0, length + T)"
    expect_shape("keys returned by update(1, k, v) with 5 cached positions and 1 new one", ks, (B, H, 6, D), hint)
    expect_close("keys returned after 5 cached + 1 new: the cached keys, then the new one",
                 ks, torch.cat([k1, k2], dim=2), 0.0, hint)
    expect_close("values returned after 5 cached + 1 new", vs, torch.cat([v1, v2], dim=2), 0.0, hint)
    expect_close("cache.k[1, :, :, 5] (slot 5 = position of the 6th token)", cache.k[1, :, :, 5], k2[:, :, 0], 0.0,
                 hint)
    expect_close("cache.k[1, :, :, 6:] (slots not written yet)", cache.k[1, :, :, 6:], torch.zeros(B, H, 2, D), 0.0,
                 hint)
    expect_close("cache.k[0, :, :, :5] (layer 0 keeps its own keys)", cache.k[0, :, :, :5], 2 * k1, 0.0)

    expect_equal("cache.k is still the preallocated buffer (same tensor, same memory)",
                 cache.k is k_buffer and cache.k.data_ptr() == k_ptr, True,
                 hint="write in place, e.g. self.k[layer, :, :, a:b] = k; torch.cat allocates a new tensor "
                      "every token, which is what a static cache avoids")
    expect_equal("the returned keys share memory with cache.k (a view, not a copy)", _same_memory(ks, cache.k),
                 True, hint="return a slice such as self.k[layer, :, :, :end]")
    passed("check_update", "writes at [length, length + T) of the given layer, in place, returns views, "
                           "leaves length to advance()")


@answers(KVCache=library_kv_cache.KVCache)
@single_thread
def check_capacity(KVCache) -> None:
    """A write that does not fit raises ValueError and changes nothing; one that fills it exactly works."""
    cache = KVCache(1, 1, 2, 4, 6)
    k, v = random_kv(1, 2, 4, 4, seed=3)
    cache.update(0, k, v)
    cache.advance(4)
    k3, v3 = random_kv(1, 2, 3, 4, seed=4)
    expect_raises("update(0, k, v) with 3 new positions when 4 of the 6 slots are used", ValueError,
                  lambda: cache.update(0, k3, v3), hint="check length + T > capacity before writing")
    expect_equal("cache.length after the rejected update", cache.length, 4)
    expect_close("cached keys after the rejected update (a rejected write must leave the cache as it was)",
                 cache.k[0, :, :, :4], k, 0.0, hint="raise before writing anything")
    k2, v2 = random_kv(1, 2, 2, 4, seed=5)
    try:
        out = cache.update(0, k2, v2)
    except ValueError as e:
        fail("update(0, k, v) with 2 new positions when 4 of 6 are used (fills the cache exactly)", "no error",
             f"ValueError: {e}", hint="the last slot is capacity - 1: a write is too big only if "
                                      "length + T > capacity")
    ks, _ = kv_pair("update(0, k, v) returns", out)
    expect_close("keys after filling the cache exactly", ks, torch.cat([k, k2], dim=2), 0.0)
    passed("check_capacity", "an overflowing write raises ValueError and changes nothing; an exact fit works")


@answers(KVCache=library_kv_cache.KVCache)
@single_thread
def check_crop(KVCache) -> None:
    """crop(n) rolls back to n positions (the next write lands at n); n outside [0, length] -> ValueError."""
    cache = KVCache(1, 1, 2, 4, 8)
    k, v = random_kv(1, 2, 5, 4, seed=6)
    cache.update(0, k, v)
    cache.advance(5)
    cache.crop(2)
    expect_equal("cache.length after crop(2) with 5 cached", cache.length, 2)
    k1, v1 = random_kv(1, 2, 1, 4, seed=7)
    ks, vs = kv_pair("update after crop(2) returns", cache.update(0, k1, v1))
    expect_close("keys returned by the first update after crop(2): the 2 kept keys, then the new one", ks,
                 torch.cat([k[:, :, :2], k1], dim=2), 0.0, hint="after crop(n) the next write lands at slot n")
    cache.advance(1)
    for n in (4, -1):
        expect_raises(f"crop({n}) with 3 positions cached", ValueError, lambda n=n: cache.crop(n),
                      hint="only 0 <= n <= length is a valid rollback")
    expect_equal("cache.length after the rejected crops", cache.length, 3)
    cache.crop(3)
    expect_equal("cache.length after crop(3) with 3 cached (a no-op)", cache.length, 3)
    cache.crop(0)
    expect_equal("cache.length after crop(0)", cache.length, 0)
    passed("check_crop", "crop(n) rolls back so the next write lands at n; n outside [0, length] raises ValueError")


@answers(KVCache=library_kv_cache.KVCache)
@single_thread
@torch.no_grad()
def check_matches_recompute(KVCache) -> None:
    """The GPT with your cache gives the same logits as recomputing the whole sequence, step by step."""
    model = _tiny_gpt()
    cfg = model.config
    g = torch.Generator().manual_seed(8)
    prompt = torch.randint(0, cfg.vocab_size, (2, 6), generator=g)  # (B, T)
    cache = KVCache(cfg.n_layer, 2, cfg.n_head, cfg.head_dim, cfg.block_size)
    def feed(idx):  # positions passed explicitly, so only length/update/advance of your cache are used
        return model(idx, cache, pos=torch.arange(cache.length, cache.length + idx.shape[1]))

    logits = feed(prompt)  # (B, T, V)
    worst = expect_close("prefill logits of a 6-token prompt with your cache vs. without a cache", logits,
                         model(prompt), ATOL_LOGITS)
    seq = prompt
    for step in range(1, 13):
        nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, nxt], dim=1)
        logits = feed(nxt)  # (B, 1, V)
        worst = max(worst, expect_close(
            f"logits of decoding step {step} (position {seq.shape[1] - 1}) with your cache vs. recomputing "
            f"all {seq.shape[1]} positions", logits, model(seq)[:, -1:], ATOL_LOGITS))
    expect_equal("cache.length after a 6-token prefill and 12 one-token steps", cache.length, 18)
    cache.crop(10)  # roll back, as speculative decoding does, and feed a 3-token chunk
    logits = feed(seq[:, 10:13])
    worst = max(worst, expect_close("logits of a 3-token chunk at positions 10..12 after crop(10) vs. recompute",
                                    logits, model(seq[:, :13])[:, 10:], ATOL_LOGITS))
    passed("check_matches_recompute", f"prefill, 12 decoding steps and a chunk after crop match recompute; "
                                      f"max |logit difference| = {worst:.1e} <= {ATOL_LOGITS:g}")


@answers(cached_attention=(library_transformer.attention, library_transformer.attention_weights,
                           library_transformer.CausalSelfAttention))
@single_thread
def check_cached_attention(cached_attention) -> None:
    """Chunk by chunk through the cache, the outputs equal full causal attention over the sequence."""
    B, H, D = 2, 3, 8
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(B, H, 12, D, generator=g) for _ in range(3))
    expected = attention(q, k, v, causal_mask(12, 12), manual=True)  # (B, H, 12, D)
    cache = ReferenceKVCache(2, B, H, D, 16)
    start = 0
    for t in (5, 1, 1, 3, 2):
        sl = slice(start, start + t)
        out = cached_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], cache, 1)
        hint = None if t == 1 else ("the new query at position L + i may see the keys at positions j <= L + i: "
                                    "the mask is (T, L + T), shifted by L = cache.length")
        expect_close(f"output for {t} new token(s) at positions {start}..{start + t - 1} with {start} cached, "
                     f"vs. full causal attention", out, expected[:, :, sl], ATOL_ATTENTION, hint)
        expect_equal("cache.length after cached_attention (the caller advances, not cached_attention)",
                     cache.length, start)
        cache.advance(t)
        start += t
    expect_close("keys stored in layer 1 of the cache after all chunks", cache.k[1, :, :, :12], k, 0.0,
                 hint="store the new keys with cache.update(layer, k, v)")
    passed("check_cached_attention", "chunks of 5, 1, 1, 3 and 2 new tokens through the cache equal full causal "
                                     f"attention (atol {ATOL_ATTENTION:g})")


def _count_token_passes(model: GPT) -> tuple[list[int], object]:
    counts: list[int] = []

    def hook(module, args, kwargs):
        idx = args[0] if args else kwargs.get("idx")
        counts.append(int(idx.shape[-1]))

    return counts, model.register_forward_pre_hook(hook, with_kwargs=True)


@answers(generate_greedy=(library_kv_cache.generate, library_kv_cache.decode_steps))
@single_thread
def check_generate(generate_greedy) -> None:
    """Greedy tokens equal recompute's, at a cost of one token-pass per new token."""
    model = _tiny_gpt(seed=1)
    g = torch.Generator().manual_seed(10)
    for B, T, N in ((2, 5, 12), (1, 3, 1)):
        prompt = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
        expected = generate(model, prompt, N, temperature=0.0, use_cache=False)  # (B, N), no cache
        cache = ReferenceKVCache.for_model(model, batch_size=B)
        counts, handle = _count_token_passes(model)
        try:
            with torch.no_grad():
                out = generate_greedy(model, prompt, N, cache)
        finally:
            handle.remove()
        what = f"generate_greedy(model, prompt of shape {(B, T)}, max_new_tokens={N}, cache)"
        expect_shape(what, out, (B, N), hint="return only the new tokens, shape (B, max_new_tokens)")
        if not torch.equal(out, expected):
            step = int((out != expected).any(dim=0).nonzero()[0])
            fail(what + ": the greedy tokens (recompute without a cache gives the expected ones)",
                 expected.tolist(), f"{out.tolist()} (first difference at new token {step})",
                 hint="take the argmax of the logits at the last position fed to the model, and feed "
                      "each new token once, right after picking it")
        passes = sum(counts)
        if passes > T + N:
            fail(what + ": token-passes (tokens fed to the model, summed over calls)",
                 f"{T + N - 1} (the prompt once, then one token per step)", passes,
                 hint="once the cache holds the past, feed only the newest token")
        expect_equal(what + ": cache.length at the end (the cache must hold every token fed)",
                     cache.length in (T + N - 1, T + N), True)
    passed("check_generate", "greedy tokens equal recompute's, with one token-pass per new token")


@answers(kv_cache_bytes=())
@single_thread
def check_cache_bytes(kv_cache_bytes) -> None:
    """The memory of a static cache: keys and values for every layer, sequence, head, slot and channel."""
    cases = ((4, 1, 6, 32, 128, torch.float32), (2, 3, 4, 16, 10, torch.bfloat16), (1, 1, 1, 2, 5, torch.float64))
    for n_layer, batch_size, n_head, head_dim, capacity, dtype in cases:
        expected = ReferenceKVCache(n_layer, batch_size, n_head, head_dim, capacity, dtype=dtype).nbytes
        got = kv_cache_bytes(n_layer, batch_size, n_head, head_dim, capacity, dtype)
        expect_equal(f"kv_cache_bytes(n_layer={n_layer}, batch_size={batch_size}, n_head={n_head}, "
                     f"head_dim={head_dim}, capacity={capacity}, dtype={dtype})", got, expected,
                     hint="keys AND values, one element per (layer, sequence, head, slot, channel); "
                          "torch.tensor([], dtype=dtype).element_size() gives the bytes per element")
    passed("check_cache_bytes", "2 x n_layer x batch x heads x capacity x head_dim x bytes per element")
