"""Patch tokenizer, sprite validity from pixels, and the grouped (GSD) accept step."""

import functools

import pytest
import torch

from minimal.data import SpriteWorld
from minimal.image_tokens import codebook_groups, grouped_accept_reject
from minimal.patch_tokenizer import PatchTokenizer
from minimal.speculative import NGramDraft, accept_reject, speculative_generate
from minimal.toybench import sprite_validity, validity_rate
from minimal.transformer import GPT, GPTConfig


def frames(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([SpriteWorld(n_sprites=2).rollout(8, generator=g)[0] for _ in range(n // 8)])


def test_tokenizer_round_trip_and_shapes():
    x = frames()
    tok = PatchTokenizer.fit(x, vocab_size=128, patch=4, iters=5)
    z = tok.encode(x)
    assert z.shape == (len(x), 64) and z.dtype == torch.long and int(z.max()) < 128
    rec = tok.decode(z)
    assert rec.shape == x.shape and (rec - x).abs().mean() < 0.01
    one = torch.full((1, 64), 3)  # every patch token 3: the frame tiles codebook vector 3
    assert torch.equal(tok.decode(one)[0], tok.codebook[3].view(3, 4, 4).repeat(1, 8, 8))
    with pytest.raises(ValueError, match="patch"):
        PatchTokenizer.fit(x[:, :, :30, :30], 8)
    with pytest.raises(ValueError, match="vocab_size"):
        PatchTokenizer.fit(x, 1)


def test_sprite_validity_from_pixels():
    x = frames()
    assert validity_rate(x) > 0.85  # real frames (a few have overlapping sprites)
    good = next(f for f in x if sprite_validity(f))
    broken = good.clone()
    broken[:, 0:2, 0:2] = torch.tensor([1.0, 0.3, 0.3])[:, None, None]  # a stray red blob
    noisy = good + 0.3
    assert not sprite_validity(broken) and not sprite_validity(noisy)
    with pytest.raises(ValueError, match="frame"):
        sprite_validity(good[0])


def test_grouped_step_with_singleton_groups_is_the_exact_step():
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(6, dtype=torch.bool)
    for trial in range(200):
        gamma = 1 + trial % 4
        p = torch.softmax(2 * torch.randn(gamma + 1, 6, generator=g), -1)
        q = torch.softmax(2 * torch.randn(gamma, 6, generator=g), -1)
        d = torch.multinomial(q, 1, generator=g)[:, 0]
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        a = accept_reject(p, q, d, torch.Generator().manual_seed(seed))
        b = grouped_accept_reject(p, q, d, torch.Generator().manual_seed(seed), groups=eye)
        assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_grouped_step_accepts_more_and_is_not_exact():
    """p splits its mass over two interchangeable tokens, q prefers the other one of the pair: GSD accepts
    every draft and so emits q's split, not p's. That is the price of its speed."""
    p = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
    q = torch.tensor([[0.1, 0.9, 0.0]])
    groups = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    exact, grouped = torch.zeros(3), torch.zeros(3)
    for _ in range(4000):
        d = torch.multinomial(q[0], 1, generator=g)
        n, t = accept_reject(p, q, d, g)
        exact[int(d[0]) if n else int(t)] += 1
        n, t = grouped_accept_reject(p, q, d, g, groups=groups)
        grouped[int(d[0]) if n else int(t)] += 1
    assert abs(exact[0] / 4000 - 0.9) < 0.03  # exact: p
    assert abs(grouped[0] / 4000 - 0.1) < 0.03  # grouped: q's split inside the group


def test_gsd_runs_inside_the_speculative_loop():
    torch.manual_seed(0)
    x = frames(16)
    tok = PatchTokenizer.fit(x, vocab_size=16, patch=4, iters=3)
    z = tok.encode(x)
    target = GPT(GPTConfig(vocab_size=16, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    draft = NGramDraft(z.flatten(), 16, order=2)
    accept = functools.partial(grouped_accept_reject, groups=codebook_groups(tok, 0.5))
    out, stats = speculative_generate(target, draft, z[0, :8], 56, gamma=4, generator=torch.Generator(), accept=accept)
    assert out.shape == (56,) and stats.emitted == 56
    with pytest.raises(ValueError, match="radius"):
        codebook_groups(tok, -1.0)
