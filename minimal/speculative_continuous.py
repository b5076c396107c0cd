"""Continuous speculative decoding: the accept/resample rule for continuous tokens with densities.

Wang et al. 2024, *Continuous Speculative Decoding for Autoregressive Image Generation* (CSpD). With
target density p(x) and draft density q(x) over vectors x in R^D, one round is the discrete one
(`speculative.py`) with densities in place of probabilities:

    draft  x_i ~ q_i,  i = 1..gamma
    accept x_i with probability min(1, p_i(x_i) / q_i(x_i))
    at the first rejection, sample the residual r(x) = max(0, p_i(x) - q_i(x)) / Z by rejection:
        propose y ~ p_i, keep it with probability max(0, p_i(y) - q_i(y)) / p_i(y) = max(0, 1 - q_i(y) / p_i(y))
    (r(y) <= p_i(y) / Z is the bound that makes this valid), or, if all are accepted, a bonus x ~ p_{gamma+1}.

The same algebra as the discrete case shows the output density is p. The model here is a small
continuous-token autoregressive model: an MLP reads the previous `context` vectors and outputs a
Gaussian-mixture density head (K components, diagonal covariance), so p and q have closed forms.

Simplified vs CSpD: CSpD's tokens come from a diffusion head whose density is intractable; it uses
the Gaussian of the final denoising step, aligns draft and target trajectories by sharing their noise,
and is exact only with respect to those final-step densities. A mixture head needs none of that.
Data: 2-D trajectories of a SpriteWorld sprite (its top-left corner, scaled to [-1, 1], plus a little
Gaussian noise so that the positions have a density).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from .data import SpriteWorld


@dataclass
class ContinuousARConfig:
    dim: int = 2  # size of each continuous token
    context: int = 3  # previous tokens the model reads
    hidden: int = 128
    n_layer: int = 2
    n_components: int = 4  # Gaussian-mixture components of the density head

    def __post_init__(self):
        for name in ("dim", "context", "hidden", "n_layer", "n_components"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class ContinuousAR(nn.Module):
    """p(x_t | x_{t-context} .. x_{t-1}) = sum_k pi_k N(x_t; mu_k, diag(sigma_k^2))."""

    def __init__(self, config: ContinuousARConfig):
        super().__init__()
        self.config = c = config
        layers, width = [], c.context * c.dim
        for _ in range(c.n_layer):
            layers += [nn.Linear(width, c.hidden), nn.GELU()]
            width = c.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, c.n_components * (1 + 2 * c.dim))

    def forward(self, ctx: torch.Tensor) -> MixtureSameFamily:
        """ctx (B, context, dim) -> the mixture density of the next token, batch shape (B,)."""
        c = self.config
        out = self.head(self.body(ctx.flatten(1)))  # (B, K (1 + 2D))
        logits, mu, log_sigma = out.split([c.n_components, c.n_components * c.dim, c.n_components * c.dim], -1)
        mu = mu.view(-1, c.n_components, c.dim)  # (B, K, D)
        sigma = F.softplus(log_sigma.view(-1, c.n_components, c.dim)) + 1e-3  # (B, K, D)
        return _mixture(logits, mu, sigma)


def _sample(dist, generator=None) -> torch.Tensor:
    """x ~ mixture (B, D), drawn with an explicit generator (torch.distributions has none)."""
    mix, comp = dist.mixture_distribution, dist.component_distribution.base_dist
    k = torch.multinomial(mix.probs, 1, generator=generator)[:, 0]  # (B,)
    i = torch.arange(len(k))
    noise = torch.randn(comp.loc[i, k].shape, generator=generator, device=comp.loc.device)
    return comp.loc[i, k] + comp.scale[i, k] * noise  # (B, D)


def _check(target, draft, prompt, n_new, gamma):
    for name, m in (("target", target), ("draft", draft)):
        if not isinstance(m, ContinuousAR):
            raise TypeError(f"{name} must be a ContinuousAR, got {type(m).__name__}")
    if draft.config.dim != target.config.dim:
        raise ValueError(f"draft and target must share the token size: {draft.config.dim} vs {target.config.dim}")
    need = max(target.config.context, draft.config.context)
    if not isinstance(prompt, torch.Tensor) or prompt.ndim != 2 or prompt.shape[0] < need \
            or prompt.shape[1] != target.config.dim:
        raise ValueError(f"prompt must be a (T >= {need}, {target.config.dim}) tensor")
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise ValueError(f"gamma (draft length) must be an int >= 1, got {gamma!r}")
    if not isinstance(n_new, int) or n_new < 0:
        raise ValueError(f"n_new must be an int >= 0, got {n_new!r}")


@torch.no_grad()
def target_sample(target: ContinuousAR, prompt: torch.Tensor, n_new: int, generator=None) -> torch.Tensor:
    """Target alone, one call per token: the baseline. prompt (T, D) -> (n_new, D)."""
    _check(target, target, prompt, n_new, 1)
    seq, k = list(prompt), target.config.context
    for _ in range(n_new):
        seq.append(_sample(target(torch.stack(seq[-k:])[None]), generator)[0])
    return torch.stack(seq[len(prompt):]) if n_new else prompt.new_empty(0, prompt.shape[1])


@torch.no_grad()
def speculative_sample(target: ContinuousAR, draft: ContinuousAR, prompt: torch.Tensor, n_new: int,
                       gamma: int = 4, generator=None) -> tuple[torch.Tensor, dict]:
    """Sample n_new tokens from the target with continuous speculative decoding -> (x (n_new, D), stats).

    stats: alpha = E_{x~q}[min(1, p(x) / q(x))] (the continuous sum_y min(p, q) = 1 - TV(p, q), as in
    speculative.py), estimated by the mean of min(1, p(x_i) / q(x_i)) over the drafted tokens the target
    judged; acceptance_rate = accepted / judged; tokens_per_call = n_new / target calls.
    """
    _check(target, draft, prompt, n_new, gamma)
    kt, kd = target.config.context, draft.config.context
    seq, stats = list(prompt), {"target_calls": 0, "drafted": 0, "accepted": 0, "judged": 0, "beta_sum": 0.0,
                                "residual_proposals": 0}
    while len(seq) < len(prompt) + n_new:
        g = min(gamma, len(prompt) + n_new - len(seq) - 1)
        drafted, q = [], []
        for _ in range(g):
            q.append(draft(torch.stack((seq + drafted)[-kd:])[None]))
            drafted.append(_sample(q[-1], generator)[0])
        full = seq + drafted
        ctx = torch.stack([torch.stack(full[len(seq) + i - kt:len(seq) + i]) for i in range(g + 1)])  # (g+1, k, D)
        p = target(ctx)  # ONE call: the densities of all g + 1 positions
        n = 0
        if g:
            x = torch.stack(drafted)  # (g, D)
            log_q = torch.cat([d.log_prob(x[i:i + 1]) for i, d in enumerate(q)])  # (g,)
            log_ratio = (p.log_prob(torch.cat([x, x[-1:]]))[:g] - log_q).clamp(max=0)  # (g,): log min(1, p/q)
            u = torch.rand(g, generator=generator)
            n = int((u.log() < log_ratio).long().cumprod(0).sum())  # accept w.p. min(1, p/q)
            judged = min(n + 1, g)  # drafted tokens the target judged
            stats["judged"] += judged
            stats["beta_sum"] += float(log_ratio[:judged].exp().sum())  # min(1, p(x) / q(x)), x ~ q
        stats["target_calls"] += 1
        stats["drafted"] += g
        stats["accepted"] += n
        seq += drafted[:n]
        p_n = _select(p, n)
        if n == g:  # all accepted: bonus token from p_{g+1}
            seq.append(_sample(p_n, generator)[0])
            continue
        while True:  # residual max(0, p - q) by rejection from p
            y = _sample(p_n, generator)  # (1, D)
            stats["residual_proposals"] += 1
            keep = 1 - (q[n].log_prob(y) - p_n.log_prob(y)).exp()  # max(0, p - q) / p
            if torch.rand(1, generator=generator) < keep:
                seq.append(y[0])
                break
    stats["alpha"] = stats["beta_sum"] / max(1, stats["judged"])
    stats["acceptance_rate"] = stats["accepted"] / max(1, stats["judged"])
    stats["tokens_per_call"] = n_new / max(1, stats["target_calls"])
    out = seq[len(prompt):]
    return (torch.stack(out) if out else prompt.new_empty(0, prompt.shape[1])), stats


def _select(dist: MixtureSameFamily, i: int) -> MixtureSameFamily:
    """The i-th density of a batch of mixtures, as a batch of one."""
    comp = dist.component_distribution.base_dist
    return _mixture(dist.mixture_distribution.logits[i:i + 1], comp.loc[i:i + 1], comp.scale[i:i + 1])


def _mixture(logits, mu, sigma) -> MixtureSameFamily:
    """Mixture of diagonal Gaussians: logits (B, K), mu and sigma (B, K, D); no argument validation (speed)."""
    return MixtureSameFamily(Categorical(logits=logits, validate_args=False),
                             Independent(Normal(mu, sigma, validate_args=False), 1, validate_args=False),
                             validate_args=False)


# ---------------------------------------------------------------------------------------------------
# Data and training: SpriteWorld trajectories
# ---------------------------------------------------------------------------------------------------

def trajectories(n: int, length: int, noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """(n, length, 2) top-left corners of one bouncing sprite, scaled to [-1, 1], plus Gaussian noise."""
    world, g = SpriteWorld(n_sprites=1), torch.Generator().manual_seed(seed)
    high = world.config.size - world.config.sprite_size
    xs = torch.stack([world.rollout(length, generator=g)[1]["positions"][:, 0].float() for _ in range(n)])
    return xs / high * 2 - 1 + noise * torch.randn(xs.shape, generator=g)


def train_continuous(config: ContinuousARConfig, data: torch.Tensor, steps: int = 400, seed: int = 0,
                     batch_size: int = 256, lr: float = 3e-3) -> ContinuousAR:
    """Maximum likelihood on random windows of data (N, T, D)."""
    torch.manual_seed(seed)
    model, g = ContinuousAR(config), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    k = config.context
    with torch.enable_grad():  # also when called under no_grad (the benchmark)
        _fit(model, opt, data, k, steps, batch_size, g)
    return model.eval()


def _fit(model, opt, data, k, steps, batch_size, g) -> None:
    for _ in range(steps):
        i = torch.randint(0, data.shape[0], (batch_size,), generator=g)
        t = torch.randint(k, data.shape[1], (batch_size,), generator=g)
        ctx = torch.stack([data[a, b - k:b] for a, b in zip(i.tolist(), t.tolist(), strict=True)])  # (B, k, D)
        loss = -model(ctx).log_prob(data[i, t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
