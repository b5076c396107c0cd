"""Teacher forcing vs diffusion forcing for the causal video transformer, and its samplers.

Both train the flow-matching objective (flow_matching.py) of `VideoTransformer` on clips of F frames in
chunks of c frames, with an independent flow time t_k ~ U(0, 1) per chunk k, weighted by max(t_k, T_MIN)^2:

    z_k = (1 - t_k) x_k + t_k e_k,      L = E || max(t_k, T_MIN) (v_theta(z_k, t_k | context) - (e_k - x_k)) ||^2

Since the model returns v = (z - x_hat) / max(t, T_MIN) (video_model.py), for t >= T_MIN the weighted
error is exactly x_hat - x: the x-prediction loss. The plain v-loss weighs an error in x_hat by 1 / t^2,
so it spends the network on nearly clean chunks; the x-loss weighs every noise level alike, and the
hard ones, where the model must invent the next frame, get their share. (On pixels, 1500 steps: action
following 0.33 with the x-loss, 0.07 without; video_recipes.py has the shipped figures.)

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

Samplers:
    sample_video    chunk by chunk, n Euler steps per chunk, with the frame KV cache (or, as the slow
                    reference, recomputing the whole prefix under the block-causal mask every step)
    rollout         any length, two ways past max_frames: "reencode", when the cache is full drop the
                    oldest chunk and re-encode the window at positions 0 .. (StreamingLLM's sliding
                    window with recompute, the quality reference); "rolling", the rolling frame cache
                    (sinks.SinkCache over frames: n_sink sink frames + a ring of recent ones, keys
                    re-rotated), one 1-chunk context pass per chunk whatever the length
    sample_pyramid  diffusion forcing's pyramid: chunk k starts `lag` steps after chunk k - 1, so several
                    chunks are denoised at once at staggered noise levels (lag = steps is chunk by chunk)

History guidance (Song et al. 2025; `history_guidance = w` in sample_chunks, sample_video, rollout):
classifier-free guidance with the past as the condition,

    v = v(z_t, t | past at t = 0) + w (v(z_t, t | past at t = 0) - v(z_t, t | past at t = 1)).

Diffusion forcing trained the model on every context noise level, so the past at t = 1 (pure noise, no
information) gives its own history-free prediction: no extra training, a second network call per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .autoencoder import FrameAutoencoder
from .data import VIDEO_WORLD, SpriteWorld
from .flow_matching import check_nfe, interpolate
from .kv_cache import KVCache
from .timing import resolve_device
from .video_model import (
    T_MIN,
    VideoTransformer,
    block_causal_mask,
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
    """AdamW, warm-up then cosine decay, on pixel clips or, given a (frozen) autoencoder, on their latents;
    returns (EMA model, losses, seconds). The clips are windows of fresh rollouts every step or, with
    recipe.n_rollouts = N, of a fixed set of N rollouts encoded once (then a step is only the model's
    work; the encoding counts in the seconds)."""
    check_method(method)
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
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    warmup = min(200, recipe.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 0.01, 1.0, warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, recipe.steps - warmup))], [warmup])
    losses = []
    for _ in tqdm(range(recipe.steps), desc=method, disable=not progress):
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
        sched.step()
        ema.update_parameters(model)
        losses.append(loss.item())
    return ema.module.eval(), losses, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------

def _check_sampling(model, actions, scene, steps, noise):
    cfg = model.config
    if not isinstance(actions, torch.Tensor) or actions.dtype != torch.long or actions.ndim != 2:
        raise TypeError("actions must be an int64 tensor (B, F): one action per frame")
    B, Fr = actions.shape
    check_chunked(Fr, cfg.chunk)
    check_nfe(steps)
    if noise is not None and noise.shape != (B, Fr, *cfg.frame_shape):
        raise ValueError(f"noise must be (B, F, C, H, W) = {(B, Fr, *cfg.frame_shape)}, got {tuple(noise.shape)}")
    if isinstance(scene, int):
        scene = torch.full((B,), scene, dtype=torch.long)
    return B, Fr, scene.to(actions.device)


def _check_start(model, start, B, Fr) -> int:
    """The number of given start frames F0 (0 for None), after checking their shape."""
    if start is None:
        return 0
    cfg = model.config
    ok = isinstance(start, torch.Tensor) and start.ndim == 5 and start.shape[0] == B
    if not ok or start.shape[2:] != cfg.frame_shape:
        shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        expected = ", ".join(map(str, (B, "F0", *cfg.frame_shape)))
        raise ValueError(f"start must be (B, F0, C, H, W) = ({expected}), got {shape}")
    n = start.shape[1]
    if n % cfg.chunk or not 0 < n < Fr:
        raise ValueError(f"start must hold a positive multiple of the chunk size ({cfg.chunk}) frames, fewer than "
                         f"the video's {Fr}, got {n}")
    return n


def _noise(model, B, Fr, noise, generator):
    cfg, p = model.config, next(model.parameters())
    if noise is None:
        noise = torch.randn(B, Fr, *cfg.frame_shape, generator=generator)
    return noise.to(device=p.device, dtype=p.dtype)


def _velocity(model, z, tz, a, scene, cache, context, context_actions, t_context: float):
    """v(z_t, t | past) for one chunk: from the cached past, or recomputing the past frames (B, F', ...)
    at time t_context together with the chunk, under the block-causal mask."""
    if cache is not None:
        return model(z, tz, a, scene, cache=cache)
    n_ctx = context.shape[1]
    seq = torch.cat([context, z], 1)
    t_seq = torch.cat([torch.full(context.shape[:2], t_context, device=z.device), tz], 1)
    mask = block_causal_mask(seq.shape[1], model.config.chunk, model.config.tokens_per_frame, z.device)
    return model(seq, t_seq, torch.cat([context_actions, a], 1), scene, mask=mask)[:, n_ctx:]


def _denoise_chunk(model, e, a, scene, steps, cache=None, context=None, context_actions=None,
                   guidance: float = 0.0, cache_u=None, context_u=None):
    """n Euler steps on one chunk from noise e (B, c, C, H, W).

    With a cache: the context is in it and every step attends to it. Without: the clean context frames
    (B, F', ...), F' >= 0, are recomputed at t = 0 with the chunk, under the block-causal mask, at every step.
    guidance w > 0: history guidance, v = v_cond + w (v_cond - v_uncond), where v_uncond sees the past
    fully noised (cache_u, or context_u recomputed at t = 1).
    """
    ts = torch.linspace(1.0, 0.0, steps + 1, device=e.device)
    z = e
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        tz = t.expand(e.shape[:2])
        v = _velocity(model, z, tz, a, scene, cache, context, context_actions, 0.0)
        if guidance:
            v_u = _velocity(model, z, tz, a, scene, cache_u, context_u, context_actions, 1.0)
            v = v + guidance * (v - v_u)
        z = z - (t - t_next) * v  # z_{t - dt} = z_t - dt v(z_t, t)
    return z


def _encode_context(model, x, a, scene, cache: KVCache, t: float = 0.0):
    """The context pass: frames (B, F', ...) at time t (clean: 0) into the cache, then advance past them."""
    cfg = model.config
    mask = None
    if x.shape[1] > cfg.chunk:
        n_cached = cache.length // cfg.tokens_per_frame
        full = block_causal_mask(n_cached + x.shape[1], cfg.chunk, cfg.tokens_per_frame, x.device)
        mask = full[n_cached * cfg.tokens_per_frame:]
    model(x, torch.full(x.shape[:2], t, device=x.device), a, scene, cache=cache, mask=mask)
    cache.advance(x.shape[1] * cfg.tokens_per_frame)


def check_guidance(history_guidance) -> float:
    w = history_guidance
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < float("inf"):
        raise ValueError(f"history_guidance must be a finite number >= 0, got {w!r}")
    return float(w)


CACHES = ("static", "reencode", "rolling")


def _context_cache(model: VideoTransformer, batch_size: int, n_frames: int, cache, n_sink: int):
    """The cache object that `cache` names (see sample_chunks); None for recomputation."""
    if n_sink != 0 and cache != "rolling":
        raise ValueError(f"n_sink counts the sink frames of cache='rolling', got cache={cache!r}")
    if not isinstance(cache, str):
        return cache
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, None or a cache object, got {cache!r}")
    if cache == "static" and n_frames > model.config.max_frames:
        raise ValueError(f"the cache holds max_frames = {model.config.max_frames} frames; a {n_frames}-frame "
                         "video needs rollout (cache='rolling' or 'reencode'), which slides a window over it")
    return model.new_rolling_cache(batch_size, n_sink) if cache == "rolling" else model.new_cache(batch_size)


@torch.no_grad()
def sample_chunks(model: VideoTransformer, actions: torch.Tensor, scene, steps: int = 8, noise=None,
                  cache="static", n_sink: int = 0, generator=None, start=None, history_guidance: float = 0.0):
    """Generate a video chunk by chunk; yields each chunk (B, c, C, H, W) when it is done.

    actions (B, F) int64: the action that moves the player into each frame; scene: int or (B,).
    noise: (B, F, C, H, W) starting noise (default drawn from `generator`); the same noise gives the
        same video with and without the cache.
    cache: how the context is kept
        "static"    one KVCache of max_frames frames; F <= max_frames
        "reencode"  the same; once full, every chunk resets it and re-encodes the last max_frames - c
                    frames at positions 0 .. (the price: a (max_frames - c)-frame context pass per chunk)
        "rolling"   model.new_rolling_cache(B, n_sink): n_sink sink frames + a ring of the newest
                    max_frames - n_sink, keys rotated by their position inside it (fixed cost per chunk)
        None        no cache: recompute the whole prefix at every denoising step (the slow reference)
        a cache object with SinkCache's members (e.g. sinks.NaiveSinkCache), used as given
    The named ones keep every RoPE position below max_frames; within max_frames all of them agree.
    start: None (generate from scratch) or given clean frames (B, F0, C, H, W), F0 a multiple of c below F,
        that the video begins with (a world model continuing a real clip): they go into the context like
        generated chunks and are yielded unchanged; the noise of their frames is used only by history_guidance.
    history_guidance: w >= 0 (Song et al. 2025, history guidance; meant for diffusion forcing, trained on
        every context noise level): each chunk after the first follows v_cond + w (v_cond - v_uncond),
        where v_uncond sees the same past fully noised, each past frame as its own starting noise at t = 1
        (a second cache of the same kind, or recomputed). Two network calls per step; 0 is plain sampling.
    """
    c = model.config.chunk
    B, Fr, scene = _check_sampling(model, actions, scene, steps, noise)
    n_start = _check_start(model, start, B, Fr)
    w = check_guidance(history_guidance)
    if w and cache is not None and not isinstance(cache, str):
        raise ValueError("history_guidance needs a second cache of the same kind: give cache by name or None")
    kv = _context_cache(model, B, Fr, cache, n_sink)
    kv_u = _context_cache(model, B, Fr, cache, n_sink) if w else None  # the past fully noised
    noise = _noise(model, B, Fr, noise, generator)
    keep = model.config.max_frames - c
    frames = []
    for k in range(0, Fr, c):
        a = actions[:, k:k + c]
        if cache == "reencode" and kv.length == kv.capacity:  # the window is full: re-encode its last chunks
            kv.reset()
            _encode_context(model, torch.cat(frames[-(keep // c):], 1), actions[:, k - keep:k], scene, kv)
            if w:
                kv_u.reset()
                _encode_context(model, noise[:, k - keep:k], actions[:, k - keep:k], scene, kv_u, t=1.0)
        if k < n_start:
            x = start[:, k:k + c].to(noise)
        else:
            context = None if kv is not None else torch.cat([noise[:, :0], *frames], 1)  # (B, k, ...)
            context_u = None if kv is not None else noise[:, :k]
            x = _denoise_chunk(model, noise[:, k:k + c], a, scene, steps, kv, context, actions[:, :k],
                               w if k else 0.0, kv_u, context_u)
        if kv is not None:
            _encode_context(model, x, a, scene, kv)
            if w:
                _encode_context(model, noise[:, k:k + c], a, scene, kv_u, t=1.0)
        frames.append(x)
        yield x


@torch.no_grad()
def sample_video(model: VideoTransformer, actions: torch.Tensor, scene, steps: int = 8, noise=None,
                 use_cache: bool = True, generator=None, start=None, history_guidance: float = 0.0) -> torch.Tensor:
    """F <= max_frames frames (B, F, C, H, W), chunk by chunk, with the static cache or recomputing;
    from scratch, or continuing given `start` frames, with optional history guidance (see sample_chunks)."""
    chunks = sample_chunks(model, actions, scene, steps, noise, "static" if use_cache else None, 0, generator, start,
                           history_guidance)
    return torch.cat(list(chunks), 1)


@torch.no_grad()
def rollout(model: VideoTransformer, actions: torch.Tensor, scene, steps: int = 8, noise=None,
            generator=None, cache="reencode", n_sink: int = 0, history_guidance: float = 0.0) -> torch.Tensor:
    """Any number of frames (B, F, C, H, W): sample_chunks with a sliding window, cache="reencode"
    (the quality reference) or "rolling" (the fixed-cost streaming path, n_sink sink frames)."""
    chunks = sample_chunks(model, actions, scene, steps, noise, cache, n_sink, generator,
                           history_guidance=history_guidance)
    return torch.cat(list(chunks), 1)


@torch.no_grad()
def sample_pyramid(model: VideoTransformer, actions: torch.Tensor, scene, steps: int = 8, lag: int = 2,
                   noise=None, generator=None) -> torch.Tensor:
    """Diffusion forcing's pyramid schedule (uncached): chunk k is at step clamp(g - k lag, 0, steps) of
    its own n-step Euler path at global iteration g, so later chunks see partly denoised context."""
    cfg = model.config
    B, Fr, scene = _check_sampling(model, actions, scene, steps, noise)
    if not isinstance(lag, int) or not 1 <= lag <= steps:
        raise ValueError(f"lag must be an int in [1, steps = {steps}], got {lag!r}")
    z = _noise(model, B, Fr, noise, generator).clone()
    K, c = Fr // cfg.chunk, cfg.chunk
    ts = torch.linspace(1.0, 0.0, steps + 1, device=z.device)
    for g in range(steps + (K - 1) * lag):
        s = (g - torch.arange(K) * lag).clamp(0, steps)  # (K,) step index of each chunk
        active = int((g - torch.arange(K) * lag >= 0).sum())  # chunks started so far (later ones: pure noise)
        n = active * c
        t = ts[s[:active]].repeat_interleave(c).expand(B, n)  # (B, n)
        mask = block_causal_mask(n, c, cfg.tokens_per_frame, z.device)
        v = model(z[:, :n], t, actions[:, :n], scene, mask=mask)  # (B, n, C, H, W)
        dt = (ts[s[:active]] - ts[(s[:active] + 1).clamp(max=steps)]).repeat_interleave(c)  # (n,) 0 when done
        z[:, :n] = z[:, :n] - dt.view(1, n, 1, 1, 1) * v
    return z
