"""MeanFlow and the published ways to train it: one-step generation by learning the *average* velocity.

Flow matching (flow_matching.py) learns the instantaneous velocity v(z, t) and needs many small steps
because the paths curve. A mean-flow network learns the average velocity over an interval [r, t]:

    u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_tau, tau) dtau

so one evaluation jumps the whole interval exactly: z_r = z_t - (t - r) u(z_t, r, t) (`mean_flow_sample`).
The network is conditioned on (t, h = t - r). Differentiating (t - r) u = integral_r^t v in t gives the
MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) du/dt,     du/dt = v . d_z u + d_t u   (r held fixed),

and du/dt is one Jacobian-vector product of the network at (z, r, t) with tangents (v, 0, 1)
(`total_derivative`). Three published losses train u; each is one function here, on data x:

`mean_flow_loss`: MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative
Modeling"). u_theta is regressed onto the stop-gradient target u_tgt = v - (t - r) du/dt, the JVP taken
along v = e - x; (r, t) are the min and max of two logit-normal draws, a fraction 1 - ratio_neq of pairs
has r = t (plain flow matching); the adaptive weight L = Delta / sg((Delta + c)^p) (`adaptive_weight_loss`).

`imf_loss`: improved MeanFlow, iMF (Geng, Lu, Wu, Shechtman, Kolter, He 2025, "Improved Mean Flows: On
the Challenges of Fastforward Generative Models"). The identity read the other way round: the compound
velocity V = u_theta(z_t, r, t) + (t - r) du/dt should equal v(z_t, t) = E[e - x | z_t], so V is
regressed onto e - x, a target that does not move with the network. The JVP runs along the model's own
velocity u_theta(z, t, t): along e - x, V would not be a function of z alone and the squared error would
also shrink the variance of (I - (t - r) d_z u)(e - x), a bias. Where ours differs from iMF: iMF keeps
the JVP under stop-gradient (its gradient is MeanFlow's with the tangent swapped); ours lets the gradient
through the JVP as well (second derivatives, about 1.6x the cost of a step), a plain regression whose
minimiser is the true u. Its defaults are what works here: uniform (r, t), 75% of pairs with r != t,
squared error (p = 0).

`split_loss`: interval splitting, SplitMeanFlow (Guo et al. 2025, "SplitMeanFlow: Interval Splitting
Consistency in Few-Step Generative Modeling"). No JVP: the integral defining u is additive,

    (t - r) u(z_t, r, t) = (t - s) u(z_t, s, t) + (s - r) u(z_s, r, s),   z_s = z_t - (t - s) u(z_t, s, t),

so u on [r, t] is regressed onto two stop-gradient jumps, and u(z, t, t) onto v. We split at the
midpoint s = (r + t) / 2, as the shortcut models of Frans, Hafner, Levine, Abbeel 2024 do (SplitMeanFlow
draws s at random); the progressive self-distillation of flow maps by their semigroup property (Boffi,
Albergo, Vanden-Eijnden 2025, "How to build a consistency model: Learning flow maps via
self-distillation") is the same construction. A jump learns from jumps half as long, so what short
jumps know reaches the full jump in a few doublings. With a flow-matching `teacher` v_T(z, t), its
velocity replaces e - x at r = t (distillation): the loss then has no sampling noise left.

Not implemented here: classifier-free guidance. MeanFlow bakes a fixed guidance scale into the target
(v~ = w (e - x) + (1 - w) u(z, t, t | no label), plus a conditional term) and iMF conditions the network
on the scale; no model of this library samples with guidance, so no loss takes a scale.

Forward-mode AD: PyTorch's fused attention kernels have no JVP rule, so the JVP runs under the math
backend of scaled_dot_product_attention (`sdpa_kernel(SDPBackend.MATH)`). Simplifications: fp32 only,
no guidance, one split point.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from .flow_matching import check_nfe, check_times, expand_time, interpolate, sample_time


def check_interval(r: torch.Tensor, t: torch.Tensor) -> None:
    """0 <= r <= t <= 1, elementwise."""
    check_times("r", r)
    check_times("t", t)
    if r.shape != t.shape:
        raise ValueError(f"r and t must have the same shape, got {tuple(r.shape)} and {tuple(t.shape)}")
    if (r > t).any():
        raise ValueError("r must be <= t (MeanFlow jumps backwards in time from t to r), "
                         f"got r - t up to {float((r - t).max()):.4g}")


def sample_r_t(n: int, ratio_neq: float = 0.25, dist: str = "logit_normal", mu: float = -0.4,
               sigma: float = 1.0, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, t), each (n,): t = max and r = min of two draws; a fraction 1 - ratio_neq gets r = t."""
    if not 0.0 <= ratio_neq <= 1.0:
        raise ValueError(f"ratio_neq must be in [0, 1], got {ratio_neq}")
    a = sample_time(n, dist, mu, sigma, generator, device)
    b = sample_time(n, dist, mu, sigma, generator, device)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand(n, generator=generator, device=device) >= ratio_neq
    return torch.where(equal, t, r), t


def total_derivative(net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                     y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """u_theta(z, r, t) and du/dt = v . d_z u + d_t u, both with their graph to the weights.

    du/dt is one forward-mode JVP of (z, r, t) -> u_theta(z, t, h = t - r) with tangents (v, 0, 1).
    """
    check_interval(r, t)
    if v.shape != z.shape:
        raise ValueError(f"v must have the shape of z {tuple(z.shape)}, got {tuple(v.shape)}")

    def u_fn(z_, r_, t_):
        return net(z_, t_, t_ - r_, y)

    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode AD rule
        return jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))


def mean_flow_target(net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                     y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """u_theta(z, r, t) (differentiable) and u_tgt = v - (t - r) du/dt (detached): MeanFlow's target."""
    u, dudt = total_derivative(net, z, r, t, v, y)
    u_tgt = v - expand_time(t - r, z) * dudt
    return u, u_tgt.detach()


def _draws(x: torch.Tensor, ratio_neq: float, dist: str, generator) -> tuple[torch.Tensor, ...]:
    """The draws every loss makes, in this order: noise e, the interval (r, t), and z_t = (1 - t) x + t e."""
    e = torch.randn(x.shape, generator=generator, device=x.device)
    r, t = sample_r_t(x.shape[0], ratio_neq, dist, generator=generator, device=x.device)
    return e, r, t, interpolate(x, e, t)


def mean_flow_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, ratio_neq: float = 0.25,
                   p: float = 1.0, dist: str = "logit_normal", generator=None) -> torch.Tensor:
    """MeanFlow's loss (Geng et al. 2025) on data x (B, ...): u regressed onto sg(v - (t - r) du/dt),
    the JVP along v = e - x, with the adaptive weight of power p. Defaults: the paper's."""
    e, r, t, z = _draws(x, ratio_neq, dist, generator)
    u, u_tgt = mean_flow_target(net, z, r, t, e - x, y)
    return adaptive_weight_loss(((u - u_tgt) ** 2).flatten(1).sum(1), p)  # per-sample squared error (B,)


def imf_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, ratio_neq: float = 0.75,
             p: float = 0.0, dist: str = "uniform", generator=None) -> torch.Tensor:
    """Improved MeanFlow's loss (iMF, Geng et al. 2025b) on data x (B, ...), with the gradient through the
    JVP: the compound velocity V = u + (t - r) du/dt regressed onto e - x, the JVP along the model's own
    velocity u(z, t, t | y), detached and unguided."""
    e, r, t, z = _draws(x, ratio_neq, dist, generator)
    with torch.no_grad():
        v_model = net(z, t, torch.zeros_like(t), y)  # (B, ...) the tangent: a function of z alone
    u, dudt = total_derivative(net, z, r, t, v_model, y)
    compound = u + expand_time(t - r, z) * dudt  # (B, ...) V, with its graph through the JVP
    return adaptive_weight_loss(((compound - (e - x)) ** 2).flatten(1).sum(1), p)


def check_teacher(teacher) -> None:
    """A teacher is a flow-matching network v(z, t, h, y) (any callable with that signature) or None."""
    if teacher is not None and not callable(teacher):
        raise TypeError(f"teacher must be a flow-matching network v(z, t, h, y) or None, got {type(teacher).__name__}")


def split_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, ratio_neq: float = 0.75,
               p: float = 0.0, dist: str = "uniform", teacher=None, generator=None) -> torch.Tensor:
    """Interval splitting (SplitMeanFlow, Guo et al. 2025) on data x (B, ...): regress u(z_t, r, t) onto
    sg of two half-jumps,

        u_tgt = [(t - s) u(z_t, s, t) + (s - r) u(z_s, r, s)] / (t - r),   s = (r + t) / 2,

    and onto v at r = t: e - x, or with a flow-matching `teacher` its velocity v_T(z_t, t) (distillation).
    """
    check_teacher(teacher)
    e, r, t, z = _draws(x, ratio_neq, dist, generator)
    with torch.no_grad():
        s = (r + t) / 2
        u_ts = net(z, t, t - s, y)  # the jump t -> s
        z_s = z - expand_time(t - s, z) * u_ts
        u_sr = net(z_s, s, s - r, y)  # then s -> r
        gap = expand_time((t - r).clamp_min(1e-6), z)  # the pairs with r = t get v below
        u_tgt = (expand_time(t - s, z) * u_ts + expand_time(s - r, z) * u_sr) / gap
        v = e - x if teacher is None else teacher(z, t, torch.zeros_like(t), y)
        u_tgt = torch.where(expand_time(r == t, z), v, u_tgt)
    u = net(z, t, t - r, y)
    return adaptive_weight_loss(((u - u_tgt) ** 2).flatten(1).sum(1), p)


def adaptive_weight_loss(delta: torch.Tensor, p: float = 1.0, c: float = 1e-3) -> torch.Tensor:
    """mean of Delta / sg((Delta + c)^p) over per-sample squared errors delta (B,): MeanFlow's weight.

    Its gradient is that of (Delta + c)^(1 - p) / (1 - p) (of log(Delta + c) at p = 1), so it is a robust
    loss: p = 0 is squared error, minimised by the MEAN of noisy targets; p = 1/2 is about the distance
    |u - target|, minimised by their median; p = 1 is log-distance, pulled to their densest cluster (mode).
    Flow matching's theorem needs the mean (v = E[e - x | z]); p > 0 trades that for robustness.
    """
    if not p >= 0:
        raise ValueError(f"p (the adaptive-weight power) must be >= 0, got {p!r}")
    if not c > 0:
        raise ValueError(f"c (the adaptive-weight offset) must be > 0, got {c!r}")
    return (delta / (delta.detach() + c) ** p).mean()


@torch.no_grad()
def mean_flow_sample(net: nn.Module, e: torch.Tensor, steps: int = 1, y: torch.Tensor | None = None,
                     return_path: bool = False):
    """From noise e (t = 1) to data in `steps` jumps z_r = z_t - (t - r) u(z_t, r, t), evenly spaced."""
    check_nfe(steps)
    ts = torch.linspace(1.0, 0.0, steps + 1, device=e.device, dtype=e.dtype)
    z, path = e, [e]
    for t, r in zip(ts[:-1], ts[1:], strict=True):
        tb = t.expand(e.shape[0])
        z = z - (t - r) * net(z, tb, (t - r).expand(e.shape[0]), y)
        path.append(z)
    return torch.stack(path) if return_path else z


# ---------------------------------------------------------------------------------------------------
# Gaussian data: everything in closed form (used to test the target)
# ---------------------------------------------------------------------------------------------------

def _gaussian_moments(t, m, s):
    """Mean m_t = (1 - t) m and std sigma_t = sqrt((1 - t)^2 s^2 + t^2) of z_t for x ~ N(m, s^2 I)."""
    return (1 - t) * m, ((1 - t) ** 2 * s ** 2 + t ** 2).sqrt()


def gaussian_velocity(z: torch.Tensor, t: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """Marginal velocity E[e - x | z_t = z] = -m + (sigma_t'/sigma_t)(z - m_t) for x ~ N(m, s^2 I)."""
    t = expand_time(t, z)
    m_t, sig_t = _gaussian_moments(t, m, s)
    return -m + (t - (1 - t) * s ** 2) / sig_t ** 2 * (z - m_t)


def gaussian_average_velocity(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, m: float,
                              s: float) -> torch.Tensor:
    """u(z, r, t) = (z - z_r) / (t - r): the flow maps z_t to z_r = m_r + (sigma_r / sigma_t)(z - m_t).

    At r = t this is the instantaneous velocity.
    """
    t_, r_ = expand_time(t, z), expand_time(r, z)
    m_t, sig_t = _gaussian_moments(t_, m, s)
    m_r, sig_r = _gaussian_moments(r_, m, s)
    z_r = m_r + sig_r / sig_t * (z - m_t)
    gap = t_ - r_
    return torch.where(gap > 0, (z - z_r) / gap.clamp_min(1e-12), gaussian_velocity(z, t, m, s))
