"""Teacher forcing vs diffusion forcing for the causal video transformer: the losses, data and training.

Both train the flow-matching objective (flow_matching.py) of `VideoTransformer` on clips of F frames in
chunks of c frames, with an independent flow time t_k ~ U(0, 1) per chunk k, weighted by max(t_k, T_MIN)^2:

    z_k = (1 - t_k) x_k + t_k e_k,      L = E || max(t_k, T_MIN) (v_theta(z_k, t_k | context) - (e_k - x_k)) ||^2

Since the model returns v = (z - x_hat) / max(t, T_MIN) (video_model.py), for t >= T_MIN the weighted
error is exactly x_hat - x: the x-prediction loss. The plain v-loss weighs an error in x_hat by 1 / t^2,
so it spends the network on nearly clean chunks; the x-loss weighs every noise level alike, and the
hard ones, where the model must invent the next frame, get their share (docs/results.md has the
measured difference).

The frames x are the frame autoencoder's latents (autoencoder.py): `train(..., autoencoder=ae)` encodes
every clip (or, with `VideoRecipe.n_rollouts`, a fixed set of rollouts once), and a sample is decoded
with `ae.decode_video` before anyone looks at it.

Teacher forcing (CausVid's and Self Forcing's baseline): the context is always *clean*. The sequence is
doubled, [x_1 .. x_K | z_1 .. z_K] with times [0 .. 0 | t_1 .. t_K], both halves at frame positions
0 .. F-1; a clean chunk k sees clean chunks <= k, a noisy chunk k sees clean chunks < k and itself.
All K chunks train in one pass, each as if the ground truth were its past.

Diffusion forcing (Chen et al. 2024): one sequence [z_1 .. z_K] under the block-causal mask, every chunk
noisy at its own level. The context is the noisy past the model will partly see when chunks overlap in
time (the pyramid schedule), and t = 0 is just one of its noise levels.

At inference both models see their *own* samples as context, never the ground truth: that mismatch
with teacher forcing's training is exposure bias, and errors then compound over a long rollout.

Teacher forcing with a noisy context (`context_noise = tau`; GameNGen's noise augmentation, Valevski
et al. 2024): the first half of the doubled sequence is noised, chunk k to its own s_k ~ U(0, tau), and
labelled with s_k, [z'_1 .. z'_K | z_1 .. z_K] at times [s_1 .. s_K | t_1 .. t_K]. The model learns to
predict from a past it cannot fully trust, as its own samples are at inference (where the context is
still given at s = 0), while the target chunks keep teacher forcing's clean-past supervision.

The samplers (chunk by chunk with a KV cache, rollouts past max_frames, the pyramid, history guidance)
are in video_sampling.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .autoencoder import FrameAutoencoder
from .data import VIDEO_WORLD, SpriteWorld
from .flow_matching import interpolate
from .timing import resolve_device
from .training import EMA, check_steps, set_lr, warmup_cosine
from .video_model import (
    T_MIN,
    VideoTransformer,
    check_chunked,
    chunk_mask,
    token_chunks,
)

METHODS = ("teacher_forcing", "diffusion_forcing")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def chunk_times(batch_size: int, n_frames: int, chunk: int, generator=None, device=None) -> torch.Tensor:
    """(B, F): one t ~ U(0, 1) per chunk, repeated over its c frames."""
    check_chunked(n_frames, chunk)
    t = torch.rand(batch_size, n_frames // chunk, generator=generator).to(device)
    return t.repeat_interleave(chunk, dim=1)


def teacher_forcing_mask(n_frames: int, chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """(2L, 2L) bool for [clean | noisy]: clean sees clean chunks <= its own; noisy chunk k sees clean
    chunks < k and its own noisy chunk."""
    chunk_of = token_chunks(n_frames, chunk, tokens_per_frame, device)  # (L,)
    q, k = chunk_of[:, None], chunk_of[None, :]
    top = torch.cat([k <= q, torch.zeros_like(k <= q)], dim=1)  # clean queries
    bottom = torch.cat([k < q, k == q], dim=1)  # noisy queries
    return torch.cat([top, bottom], dim=0)


def check_context_noise(method: str, context_noise) -> float:
    if not isinstance(context_noise, (int, float)) or isinstance(context_noise, bool) or not 0 <= context_noise <= 1:
        raise ValueError(f"context_noise must be a number in [0, 1], got {context_noise!r}")
    if context_noise and method != "teacher_forcing":
        raise ValueError(f"context_noise noises teacher forcing's clean half; {method} has no clean half "
                         "(diffusion forcing's context is already noisy), so it must be 0")
    return float(context_noise)


def video_loss(method: str, model: VideoTransformer, x, actions, scene, generator=None,
               context_noise: float = 0.0) -> torch.Tensor:
    """The x-weighted flow-matching loss (see the module docstring) of a clip x (B, F, C, H, W) under
    teacher or diffusion forcing; with context_noise = tau > 0, teacher forcing's context chunks are
    noised to their own s_k ~ U(0, tau) (and labelled s_k) instead of clean."""
    check_method(method)
    check_context_noise(method, context_noise)
    cfg = model.config
    B, Fr = x.shape[:2]
    t = chunk_times(B, Fr, cfg.chunk, generator, x.device).to(x.dtype)  # (B, F)
    e = torch.randn(x.shape, generator=generator).to(x)
    z = interpolate(x.flatten(0, 1), e.flatten(0, 1), t.flatten()).view_as(x)
    if method == "diffusion_forcing":
        v = model(z, t, actions, scene, mask=chunk_mask(Fr, cfg.chunk, cfg.tokens_per_frame, x.device))
    else:
        ctx, s = x, torch.zeros_like(t)  # the context half [x_1 .. x_K] at times [0 .. 0]
        if context_noise:
            s = context_noise * chunk_times(B, Fr, cfg.chunk, generator, x.device).to(x.dtype)  # (B, F)
            e_ctx = torch.randn(x.shape, generator=generator).to(x)
            ctx = interpolate(x.flatten(0, 1), e_ctx.flatten(0, 1), s.flatten()).view_as(x)
        pos = torch.arange(Fr, device=x.device).repeat(2)  # both halves at positions 0 .. F-1
        mask = teacher_forcing_mask(Fr, cfg.chunk, cfg.tokens_per_frame, x.device)
        v = model(torch.cat([ctx, z], 1), torch.cat([s, t], 1), actions.repeat(1, 2), scene,
                  frame_pos=pos, mask=mask)[:, Fr:]
    w = t.clamp(min=T_MIN)[..., None, None, None]  # (B, F, 1, 1, 1)
    return ((w * (v - (e - x))) ** 2).mean()


def clip_windows(x, a, s, rows, n_frames: int, generator=None):
    """n_frames-long windows at random offsets of the 2 n_frames-long rollouts x[rows] (B, 2F, ...), so a
    clip's first frame is not always the simulator's start (the player at the centre)."""
    start = torch.randint(0, n_frames + 1, (len(rows),), generator=generator)
    idx = (start[:, None] + torch.arange(n_frames)).to(x.device)  # (B, F)
    rows = rows.to(x.device)
    return x[rows[:, None], idx], a[rows[:, None], idx], s[rows]


def video_clips(world: SpriteWorld, batch_size: int, n_frames: int, generator=None):
    """Training clips: windows (clip_windows) of batch_size fresh simulator rollouts."""
    x, a, s = world.sample_batch(batch_size, 2 * n_frames, generator=generator)
    return clip_windows(x, a, s, torch.arange(batch_size), n_frames, generator)


def encoded_rollouts(world: SpriteWorld, n_rollouts: int, n_frames: int, autoencoder=None, generator=None,
                     device=None, batch_size: int = 64):
    """A fixed training set: n_rollouts simulator rollouts of n_frames frames, encoded once by the
    autoencoder (if given), as (x (N, n_frames, ...), actions (N, n_frames), scenes (N,))."""
    xs, as_, ss = [], [], []
    for i in range(0, n_rollouts, batch_size):
        x, a, s = world.sample_batch(min(batch_size, n_rollouts - i), n_frames, generator=generator)
        x = x.to(device)
        xs.append(autoencoder.encode_video(x) if autoencoder is not None else x)
        as_.append(a)
        ss.append(s)
    return torch.cat(xs), torch.cat(as_).to(device), torch.cat(ss).to(device)


@dataclass
class VideoRecipe:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    ema: float = 0.995  # a ~200-step average: 0.999 would still weigh the initial weights 30% after 1200 steps
    seed: int = 0
    context_noise: float = 0.0  # teacher forcing only: noise the context chunks to s ~ U(0, context_noise)
    n_rollouts: int = 0  # 0: fresh rollouts every step; N: a fixed set of N rollouts encoded once (encoded_rollouts)


def train(method: str, model: VideoTransformer, recipe: VideoRecipe, device=None, progress: bool = True,
          autoencoder: FrameAutoencoder | None = None):
    """AdamW, a linear warm-up (min(200, steps / 10 + 1) steps) then cosine decay, on pixel clips or, given
    a (frozen) autoencoder, on their latents; returns (EMA model, losses, seconds). The clips are windows
    of fresh rollouts every step or, with recipe.n_rollouts = N, of a fixed set of N rollouts encoded once
    (then a step is only the model's work; the encoding counts in the seconds)."""
    check_method(method)
    check_steps(recipe.steps)
    check_context_noise(method, recipe.context_noise)
    N = recipe.n_rollouts
    if not isinstance(N, int) or isinstance(N, bool) or N < 0:
        raise ValueError(f"n_rollouts must be an int >= 0 (0: fresh rollouts every step), got {N!r}")
    device = resolve_device(device)
    world = SpriteWorld(VIDEO_WORLD)
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    model = model.to(device).train()
    F = model.config.max_frames
    t0 = time.perf_counter()
    if autoencoder is not None:
        autoencoder = autoencoder.to(device).eval().requires_grad_(False)
    if N:
        data = encoded_rollouts(world, N, 2 * F, autoencoder, g, device)  # (N, 2F, ...), (N, 2F), (N,)
    ema = EMA(model, recipe.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    warmup = min(200, recipe.steps // 10 + 1)
    losses = []
    for step in tqdm(range(recipe.steps), desc=method, disable=not progress):
        set_lr(opt, warmup_cosine(step, recipe.steps, recipe.lr, warmup))
        if N:
            x, a, s = clip_windows(*data, torch.randint(0, N, (recipe.batch_size,), generator=g), F, g)
        else:
            x, a, s = (v.to(device) for v in video_clips(world, recipe.batch_size, F, g))
            if autoencoder is not None:
                x = autoencoder.encode_video(x)
        loss = video_loss(method, model, x, a, s, g, recipe.context_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(loss.item())
    return ema.model, losses, time.perf_counter() - t0
