"""Patch tokenizer, GSD's per-position groups as published (rank window, probability and embedding filters),
the static-cluster ablation, and both inside the speculative and the Jacobi loops."""

import functools

import pytest
import torch

from minimal import bench
from minimal.data import SpriteWorld
from minimal.image_tokens import (
    FRAMES,
    codebook_clusters,
    embedding_sq_distances,
    group_accept_reject,
    gsd_accept_reject,
    gsd_groups,
    load_setup,
    static_cluster_accept_reject,
)
from minimal.patch_tokenizer import PatchTokenizer
from minimal.speculative import NGramDraft, accept_reject, speculative_generate
from minimal.speculative_jacobi import jacobi_generate
from minimal.toybench import validity_rate
from minimal.transformer import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([SpriteWorld(FRAMES).rollout(8, generator=g)[0] for _ in range(n // 8)])


def official_group(p_row, d, sq_dist, window=7, p_threshold=0.15, d_threshold=0.5):
    """GSD's group as the official code builds it, token by token: the slice [r - window, r + window) of the
    ascending sort (clipped at rank 0), filtered by probability and embedding distance, plus d itself."""
    order = p_row.sort(stable=True).indices.tolist()
    r = order.index(d)
    return {d} | {y for y in order[max(0, r - window):r + window]
                  if abs(float(p_row[y] - p_row[d])) < p_threshold and float(sq_dist[d, y]) < d_threshold}


def emitted_first(rule, p, q, n=4000, seed=0):
    """Counts of the first emitted token over n single-draft rounds."""
    g, counts = torch.Generator().manual_seed(seed), torch.zeros(p.shape[-1])
    for _ in range(n):
        d = torch.multinomial(q[0], 1, generator=g)
        k, t = rule(p, q, d, g)
        counts[int(d[0]) if k else int(t)] += 1
    return counts


def test_tokenizer_round_trip_and_shapes():
    x = frames()
    tok = PatchTokenizer.fit(x, vocab_size=128, patch=4, iters=5)
    z = tok.encode(x)
    assert z.shape == (len(x), 64) and z.dtype == torch.long and int(z.max()) < 128
    rec = tok.decode(z)
    assert rec.shape == x.shape and (rec - x).abs().mean() < 0.01
    assert validity_rate(x, 0, FRAMES) == 1.0  # FRAMES is the config these frames are scored with
    one = torch.full((1, 64), 3)  # every patch token 3: the frame tiles codebook vector 3
    assert torch.equal(tok.decode(one)[0], tok.codebook[3].view(3, 4, 4).repeat(1, 8, 8))
    with pytest.raises(ValueError, match="patch"):
        PatchTokenizer.fit(x[:, :, :30, :30], 8)
    with pytest.raises(ValueError, match="vocab_size"):
        PatchTokenizer.fit(x, 1)


def test_gsd_group_by_hand():
    """V = 8. p ascending: 7, 6, 5, 4, 3, 2, 1, 0 (ranks 0..7). Draft d = 2 (p 0.15, rank 5)."""
    p = torch.tensor([[0.32, 0.20, 0.15, 0.12, 0.10, 0.06, 0.04, 0.01]])
    sq = torch.full((8, 8), 0.1)
    sq[2, 4] = 0.9  # token 4 looks different from token 2
    d = torch.tensor([2])
    # window 2: ranks [3, 7) = tokens 4, 3, 2, 1; |p - 0.15| < 0.1 keeps 3 (0.03), 1 (0.07), 4 (0.05)
    # but 4 fails the embedding filter: G = {1, 2, 3}
    assert gsd_groups(p, d, sq, window=2, p_threshold=0.1).nonzero()[:, 1].tolist() == [1, 2, 3]
    # official constants: ranks [-2, 12) clipped = all; |p - 0.15| < 0.15 drops only token 0 (0.32)
    assert gsd_groups(p, d, sq).nonzero()[:, 1].tolist() == [1, 2, 3, 5, 6, 7]
    assert official_group(p[0], 2, sq, window=2, p_threshold=0.1) == {1, 2, 3}


def test_gsd_groups_match_the_official_slice():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        V, gamma = 6 + trial % 30, 1 + trial % 5
        p = torch.softmax(2 * torch.randn(gamma + 1, V, generator=g), -1)
        p[:, : trial % 4] = 0  # ties at zero mass, ordered by index (stable sort)
        p /= p.sum(-1, keepdim=True)
        d, sq = torch.randint(V, (gamma,), generator=g), torch.rand(V, V, generator=g)
        window, p_threshold, d_threshold = trial % 9, 0.05 * (trial % 5), 0.2 * (trial % 6)
        groups = gsd_groups(p, d, sq, window, p_threshold, d_threshold)
        for i in range(gamma):
            want = official_group(p[i], int(d[i]), sq, window, p_threshold, d_threshold)
            assert set(groups[i].nonzero()[:, 0].tolist()) == want, (trial, i)


def test_zero_threshold_or_radius_reduces_to_the_exact_step():
    g = torch.Generator().manual_seed(0)
    sq = torch.rand(6, 6, generator=g)
    tok = PatchTokenizer(torch.eye(6, 48), patch=4)  # six distinct codebook patches
    rules = [functools.partial(gsd_accept_reject, sq_dist=sq, window=0),
             functools.partial(gsd_accept_reject, sq_dist=sq, p_threshold=0),
             functools.partial(gsd_accept_reject, sq_dist=sq, d_threshold=0),
             functools.partial(static_cluster_accept_reject, clusters=codebook_clusters(tok, 0.0))]
    for trial in range(200):
        gamma = 1 + trial % 4
        p = torch.softmax(2 * torch.randn(gamma + 1, 6, generator=g), -1)
        q = torch.softmax(2 * torch.randn(gamma, 6, generator=g), -1)
        d = torch.multinomial(q, 1, generator=g)[:, 0]
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        a = accept_reject(p, q, d, torch.Generator().manual_seed(seed))
        for rule in rules:
            b = rule(p, q, d, torch.Generator().manual_seed(seed))
            assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_rank_window_never_accepts_a_token_the_target_gives_no_mass():
    """p puts its mass on tokens 0-3; the 28 others have none and rank 0-27 (ties by index). With both
    filters switched off, so that only the rank window decides, a zero-mass draft more than 7 ranks below
    every token with mass is never accepted: its group holds no mass. The static cluster (here: all
    tokens) accepts it, because it ignores where the target puts its mass."""
    V = 32
    p = torch.zeros(2, V)
    p[:, :4] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    q = torch.full((1, V), 1.0 / V)  # the draft proposes every token
    no_filters = functools.partial(gsd_accept_reject, sq_dist=torch.zeros(V, V), p_threshold=1.0)
    official = functools.partial(gsd_accept_reject, sq_dist=torch.zeros(V, V))
    static = functools.partial(static_cluster_accept_reject, clusters=torch.ones(V, V, dtype=torch.bool))
    far = list(range(4, 25))  # ranks 0..20: their windows [r - 7, r + 7) end below rank 28
    g = torch.Generator().manual_seed(0)
    for d in far:
        for _ in range(200):
            for rule in (no_filters, official):
                assert rule(p, q, torch.tensor([d]), g)[0] == 0
    assert gsd_groups(p, torch.tensor([4]), torch.zeros(V, V), p_threshold=1.0)[0, :4].sum() == 0
    assert sum(static(p, q, torch.tensor([d]), g)[0] for d in far for _ in range(20)) > 300  # always: sum p / sum q = 1
    # within 7 ranks of the support the window reaches token 3 (p = 0.1 < 0.15): that is GSD's rule too
    assert gsd_groups(p, torch.tensor([31]), torch.zeros(V, V))[0, :4].tolist() == [False, False, False, True]


def test_grouped_step_accepts_more_and_is_not_exact():
    """p splits its mass over two interchangeable tokens (same embedding), q prefers the second one: GSD
    accepts the draft every time and so emits q's split, not p's. That is the price of its speed."""
    p = torch.tensor([[0.45, 0.45, 0.1], [0.45, 0.45, 0.1]])
    q = torch.tensor([[0.05, 0.9, 0.05]])
    sq = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # 0 and 1 look alike
    assert gsd_groups(p, torch.tensor([1]), sq)[0].tolist() == [True, True, False]
    exact = emitted_first(accept_reject, p, q)
    grouped = emitted_first(functools.partial(gsd_accept_reject, sq_dist=sq), p, q)
    assert abs(exact[1] / 4000 - 0.45) < 0.03  # exact: p
    assert abs(grouped[1] / 4000 - 0.85) < 0.03  # GSD: q's split inside the group {0, 1}


def test_group_step_matches_hand_probability():
    p, q = torch.tensor([[0.2, 0.1, 0.7], [0.3, 0.3, 0.4]]), torch.tensor([[0.1, 0.8, 0.1]])
    groups = torch.tensor([[True, True, False]])  # sum_G p / sum_G q = 0.3 / 0.9
    g = torch.Generator().manual_seed(0)
    accepted = sum(group_accept_reject(p, q, torch.tensor([1]), groups, g)[0] for _ in range(6000))
    assert abs(accepted / 6000 - 1 / 3) < 0.02


def test_gsd_runs_inside_both_loops():
    torch.manual_seed(0)
    x = frames(16)
    tok = PatchTokenizer.fit(x, vocab_size=16, patch=4, iters=3)
    z = tok.encode(x)
    target = GPT(GPTConfig(vocab_size=16, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    gsd = functools.partial(gsd_accept_reject, sq_dist=embedding_sq_distances(target))
    static = functools.partial(static_cluster_accept_reject, clusters=codebook_clusters(tok, 0.5))
    for rule in (gsd, static):
        out, stats = speculative_generate(target, NGramDraft(z.flatten(), 16, order=2), z[0, :8], 56, gamma=4,
                                          generator=torch.Generator(), accept=rule)
        assert out.shape == (56,) and stats.emitted == 56
        out, stats = jacobi_generate(target, z[0, :8], 56, gamma=8, generator=torch.Generator(), accept=rule)
        assert out.shape == (56,) and stats.emitted == 56 and stats.target_calls < 56
    sq = embedding_sq_distances(target)
    e = target.tok_emb.weight.detach()
    assert torch.allclose(sq, torch.cdist(e, e) ** 2, atol=1e-4) and sq.shape == (16, 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": -1}, "window"), ({"window": 2.0}, "window"), ({"p_threshold": -0.1}, "p_threshold"),
    ({"d_threshold": "0.5"}, "d_threshold"), ({"sq_dist": torch.zeros(3, 3)}, "sq_dist"),
])
def test_bad_group_arguments_raise(kwargs, match):
    p, d = torch.softmax(torch.randn(3, 5), -1), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=match):
        gsd_groups(p, d, **{"sq_dist": torch.zeros(5, 5), **kwargs})
    with pytest.raises(ValueError, match="radius"):
        codebook_clusters(PatchTokenizer(torch.eye(6, 48), patch=4), -1.0)
    with pytest.raises(ValueError, match="sq_dist"):
        gsd_accept_reject(p, p[:2], d)  # no embedding distances given
    with pytest.raises(ValueError, match="clusters"):
        static_cluster_accept_reject(p, p[:2], d)


def test_bench_command_runs():
    figures = bench.main(["speculative-image", "--quick", "--json", "--device", "cpu"])
    assert {"target", "sjd", "sjd_gsd", "sjd_static", "ngram", "ngram_gsd"} <= set(figures["samplers"])
    sjd = figures["samplers"]["sjd"]
    assert sjd["speedup"] > 0 and sjd["tokens_per_call"] >= 1 and 0 <= sjd["valid"] <= 1
    assert figures["gsd_paper_speedup"] == 3.7 and figures["diagnostics"]["judged_positions"] > 0


@pytest.mark.slow
def test_shipped_image_gpt_sjd_and_the_embedding_scale():
    """On the shipped target: real frames survive the tokenizer, SJD emits several tokens per call, and
    GSD's embedding threshold 0.5 is small at this embedding scale (most used tokens are alone within it)."""
    s = load_setup()
    assert validity_rate(s.tokenizer.decode(s.tokens), 0, FRAMES) > 0.9
    calls = sum(jacobi_generate(s.target, s.tokens[i, :32], 32, 16, generator=torch.Generator().manual_seed(i))[1]
                .target_calls for i in range(8))
    assert 8 * 32 / calls > 2.5
    used = torch.bincount(s.tokens.flatten(), minlength=s.tokenizer.vocab_size) > 0
    sq = embedding_sq_distances(s.target)[used][:, used]
    assert (sq < 0.5).sum(1).double().median() <= 2 and sq.median() > 0.5
