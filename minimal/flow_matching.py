"""Flow matching (rectified flow) with MeanFlow's conventions, the networks it trains, and a metric.

Path (Liu et al. 2022; Lipman et al. 2022), t = 0 is data x, t = 1 is noise e ~ N(0, I):

    z_t = (1 - t) x + t e,        v = dz_t/dt = e - x

The network learns the marginal velocity v(z, t) = E[e - x | z_t = z] by regression on the conditional
one (the expectation over pairs (x, e) meeting at z is what makes the straight lines curve):

    L_FM = E_{x, e, t} || v_theta(z_t, t) - (e - x) ||^2

Sampling integrates dz/dt = v(z, t) from t = 1 (noise) down to t = 0 with n Euler steps:

    z_{t - dt} = z_t - dt * v_theta(z_t, t)

Every network here takes (z, t, h, y): the time t, a second time input h = t - r that flow matching
leaves at 0 and MeanFlow (mean_flow.py) uses for the interval length, and an optional class label y.
So flow matching and MeanFlow train the *same* architecture and compare fairly.

Simplifications: uniform or logit-normal t, no EMA, plain Euler (no higher-order solver).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .transformer import attention


def check_times(name: str, t: torch.Tensor) -> torch.Tensor:
    """Times must lie in [0, 1]: t = 0 is data, t = 1 is noise."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
        raise ValueError(f"{name} must lie in [0, 1] (0 = data, 1 = noise), got values in "
                         f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")
    return t


def check_nfe(steps) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps (the number of network evaluations, NFE) must be an int >= 1, got {steps!r}")
    return steps


def expand_time(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against z (B, ...)."""
    return t.view(-1, *([1] * (z.ndim - 1)))


def interpolate(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t) x + t e for a batch of times t (B,)."""
    if x.shape != e.shape:
        raise ValueError(f"x and e must have the same shape, got {tuple(x.shape)} and {tuple(e.shape)}")
    t = expand_time(check_times("t", t), x)
    return (1 - t) * x + t * e


def sample_time(n: int, dist: str = "uniform", mu: float = -0.4, sigma: float = 1.0, generator=None,
                device=None) -> torch.Tensor:
    """n times in (0, 1): uniform, or logit-normal sigmoid(N(mu, sigma^2)) as in SD3 and MeanFlow."""
    if dist == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if dist == "logit_normal":
        return torch.sigmoid(mu + sigma * torch.randn(n, generator=generator, device=device))
    raise ValueError(f"dist must be 'uniform' or 'logit_normal', got {dist!r}")


def fm_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, t_dist: str = "uniform",
            generator=None) -> torch.Tensor:
    """L_FM for a batch of data x (B, ...): regress v_theta(z_t, t) onto e - x."""
    e = torch.randn(x.shape, generator=generator, device=x.device)
    t = sample_time(x.shape[0], t_dist, generator=generator, device=x.device)
    z = interpolate(x, e, t)
    v = net(z, t, torch.zeros_like(t), y)
    return F.mse_loss(v, e - x)


@torch.no_grad()
def euler_sample(net: nn.Module, e: torch.Tensor, steps: int, y: torch.Tensor | None = None,
                 return_path: bool = False):
    """Integrate dz/dt = v(z, t) from noise e (t = 1) to data (t = 0) with `steps` Euler steps.

    Returns x (B, ...), or with return_path the states at every step (steps + 1, B, ...).
    """
    check_nfe(steps)
    ts = torch.linspace(1.0, 0.0, steps + 1, device=e.device, dtype=e.dtype)
    z, path = e, [e]
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        tb = t.expand(e.shape[0])
        z = z - (t - t_next) * net(z, tb, torch.zeros_like(tb), y)  # z_{t-dt} = z_t - dt v(z_t, t)
        path.append(z)
    return torch.stack(path) if return_path else z


# ---------------------------------------------------------------------------------------------------
# Networks: v(z, t, h, y), h = t - r (0 for flow matching)
# ---------------------------------------------------------------------------------------------------

def time_features(t: torch.Tensor, dim: int, max_freq: float = 100.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of times t (B,) in [0, 1], frequencies 1 .. max_freq rad per unit time.

    Kept low on purpose: MeanFlow differentiates the network in t, and DiT's usual 1000 t scaling makes
    du/dt through the embedding huge and the target noisy (on the checkerboard: 1-step sliced
    Wasserstein 0.31 with it, 0.10 with max_freq = 100, same training).
    """
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2, device=t.device, dtype=t.dtype))
    angles = t[:, None] * freqs  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimeEmbedding(nn.Module):
    """(t, h) -> one conditioning vector: sinusoidal features of each, through a small MLP, summed."""

    def __init__(self, dim: int, n_features: int = 64):
        super().__init__()
        self.n_features = n_features
        self.t_mlp = nn.Sequential(nn.Linear(n_features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.h_mlp = nn.Sequential(nn.Linear(n_features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t, h):
        return self.t_mlp(time_features(t, self.n_features)) + self.h_mlp(time_features(h, self.n_features))


def _check_positive_ints(config) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{f.name} must be an int >= 1, got {value!r}")


@dataclass
class FlowMLPConfig:
    dim: int = 2  # data dimension
    width: int = 256
    depth: int = 4

    def __post_init__(self):
        _check_positive_ints(self)


class FlowMLP(nn.Module):
    """A residual MLP for points: v(z, t, h) with the time embedding added at every layer."""

    def __init__(self, config: FlowMLPConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else FlowMLPConfig()
        self.time = TimeEmbedding(cfg.width)
        self.inp = nn.Linear(cfg.dim, cfg.width)
        self.layers = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, cfg.width))
                                    for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, cfg.dim))

    def forward(self, z, t, h, y=None):
        if z.ndim != 2 or z.shape[1] != self.config.dim:
            raise ValueError(f"z must be (B, {self.config.dim}), got {tuple(z.shape)}")
        c = self.time(t, h)  # (B, width)
        a = self.inp(z)  # (B, width)
        for layer in self.layers:
            a = a + layer(a + c)
        return self.out(a)  # (B, dim)


@dataclass
class FrameUNetConfig:
    size: int = 16  # frame height = width (divisible by 4: two downsamplings)
    channels: int = 48  # width at full resolution; doubled at 1/2 and 1/4
    n_head: int = 4  # attention heads at the 1/4-resolution bottleneck
    n_classes: int = 4  # scene labels; label n_classes means "no label"

    def __post_init__(self):
        _check_positive_ints(self)
        if self.size % 4:
            raise ValueError(f"size must be divisible by 4, got {self.size}")
        if self.channels % 8 or (2 * self.channels) % self.n_head:
            raise ValueError(f"channels must be a multiple of 8 with 2 * channels divisible by n_head, "
                             f"got channels={self.channels}, n_head={self.n_head}")


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, FiLM by the conditioning vector, -> conv; plus a skip. Starts as the skip."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, c):
        a = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        a = self.conv2(F.silu(self.norm2(a) * (1 + scale) + shift))
        return self.skip(x) + a


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H * W positions of a feature map (zero-initialised output)."""

    def __init__(self, channels: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, manual: bool = False):
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).view(B, H * W, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, manual=manual).transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C)
        return x + self.proj(y).transpose(1, 2).view(B, C, H, W)


class FrameUNet(nn.Module):
    """A small U-Net for frames (B, 3, S, S), conditioned on c = emb(t) + emb(h) + emb(y), y a scene label.

    S -> S/2 -> S/4 (attention) -> S/2 -> S, with skip connections. Label n_classes is the "no label"
    used for classifier-free guidance; y=None means no label.
    """

    def __init__(self, config: FrameUNetConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else FrameUNetConfig()
        ch, d = cfg.channels, 4 * cfg.channels  # d: conditioning width
        self.time = TimeEmbedding(d)
        self.label = nn.Embedding(cfg.n_classes + 1, d)
        self.inp = nn.Conv2d(3, ch, 3, padding=1)
        self.down1, self.pool1 = ResBlock(ch, ch, d), nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.down2, self.pool2 = ResBlock(2 * ch, 2 * ch, d), nn.Conv2d(2 * ch, 2 * ch, 3, stride=2, padding=1)
        self.mid1, self.attn, self.mid2 = ResBlock(2 * ch, 2 * ch, d), SelfAttention2d(2 * ch, cfg.n_head), \
            ResBlock(2 * ch, 2 * ch, d)
        self.unpool2, self.up2 = nn.ConvTranspose2d(2 * ch, 2 * ch, 2, stride=2), ResBlock(4 * ch, 2 * ch, d)
        self.unpool1, self.up1 = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2), ResBlock(2 * ch, ch, d)
        self.norm_out, self.out = nn.GroupNorm(8, ch), nn.Conv2d(ch, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # the network starts by predicting 0
        nn.init.zeros_(self.out.bias)

    def forward(self, z, t, h, y=None, manual: bool = False):
        B, S = z.shape[0], self.config.size
        if z.shape[1:] != (3, S, S):
            raise ValueError(f"z must be (B, 3, {S}, {S}), got {tuple(z.shape)}")
        y = torch.full((B,), self.config.n_classes, device=z.device) if y is None else y
        c = F.silu(self.time(t, h) + self.label(y))  # (B, d)
        a1 = self.down1(self.inp(z), c)  # (B, ch, S, S)
        a2 = self.down2(self.pool1(a1), c)  # (B, 2ch, S/2, S/2)
        m = self.mid2(self.attn(self.mid1(self.pool2(a2), c), manual), c)  # (B, 2ch, S/4, S/4)
        b2 = self.up2(torch.cat([self.unpool2(m), a2], dim=1), c)  # (B, 2ch, S/2, S/2)
        b1 = self.up1(torch.cat([self.unpool1(b2), a1], dim=1), c)  # (B, ch, S, S)
        return self.out(F.silu(self.norm_out(b1)))


# ---------------------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------------------

def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between point clouds a, b (N, D) of equal size.

    SW_2(a, b)^2 = E_theta W_2^2(theta . a, theta . b) over random unit directions theta; in 1-D,
    W_2 pairs the sorted samples.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must be (N, D) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    theta = torch.randn(a.shape[1], n_projections, generator=generator)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (D, K) unit directions
    pa = (a.float().cpu() @ theta).sort(dim=0).values  # (N, K)
    pb = (b.float().cpu() @ theta).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())
