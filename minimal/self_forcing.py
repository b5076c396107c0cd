"""Self Forcing: a few-step causal student trained on its own rollouts with distribution matching.

Teacher forcing trains each chunk on a clean ground-truth past; diffusion forcing on a noisy one; at
inference both see their *own* samples (exposure bias). Self Forcing (Huang et al. 2025; CausVid, Yin et
al. 2025, before it) closes the gap: every training step rolls a whole clip out autoregressively exactly
as at inference, chunk by chunk, each chunk denoised in a fixed few steps on the KV cache of the chunks
the student itself made, and the loss judges the finished clip as a whole.

The student G starts as the teacher (the shipped diffusion-forcing `video-df`) and samples with a fixed
schedule of n steps per chunk, ts = (1, ..., 0):

    n = 4:  ts = (1, 0.75, 0.5, 0.25, 0)        n = 1:  ts = (1, 0)

linear, with no shift. The step from t to t' re-noises the clean prediction x_hat = z - t v along the
noise the chunk itself implies, e_hat = (z - (1 - t) x_hat) / t:

    z_t' = (1 - t') x_hat + t' e_hat  =  z_t - (t - t') v        (DDIM's deterministic step is Euler's)

so a student is sampled by every sampler of the library (`sample_chunks(steps=n)`, the rolling cache,
the stream batch, CUDA graphs) with no code of its own, and training follows the same path. (Self
Forcing re-noises with fresh noise and shifts its four times toward t = 1 for 21-frame latents of a
1.3B model; our 2-frame chunks of 4 tokens need neither, and the deterministic step keeps one sampler.)

One training rollout (`rollout_with_exit`), chunk k = 1 .. K: draw an exit step s_k ~ U{0 .. n - 1}; the
steps before it run without grad; step s_k runs with grad and its x_hat *is* the chunk; the clean
chunk then refills the cache at t = 0 without grad. Every step of the schedule gets trained, and
backpropagation holds one network call per chunk. The grad step reads the cache out of place
(`ReadOnlyCache`): the static cache writes in place, which autograd cannot see through.

The loss is DMD (Yin et al. 2024), in clean predictions. Noise the rollout x (B, F, ...) per chunk to
t ~ U(0.02, 0.98), x_t = (1 - t) x + t e; the frozen teacher and a critic predict its clean chunks from
x_t given the rollout's own clean past (teacher forcing's doubled sequence): x_hat_real, x_hat_fake. Then

    grad = (x_hat_fake - x_hat_real) / mean |x - x_hat_real|,     L_G = 0.5 || x - sg(x - grad) ||^2

so dL_G / dx = grad: x moves away from what the critic thinks the student makes, toward what the
teacher thinks real data is; the normaliser makes the step size independent of the noise level. The
critic starts as the teacher and keeps learning the flow loss on the student's current rollouts
(`critic_ratio` critic updates per generator update), so x_hat_fake tracks the student's distribution.
The real score may use history guidance (video_sampling.py): x_hat_real + w (x_hat_real - x_hat_real|past
noised), so the student distils the guided teacher at one call per step.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .diffusion_forcing import chunk_times, teacher_forcing_mask, video_loss
from .flow_matching import interpolate
from .timing import resolve_device
from .training import EMA, check_steps, set_lr, warmup_cosine
from .video_model import T_MIN, VideoTransformer

SCHEDULES = {4: (1.0, 0.75, 0.5, 0.25, 0.0), 1: (1.0, 0.0)}  # t_0 = 1 (noise) .. t_n = 0 (clean), per chunk


def schedule(steps: int) -> tuple[float, ...]:
    """The fixed per-chunk schedule of an n-step student."""
    if steps not in SCHEDULES:
        raise ValueError(f"a student samples with one of {sorted(SCHEDULES)} steps per chunk, got {steps!r}")
    return SCHEDULES[steps]


def check_student(student: VideoTransformer, teacher: VideoTransformer) -> None:
    """The student is initialised from the teacher: the same architecture, or the weights cannot carry over."""
    if student.config != teacher.config:
        raise ValueError(f"the student's config must equal the teacher's: {student.config} != {teacher.config}")


class ReadOnlyCache:
    """A KVCache or a rolling SinkCache read out of place: `update` returns the keys and values the cache
    would return, [kept | new] built by concatenation, and writes nothing, so the new keys keep their
    gradient and the cache's buffers are never modified."""

    def __init__(self, cache):
        self.cache = cache
        self.stores_raw_keys = getattr(cache, "stores_raw_keys", False)  # a SinkCache: keys before RoPE

    @property
    def length(self) -> int:
        return self.cache.length

    def next_positions(self, n: int) -> torch.Tensor:
        return self.cache.next_positions(n)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor | None = None):
        c, n = self.cache, k.shape[2]
        start, end = c.place(n) if self.stores_raw_keys else (c.length, c.length + n)  # where update would write
        return tuple(torch.cat([buf[layer, :, :, :start], new, buf[layer, :, :, start + n:end]], 2)
                     for buf, new in ((c.k, k), (c.v, v)))  # (B, H, T_k, D)

    def key_positions(self) -> torch.Tensor:
        return self.cache.key_positions()

    def advance(self, n: int) -> None:
        raise RuntimeError("a ReadOnlyCache never commits: refill the cache it reads")


def clean_prediction(model: VideoTransformer, z, t, actions, scene, **kwargs) -> torch.Tensor:
    """x_hat = z - max(t, T_MIN) v: the model's clean frames (it predicts them; video_model.py)."""
    v = model(z, t, actions, scene, **kwargs)
    return z - t.clamp(min=T_MIN).to(z.dtype)[..., None, None, None] * v


def rollout_with_exit(student: VideoTransformer, actions, scene, steps: int, noise: torch.Tensor,
                      exits: torch.Tensor) -> torch.Tensor:
    """Self Forcing's training rollout -> its last W = min(F, max_frames) frames (B, W, C, H, W'), each
    chunk's gradient from its exit step.

    actions (B, F) int64, scene (B,), noise (B, F, C, H, W); exits (K,) int64, the exit step of each of the
    K = W / c chunks of the window, in [0, steps). Steps before the exit: no grad, on the cache in place;
    the exit step: with grad, on a ReadOnlyCache; then the cache is refilled with the detached chunk at
    t = 0. F > max_frames (Self-Forcing++, self_forcing_pp.py): the chunks before the window run the whole
    schedule without grad, on the rolling frame cache, as at inference."""
    cfg, ts = student.config, schedule(steps)
    c, Fr = cfg.chunk, actions.shape[1]
    W = min(Fr, cfg.max_frames)
    K0, K = (Fr - W) // c, W // c  # chunks before the window, chunks in it
    if not isinstance(exits, torch.Tensor) or exits.shape != (K,):
        raise ValueError(f"exits must be a tensor of one exit step per chunk of the window, shape ({K},)")
    if int(exits.min()) < 0 or int(exits.max()) >= steps:
        raise ValueError(f"every exit step must be in [0, steps = {steps}), got {exits.tolist()}")
    B = actions.shape[0]
    cache = student.new_cache(B) if Fr <= cfg.max_frames else student.new_rolling_cache(B)
    chunks = []
    for k in range(K0 + K):
        a, z = actions[:, k * c:(k + 1) * c], noise[:, k * c:(k + 1) * c]
        s_k = steps - 1 if k < K0 else int(exits[k - K0])
        for i in range(s_k + 1):
            t = torch.full((B, c), ts[i], device=z.device, dtype=z.dtype)
            if i < s_k or k < K0:
                with torch.no_grad():
                    x_hat = clean_prediction(student, z, t, a, scene, cache=cache)
                    z = (1 - ts[i + 1]) * x_hat + ts[i + 1] * (z - (1 - ts[i]) * x_hat) / ts[i]  # DDIM = Euler
            else:
                x_hat = clean_prediction(student, z, t, a, scene, cache=ReadOnlyCache(cache))
        with torch.no_grad():  # the clean-context pass
            student(x_hat.detach(), torch.zeros(B, c, device=z.device, dtype=z.dtype), a, scene, cache=cache)
            cache.advance(c * cfg.tokens_per_frame)
        if k >= K0:
            chunks.append(x_hat)
    return torch.cat(chunks, 1)


def predict_clean_given_past(model: VideoTransformer, x, x_t, t, actions, scene, past_t: float = 0.0):
    """x_hat of every chunk of x_t (B, F, ...) at its times t (B, F), chunk k given the chunks < k of x as
    its past, all in one call: teacher forcing's doubled sequence [past | x_t]. past_t = 1 replaces the
    past by noise (history guidance's unconditional branch)."""
    cfg, Fr = model.config, x.shape[1]
    past, s = x, torch.zeros_like(t)
    if past_t:
        past, s = torch.randn_like(x), torch.full_like(t, past_t)
    pos = torch.arange(Fr, device=x.device).repeat(2)
    mask = teacher_forcing_mask(Fr, cfg.chunk, cfg.tokens_per_frame, x.device)
    seq_t = torch.cat([s, t], 1)
    v = model(torch.cat([past, x_t], 1), seq_t, actions.repeat(1, 2), scene, frame_pos=pos, mask=mask)[:, Fr:]
    return x_t - t.clamp(min=T_MIN)[..., None, None, None] * v


def dmd_loss(x: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """DMD's generator loss 0.5 || x - sg(x - grad) ||^2 (mean over elements), grad = (x_fake - x_real) /
    mean |x - x_real| per sample: its gradient with respect to x is grad / x.numel()."""
    with torch.no_grad():
        norm = (x - x_real).abs().flatten(1).mean(1).clamp(min=1e-6).view(-1, *[1] * (x.ndim - 1))
        target = x - (x_fake - x_real) / norm
    return 0.5 * (x - target).pow(2).mean()


@dataclass
class SelfForcingRecipe:
    steps: int = 500  # generator updates
    critic_ratio: int = 5  # critic updates per generator update (Self Forcing's 5)
    batch_size: int = 32
    lr: float = 5e-5  # generator
    critic_lr: float = 1e-4
    history_guidance: float = 0.5  # w of the real score; 0: the plain teacher
    t_low: float = 0.02  # DMD's noise levels t ~ U(t_low, t_high)
    t_high: float = 0.98
    ema: float = 0.99
    seed: int = 0
    horizon: int | None = None  # rollout frames, up to; None: max_frames (Self Forcing), more: Self-Forcing++


def check_recipe(recipe: SelfForcingRecipe) -> None:
    check_steps(recipe.steps)
    r = recipe.critic_ratio
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"critic_ratio must be an int >= 1 (critic updates per generator update), got {r!r}")
    if not 0 <= recipe.history_guidance < float("inf"):
        raise ValueError(f"history_guidance must be a finite number >= 0, got {recipe.history_guidance!r}")
    if not 0 < recipe.t_low < recipe.t_high < 1:
        raise ValueError(f"need 0 < t_low < t_high < 1, got {recipe.t_low}, {recipe.t_high}")


def check_horizon(horizon, config) -> int:
    """The rollout length a recipe trains on: max_frames (None) or a longer multiple of the chunk."""
    if horizon is None:
        return config.max_frames
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < config.max_frames or \
            horizon % config.chunk:
        raise ValueError(f"horizon must be None or an int >= max_frames ({config.max_frames}) and a multiple of the "
                         f"chunk ({config.chunk}), got {horizon!r}")
    return horizon


def train_student(teacher: VideoTransformer, steps: int, recipe: SelfForcingRecipe, conditions, device=None,
                  progress: bool = True, student: VideoTransformer | None = None):
    """Self Forcing with DMD from `teacher` -> (EMA student, {"dmd": [...], "critic": [...]}, seconds).

    steps: the student's steps per chunk (SCHEDULES); conditions(generator) -> (actions (B, F), scenes (B,)),
    the training conditioning; student: where the student starts (default: the teacher's weights), of the
    teacher's config. Every iteration draws a rollout (with random exits) and updates the critic
    on it; every critic_ratio-th also updates the student by DMD.

    recipe.horizon > max_frames is Self-Forcing++ (Cui et al. 2025): each rollout runs F frames, F drawn
    uniformly from the chunk multiples in [max_frames, horizon], on the rolling cache, and the losses
    judge its last max_frames frames, a window that starts wherever the long rollout has drifted to; the
    teacher and the critic see the window's own frames as its past (they know no longer context).
    conditions must then give at least `horizon` frames."""
    schedule(steps)
    check_recipe(recipe)
    horizon = check_horizon(recipe.horizon, teacher.config)
    if student is not None:
        check_student(student, teacher)
    device = resolve_device(device)
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher if student is None else student).to(device).train().requires_grad_(True)
    critic = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = EMA(student, recipe.ema)
    opt_g = torch.optim.AdamW(student.parameters(), lr=recipe.lr, betas=(0.0, 0.999), weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=recipe.critic_lr, betas=(0.0, 0.999), weight_decay=0.0)
    cfg, w = teacher.config, recipe.history_guidance
    K = cfg.max_frames // cfg.chunk
    log = {"dmd": [], "critic": []}
    t0 = time.perf_counter()
    n_iter = recipe.steps * recipe.critic_ratio
    for it in tqdm(range(n_iter), desc=f"self forcing ({steps} steps)", disable=not progress):
        gen_step = it % recipe.critic_ratio == recipe.critic_ratio - 1
        set_lr(opt_g, warmup_cosine(it // recipe.critic_ratio, recipe.steps, recipe.lr, floor=recipe.lr / 10))
        actions, scenes = (v.to(device) for v in conditions(g))
        Fr = cfg.max_frames  # the rollout's length; its last max_frames frames are the window judged
        if horizon > Fr:
            Fr += cfg.chunk * int(torch.randint(0, (horizon - Fr) // cfg.chunk + 1, (), generator=g))
        if actions.shape[1] < Fr:
            raise ValueError(f"conditions gave {actions.shape[1]} frames of actions; the recipe rolls out {Fr}")
        actions = actions[:, :Fr]
        noise = torch.randn(actions.shape[0], Fr, *cfg.frame_shape, generator=g).to(device)
        exits = torch.randint(0, steps, (K,), generator=g)
        with torch.set_grad_enabled(gen_step):
            x = rollout_with_exit(student, actions, scenes, steps, noise, exits)
        actions = actions[:, -cfg.max_frames:]  # the window's
        if gen_step:
            t = recipe.t_low + (recipe.t_high - recipe.t_low) * chunk_times(x.shape[0], cfg.max_frames, cfg.chunk,
                                                                             g, device)
            x_t = interpolate(x.detach().flatten(0, 1), torch.randn(x.shape, generator=g).to(x).flatten(0, 1),
                              t.flatten()).view_as(x)
            with torch.no_grad():
                x_real = predict_clean_given_past(teacher, x.detach(), x_t, t, actions, scenes)
                if w:
                    x_uncond = predict_clean_given_past(teacher, x.detach(), x_t, t, actions, scenes, past_t=1.0)
                    x_real = x_real + w * (x_real - x_uncond)
                x_fake = predict_clean_given_past(critic, x.detach(), x_t, t, actions, scenes)
            loss = dmd_loss(x, x_real, x_fake)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt_g.step()
            ema.update(student)
            log["dmd"].append(loss.item())
        loss_c = video_loss("teacher_forcing", critic, x.detach(), actions, scenes, g)
        opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
        opt_c.step()
        log["critic"].append(loss_c.item())
    return ema.model, log, time.perf_counter() - t0
