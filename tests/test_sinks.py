import pytest
import torch

from minimal.kv_cache import KVCache
from minimal.sinks import NaiveSinkCache, SinkCache
from minimal.sinks_bench import attention_maps, sink_mass, streaming_nll
from minimal.transformer import GPT, GPTConfig


def model(block_size=16):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize("n_sink, window, prefill", [(0, 4, 3), (1, 7, 1), (4, 12, 10), (2, 14, 16), (3, 1, 2)])
def test_rolling_cache_equals_recompute_over_kept_tokens(n_sink, window, prefill):
    """Ring buffer + re-rotation == a list that evicts by slicing and renumbers positions 0..n-1,
    over 100 tokens (many full turns of the ring)."""
    m = model()
    ids = torch.randint(0, 13, (2, 100), generator=torch.Generator().manual_seed(1))
    fast, ref = SinkCache.for_model(m, n_sink, window, batch_size=2), NaiveSinkCache(2, n_sink, window)
    k_buffer = fast.k
    with torch.no_grad():
        out = {}
        for name, cache in (("fast", fast), ("ref", ref)):
            first = m(ids[:, :prefill], cache)
            out[name] = torch.cat([first] + [m(ids[:, t:t + 1], cache) for t in range(prefill, 100)], 1)
    assert (out["fast"] - out["ref"]).abs().max() <= 1e-4
    assert fast.length == ref.length == n_sink + window and fast.k is k_buffer


def test_rolling_cache_before_eviction_is_the_plain_model(device_dtype):
    device, dtype = device_dtype
    m = model().to(device, dtype)
    ids = torch.randint(0, 13, (1, 16), device=device)
    cache = SinkCache.for_model(m, 4, 12)
    with torch.no_grad():
        out = torch.cat([m(ids[:, :5], cache)] + [m(ids[:, t:t + 1], cache) for t in range(5, 16)], 1)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        assert (out.float() - m(ids).float()).abs().max() <= tol
        # one more token evicts the oldest recent one; the query sits at the last position in the cache
        assert cache.next_positions(1).tolist() == [15]


def test_key_positions_never_exceed_the_cache():
    seen = []

    class Recording(SinkCache):
        def key_positions(self):
            seen.append(super().key_positions())
            return seen[-1]

    m = model()
    cache = Recording(2, 1, 2, 8, n_sink=2, window=6, max_positions=16)
    with torch.no_grad():
        for t in range(40):
            m(torch.tensor([[t % 13]]), cache)
            assert sorted(seen[-1].tolist()) == list(range(min(t + 1, 8)))  # 0..n-1, each once
            assert cache.next_positions(1).item() == min(t + 1, 7)


def test_streaming_policies_agree_inside_the_context_and_recompute_is_exact():
    m = model()
    ids = torch.randint(0, 13, (60,), generator=torch.Generator().manual_seed(2))
    nll = {p: streaming_nll(m, ids, p, n_sink=4) for p in ("dense", "window", "recompute", "sinks")}
    for p in nll:
        assert nll[p].shape == (59,)
        assert (nll[p][:15] - nll["dense"][:15]).abs().max() <= 1e-4
    # recompute at step t == the plain model on the last 16 tokens
    t = 40
    ref = torch.nn.functional.cross_entropy(m(ids[None, t - 16:t])[0, -1:], ids[t:t + 1])
    assert torch.allclose(nll["recompute"][t - 1], ref, atol=1e-5)
    # once the window slides they part: a cached key was computed when its token arrived, with the context
    # of that moment, while recompute re-encodes the window from its first token (NaiveSinkCache is the
    # reference the rolling cache equals, above)
    assert (nll["window"][15:] - nll["recompute"][15:]).abs().max() > 1e-3


def test_memory_is_fixed_while_dense_grows():
    m = model()
    cache = SinkCache.for_model(m, 4, 12)
    before = cache.nbytes
    with torch.no_grad():
        for t in range(50):
            m(torch.tensor([[t % 13]]), cache)
    assert cache.nbytes == before == KVCache.for_model(m, capacity=16).nbytes


def test_attention_maps_match_the_model():
    """The maps are the weights the model really uses: in every layer, maps @ V reproduces the attention
    output the model computes (recorded at the input of the output projection)."""
    m = model()
    with torch.no_grad():
        for p in m.parameters():  # random weights: attention far from uniform
            p.normal_(0, 0.5)
    ids = torch.randint(0, 13, (2, 16), generator=torch.Generator().manual_seed(3))
    maps = attention_maps(m, ids)
    assert maps.shape == (2, 2, 2, 16, 16) and (maps.triu(1) == 0).all()
    assert maps.max() > 0.9  # not uniform, so the check below can fail
    seen = {}
    hooks = [b.attn.proj.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0]))
             for i, b in enumerate(m.blocks)]
    values = [b.attn.register_forward_pre_hook(
        lambda mod, args, i=i: seen.__setitem__(("v", i), mod.project(args[0])[2])) for i, b in enumerate(m.blocks)]
    with torch.no_grad():
        m(ids)
    for h in hooks + values:
        h.remove()
    for i in range(2):
        y = (maps[i] @ seen["v", i]).transpose(1, 2).reshape(2, 16, -1)  # (B, T, C)
        assert (y - seen[i]).abs().max() <= 1e-5
    mass = sink_mass(maps, first_query=8)
    assert torch.allclose(mass, maps[..., 8:, 0].mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("n_sink, window, match", [
    (-1, 4, "n_sink"), (4, 0, "window"), (4, 13, "exceeds the capacity of 16"), (2.0, 4, "n_sink"),
])
def test_bad_sizes_raise(n_sink, window, match):
    with pytest.raises(ValueError, match=match):
        SinkCache.for_model(model(), n_sink, window)


def test_bad_streaming_arguments_raise():
    m = model()
    cache = SinkCache.for_model(m, 2, 6)
    with pytest.raises(ValueError, match="one token at a time"):
        m(torch.zeros(1, 9, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="policy"):
        streaming_nll(m, torch.zeros(10, dtype=torch.long), "sinkhorn")
    with pytest.raises(ValueError, match="ids"):
        streaming_nll(m, torch.zeros(1, dtype=torch.long), "dense")


def test_stream_generate_matches_generate_inside_the_context_and_runs_forever():
    from minimal.kv_cache import generate
    from minimal.sinks import stream_generate

    m = model()
    prompt = torch.tensor([1, 2, 3])
    assert torch.equal(stream_generate(m, prompt, 13, temperature=0), generate(m, prompt, 13, temperature=0))
    ref = NaiveSinkCache(2, 4, 12)
    long = stream_generate(m, prompt, 200, temperature=0)
    assert long.shape == (200,)
    assert torch.equal(long, stream_generate(m, prompt, 200, temperature=0, cache=ref))
    # a prompt longer than the cache streams through it token by token
    assert stream_generate(m, torch.arange(40) % 13, 5, temperature=0).shape == (5,)
    with pytest.raises(ValueError, match="non-empty"):
        stream_generate(m, torch.zeros(0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="temperature"):
        stream_generate(m, prompt, 5, temperature=-1.0)


@pytest.mark.slow
def test_shipped_sink_token_model():
    from minimal.checkpoints import load_pretrained
    from minimal.data import CharTokenizer, text_corpus
    from minimal.text_gpt import bits_per_char

    m, meta = load_pretrained("text-gpt-sink")
    assert meta["sink_token_id"] == m.config.vocab_size - 1 == len(meta["chars"])
    val = CharTokenizer(meta["chars"]).encode(text_corpus("val"))
    bpc = bits_per_char(m, val, sink_id=meta["sink_token_id"])  # recomputed from the shipped weights
    assert bpc <= 1.6 and abs(bpc - meta["val_bpc"]) < 0.01
    assert len(meta["probe_curve"]) == meta["recipe"]["steps"] // 100
    ids = torch.tensor([[meta["sink_token_id"], 5, 6, 7]])
    assert m(ids).shape == (1, 4, m.config.vocab_size)
