"""Speculative decoding: exact at temperature 1 (chi-square + total variation), greedy == greedy target,
the fast accept/reject step == its token-by-token reference, the n-gram table == its counting formula;
the same for speculative Jacobi decoding (SJD), whose drafts are the target's own previous guesses."""

import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from minimal import bench, train
from minimal.kv_cache import generate
from minimal.speculative import (
    GPTDraft,
    NGramDraft,
    accept_reject,
    accept_reject_reference,
    autoregressive_generate,
    expected_tokens,
    speculative_generate,
    window_start,
)
from minimal.speculative_jacobi import fresh_tokens, jacobi_generate
from minimal.transformer import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(vocab_size=5, block_size=32, seed=0, n_embd=16):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=n_embd)).eval()


def bigram_gpt(vocab_size=3, seed=0):
    """A GPT whose blocks are switched off: p(next | history) depends on the last token only, so the
    exact distribution of a long sample is known: its transition matrix."""
    model = tiny_gpt(vocab_size, 32, seed)
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn.proj.weight)
        torch.nn.init.zeros_(block.mlp.proj.weight)
    torch.nn.init.normal_(model.tok_emb.weight, std=0.4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        P = model(torch.arange(vocab_size)[None])[0].softmax(-1)  # (V, V): row a = p(. | a)
    return model, P.double()


def tv(a, b):
    return 0.5 * (a - b).abs().sum().item()


def test_accept_reject_emits_the_target_distribution():
    V, gamma, n = 6, 4, 20_000
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(gamma + 1, V, generator=g), -1)  # (gamma + 1, V) target
    q = 0.8 * p[:gamma].roll(3, dims=-1) + 0.2 / V  # (gamma, V) draft: p's mass moved elsewhere
    assert min(tv(p[i], q[i]) for i in range(gamma)) > 0.3
    emitted = [[] for _ in range(gamma + 1)]  # emitted[i]: tokens produced at position i
    for _ in range(n):
        d = torch.multinomial(q, 1, generator=g)[:, 0]  # (gamma,) drafted from q
        k, t = accept_reject(p, q, d, g)
        for i, x in enumerate([*d[:k].tolist(), int(t)]):
            emitted[i].append(x)
    for i, xs in enumerate(emitted):
        if len(xs) < 2000:
            continue
        counts = torch.bincount(torch.tensor(xs), minlength=V).double()
        expected = p[i].double() / p[i].double().sum() * len(xs)
        assert chisquare(counts, expected).pvalue > 0.01, i
    first = torch.bincount(torch.tensor(emitted[0]), minlength=V).double() / n
    assert tv(first, p[0].double()) <= 0.01 and tv(q[0], p[0]) > 0.3


def test_accept_reject_matches_reference():
    g = torch.Generator().manual_seed(1)
    for trial in range(300):
        gamma, V = 1 + trial % 5, 2 + trial % 7
        p = torch.softmax(torch.randn(gamma + 1, V, generator=g) * 2, -1)
        q = torch.softmax(torch.randn(gamma, V, generator=g) * 2, -1)
        if trial % 3 == 0:
            q[: gamma // 2] = p[: gamma // 2]  # some positions where draft == target
        d = torch.multinomial(q, 1, generator=g)[:, 0]
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        fast = accept_reject(p, q, d, torch.Generator().manual_seed(seed))
        slow = accept_reject_reference(p, q, d, torch.Generator().manual_seed(seed))
        assert fast[0] == slow[0] and torch.equal(fast[1], slow[1])


def test_speculative_generate_is_exact_end_to_end():
    """20 000 tokens from a bigram target through the whole loop (sliding windows included)."""
    V, n = 3, 20_000
    target, P = bigram_gpt(V)
    g = torch.Generator().manual_seed(0)
    draft = NGramDraft(torch.randint(0, V, (200,), generator=g), V, order=1)  # fitted on noise
    Q = torch.stack([draft.q_row([a]) for a in range(V)]).double()
    assert min(tv(P[a], Q[a]) for a in range(V)) > 0.25  # the draft is far from the target
    out, stats = speculative_generate(target, draft, torch.tensor([0]), n, gamma=3, generator=g)
    x = torch.cat([torch.tensor([0]), out])
    observed = torch.bincount(x[:-1] * V + x[1:], minlength=V * V).double()  # transitions (a, b)
    expected = (torch.bincount(x[:-1], minlength=V).double()[:, None] * P / P.sum(1, keepdim=True)).flatten()
    assert chisquare(observed, expected, ddof=V - 1).pvalue > 0.01  # df = V (V - 1)
    assert tv(torch.bincount(x[1:], minlength=V).double() / n, P[x[:-1]].mean(0)) <= 0.01
    assert stats.emitted == n and stats.target_calls < n / 1.3


@pytest.mark.parametrize("draft_kind", ["gpt", "ngram", "same"])
def test_greedy_speculative_equals_greedy_target(draft_kind):
    target = tiny_gpt(11, block_size=24, seed=0, n_embd=32)
    draft = {"gpt": tiny_gpt(11, block_size=16, seed=1), "same": target,
             "ngram": NGramDraft(torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(0)), 11, 3)}
    prompt = torch.tensor([1, 2, 3, 4, 5])
    reference = autoregressive_generate(target, prompt, 70, temperature=0.0)  # past the 24-token context
    out, stats = speculative_generate(target, draft[draft_kind], prompt, 70, gamma=4, temperature=0.0)
    assert torch.equal(out, reference)
    assert torch.equal(reference[:19], generate(target, prompt, 19, temperature=0.0))  # fits the cache
    if draft_kind == "same":
        assert stats.alpha == 1.0 and stats.tokens_per_call > 4


def test_autoregressive_generate_equals_kv_cache_generate():
    target = tiny_gpt(7)
    prompt = torch.tensor([3, 1, 4])
    a = autoregressive_generate(target, prompt, 25, generator=torch.Generator().manual_seed(5))
    b = generate(target, prompt, 25, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_window_start_is_fixed_per_position():
    assert [window_start(j, 8) for j in (1, 8, 9, 12, 13, 16, 17)] == [0, 0, 4, 4, 8, 8, 12]
    assert all(j - window_start(j, 8) <= 8 for j in range(1, 100))


def test_ngram_table_equals_counting_formula():
    g = torch.Generator().manual_seed(0)
    V, order, beta = 4, 2, 0.5
    tokens = torch.randint(0, V, (300,), generator=g)
    draft = NGramDraft(tokens, V, order, beta)
    ids = tokens.tolist()

    def q_ref(context):
        q = [1.0 / V] * V
        for k in range(order + 1):
            ctx = tuple(context[len(context) - k:]) if k else ()
            nxt = Counter(ids[i] for i in range(k, len(ids)) if tuple(ids[i - k:i]) == ctx)
            if not nxt:
                break
            total = sum(nxt.values())
            q = [(nxt[x] + beta * q[x]) / (total + beta) for x in range(V)]
        return torch.tensor(q)

    for context in ([], [1], [2, 3], [0, 0, 1], ids[-5:]):
        assert torch.allclose(draft.q_row(context), q_ref(context).float(), atol=1e-6)


def test_gpt_draft_resyncs_its_cache():
    draft_model = tiny_gpt(5, block_size=16, seed=2)
    draft = GPTDraft(draft_model)
    seq = torch.tensor([1, 2, 3, 4])
    d, q = draft.propose(seq, 3, generator=torch.Generator().manual_seed(0))
    assert d.shape == (3,) and q.shape == (3, 5) and torch.allclose(q.sum(-1), torch.ones(3))
    new = torch.cat([seq, d[:1], torch.tensor([(int(d[1]) + 1) % 5])])  # one accepted, then a correction
    _, q2 = draft.propose(new, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fresh = draft_model(new[None])[0, -1].softmax(-1)
    assert torch.allclose(q2[0], fresh, atol=1e-5)


def test_expected_tokens_formula():
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


@pytest.mark.parametrize("kwargs, error, match", [
    ({"gamma": 0}, ValueError, "gamma"),
    ({"gamma": -2}, ValueError, "gamma"),
    ({"gamma": 2.0}, ValueError, "gamma"),
    ({"temperature": -0.5}, ValueError, "temperature"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
])
def test_bad_arguments_raise(kwargs, error, match):
    target, draft = tiny_gpt(5), tiny_gpt(5, seed=1)
    args = {"prompt": torch.tensor([1, 2]), "max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=match):
        speculative_generate(target, draft, **args)


def test_bad_models_and_prompts_raise():
    target, draft = tiny_gpt(5, block_size=32), tiny_gpt(5, block_size=8, seed=1)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, tiny_gpt(6), torch.tensor([1]), 4)
    with pytest.raises(ValueError, match="target's context"):
        speculative_generate(target, draft, torch.zeros(33, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="draft's context"):
        speculative_generate(target, draft, torch.zeros(9, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="draft"):
        speculative_generate(target, "bigram", torch.tensor([1]), 4)
    with pytest.raises(ValueError, match="prompt"):
        speculative_generate(target, draft, torch.tensor([7]), 4)  # id outside the vocabulary
    with pytest.raises(ValueError, match="order"):
        NGramDraft(torch.tensor([0, 1]), 5, order=-1)


def test_bench_and_train_commands_run(tmp_path, capsys):
    figures = bench.main(["speculative", "--quick", "--json", "--device", "cpu"])
    assert figures["speedup"] > 0 and 0 <= figures["alpha"] <= 1
    assert figures["tokens_per_call"] >= 1
    assert set(figures["gamma_sweep"]) == {"1", "2"} and all(g["verify_cost_ratio"] > 0
                                                             for g in figures["gamma_sweep"].values())
    result = train.main(["text-draft", "--steps", "3", "--out", str(tmp_path / "d.pt"), "--device", "cpu"])
    assert (tmp_path / "d.pt").is_file() and result["val_bpc"] > 0


# ---------------------------------------------------------------------------------------------------
# Speculative Jacobi decoding
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_jacobi_generate_is_exact_end_to_end():
    """20 000 tokens from a bigram target through the whole SJD loop (stale guesses, fresh tokens, windows)."""
    V, n = 3, 20_000
    target, P = bigram_gpt(V)
    g = torch.Generator().manual_seed(0)
    out, stats = jacobi_generate(target, torch.tensor([0]), n, gamma=4, generator=g)
    x = torch.cat([torch.tensor([0]), out])
    observed = torch.bincount(x[:-1] * V + x[1:], minlength=V * V).double()
    expected = (torch.bincount(x[:-1], minlength=V).double()[:, None] * P / P.sum(1, keepdim=True)).flatten()
    assert chisquare(observed, expected, ddof=V - 1).pvalue > 0.01
    assert tv(torch.bincount(x[1:], minlength=V).double() / n, P[x[:-1]].mean(0)) <= 0.01
    assert stats.emitted == n and stats.accepted > 0


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [1, 4])
def test_jacobi_generate_matches_the_joint_of_a_full_context_model(gamma):
    """3 new tokens from a GPT whose every token depends on the whole context: the 27-way joint of 3000
    SJD samples against the exact joint (enumerated), by chi-square and total variation."""
    V, n = 3, 3000
    target = tiny_gpt(V, block_size=8)
    torch.nn.init.normal_(target.tok_emb.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    prompt, seqs = torch.tensor([0, 1]), torch.tensor(list(itertools.product(range(V), repeat=3)))  # (27, 3)
    with torch.no_grad():
        logp = target(torch.cat([prompt.expand(len(seqs), 2), seqs], 1))[:, 1:-1].log_softmax(-1)  # (27, 3, V)
    joint = logp.gather(-1, seqs[..., None])[..., 0].sum(-1).double().exp()  # (27,)
    joint /= joint.sum()
    g = torch.Generator().manual_seed(gamma)
    counts = torch.zeros(27, dtype=torch.float64)
    for _ in range(n):
        out, _ = jacobi_generate(target, prompt, 3, gamma=gamma, generator=g)
        counts[int(out[0]) * 9 + int(out[1]) * 3 + int(out[2])] += 1
    assert chisquare(counts, joint * n).pvalue > 0.01
    assert tv(counts / n, joint) <= 0.06 and tv(torch.full((27,), 1 / 27), joint) > 0.4  # uniform drafts are far


@pytest.mark.parametrize("gamma", [1, 4, 16])
def test_greedy_jacobi_equals_greedy_target(gamma):
    target = tiny_gpt(11, block_size=24, seed=0, n_embd=32)
    prompt = torch.tensor([1, 2, 3, 4, 5])
    reference = autoregressive_generate(target, prompt, 70, temperature=0.0)  # past the 24-token context
    out, stats = jacobi_generate(target, prompt, 70, gamma=gamma, temperature=0.0,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, reference) and stats.emitted == 70


def test_jacobi_accepts_whole_windows_where_the_next_token_ignores_the_last():
    """A target that always says 3: after a call that rejects a fresh random draft, its own guesses are
    right, so the next call emits the whole window plus the bonus token; after a full window the call has
    scored nothing beyond it, so fresh tokens refill the window: calls alternate 1 (+ lucky) and 5 tokens.
    (Where each token copies the previous one, the guesses, conditioned on stale drafts, stay wrong: that
    is Jacobi decoding's limit.)"""
    target = tiny_gpt(5, block_size=64)
    with torch.no_grad():
        for block in target.blocks:
            torch.nn.init.zeros_(block.attn.proj.weight)
            torch.nn.init.zeros_(block.mlp.proj.weight)
        v = torch.randn(16, generator=torch.Generator().manual_seed(0))
        target.tok_emb.weight.copy_(v.expand(5, 16) * torch.tensor([1.0, 1, 1, 10, 1])[:, None])  # tied head
    out, stats = jacobi_generate(target, torch.tensor([3]), 60, gamma=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.full((60,), 3))
    assert abs(stats.alpha - stats.acceptance_rate) < 1e-6 and 2.8 < stats.tokens_per_call < 4


def test_fresh_tokens_have_one_hot_q():
    d, q = fresh_tokens(6, 7, torch.Generator().manual_seed(0))
    assert d.shape == (6,) and q.shape == (6, 7)
    assert torch.equal(q.argmax(-1), d) and torch.equal(q.sum(-1), torch.ones(6))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"gamma": 0}, ValueError, "gamma"),
    ({"gamma": True}, ValueError, "gamma"),
    ({"temperature": -1.0}, ValueError, "temperature"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
    ({"prompt": torch.zeros(33, dtype=torch.long)}, ValueError, "target's context"),
    ({"prompt": torch.tensor([9])}, ValueError, "prompt"),
    ({"accept": "exact"}, TypeError, "accept"),
    ({"target": "gpt"}, TypeError, "target"),
])
def test_jacobi_bad_arguments_raise(kwargs, error, match):
    args = {"target": tiny_gpt(5, block_size=32), "prompt": torch.tensor([1, 2]), "max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=match):
        jacobi_generate(**args)
