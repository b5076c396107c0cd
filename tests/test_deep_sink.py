import pytest
import torch

from minimal import deep_sink
from minimal.deep_sink import CompressingCache, NaiveCompressingCache, deep_sink_cache
from minimal.sinks import SinkCache
from minimal.transformer import GPT, GPTConfig


def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def stream(m, cache, ids, prefill=3):
    with torch.no_grad():
        first = m(ids[:, :prefill], cache)
        return torch.cat([first] + [m(ids[:, t:t + 1], cache) for t in range(prefill, ids.shape[1])], 1)


IDS = torch.randint(0, 13, (2, 60), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("n_sink, recent, budget, capacity",
                         [(2, 2, 8, 12), (0, 1, 4, 16), (4, 4, 10, 14), (1, 3, 4, 5)])
def test_compression_equals_the_naive_reference(n_sink, recent, budget, capacity):
    m = model()
    fast = CompressingCache.for_model(m, n_sink, recent, budget, capacity, batch_size=2)
    out = stream(m, fast, IDS)
    ref = stream(m, NaiveCompressingCache(2, n_sink, recent, budget, capacity), IDS)
    assert (out - ref).abs().max() <= 1e-4
    assert fast.compressions >= 1 and fast.length <= capacity


def test_several_new_tokens_when_compression_triggers():
    """Capacity 12, budget 8: tokens arrive two at a time, so the pair that overflows the cache arrives
    with 10 or 11 kept ones. Their causal mask must cover the budget + 2 keys left after compression, not
    the length + 2 before it (which raised a size mismatch); the naive reference agrees."""
    m = model()
    fast = CompressingCache.for_model(m, 2, 2, 8, 12, batch_size=2)
    ref = NaiveCompressingCache(2, 2, 2, 8, 12)
    with torch.no_grad():
        out = {name: torch.cat([m(IDS[:, t:t + 2], cache) for t in range(0, 40, 2)], 1)
               for name, cache in (("fast", fast), ("ref", ref))}
    assert fast.compressions >= 3 and (out["fast"] - out["ref"]).abs().max() <= 1e-4
    assert (out["fast"][:, :12] - m(IDS[:, :12])).abs().max() <= 1e-4  # before the first compression


def test_the_check_is_sensitive_to_the_selection(monkeypatch):
    """Keeping the *least* attended tokens instead changes the output: the test above is not vacuous."""
    m = model()
    ref = stream(m, NaiveCompressingCache(2, 2, 2, 8, 12), IDS)
    real = deep_sink.importance
    monkeypatch.setattr(deep_sink, "importance", lambda q, k, base: -real(q, k, base))
    assert (stream(m, CompressingCache.for_model(m, 2, 2, 8, 12, batch_size=2), IDS) - ref).abs().max() > 1e-3


def test_before_compression_it_is_the_plain_model():
    m = model()
    out = stream(m, CompressingCache.for_model(m, 2, 2, 8, 16, batch_size=2), IDS[:, :16])
    assert (out - m(IDS[:, :16])).abs().max() <= 1e-4


def test_compression_keeps_the_most_attended_middle_tokens():
    """Hand-made importances: the kept middle tokens are exactly the top ones, in stream order."""
    cache = CompressingCache(1, 1, 1, 4, n_sink=1, recent=1, budget=4, capacity=6)
    # channel pair (1, 3) rotates by 0.01 rad per position: RoPE barely moves this signal
    k = torch.zeros(1, 1, 6, 4)
    k[0, 0, [2, 4], 1] = 5.0  # tokens 2 and 4 stand out: the recent query attends to them
    q = torch.zeros(1, 1, 6, 4)
    q[0, 0, 5, 1] = 5.0
    v = torch.arange(6.0).view(1, 1, 6, 1).expand(1, 1, 6, 4).contiguous()
    cache.update(0, k, v, q)
    cache.advance(6)
    _, v_kept = cache.update(0, k[:, :, :1], v[:, :, :1], q[:, :, :1])  # the 7th token triggers compression
    assert v_kept[0, 0, :, 0].tolist() == [0.0, 2.0, 4.0, 5.0, 0.0]  # sink, top-2 middle, recent, new


def test_deep_sink_is_a_rolling_cache_with_a_large_sink():
    cache = deep_sink_cache(model(), budget=16, sink_fraction=0.5)
    assert isinstance(cache, SinkCache) and (cache.n_sink, cache.window) == (8, 8)
    with pytest.raises(ValueError, match="sink_fraction"):
        deep_sink_cache(model(), 16, sink_fraction=1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=3), "budget must be an int >= n_sink \\+ recent = 4"),
    (dict(capacity=8), "capacity must be an int > budget"),
    (dict(capacity=17), "exceeds the 16 positions"),
    (dict(recent=0), "recent must be >= 1"),
    (dict(n_sink=-1), "n_sink"),
])
def test_bad_sizes_raise(kwargs, match):
    args = dict(n_sink=2, recent=2, budget=8, capacity=12)
    with pytest.raises(ValueError, match=match):
        CompressingCache.for_model(model(), **{**args, **kwargs})
