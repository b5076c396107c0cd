import pytest
import torch

from minimal.kv_cache import KVCache, generate, sample_next
from minimal.transformer import GPT, GPTConfig


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=13, block_size=48, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("n_layer, n_head, n_embd, prefill, total", [
    (1, 1, 8, 1, 8), (2, 2, 16, 5, 30), (3, 4, 32, 17, 48), (4, 6, 48, 1, 64), (2, 2, 16, 64, 64),
])
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_logits_equal_recompute(n_layer, n_head, n_embd, prefill, total, chunk):
    model = small_model(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=total)
    idx = torch.randint(0, 13, (2, total), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(idx)  # (B, T, V): one pass over the whole sequence
        cache = KVCache.for_model(model, batch_size=2)
        parts = [model(idx[:, :prefill], cache)]
        for t in range(prefill, total, chunk):
            parts.append(model(idx[:, t:t + chunk], cache))
    assert cache.length == total
    assert (torch.cat(parts, 1) - ref).abs().max() <= 1e-4


def test_cache_on_every_device(device_dtype):
    device, dtype = device_dtype
    model = small_model().to(device, dtype)
    idx = torch.randint(0, 13, (1, 20), device=device)
    with torch.no_grad():
        ref = model(idx)
        cache = KVCache.for_model(model)
        assert cache.k.dtype == dtype and cache.k.device.type == device
        out = torch.cat([model(idx[:, :4], cache)] + [model(idx[:, t:t + 1], cache) for t in range(4, 20)], 1)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert (out.float() - ref.float()).abs().max() <= tol


def test_greedy_generation_identical_with_and_without_cache():
    for seed in range(3):
        model = small_model(seed)
        prompt = torch.randint(0, 13, (5,), generator=torch.Generator().manual_seed(seed))
        a = generate(model, prompt, 40, temperature=0)
        b = generate(model, prompt, 40, temperature=0, use_cache=False)
        assert a.shape == (40,) and torch.equal(a, b)


def test_sampling_with_same_generator_identical_with_and_without_cache():
    model = small_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = generate(model, prompt, 30, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(0))
    b = generate(model, prompt, 30, temperature=0.9, top_k=5, use_cache=False,
                 generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 30) and torch.equal(a, b)


def test_sample_next():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_next(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(400)])
    assert set(draws.flatten().tolist()) == {1, 3}  # top_k=2 keeps only the two largest logits
    freq = (draws == 1).float().mean().item()
    assert abs(freq - 1 / (1 + torch.e ** -1)) < 0.07  # softmax of [3, 2] gives 0.73 to token 1


def test_static_cache_append_crop_reset():
    model = small_model()
    cache = KVCache.for_model(model, capacity=10)
    k_buffer = cache.k
    idx = torch.randint(0, 13, (1, 10))
    with torch.no_grad():
        model(idx[:, :6], cache)
        assert cache.length == 6
        cache.crop(4)  # roll back two tokens, then decode them again
        assert cache.length == 4
        redo = model(idx[:, 4:6], cache)
        assert torch.allclose(redo, model(idx[:, :6])[:, 4:6], atol=1e-5)
        model(idx[:, 6:10], cache)
    assert cache.length == 10 and cache.k is k_buffer  # filled in place: no reallocation
    assert cache.nbytes == 2 * 2 * 1 * 2 * 10 * 8 * 4
    cache.reset()
    assert cache.length == 0


def test_cache_errors():
    model = small_model()
    cache = KVCache.for_model(model, capacity=8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="do not fit"):
            model(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="crop length"):
        cache.crop(7)
    with pytest.raises(ValueError, match="crop length"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="capacity"):
        KVCache(1, 1, 1, 8, 0)
    with pytest.raises(ValueError, match="the cache expects"):
        cache.update(0, torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=torch.zeros(49, dtype=torch.long)), ValueError, "exceeds the cache capacity"),
    (dict(prompt=torch.zeros(40, dtype=torch.long), max_new_tokens=9), ValueError, "exceeds the cache capacity"),
    (dict(prompt=torch.zeros(0, dtype=torch.long)), ValueError, "non-empty"),
    (dict(prompt=torch.tensor([1, 13])), ValueError, "outside the vocabulary"),
    (dict(prompt=torch.tensor([1, -1])), ValueError, "outside the vocabulary"),
    (dict(prompt=torch.tensor([1.0, 2.0])), TypeError, "torch.long"),
    (dict(prompt=[1, 2]), TypeError, "torch.Tensor"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=14), ValueError, "top_k"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
])
def test_generate_rejects_bad_input(kwargs, error, match):
    args = dict(prompt=torch.tensor([1, 2, 3]), max_new_tokens=5)
    with pytest.raises(error, match=match):
        generate(small_model(), **{**args, **kwargs})


def test_generate_zero_tokens():
    assert generate(small_model(), torch.tensor([1, 2]), 0).shape == (0,)
