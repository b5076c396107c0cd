import math

import pytest
import torch

from minimal.transformer import (
    GPT,
    Block,
    GPTConfig,
    apply_rope,
    attention,
    attention_weights,
    causal_mask,
)


def naive_attention(q, k, v, mask):
    """Loops over batch, head and query: the textbook formula, one dot product at a time."""
    B, H, Tq, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                scores = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(D) for j in range(k.shape[2])])
                scores = scores.masked_fill(~mask[i], float("-inf"))
                out[b, h, i] = scores.softmax(0) @ v[b, h]
    return out


def test_manual_and_fused_attention_agree_with_naive_loops():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    k, v = torch.cat([k, k], 2), torch.cat([v, v], 2)  # 10 keys: queries are the last 5 positions
    mask = causal_mask(5, 10)
    ref = naive_attention(q, k, v, mask)
    assert (attention(q, k, v, mask, manual=True) - ref).abs().max() < 1e-5
    assert (attention(q, k, v, mask) - ref).abs().max() < 1e-5
    w = attention_weights(q, k, mask)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 5)) and (w[..., ~mask] == 0).all()


def test_causal_mask():
    assert causal_mask(3, 3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert causal_mask(1, 4).tolist() == [[1, 1, 1, 1]]
    assert causal_mask(2, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    score = lambda m, n: (apply_rope(q, torch.tensor([m])) * apply_rope(k, torch.tensor([n]))).sum()  # noqa: E731
    assert torch.allclose(score(5, 2), score(103, 100), atol=1e-5)
    assert torch.allclose(score(0, 0), (q * k).sum(), atol=1e-6)
    assert not torch.allclose(score(5, 2), score(2, 5), atol=1e-3)
    # a rotation: norms are preserved; per-batch positions (B, T) work too
    x = torch.randn(2, 2, 4, 16, generator=g)
    pos = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    y = apply_rope(x, pos)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[1], apply_rope(x[1:], torch.arange(10, 14))[0], atol=1e-6)


def test_gpt_forward_shapes_and_causality(device_dtype):
    device, dtype = device_dtype
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).to(device, dtype).eval()
    idx = torch.randint(0, 11, (3, 10), device=device)
    logits = model(idx)
    assert logits.shape == (3, 10, 11) and logits.dtype == dtype
    # changing a future token never changes the logits of earlier positions
    idx2 = idx.clone()
    idx2[:, 7] = (idx2[:, 7] + 1) % 11
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (model(idx2)[:, :7] - logits[:, :7]).abs().max() <= tol
    assert (model(idx, manual=True) - logits).abs().max() <= 10 * tol


def test_gpt_learns_to_copy():
    """A smoke test of training: a two-layer GPT learns to repeat a sequence (loss drops below 0.1)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=2, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        half = torch.randint(0, 8, (32, 8))
        x = torch.cat([half, half], 1)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, 7:].flatten(0, 1), x[:, 8:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_adaln_zero_block_starts_as_identity_and_uses_condition():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16)
    block = Block(cfg, 0, cond_dim=4)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 5, 4)
    pos = torch.arange(5)
    assert torch.equal(block(x, pos, causal_mask(5, 5), c=c), x)  # gates start at zero
    torch.nn.init.normal_(block.ada.weight)
    y_tok, y_seq = block(x, pos, causal_mask(5, 5), c=c), block(x, pos, causal_mask(5, 5), c=c[:, 0])
    assert not torch.allclose(y_tok, x) and not torch.allclose(y_tok, y_seq)
    with pytest.raises(ValueError, match="pass c"):
        block(x, pos)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=30, n_head=4), "n_embd / n_head"),
    (dict(n_embd=18, n_head=6), "even"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_layer=2.0), "n_layer"),
    (dict(dropout=1.0), "dropout"),
])
def test_gpt_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_gpt_rejects_bad_idx():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"\(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))
