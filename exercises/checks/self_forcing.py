"""Checks for exercise 07, Self Forcing (exercises/solutions/07_self_forcing.ipynb).

Every check compares the student's code with an independent reference:
- DMD's direction g = (x_fake - x_real) / mean|x - x_real| (per sample) with a recomputation here and with
  the gradient of the library's own loss, `minimal.self_forcing.dmd_loss` (whose gradient is g / numel), on
  batches whose samples differ in scale by orders of magnitude, so that a normaliser over the whole batch,
  or over one axis only, cannot pass; a wrong result is matched against the classic mistakes by name;
- the surrogate loss by its value and by its gradient, taken with autograd;
- both together on a 1-D Gaussian, where the teacher's and the critic's denoisers are exact: gradient
  descent with the student's functions must move a generator N(mu, sigma^2) onto the data N(2, 0.5^2);
- the re-noising step against Euler's step, and inside a chunk-by-chunk sampler against
  `minimal.video_sampling.sample_video` on a tiny VideoTransformer with random weights (float64);
- the rollout's call plan against `minimal.self_forcing.rollout_with_exit` itself: a forward hook records
  every network call it makes (the chunk, read off the cache's length, the flow time t, and whether
  gradients are on).
"""

from __future__ import annotations

import functools

import torch

from minimal import self_forcing as library_self_forcing
from minimal.self_forcing import clean_prediction, dmd_loss, rollout_with_exit, schedule
from minimal.video_model import VideoConfig, VideoTransformer
from minimal.video_sampling import sample_video

from .common import (
    answers,
    call_student,
    expect_close,
    expect_raises,
    expect_shape,
    expect_tensor,
    fail,
    passed,
    single_thread,
)

ATOL = 1e-9  # float64 throughout


# ---------------------------------------------------------------------------------------------------
# Part 1: the direction g
# ---------------------------------------------------------------------------------------------------

def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """mean over every axis but the first, shaped (B, 1, ..., 1) to broadcast."""
    return x.flatten(1).mean(1).view(-1, *[1] * (x.ndim - 1))


def reference_direction(x, x_real, x_fake) -> torch.Tensor:
    return (x_fake - x_real) / _per_sample((x - x_real).abs()).clamp(min=1e-6)


def _direction_variants(x, x_real, x_fake) -> dict[str, torch.Tensor]:
    """What the classic mistakes give."""
    d = x_fake - x_real
    norm = _per_sample((x - x_real).abs()).clamp(min=1e-6)
    out = {"a normaliser over the whole batch, mean|x - x_real| of all samples together":
           d / (x - x_real).abs().mean().clamp(min=1e-6),
           "the sign flipped, (x_real - x_fake) / norm": -d / norm,
           "the critic in the normaliser, mean|x - x_fake|": d / _per_sample((x - x_fake).abs()).clamp(min=1e-6),
           "no absolute value in the normaliser, mean(x - x_real)": d / _per_sample(x - x_real),
           "no normaliser at all, x_fake - x_real": d}
    if x.ndim > 2:
        out["the mean over axis 1 only, (x - x_real).abs().mean(1, keepdim=True) (per sample means every axis but "
            "the batch's: flatten(1) first)"] = d / (x - x_real).abs().mean(1, keepdim=True).clamp(min=1e-6)
    return out


def _diagnose(what: str, got, want: torch.Tensor, variants: dict[str, torch.Tensor], hint: str) -> None:
    expect_shape(what, got, tuple(want.shape), hint)
    got = got.detach().double()
    if float((got - want).abs().max()) > ATOL * (1 + float(want.abs().max())):
        for name, value in variants.items():
            if value.shape == got.shape and float((got - value).abs().max()) <= ATOL * (1 + float(value.abs().max())):
                hint = f"your result equals {name}. {hint}"
                break
    expect_close(what, got, want, ATOL * (1 + float(want.abs().max())), hint)


def _batch(shape, scales, seed: int):
    """x, x_real, x_fake (float64) whose samples have very different sizes: sample b is scaled by scales[b]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(scales, dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))
    x, x_real, x_fake = (s * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    return x, x_real, x_real + 0.3 * (x_fake - x_real)


DIRECTION_HINT = ("g = (x_fake - x_real) / n, with n = mean |x - x_real| taken over every element of one sample "
                  "(all axes but the first), one n per sample, clamped at 1e-6 (n.clamp(min=1e-6)), shaped "
                  "(B, 1, ..., 1) so that it divides its own sample")


@answers(dmd_direction=library_self_forcing.dmd_loss)
@single_thread
def check_dmd_direction(dmd_direction) -> None:
    """dmd_direction(x, x_real, x_fake) == (x_fake - x_real) / mean|x - x_real| per sample == the gradient of the
    library's dmd_loss times the number of elements; detached; finite where x == x_real."""
    cases = [((3, 4, 2, 4, 4), (1e-2, 1.0, 30.0)),  # video-shaped (B, F, C, H, W)
             ((5, 7), (1.0, 100.0, 1e-3, 2.0, 0.5)), ((1, 16), (3.0,))]
    for n, (shape, scales) in enumerate(cases):
        x, x_real, x_fake = _batch(shape, scales, seed=n)
        what = f"dmd_direction on a batch of shape {shape}, samples of sizes {scales}"
        x_in = x.clone().requires_grad_(True)  # as in training: x is the student's rollout
        got = call_student(what, dmd_direction, x_in, x_real, x_fake, hint=DIRECTION_HINT)
        got = expect_tensor(what, got, DIRECTION_HINT)
        if got.requires_grad:
            fail(what + ": the direction carries a gradient", "a constant (requires_grad False)",
                 "a tensor that requires grad", "g is a fixed step for x, not part of the graph: compute it under "
                 "torch.no_grad() or return it .detach()ed")
        want = reference_direction(x, x_real, x_fake)
        _diagnose(what, got, want, _direction_variants(x, x_real, x_fake), DIRECTION_HINT)
        lib = torch.autograd.grad(dmd_loss(x_in, x_real, x_fake), x_in)[0] * x.numel()
        expect_close(what + ", against the gradient of minimal.self_forcing.dmd_loss x numel", got, lib,
                     ATOL * (1 + float(lib.abs().max())), DIRECTION_HINT)
    x, x_real, x_fake = _batch((2, 6), (1.0, 1.0), seed=7)
    x_real[1] = x[1]  # the teacher agrees with sample 1 exactly
    what = "dmd_direction where x == x_real for sample 1"
    got = call_student(what, dmd_direction, x, x_real, x_fake, hint=DIRECTION_HINT)
    _diagnose(what, got, reference_direction(x, x_real, x_fake), {}, "clamp the normaliser: n.clamp(min=1e-6), "
              "so that a sample the teacher already finds perfect gives a finite step")
    passed("check_dmd_direction", "per-sample normaliser on samples of sizes 1e-3 to 100, video-shaped and flat; "
                                  "equals the gradient of minimal.self_forcing.dmd_loss x numel; detached; finite "
                                  "where x == x_real")


# ---------------------------------------------------------------------------------------------------
# Part 2: the surrogate loss
# ---------------------------------------------------------------------------------------------------

SURROGATE_HINT = ("the target x - g is a constant, (x - g).detach(); the loss is 0.5 * ((x - target) ** 2).mean(), "
                  "a scalar whose gradient with respect to x is g / x.numel()")


@answers(dmd_surrogate=library_self_forcing.dmd_loss)
@single_thread
def check_dmd_surrogate(dmd_surrogate) -> None:
    """dmd_surrogate(x, g): value 0.5 mean(g^2), gradient with respect to x exactly g / numel."""
    for n, shape in enumerate(((3, 4, 2, 4, 4), (5, 7))):
        g = torch.Generator().manual_seed(10 + n)
        x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
        d = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
        what = f"dmd_surrogate(x, g), shape {shape}"
        loss = expect_tensor(what, call_student(what, dmd_surrogate, x, d, hint=SURROGATE_HINT), SURROGATE_HINT)
        if loss.ndim != 0:
            fail(what, "a scalar (0-dimensional tensor)", f"shape {tuple(loss.shape)}", SURROGATE_HINT)
        expect_close(what + ": the value", loss.detach(), 0.5 * d.square().mean(), ATOL, SURROGATE_HINT)
        if not loss.requires_grad:
            fail(what + ": the loss carries no gradient to x", "a loss that depends on x", "a constant",
                 "detach the target only, not x itself")
        grad = torch.autograd.grad(loss, x)[0]
        want = d / x.numel()
        hint = SURROGATE_HINT
        if float(grad.abs().max()) == 0:
            hint = ("the gradient is zero: without the stop-gradient, x - (x - g) = g does not depend on x. " + hint)
        elif torch.allclose(grad, -want, atol=ATOL):
            hint = "the gradient is -g / numel: the sign is flipped (the target is x - g, not x + g). " + hint
        elif torch.allclose(grad, d, atol=ATOL):
            hint = "the gradient is g, not g / numel: a sum where the mean is asked for. " + hint
        expect_close(what + ": d loss / d x (autograd)", grad, want, ATOL, hint)
    passed("check_dmd_surrogate", "0.5 * mean(g^2) in value, and d loss / d x = g / numel exactly")


def gaussian_denoiser(mu, sigma):
    """E[x | z_t] for x ~ N(mu, sigma^2), z_t = (1 - t) x + t e: the exact clean prediction."""
    def x_hat(z, t):
        a = 1 - t
        return mu + a * sigma ** 2 / (a ** 2 * sigma ** 2 + t ** 2) * (z - a * mu)
    return x_hat


@answers(dmd_direction=library_self_forcing.dmd_loss, dmd_surrogate=library_self_forcing.dmd_loss)
@single_thread
def check_dmd_on_gaussians(dmd_direction, dmd_surrogate) -> None:
    """The student's surrogate(x, direction(...)) equals minimal.self_forcing.dmd_loss in value and gradient, and
    200 steps of gradient descent with it move N(-1, 1) onto N(2, 0.5^2) (exact teacher and critic)."""
    x0, x_real, x_fake = _batch((4, 8, 3), (0.1, 1.0, 10.0, 1.0), seed=20)
    x = x0.clone().requires_grad_(True)
    what = "dmd_surrogate(x, dmd_direction(x, x_real, x_fake))"
    ours = call_student(what, lambda: dmd_surrogate(x, dmd_direction(x, x_real, x_fake)))
    expect_tensor(what, ours)
    x_lib = x0.clone().requires_grad_(True)
    lib = dmd_loss(x_lib, x_real, x_fake)
    expect_close(what + ": value, against minimal.self_forcing.dmd_loss", ours.detach(), lib.detach(), ATOL)
    expect_close(what + ": gradient, against minimal.self_forcing.dmd_loss", torch.autograd.grad(ours, x)[0],
                 torch.autograd.grad(lib, x_lib)[0], ATOL)
    g = torch.Generator().manual_seed(0)
    mu, log_sigma = torch.tensor(-1.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.SGD([mu, log_sigma], lr=0.2)
    for _ in range(200):
        x = mu + log_sigma.exp() * torch.randn(8, 64, generator=g)
        t = 0.02 + 0.96 * torch.rand(8, 1, generator=g)
        z = (1 - t) * x.detach() + t * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            x_real, x_fake = gaussian_denoiser(2.0, 0.5)(z, t), gaussian_denoiser(mu, log_sigma.exp())(z, t)
        opt.zero_grad()
        step = call_student("the Gaussian toy's loss",
                     lambda a=x, b=x_real, f=x_fake: dmd_surrogate(a, dmd_direction(a, b, f)))
        step.backward()
        opt.step()
    got = (round(mu.item(), 3), round(log_sigma.exp().item(), 3))
    if abs(got[0] - 2) > 0.02 or abs(got[1] - 0.5) > 0.02:
        fail("200 steps of gradient descent on (mu, log sigma) with your DMD loss, data N(2, 0.5^2), start N(-1, 1)",
             "mu within 0.02 of 2 and sigma within 0.02 of 0.5", f"mu {got[0]}, sigma {got[1]}")
    passed("check_dmd_on_gaussians", f"equals minimal.self_forcing.dmd_loss in value and gradient; the generator "
                                     f"moved from N(-1, 1) to N({got[0]}, {got[1]}^2), the data being N(2, 0.5^2)")


# ---------------------------------------------------------------------------------------------------
# Part 3: the re-noising step
# ---------------------------------------------------------------------------------------------------

@functools.cache
def tiny_video_model() -> VideoTransformer:
    """A 1-layer VideoTransformer on (8, 4, 4) latents (4 tokens per frame), chunks of 2, 8 frames, random
    weights, float64."""
    cfg = VideoConfig(size=4, channels=8, patch=2, chunk=2, max_frames=8, n_layer=1, n_head=2, n_embd=16)
    model = VideoTransformer(cfg).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
    return model


RENOISE_HINT = ("e_hat = (z - (1 - t) x_hat) / t is the noise the chunk implies; the next state puts the clean "
                "prediction and that noise together at level t_next: (1 - t_next) x_hat + t_next e_hat")


@answers(renoise=(library_self_forcing.rollout_with_exit, library_self_forcing.clean_prediction))
@single_thread
def check_renoise(renoise) -> None:
    """renoise(z, x_hat, t, t_next) == z - (t - t_next) v, v = (z - x_hat) / t; used in a chunk-by-chunk sampler
    with the frame KV cache it reproduces sample_video on a tiny random model."""
    g = torch.Generator().manual_seed(30)
    z, x_hat = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    for t, t_next in ((1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0), (1.0, 0.0), (0.9, 0.3)):
        what = f"renoise(z, x_hat, t={t}, t_next={t_next})"
        got = call_student(what, renoise, z, x_hat, t, t_next, hint=RENOISE_HINT)
        want = z - (t - t_next) * (z - x_hat) / t
        hint = RENOISE_HINT
        if isinstance(got, torch.Tensor) and got.shape == want.shape and t_next > 0:
            if torch.allclose(got.double(), x_hat, atol=ATOL):
                hint = "you returned x_hat: that is the step to t_next = 0 only. " + hint
        expect_close(what + ", against Euler's step z - (t - t_next)(z - x_hat) / t", got, want, 1e-12, hint)
    model = tiny_video_model()
    cfg = model.config
    g = torch.Generator().manual_seed(31)
    actions, scene = torch.randint(0, 5, (2, cfg.max_frames), generator=g), torch.tensor([0, 3])
    noise = torch.randn(2, cfg.max_frames, *cfg.frame_shape, generator=g, dtype=torch.float64)
    for steps in (4, 1):
        ts, c = schedule(steps), cfg.chunk
        cache, chunks = model.new_cache(2), []
        with torch.no_grad():
            for k in range(cfg.max_frames // c):
                a, z = actions[:, k * c:(k + 1) * c], noise[:, k * c:(k + 1) * c]
                for i in range(steps):
                    x_hat = clean_prediction(model, z, torch.full((2, c), ts[i], dtype=z.dtype), a, scene, cache=cache)
                    what = f"renoise inside the sampler, chunk {k}, t={ts[i]} -> {ts[i + 1]}"
                    z = call_student(what, renoise, z, x_hat, ts[i], ts[i + 1], hint=RENOISE_HINT)
                model(z, torch.zeros(2, c, dtype=z.dtype), a, scene, cache=cache)
                cache.advance(c * cfg.tokens_per_frame)
                chunks.append(z)
        expect_close(f"a {steps}-step chunk-by-chunk sampler built on your renoise, against sample_video (float64)",
                     torch.cat(chunks, 1), sample_video(model, actions, scene, steps, noise=noise), 1e-10, RENOISE_HINT)
    passed("check_renoise", "equals Euler's step for 6 (t, t_next) pairs; a sampler built on it draws "
                            "sample_video's video at 4 steps and at 1")


# ---------------------------------------------------------------------------------------------------
# Part 4: the rollout's calls
# ---------------------------------------------------------------------------------------------------

def library_calls(steps: int, exits: list[int]) -> list[tuple[int, float, bool]]:
    """(chunk, t, with grad) of every network call rollout_with_exit makes, recorded with a forward hook; the
    chunk is read off the cache's committed length when the call runs."""
    model = tiny_video_model()
    cfg = model.config
    per_chunk = cfg.chunk * cfg.tokens_per_frame
    calls = []

    def record(module, args, kwargs, out):
        calls.append((kwargs["cache"].length // per_chunk, round(float(args[1].max()), 6), torch.is_grad_enabled()))

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        g = torch.Generator().manual_seed(40)
        actions, scene = torch.randint(0, 5, (1, cfg.max_frames), generator=g), torch.tensor([1])
        noise = torch.randn(1, cfg.max_frames, *cfg.frame_shape, generator=g, dtype=torch.float64)
        rollout_with_exit(model, actions, scene, steps, noise, torch.tensor(exits))
    finally:
        handle.remove()
    return calls


CALLS_HINT = ("chunk by chunk: for chunk k with exit step s, the steps i = 0 .. s - 1 at t = ts[i] without grad, "
              "then the exit step at t = ts[s] with grad, then the context pass at t = 0 without grad "
              "(ts = schedule(steps), from 1 down to 0)")


def _normalise_calls(what: str, got) -> list[tuple[int, float, bool]]:
    if not isinstance(got, list | tuple):
        fail(what, "a list of (chunk, t, with_grad) tuples, one per network call", f"{type(got).__name__}", CALLS_HINT)
    out = []
    for n, call in enumerate(got):
        try:
            k, t, grad = call
            out.append((int(k), round(float(t), 6), bool(grad)))
        except (TypeError, ValueError):
            fail(f"{what}, call {n}", "a (chunk, t, with_grad) tuple", repr(call)[:200], CALLS_HINT)
    return out


@answers(rollout_calls=library_self_forcing.rollout_with_exit)
@single_thread
def check_rollout_calls(rollout_calls) -> None:
    """rollout_calls(steps, exits) == the calls minimal.self_forcing.rollout_with_exit makes, recorded; ValueError
    for an exit outside [0, steps)."""
    cases = [(4, [0, 3, 1, 2]), (4, [3, 3, 3, 3]), (4, [0, 0, 0, 0]), (4, [2, 1, 0, 3]), (1, [0, 0, 0, 0])]
    for steps, exits in cases:
        what = f"rollout_calls(steps={steps}, exits={exits})"
        got = _normalise_calls(what, call_student(what, rollout_calls, steps, list(exits), hint=CALLS_HINT))
        want = library_calls(steps, exits)
        for n, (a, b) in enumerate(zip(got, want, strict=False)):
            if a != b:
                fail(f"{what}: call {n} (chunk, t, with grad)", b, a, CALLS_HINT)
        if len(got) != len(want):
            fail(f"{what}: the number of network calls", f"{len(want)} (sum of exit + 2 over the chunks)", len(got),
                 CALLS_HINT)
    for exits in ([0, 4, 1, 2], [-1, 0, 0, 0]):
        expect_raises(f"rollout_calls(steps=4, exits={exits}): an exit step outside [0, 4)", ValueError,
                      lambda e=exits: rollout_calls(4, e), "raise ValueError unless 0 <= exit < steps for every chunk")
    example = rollout_calls(4, [0, 3, 1, 2])
    n_grad = sum(grad for _, _, grad in example)
    passed("check_rollout_calls", f"{len(cases)} exit draws equal the calls that minimal.self_forcing."
                                  f"rollout_with_exit makes (recorded with a hook); for exits [0, 3, 1, 2]: "
                                  f"{len(example)} calls, {n_grad} with gradient")
