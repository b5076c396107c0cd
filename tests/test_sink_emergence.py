import pytest
import torch

from minimal.checkpoints import load_pretrained
from minimal.sink_emergence import BBRecipe, BigramBackcopy, head_sink_mass, streaming_perplexity, train_bb
from minimal.transformer import GPT, GPTConfig


def test_sequences_follow_the_rules():
    """BOS first; after a trigger the token before it comes back; elsewhere the bigram table, checked
    against the empirical transition frequencies (total variation per frequent row)."""
    task = BigramBackcopy()
    x = task.sample(400, 65, generator=torch.Generator().manual_seed(0))
    assert x.shape == (400, 65) and (x[:, 0] == task.bos).all()
    body = x[:, 1:]
    assert int(body.min()) >= 0 and int(body.max()) < task.vocab
    after = task.triggers(body[:, 1:-1])  # position i >= 1 of the body holds a trigger (i >= 2 of the stream)
    assert after.any() and (body[:, 2:][after] == body[:, :-2][after]).all()
    a, b = body[:, 1:-1][~after], body[:, 2:][~after]  # bigram steps only
    counts = torch.zeros(task.vocab, task.vocab).index_put_((a, b), torch.ones(len(a)), accumulate=True)
    P = task.transitions()
    rows = counts.sum(1) >= 300
    assert rows.sum() >= 10
    tv = 0.5 * (counts[rows] / counts[rows].sum(1, keepdim=True) - P[rows]).abs().sum(1)
    assert tv.max() < 0.1


def test_the_table_is_seeded_and_stochastic():
    P = BigramBackcopy().transitions()
    assert torch.equal(P, BigramBackcopy().transitions()) and not torch.equal(P, BigramBackcopy(seed=1).transitions())
    assert torch.allclose(P.sum(1), torch.ones(32))
    x = BigramBackcopy(n_triggers=0).sample(2, 10, bos=False, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 10) and int(x.max()) < 32


@pytest.mark.parametrize("kwargs, match", [(dict(vocab=1), "vocab"), (dict(n_triggers=32), "n_triggers"),
                                           (dict(n_triggers=-1), "n_triggers"), (dict(alpha=0.0), "alpha")])
def test_bad_task_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BigramBackcopy(**kwargs)


@pytest.mark.parametrize("n, length, match", [(0, 8, "n must"), (2, 1, "length must"), (2.0, 8, "n must")])
def test_bad_sample_arguments(n, length, match):
    with pytest.raises(ValueError, match=match):
        BigramBackcopy().sample(n, length)


def test_sink_mass_reads_the_attention_on_position_0():
    """A model whose only head attends uniformly (zero query weights) gives exactly the uniform figure."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=33, block_size=32, n_layer=1, n_head=1, n_embd=16)).eval()
    with torch.no_grad():
        m.blocks[0].attn.qkv.weight[:16] = 0  # q = 0: every key scores 0, attention is uniform
    ids = BigramBackcopy().sample(4, 32, generator=torch.Generator().manual_seed(0))
    mass = head_sink_mass(m, ids, BigramBackcopy())
    expected = (1 / torch.arange(17, 33, dtype=torch.float)).mean().item()
    assert mass["uniform"] == pytest.approx(expected)
    assert mass["dormant"].shape == (1, 1) and mass["dormant"].item() == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="first_query"):
        head_sink_mass(m, ids[:, :16], BigramBackcopy())


def test_training_records_the_curve():
    model, meta = train_bb(BigramBackcopy(), BBRecipe(steps=20, eval_every=10, length=17), progress=False)
    assert [s for s, _, _ in meta["curve"]] == [0, 10, 20]
    assert model.config.block_size == 17 and meta["train_seconds"] > 0


@pytest.mark.slow
def test_the_shipped_model_grew_a_sink_and_the_controls_did_not():
    """bb-gpt: the dormant head parks its attention on BOS (recomputed here, on fresh sequences), the
    active one does not; neither control (no BOS, no triggers) grew a sink."""
    model, meta = load_pretrained("bb-gpt")
    task = BigramBackcopy(**meta["task"])
    ids = task.sample(64, model.config.block_size, generator=torch.Generator().manual_seed(99))
    mass = head_sink_mass(model, ids, task)
    assert mass["dormant"].max() > 0.8 and mass["active"].flatten()[mass["dormant"].argmax()] < 0.1
    (_, first, _), (_, last, _) = meta["curve"][0], meta["curve"][-1]
    assert first < 2 * meta["uniform"] and last > 0.8
    for control in meta["controls"].values():
        assert control["curve"][-1][1] < 2 * control["uniform"]


@pytest.mark.slow
def test_streaming_the_sink_model():
    """Past the context, dense attention breaks (unseen RoPE positions); keeping BOS as a sink is at
    least as good as the window alone."""
    model, meta = load_pretrained("bb-gpt")
    ppl = streaming_perplexity(model, BigramBackcopy(**meta["task"]))
    assert ppl["dense"] > 1.3 * ppl["sinks4"]
    assert ppl["sinks1"] <= ppl["window"] and ppl["sinks4"] <= ppl["window"]
