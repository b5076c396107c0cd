"""Self Forcing: the rollout with exits, its out-of-place grad step, DMD's gradient, training, the students."""

import copy

import pytest
import torch

from minimal.self_forcing import (
    SCHEDULES,
    ReadOnlyCache,
    SelfForcingRecipe,
    check_student,
    clean_prediction,
    dmd_loss,
    predict_clean_given_past,
    rollout_with_exit,
    schedule,
    train_student,
)
from minimal.video_model import VideoConfig, VideoTransformer, block_causal_mask
from minimal.video_sampling import sample_video

SMALL = VideoConfig(n_layer=2, n_head=2, n_embd=32, max_frames=8, chunk=2)


@pytest.fixture
def model(randomise):
    return randomise(VideoTransformer(SMALL).double())


def inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 5, (B, SMALL.max_frames), generator=g)
    scenes = torch.randint(0, 4, (B,), generator=g)
    noise = torch.randn(B, SMALL.max_frames, *SMALL.frame_shape, generator=g, dtype=torch.float64)
    return actions, scenes, noise


def _mask(n_frames):
    return block_causal_mask(n_frames, SMALL.chunk, SMALL.tokens_per_frame)


def test_schedules_fall_from_noise_to_clean():
    for n, ts in SCHEDULES.items():
        assert len(ts) == n + 1 and ts[0] == 1.0 and ts[-1] == 0.0
        assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))
    assert schedule(4) == tuple(torch.linspace(1, 0, 5).tolist())  # linear: Euler's sample_chunks(steps=4)


def test_read_only_cache_equals_the_cache_in_value_and_writes_nothing(model):
    actions, scenes, noise = inputs()
    c, P = SMALL.chunk, SMALL.tokens_per_frame
    cache = model.new_cache(2)
    with torch.no_grad():  # two clean chunks as context
        model(noise[:, :2 * c], torch.zeros(2, 2 * c, dtype=torch.float64), actions[:, :2 * c], scenes, cache=cache,
              mask=_mask(2 * c))
        cache.advance(2 * c * P)
    before = cache.k.clone(), cache.v.clone()
    z, t = noise[:, 2 * c:3 * c], torch.full((2, c), 0.6, dtype=torch.float64)
    a = actions[:, 2 * c:3 * c]
    with torch.no_grad():
        x_inplace = clean_prediction(model, z, t, a, scenes, cache=cache)
    after_inplace = cache.k.clone()
    cache.k.copy_(before[0])
    cache.v.copy_(before[1])
    x_ro = clean_prediction(model, z, t, a, scenes, cache=ReadOnlyCache(cache))
    assert x_ro.requires_grad  # the gradient survives the read
    torch.testing.assert_close(x_ro.detach(), x_inplace, rtol=0, atol=1e-12)
    assert torch.equal(cache.k, before[0]) and torch.equal(cache.v, before[1])  # nothing written
    assert not torch.equal(after_inplace, before[0])  # (the in-place path does write)
    with pytest.raises(RuntimeError, match="never commits"):
        ReadOnlyCache(cache).advance(1)


@pytest.mark.parametrize("steps", sorted(SCHEDULES))
def test_rollout_exiting_at_the_last_step_is_the_sampler(model, steps):
    """With every exit at the last step the training rollout is inference: sample_video on the same noise."""
    actions, scenes, noise = inputs()
    K = SMALL.max_frames // SMALL.chunk
    x = rollout_with_exit(model, actions, scenes, steps, noise, torch.full((K,), steps - 1))
    ref = sample_video(model, actions, scenes, steps, noise=noise)
    torch.testing.assert_close(x.detach(), ref, rtol=0, atol=1e-10)


def test_only_the_exit_step_runs_with_grad(model):
    actions, scenes, noise = inputs()
    exits = torch.tensor([0, 3, 1, 2])
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append((torch.is_grad_enabled(), args[0].shape[1],
                                                                            float(args[1].max()))))
    x = rollout_with_exit(model, actions, scenes, 4, noise, exits)
    handle.remove()
    ts = SCHEDULES[4]
    expected = []
    for s in exits.tolist():
        expected += [(False, 2, ts[i]) for i in range(s)] + [(True, 2, ts[s]), (False, 2, 0.0)]  # steps, exit, refill
    assert calls == expected
    assert x.requires_grad
    x[:, 2:4].sum().backward()  # chunk 1 exits at its last step: the gradient still reaches the weights
    assert all(p.grad is not None for p in model.parameters())


def test_rollout_rejects_exits_outside_the_schedule(model):
    actions, scenes, noise = inputs()
    with pytest.raises(ValueError, match=r"exit step must be in \[0, steps = 4\)"):
        rollout_with_exit(model, actions, scenes, 4, noise, torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="one exit step per chunk"):
        rollout_with_exit(model, actions, scenes, 4, noise, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one of \\[1, 4\\] steps"):
        rollout_with_exit(model, actions, scenes, 3, noise, torch.zeros(4, dtype=torch.long))


def test_predict_given_past_is_chunk_by_chunk_recomputation(model):
    """The doubled sequence gives chunk k the clean chunks < k as its past: the same as running
    [past chunks | noisy chunk k] on its own under the block-causal mask."""
    actions, scenes, x = inputs()
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.rand(2, SMALL.max_frames // SMALL.chunk, generator=g, dtype=x.dtype).repeat_interleave(SMALL.chunk, 1)
    with torch.no_grad():
        got = predict_clean_given_past(model, x, x_t, t, actions, scenes)
        c = SMALL.chunk
        for k in range(SMALL.max_frames // c):
            n = (k + 1) * c
            seq = torch.cat([x[:, :k * c], x_t[:, k * c:n]], 1)
            tt = torch.cat([torch.zeros(2, k * c, dtype=x.dtype), t[:, k * c:n]], 1)
            ref = clean_prediction(model, seq, tt, actions[:, :n], scenes, mask=_mask(n))[:, k * c:]
            torch.testing.assert_close(got[:, k * c:n], ref, rtol=0, atol=1e-10)


def gaussian_denoiser(mu: float, sigma: float):
    """E[x | z_t] for x ~ N(mu, sigma^2), z_t = (1 - t) x + t e: the optimal clean prediction in closed form."""
    def x_hat(z, t):
        a = 1 - t
        return mu + a * sigma ** 2 / (a ** 2 * sigma ** 2 + t ** 2) * (z - a * mu)
    return x_hat


def test_dmd_gradient_by_hand_on_gaussians():
    """Generator x = mu_g + e, real data N(2, 1): with the exact denoisers of both distributions, the
    gradient of L_G is the hand-computed mean of (x_fake - x_real) / mean|x - x_real|, and it pulls
    mu_g toward the data."""
    g = torch.Generator().manual_seed(0)
    mu_g = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    e = torch.randn(4, 256, generator=g, dtype=torch.float64)
    x = mu_g + e  # (B = 4 samples of 256 numbers)
    t = 0.5
    z = (1 - t) * x.detach() + t * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_real, x_fake = gaussian_denoiser(2.0, 1.0)(z, t), gaussian_denoiser(-1.0, 1.0)(z, t)
    dmd_loss(x, x_real, x_fake).backward()
    norm = (x.detach() - x_real).abs().mean(1, keepdim=True)
    by_hand = ((x_fake - x_real) / norm).sum() / x.numel()
    torch.testing.assert_close(mu_g.grad, by_hand, rtol=1e-12, atol=1e-12)
    assert mu_g.grad < 0  # gradient descent raises mu_g toward the data's mean 2
    # equal variances: x_fake - x_real = (mu_g - mu_r) (1 - a^2 / (a^2 + t^2)), a = 1 - t, the same everywhere
    a = 1 - t
    shift = (-1.0 - 2.0) * (1 - a * a / (a * a + t * t))
    torch.testing.assert_close(x_fake - x_real, torch.full_like(z, shift), rtol=1e-12, atol=1e-12)


def test_training_lowers_the_critic_loss_and_keeps_the_teacher(model):
    """A few iterations on a tiny model: the losses are logged, the teacher is untouched, the student moved."""
    teacher = model.float()
    before = copy.deepcopy(teacher.state_dict())

    def conditions(g):
        return torch.randint(0, 5, (4, SMALL.max_frames), generator=g), torch.randint(0, 4, (4,), generator=g)

    recipe = SelfForcingRecipe(steps=3, critic_ratio=2, batch_size=4, lr=1e-3)
    student, log, seconds = train_student(teacher, 4, recipe, conditions, progress=False)
    assert len(log["dmd"]) == 3 and len(log["critic"]) == 6 and seconds > 0
    assert all(torch.isfinite(torch.tensor(log["dmd"] + log["critic"])))
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert not any(p.requires_grad for p in student.parameters())  # the EMA copy comes back frozen


def test_bad_recipes_and_students_raise(model):
    teacher = model.float()
    conditions = lambda g: None  # noqa: E731 (never reached)
    with pytest.raises(ValueError, match="critic_ratio must be an int >= 1"):
        train_student(teacher, 4, SelfForcingRecipe(critic_ratio=0), conditions)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        train_student(teacher, 4, SelfForcingRecipe(steps=0), conditions)
    with pytest.raises(ValueError, match="one of \\[1, 4\\] steps"):
        train_student(teacher, 8, SelfForcingRecipe(), conditions)
    with pytest.raises(ValueError, match="t_low < t_high"):
        train_student(teacher, 4, SelfForcingRecipe(t_low=0.5, t_high=0.4), conditions)
    other = VideoTransformer(VideoConfig(n_layer=3, n_head=2, n_embd=32, max_frames=8, chunk=2))
    with pytest.raises(ValueError, match="student's config must equal the teacher's"):
        check_student(other, teacher)
    with pytest.raises(ValueError, match="student's config must equal the teacher's"):
        train_student(teacher, 4, SelfForcingRecipe(), conditions, student=other)


# ---------------------------------------------------------------------------------------------------
# The shipped students
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, steps", [("video-sf", 4), ("video-sf1", 1)])
def test_shipped_students_know_their_schedule_and_stream_by_name(name, steps):
    from minimal.pipeline import load_pipeline
    from minimal.video_recipes import load_video_model

    student, meta = load_video_model(name)
    teacher, _ = load_video_model("video-df")
    check_student(student, teacher)
    assert meta["schedules"] == {str(steps): list(schedule(steps))} and meta["teacher"] == "video-df"
    assert len(meta["dmd_loss"]) > 1 and len(meta["critic_loss"]) > 1
    with load_pipeline(name) as pipe:
        assert pipe.stream.steps == steps and pipe.stream.ts.tolist() == list(schedule(steps))
        pipe.reset("forest")
        frame = pipe.next_frame("right")
        assert frame.shape == (16, 16, 3) and frame.dtype == torch.uint8
    with pytest.raises(ValueError, match=rf"samples with \[{steps}\] steps"):
        load_pipeline(name, steps=8)


@pytest.mark.slow
def test_bench_reports_every_figure_the_students_are_judged_by():
    from minimal.self_forcing_bench import KEPT_METRICS, METRICS, bench

    table, result = bench(quick=True, repeats=1)
    assert set(result["teacher"]) == {"1", "2", "4", "8"}
    for key in ("teacher_guided", "student_4", "student_1", *(f"teacher/{n}" for n in "1248")):
        s = result["teacher"][key.split("/")[1]] if "/" in key else result[key]
        assert set(METRICS) <= set(s) and all(0 <= s[m] <= 1 for m in METRICS)
    for key in ("kept_4", "kept_1", "kept_teacher"):
        assert set(result[key]) == set(KEPT_METRICS)
    assert 0 < result["latency_ratio_1"] < result["latency_ratio_4"] < 1.5
    assert "video-sf1, 1 step" in table
