"""Sampling the causal video transformer (diffusion_forcing.py trains it): chunks, rollouts, the pyramid.

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

import torch

from .flow_matching import check_nfe
from .kv_cache import KVCache
from .video_model import (
    VideoTransformer,
    block_causal_mask,
    check_chunked,
)


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
    t_seq = torch.cat([torch.full(context.shape[:2], t_context, device=z.device, dtype=z.dtype), tz], 1)
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
    ts = torch.linspace(1.0, 0.0, steps + 1, device=e.device, dtype=e.dtype)
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
    model(x, torch.full(x.shape[:2], t, device=x.device, dtype=x.dtype), a, scene, cache=cache, mask=mask)
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
    ts = torch.linspace(1.0, 0.0, steps + 1, device=z.device, dtype=z.dtype)
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
