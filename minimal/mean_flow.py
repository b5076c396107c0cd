"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025): one-step generation by learning the *average* velocity.

Flow matching (flow_matching.py) learns the instantaneous velocity v(z, t) and needs many small steps
because the paths curve. MeanFlow learns the average velocity over an interval [r, t]:

    u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_tau, tau) dtau

so one evaluation jumps the whole interval exactly:  z_r = z_t - (t - r) u(z_t, r, t). The integral is
not available in training, but differentiating (t - r) u = integral_r^t v with respect to t gives the
MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) du/dt,     du/dt = v . d_z u + d_t u   (r held fixed)

and du/dt is a single Jacobian-vector product of the network at (z, r, t) with tangents (v, 0, 1).
Training regresses u_theta onto the stop-gradient target

    u_tgt = v - (t - r) * JVP,      L = || u_theta(z_t, r, t) - sg(u_tgt) ||^2

with v = e - x the conditional velocity, (r, t) from two logit-normal draws (t = max, r = min) and a
fraction of pairs forced to r = t (plain flow matching), and the adaptive weight
L = Delta / sg((Delta + c)^p), Delta the per-sample squared error. The network is conditioned on
(t, h = t - r).

The residual form (`residual=True`) reads the identity the other way round: the compound velocity

    V = u_theta(z_t, r, t) + (t - r) du/dt  should equal  v(z_t, t) = E[e - x | z_t],

so it regresses V onto e - x with the gradient through the JVP too: a plain regression whose minimiser
is the true u, instead of a fit to a target that moves with the network. Its JVP runs along the model's
own velocity u_theta(z, t, t), detached: along e - x, V would not be a function of z alone and the
squared error would also shrink the variance of (I - (t - r) d_z u)(e - x), a bias.

Distillation (`teacher=`): a trained flow-matching network v_T(z, t) estimates v(z_t, t) = E[e - x | z_t]
itself, so it replaces the single-pair e - x as the target and as the JVP's tangent. The loss then has
no sampling noise at all, and its fixed point is the average velocity of the teacher's ODE.

Interval splitting (`split_loss`, no JVP): the integral defining u is additive over [r, s] + [s, t],

    (t - r) u(z_t, r, t) = (t - s) u(z_t, s, t) + (s - r) u(z_s, r, s),   z_s = z_t - (t - s) u(z_t, s, t),

so u on an interval is regressed onto two jumps of half its length (s = (r + t) / 2), and u(z, t, t)
onto v. Letting s -> t recovers the identity above. With halving, a jump learns from jumps half as
long, so what the short jumps know reaches the full jump through a chain of doublings instead of being
carried along t in small increments. (SplitMeanFlow, Guo et al. 2025; the shortcut models of Frans et al. 2024 split the
same way.)

Classifier-free guidance can be baked into the target, v~ = w v + (1 - w) u(z, t, t | null), so guided
sampling still costs one evaluation.

Forward-mode AD: PyTorch's fused attention kernels have no JVP rule, so the JVP runs under the math
backend of scaled_dot_product_attention (`sdpa_kernel(SDPBackend.MATH)`).
Simplifications: no EMA, fp32 only, CFG with one weight w (the paper also mixes in a conditional term).
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
    """u_theta(z, r, t) (differentiable) and u_tgt = v - (t - r) du/dt (detached): the paper's target."""
    u, dudt = total_derivative(net, z, r, t, v, y)
    u_tgt = v - expand_time(t - r, z) * dudt
    return u, u_tgt.detach()


def check_teacher(teacher) -> None:
    """A teacher is a flow-matching network v(z, t, h, y) (any callable with that signature) or None."""
    if teacher is not None and not callable(teacher):
        raise TypeError(f"teacher must be a flow-matching network v(z, t, h, y) or None, got {type(teacher).__name__}")


def mean_flow_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, ratio_neq: float = 0.25,
                   p: float = 1.0, c: float = 1e-3, dist: str = "logit_normal", mu: float = -0.4,
                   sigma: float = 1.0, cfg_w: float = 1.0, residual: bool = False, teacher=None,
                   generator=None) -> torch.Tensor:
    """The MeanFlow loss on data x (B, ...); with cfg_w != 1 the guided velocity v~ replaces v.

    residual=False is the paper's: regress u onto sg(u_tgt), the JVP taken along v = e - x.
    residual=True regresses the compound velocity V = u + (t - r) du/dt onto v = e - x with the gradient
    through the JVP too, the JVP taken along the model's own velocity u(z, t, t) (detached): the identity
    says V = E[e - x | z], so its residual is a plain regression whose minimiser is the true u.
    For guidance, y must already carry some "no label" entries (label dropout) so u(., null) is learned.
    With a flow-matching `teacher`, its (guided) velocity v_T(z_t, t) replaces e - x, as the target and
    as the tangent of both forms (distillation).
    """
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    check_teacher(teacher)
    if cfg_w != 1.0 and y is None:
        raise ValueError("cfg_w != 1 needs class labels y")
    e = torch.randn(x.shape, generator=generator, device=x.device)
    r, t = sample_r_t(x.shape[0], ratio_neq, dist, mu, sigma, generator, x.device)
    z = interpolate(x, e, t)
    zeros = torch.zeros_like(t)
    with torch.no_grad():
        guide = teacher if teacher is not None else net  # whose null-label velocity guides
        v_null = guide(z, t, zeros, None) if cfg_w != 1.0 else None  # (B, ...) or None

        def guided(v_cond):  # v~ = w v + (1 - w) u(z, t, t | null)
            return v_cond if v_null is None else cfg_w * v_cond + (1 - cfg_w) * v_null

        v = guided(e - x if teacher is None else teacher(z, t, zeros, y))
        if residual:  # the tangent must be a function of z alone: the teacher's v, or the model's own velocity
            v_model = v if teacher is not None else guided(net(z, t, zeros, y))
    if not residual:
        u, u_tgt = mean_flow_target(net, z, r, t, v, y)
        delta = ((u - u_tgt) ** 2).flatten(1).sum(1)  # (B,) per-sample squared error
    else:
        u, dudt = total_derivative(net, z, r, t, v_model, y)
        delta = ((u + expand_time(t - r, z) * dudt - v) ** 2).flatten(1).sum(1)  # (B,) ||V - v||^2
    return adaptive_weight_loss(delta, p, c)


def split_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, ratio_neq: float = 0.75,
               p: float = 0.0, c: float = 1e-3, dist: str = "uniform", teacher=None, generator=None) -> torch.Tensor:
    """Interval splitting on data x (B, ...): regress u(z_t, r, t) onto sg of two half-jumps,

        u_tgt = [(t - s) u(z_t, s, t) + (s - r) u(z_s, r, s)] / (t - r),   s = (r + t) / 2,

    and onto v at r = t: e - x, or with a flow-matching `teacher` its velocity v_T(z_t, t) (distillation).
    """
    check_teacher(teacher)
    e = torch.randn(x.shape, generator=generator, device=x.device)
    r, t = sample_r_t(x.shape[0], ratio_neq, dist, generator=generator, device=x.device)
    z = interpolate(x, e, t)
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
    return adaptive_weight_loss(((u - u_tgt) ** 2).flatten(1).sum(1), p, c)


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
