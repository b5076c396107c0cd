"""Continuous speculative decoding: its samples and target-only samples agree (moments, 1-D projections)."""

import pytest
import torch
from scipy.stats import ks_2samp

from minimal.speculative_continuous import (
    ContinuousAR,
    ContinuousARConfig,
    speculative_sample,
    target_sample,
    train_continuous,
    trajectories,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def models():
    torch.manual_seed(0)
    target = ContinuousAR(ContinuousARConfig(hidden=32, n_components=3)).eval()
    torch.manual_seed(1)
    draft = ContinuousAR(ContinuousARConfig(hidden=16, n_layer=1, context=2, n_components=2)).eval()
    return target, draft


def test_speculative_samples_match_target_samples():
    target, draft = models()
    prompt = torch.tensor([[0.1, -0.2], [0.3, 0.0], [-0.1, 0.2]])
    n, steps = 1500, 4
    g = torch.Generator().manual_seed(0)
    spec = torch.stack([speculative_sample(target, draft, prompt, steps, gamma=3, generator=g)[0].flatten()
                        for _ in range(n)])  # (n, steps * 2): the joint of the 4 new tokens
    ref = torch.stack([target_sample(target, prompt, steps, generator=g).flatten() for _ in range(n)])
    draft_only = torch.stack([target_sample(draft, prompt, steps, generator=g).flatten() for _ in range(n)])
    assert torch.allclose(spec.mean(0), ref.mean(0), atol=0.1)
    assert torch.allclose(spec.std(0), ref.std(0), rtol=0.1)
    directions = torch.randn(8, spec.shape[1], generator=torch.Generator().manual_seed(1))
    pvalues = [ks_2samp((spec @ d).numpy(), (ref @ d).numpy()).pvalue for d in directions]
    assert min(pvalues) > 0.01 / len(directions)  # Bonferroni over the projections
    # the test has power: the draft alone is told apart
    assert min(ks_2samp((draft_only @ d).numpy(), (ref @ d).numpy()).pvalue for d in directions) < 1e-6


def test_alpha_is_the_acceptance_probability():
    """alpha = E_{x~q}[min(1, p(x) / q(x))]: a draft equal to the target is accepted every time (alpha 1, not
    accepted / (accepted + calls) = gamma / (gamma + 1)), and a different draft is accepted as often as alpha says."""
    target, draft = models()
    prompt = torch.tensor([[0.1, -0.2], [0.3, 0.0], [-0.1, 0.2]])
    _, same = speculative_sample(target, target, prompt, 40, gamma=4, generator=torch.Generator().manual_seed(0))
    assert same["alpha"] == pytest.approx(1.0, abs=1e-6) and same["acceptance_rate"] == 1.0
    assert same["accepted"] == same["judged"] == same["drafted"] and same["tokens_per_call"] > 4
    _, other = speculative_sample(target, draft, prompt, 400, gamma=4, generator=torch.Generator().manual_seed(0))
    assert 0 < other["alpha"] < 1 and abs(other["acceptance_rate"] - other["alpha"]) < 0.1


def test_bad_inputs_raise():
    target, draft = models()
    prompt = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="gamma"):
        speculative_sample(target, draft, prompt, 4, gamma=0)
    with pytest.raises(ValueError, match="token size"):
        speculative_sample(target, ContinuousAR(ContinuousARConfig(dim=3)), prompt, 4)
    with pytest.raises(ValueError, match="prompt"):
        speculative_sample(target, draft, torch.zeros(1, 2), 4)
    with pytest.raises(TypeError, match="draft"):
        speculative_sample(target, "q", prompt, 4)
    with pytest.raises(ValueError, match="hidden"):
        ContinuousARConfig(hidden=0)


def test_training_lowers_the_loss_on_trajectories():
    data = trajectories(20, 16)
    assert data.shape == (20, 16, 2) and data.abs().max() < 1.2
    cfg = ContinuousARConfig(hidden=32)
    ctx, nxt = data[:, :3], data[:, 3]
    before = -ContinuousAR(cfg)(ctx).log_prob(nxt).mean()
    after = -train_continuous(cfg, data, steps=60, batch_size=64)(ctx).log_prob(nxt).mean()
    assert after < before
