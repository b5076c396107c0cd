"""The causal video transformer, its masks and frame KV cache, and teacher / diffusion forcing."""

import dataclasses

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from minimal.autoencoder import load_autoencoder
from minimal.data import VIDEO_WORLD, SpriteWorld
from minimal.diffusion_forcing import (
    VideoRecipe,
    clip_windows,
    encoded_rollouts,
    teacher_forcing_mask,
    train,
    video_clips,
    video_loss,
)
from minimal.sinks import NaiveSinkCache
from minimal.toybench import score_video
from minimal.video_bench import bench
from minimal.video_model import (
    T_MIN,
    VideoConfig,
    VideoTransformer,
    block_causal_mask,
    flex_block_causal_mask,
    patchify,
    unpatchify,
)
from minimal.video_recipes import (
    CONFIG,
    GUIDANCE,
    METHODS,
    MODELS,
    RECIPES,
    eval_actions,
    evaluate,
    load_video_model,
)
from minimal.video_sampling import rollout, sample_chunks, sample_pyramid, sample_video

SMALL = VideoConfig(n_layer=2, n_head=2, n_embd=32, max_frames=8, chunk=2)
SMALL16 = dataclasses.replace(SMALL, max_frames=16)  # trained length 16: rolling caches stream past it


def random_model(config=SMALL, seed=0) -> VideoTransformer:
    """A model with every weight random (adaLN-Zero would otherwise make the untrained model ignore its input)."""
    torch.manual_seed(seed)
    model = VideoTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def inputs(n_videos=2, n_frames=8, seed=0, frame_shape=(3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 5, (n_videos, n_frames), generator=g)
    scenes = torch.randint(0, 4, (n_videos,), generator=g)
    noise = torch.randn(n_videos, n_frames, *frame_shape, generator=g)
    return actions, scenes, noise


# ---------------------------------------------------------------------------------------------------
# Masks and patches
# ---------------------------------------------------------------------------------------------------

def test_block_causal_mask_by_hand():
    m = block_causal_mask(n_frames=4, chunk=2, tokens_per_frame=1)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    m = block_causal_mask(n_frames=4, chunk=1, tokens_per_frame=2)  # chunk of one frame: frame-causal
    assert torch.equal(m, torch.ones(4, 4, dtype=torch.bool).tril().repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_flex_block_mask_agrees_with_the_boolean_mask():
    n_frames, chunk, P = 8, 2, 16
    dense = block_causal_mask(n_frames, chunk, P)
    block_mask = flex_block_causal_mask(n_frames, chunk, P)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n_frames * P, 16, generator=g) for _ in range(3))
    out_flex = flex_attention(q, k, v, block_mask=block_mask)
    out_sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    assert (out_flex - out_sdpa).abs().max() < 1e-5


def test_model_with_the_flex_mask_equals_the_boolean_mask():
    model = random_model()
    actions, scenes, noise = inputs()
    t = torch.rand(2, 8)
    P = SMALL.tokens_per_frame
    with torch.no_grad():  # eager flex_attention has no backward on the CPU
        a = model(noise, t, actions, scenes, mask=block_causal_mask(8, 2, P))
        b = model(noise, t, actions, scenes, mask=flex_block_causal_mask(8, 2, P))
    assert (a - b).abs().max() < 1e-5


def test_teacher_forcing_mask_quadrants():
    F_, c, P = 6, 2, 3
    m = teacher_forcing_mask(F_, c, P)
    L = F_ * P
    chunk_of = torch.arange(L) // (c * P)
    q, k = chunk_of[:, None], chunk_of[None, :]
    assert torch.equal(m[:L, :L], k <= q)  # clean -> clean: block causal
    assert not m[:L, L:].any()  # clean never sees noisy
    assert torch.equal(m[L:, :L], k < q)  # noisy chunk k -> clean chunks < k
    assert torch.equal(m[L:, L:], k == q)  # noisy -> its own noisy chunk only


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 3, 16, 16)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 3 * 16, 48)
    assert torch.equal(unpatchify(tokens, 3, 16, 4), x)
    assert torch.equal(tokens[0, 16 + 5].view(3, 4, 4), x[0, 1, :, 4:8, 4:8])  # frame 1, patch (1, 1)


# ---------------------------------------------------------------------------------------------------
# The frame KV cache and the samplers against their slow references
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 3])
def test_cached_sampling_equals_uncached_block_causal_sampling(steps):
    model = random_model()
    actions, scenes, noise = inputs()
    cached = sample_video(model, actions, scenes, steps, noise=noise)
    uncached = sample_video(model, actions, scenes, steps, noise=noise, use_cache=False)
    assert (cached - uncached).abs().max() <= 1e-4
    assert cached.abs().max() > 0.1  # a real video, not zeros


def test_cached_sampling_on_every_device(device_dtype):
    device, dtype = device_dtype
    model = random_model().to(device, dtype)
    actions, scenes, noise = (v.to(device) for v in inputs())
    cached = sample_video(model, actions, scenes, 2, noise=noise)
    uncached = sample_video(model, actions, scenes, 2, noise=noise, use_cache=False)
    assert cached.dtype == dtype and cached.device.type == device
    tol = 1e-4 if dtype == torch.float32 else 0.1 * uncached.float().abs().max().item()
    assert (cached.float() - uncached.float()).abs().max() <= tol


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_cache_equals_recompute_for_the_shipped_models(name):
    """In float64 the cached sampler and recomputation agree to rounding; in float32 a trained model can
    amplify the two paths' different summation orders along a 16-frame video (measured up to 4e-4 for
    `video-tf` at 4 steps per chunk, 1e-6 to 6e-5 typically), so float32 gets a looser bound."""
    model, _ = load_video_model(name)
    actions, scenes, noise = inputs(n_videos=2, n_frames=16, frame_shape=CONFIG.frame_shape)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-3)):
        model, e = model.to(dtype), noise.to(dtype)
        cached = sample_video(model, actions, scenes, 4, noise=e)
        assert (cached - sample_video(model, actions, scenes, 4, noise=e, use_cache=False)).abs().max() <= tol


def test_continuing_given_start_frames():
    """A video may begin with given clean frames: they are returned unchanged and are the context of the
    rest, cached or recomputed alike, exactly as if the model had generated them."""
    model = random_model()
    actions, scenes, noise = inputs()
    start = torch.rand(2, 4, 3, 16, 16)
    cached = sample_video(model, actions, scenes, 2, noise=noise, start=start)
    uncached = sample_video(model, actions, scenes, 2, noise=noise, use_cache=False, start=start)
    assert torch.equal(cached[:, :4], start) and (cached - uncached).abs().max() <= 1e-4
    # the same as generating with a "model" whose first two chunks happen to be the start frames
    generated = sample_video(model, actions, scenes, 2, noise=noise)
    again = sample_video(model, actions, scenes, 2, noise=noise, start=generated[:, :4])
    assert (again - generated).abs().max() <= 1e-5


def test_uncached_reference_by_hand():
    """The reference itself: chunk k's Euler steps see the clean earlier frames at t = 0, masked."""
    model, steps = random_model(), 2
    actions, scenes, noise = inputs(n_videos=1, n_frames=4)
    video = sample_video(model, actions, scenes, steps, noise=noise, use_cache=False)
    mask = block_causal_mask(4, 2, SMALL.tokens_per_frame)
    z = noise[:, 2:].clone()
    for t, dt in ((1.0, 0.5), (0.5, 0.5)):
        times = torch.tensor([[0.0, 0.0, t, t]])
        v = model(torch.cat([video[:, :2], z], 1), times, actions, scenes, mask=mask)[:, 2:]
        z = z - dt * v
    assert (z - video[:, 2:]).abs().max() < 1e-5


def test_context_does_not_see_the_future():
    """Under the block-causal mask, a chunk's output ignores every later frame."""
    model = random_model()
    actions, scenes, noise = inputs()
    t = torch.rand(2, 8)
    mask = block_causal_mask(8, 2, SMALL.tokens_per_frame)
    a = model(noise, t, actions, scenes, mask=mask)
    changed = noise.clone()
    changed[:, 4:] += 1.0
    b = model(changed, t, actions, scenes, mask=mask)
    assert (a[:, :4] - b[:, :4]).abs().max() < 1e-5
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-2


def test_pyramid_with_lag_equal_to_steps_is_chunk_by_chunk():
    model = random_model()
    actions, scenes, noise = inputs()
    chunked = sample_video(model, actions, scenes, 3, noise=noise, use_cache=False)
    assert (sample_pyramid(model, actions, scenes, 3, lag=3, noise=noise) - chunked).abs().max() < 1e-5
    staggered = sample_pyramid(model, actions, scenes, 3, lag=1, noise=noise)
    assert (staggered[:, :2] - chunked[:, :2]).abs().max() < 1e-5  # the first chunk sees no other chunk
    assert (staggered[:, 2:4] - chunked[:, 2:4]).abs().max() > 1e-3  # the second saw it half denoised


@pytest.mark.parametrize("cache, n_sink", [("reencode", 0), ("rolling", 0), ("rolling", 2)])
def test_rollout_within_the_window_is_sample_video(cache, n_sink):
    """Before the cache is full, both sliding windows are the static cache, bit for bit."""
    model = random_model()
    actions, scenes, noise = inputs()
    within = rollout(model, actions, scenes, 2, noise=noise, cache=cache, n_sink=n_sink)
    assert torch.equal(within, sample_video(model, actions, scenes, 2, noise=noise))


@pytest.mark.parametrize("w", [0.0, 0.5])
def test_rolling_window_equals_recomputing_the_window(w):
    """Past max_frames each chunk is generated from the last max_frames - c frames at positions 0 ..:
    the same as recomputing that window from scratch under the block-causal mask at every step; with
    history guidance w, the unconditional branch recomputes the same window of starting noise at t = 1."""
    model, steps, c, M = random_model(), 2, SMALL.chunk, SMALL.max_frames
    actions, scenes, noise = inputs(n_frames=20)
    video = rollout(model, actions, scenes, steps, noise=noise, cache="reencode", history_guidance=w)
    assert video.shape == noise.shape
    keep = M - c
    for k in (M, M + c, 20 - c):  # chunks after the window filled
        context, past_noise, z = video[:, k - keep:k], noise[:, k - keep:k], noise[:, k:k + c].clone()
        mask = block_causal_mask(M, c, SMALL.tokens_per_frame)
        for t in (1.0, 0.5):
            a = actions[:, k - keep:k + c]
            times = torch.cat([torch.zeros(2, keep), torch.full((2, c), t)], 1)
            v = model(torch.cat([context, z], 1), times, a, scenes, mask=mask)[:, keep:]
            times_u = torch.cat([torch.ones(2, keep), torch.full((2, c), t)], 1)
            v_u = model(torch.cat([past_noise, z], 1), times_u, a, scenes, mask=mask)[:, keep:]
            z = z - 0.5 * (v + w * (v - v_u))
        assert (z - video[:, k:k + c]).abs().max() < 1e-4


@pytest.mark.parametrize("n_sink, window", [(0, 16), (2, 14), (4, 8), (0, 2), (6, 4)])
def test_rolling_frame_cache_equals_the_naive_reference(n_sink, window):
    """Ring of frame slots + re-rotated raw keys == lists of frames that evict by slicing and renumber
    positions 0..n-1, over 44 frames of a 16-frame model (up to 21 chunk evictions); memory fixed."""
    model = random_model(SMALL16)
    actions, scenes, noise = inputs(n_frames=44)
    fast = model.new_rolling_cache(2, n_sink, window)
    k_buffer, nbytes = fast.k, fast.nbytes
    ref = NaiveSinkCache(SMALL16.n_layer, n_sink, window, SMALL16.tokens_per_frame)
    video = rollout(model, actions, scenes, 2, noise=noise, cache=fast)
    reference = rollout(model, actions, scenes, 2, noise=noise, cache=ref)
    assert (video - reference).abs().max() <= 1e-4 and video.abs().max() > 0.1
    assert fast.k is k_buffer and fast.nbytes == nbytes and fast.length == ref.length == fast.capacity
    P = SMALL16.tokens_per_frame  # the next chunk sits at the cache's last frame positions, never past them
    assert fast.next_positions(2 * P).tolist() == [n_sink + window - 2] * P + [n_sink + window - 1] * P


def test_rolling_frame_cache_on_every_device(device_dtype):
    device, dtype = device_dtype
    model = random_model(SMALL16).to(device, dtype)
    actions, scenes, noise = (v.to(device) for v in inputs(n_frames=24))
    video = rollout(model, actions, scenes, 2, noise=noise, cache="rolling", n_sink=2)
    ref = rollout(model, actions, scenes, 2, noise=noise, cache=NaiveSinkCache(2, 2, 14, SMALL16.tokens_per_frame))
    assert video.dtype == dtype and video.device.type == device
    tol = 1e-4 if dtype == torch.float32 else 0.1 * ref.float().abs().max().item()
    assert (video.float() - ref.float()).abs().max() <= tol


def test_rolling_frame_cache_positions_by_hand():
    """2 sinks + a 4-frame ring (chunk 2, P = 16 tokens a frame) at its 3rd eviction: the sinks sit at
    frames 0, 1, the kept chunk (frames 8, 9) at 2, 3 and the new chunk, written over the oldest, at 4, 5."""
    model = random_model(SMALL16)
    cache, P = model.new_rolling_cache(1, n_sink=2, window=4), SMALL16.tokens_per_frame
    for _ in range(5):  # frames 0..9 streamed: sinks 0, 1 in slots 0, 1; frames 6, 7 in 2, 3; 8, 9 in 4, 5
        cache.advance(2 * P)
    assert cache.next_positions(2 * P).tolist() == [4] * P + [5] * P
    k = torch.zeros(1, SMALL16.n_head, 2 * P, SMALL16.head_dim)
    cache.update(0, k, k)  # frames 10, 11 overwrite slots 2, 3 (frames 6, 7)
    assert cache.key_positions().view(-1, P)[:, 0].tolist() == [0, 1, 4, 5, 2, 3]  # per slot
    assert torch.equal(cache.key_positions().view(-1, P), cache.key_positions().view(-1, P)[:, :1].expand(-1, P))


def test_rolling_cache_equals_the_reference_on_the_shipped_model():
    model, _ = load_video_model("video-df")
    actions, scenes, noise = inputs(n_videos=1, n_frames=24, frame_shape=CONFIG.frame_shape)
    cfg = model.config
    video = rollout(model, actions, scenes, 2, noise=noise, cache="rolling", n_sink=2)  # 2 sinks + 14 frames
    ref = NaiveSinkCache(cfg.n_layer, 2, 14, cfg.tokens_per_frame)
    assert (video - rollout(model, actions, scenes, 2, noise=noise, cache=ref)).abs().max() <= 1e-4


def test_sample_chunks_yields_chunks_in_order():
    model = random_model()
    actions, scenes, noise = inputs()
    chunks = list(sample_chunks(model, actions, scenes, 2, noise=noise))
    assert [x.shape[1] for x in chunks] == [2, 2, 2, 2]
    assert torch.equal(torch.cat(chunks, 1), sample_video(model, actions, scenes, 2, noise=noise))


# ---------------------------------------------------------------------------------------------------
# History guidance
# ---------------------------------------------------------------------------------------------------

def test_history_guidance_by_hand():
    """Chunk 0 has no past and is unguided; chunk 1 steps along v_c + w (v_c - v_u), v_c seeing the clean
    first chunk at t = 0 and v_u the first chunk's own starting noise at t = 1."""
    model, w = random_model(), 0.7
    actions, scenes, noise = inputs(n_videos=1, n_frames=4)
    video = sample_video(model, actions, scenes, 2, noise=noise, use_cache=False, history_guidance=w)
    assert torch.equal(video[:, :2], sample_video(model, actions, scenes, 2, noise=noise, use_cache=False)[:, :2])
    mask = block_causal_mask(4, 2, SMALL.tokens_per_frame)
    z = noise[:, 2:].clone()
    for t in (1.0, 0.5):
        v_c = model(torch.cat([video[:, :2], z], 1), torch.tensor([[0.0, 0.0, t, t]]), actions, scenes, mask=mask)
        v_u = model(torch.cat([noise[:, :2], z], 1), torch.tensor([[1.0, 1.0, t, t]]), actions, scenes, mask=mask)
        z = z - 0.5 * (v_c + w * (v_c - v_u))[:, 2:]
    assert (z - video[:, 2:]).abs().max() < 1e-5


@pytest.mark.parametrize("with_start", [False, True])
def test_history_guidance_cached_equals_uncached(with_start):
    """The unconditional branch's cache (the past as noise, encoded at t = 1) agrees with recomputing it."""
    model = random_model()
    actions, scenes, noise = inputs()
    start = torch.rand(2, 2, 3, 16, 16) if with_start else None
    cached = sample_video(model, actions, scenes, 3, noise=noise, start=start, history_guidance=0.5)
    uncached = sample_video(model, actions, scenes, 3, noise=noise, start=start, use_cache=False,
                            history_guidance=0.5)
    assert (cached - uncached).abs().max() <= 1e-4
    assert (cached - sample_video(model, actions, scenes, 3, noise=noise, start=start)).abs().max() > 1e-2


@pytest.mark.parametrize("cache, n_sink", [("reencode", 0), ("rolling", 2)])
def test_guided_rollout_within_the_window_is_guided_sample_video(cache, n_sink):
    model = random_model()
    actions, scenes, noise = inputs()
    within = rollout(model, actions, scenes, 2, noise=noise, cache=cache, n_sink=n_sink, history_guidance=0.5)
    assert torch.equal(within, sample_video(model, actions, scenes, 2, noise=noise, history_guidance=0.5))


def test_evaluate_samples_with_history_guidance(monkeypatch):
    """Both of evaluate's protocols (from scratch, continuing a real first chunk) sample with the guidance."""
    import minimal.video_recipes as recipes

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["history_guidance"])
        return sample_video(*args, **kwargs)

    monkeypatch.setattr(recipes, "sample_video", recording)
    ae, _ = load_autoencoder()
    scores = evaluate(random_model(CONFIG), ae, n_videos=2, history_guidance=0.5)
    assert seen == [0.5, 0.5] and set(scores) == {"toybench_16", "toybench_16_real_start"}


@pytest.mark.slow
def test_history_guidance_lifts_even_teacher_forcing():
    """History guidance at w = 0.5, paired with plain sampling (same actions, scenes and noise), 64 videos
    from scratch. Teacher forcing never saw a noised past, yet the contrast with one still helps
    (measured: validity 0.521 -> 0.615, count 0.557 -> 0.668, action 0.686 -> 0.770); diffusion forcing's
    gain is smaller (test_the_goal_continuing_a_real_first_chunk)."""
    model, _ = load_video_model("video-tf")
    ae, _ = load_autoencoder()
    actions, scenes = eval_actions(64, 16)
    scores = {w: score_video(ae.decode_video(sample_video(model, actions, scenes, 8, history_guidance=w,
                                                          generator=torch.Generator().manual_seed(1))),
                             scenes, actions) for w in (0.0, 0.5)}
    plain, guided = scores[0.0], scores[0.5]
    assert guided["validity"] > plain["validity"] + 0.05 and guided["count"] > plain["count"] + 0.05, scores
    assert guided["action"] > plain["action"] - 0.03, scores


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def test_video_clips_are_real_spriteworld_windows():
    x, a, s = video_clips(SpriteWorld(VIDEO_WORLD), 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == (4, 8, 3, 16, 16) and a.shape == (4, 8) and s.shape == (4,)
    scores = score_video(x, s, a)
    assert scores["validity"] > 0.9 and scores["action"] > 0.9


def test_encoded_rollouts_are_the_simulators_rollouts_encoded():
    """The fixed training set is world.sample_batch's rollouts, in order, each encoded by the autoencoder."""
    ae, _ = load_autoencoder()
    world = SpriteWorld(VIDEO_WORLD)
    z, a, s = encoded_rollouts(world, 5, 8, ae, torch.Generator().manual_seed(0), batch_size=2)
    assert z.shape == (5, 8, 8, 4, 4) and a.shape == (5, 8) and s.shape == (5,)
    g = torch.Generator().manual_seed(0)  # the same draws, by hand, in batches of 2
    for i in range(0, 5, 2):
        x_ref, a_ref, s_ref = world.sample_batch(min(2, 5 - i), 8, generator=g)
        assert torch.allclose(z[i:i + 2], ae.encode_video(x_ref), atol=1e-6)
        assert torch.equal(a[i:i + 2], a_ref) and torch.equal(s[i:i + 2], s_ref)


def test_clip_windows_cut_aligned_windows_of_the_chosen_rollouts():
    x, a, s = torch.arange(3 * 8.0).view(3, 8, 1, 1, 1), torch.arange(3 * 8).view(3, 8), torch.tensor([4, 5, 6])
    rows = torch.tensor([2, 0, 2, 1])
    xw, aw, sw = clip_windows(x, a, s, rows, 4, torch.Generator().manual_seed(0))
    start = torch.randint(0, 5, (4,), generator=torch.Generator().manual_seed(0))  # offsets 0 .. F
    for b in range(4):
        r, o = int(rows[b]), int(start[b])
        assert torch.equal(xw[b], x[r, o:o + 4]) and torch.equal(aw[b], a[r, o:o + 4]) and sw[b] == s[r]
    assert len(set(start.tolist())) > 1


def test_training_on_a_fixed_set_of_encoded_rollouts():
    """recipe.n_rollouts = N trains on windows of N rollouts encoded once (a step is then only the
    model's work): the loss falls, the autoencoder stays frozen, and the set is drawn from the seed."""
    ae, _ = load_autoencoder()
    config = VideoConfig(size=4, channels=8, patch=2, n_layer=2, n_head=2, n_embd=32, max_frames=4)
    recipe = VideoRecipe(steps=60, batch_size=8, lr=3e-3, n_rollouts=64)
    model, losses, seconds = train("diffusion_forcing", VideoTransformer(config), recipe, "cpu", False, autoencoder=ae)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), (losses[:10], losses[-10:])
    assert not any(p.requires_grad for p in ae.parameters()) and seconds > 0
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="n_rollouts must be an int >= 0"):
            train("diffusion_forcing", VideoTransformer(config), dataclasses.replace(recipe, n_rollouts=bad),
                  "cpu", False, autoencoder=ae)


@pytest.mark.parametrize("method", ["teacher_forcing", "diffusion_forcing"])
def test_training_lowers_the_loss(method):
    config = dataclasses.replace(SMALL, max_frames=4)
    model, losses, _ = train(method, VideoTransformer(config), VideoRecipe(steps=60, batch_size=8, lr=3e-3),
                             device="cpu", progress=False)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert not model.training


def test_the_weighted_loss_is_the_x_prediction_loss():
    """max(t, T_MIN)^2 |v - (e - x)|^2 with v = (z - x_hat) / max(t, T_MIN) is |x_hat - x|^2 for t >= T_MIN."""
    model, c, P = random_model(), SMALL.chunk, SMALL.tokens_per_frame
    actions, scenes, _ = inputs()
    x = torch.rand(2, 8, 3, 16, 16)
    loss = video_loss("diffusion_forcing", model, x, actions, scenes, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, by hand
    t = torch.rand(2, 4, generator=g).repeat_interleave(c, 1)
    e = torch.randn(x.shape, generator=g)
    tt = t[..., None, None, None]
    z = (1 - tt) * x + tt * e
    v = model(z, t, actions, scenes, mask=block_causal_mask(8, c, P))
    x_hat = z - tt.clamp(min=T_MIN) * v
    per_pixel = torch.where(tt >= T_MIN, (x_hat - x) ** 2, (T_MIN * (v - (e - x))) ** 2)
    assert torch.allclose(loss, per_pixel.mean(), rtol=1e-5)


def test_context_noise_noises_only_the_context_half():
    """Teacher forcing with context_noise = tau: the doubled sequence's first half is x noised to its own
    s_k ~ U(0, tau) per chunk, at times s_k; the noisy half and the loss are teacher forcing's."""
    model, c, P = random_model(), SMALL.chunk, SMALL.tokens_per_frame
    actions, scenes, _ = inputs()
    x, tau = torch.rand(2, 8, 3, 16, 16), 0.4
    loss = video_loss("teacher_forcing", model, x, actions, scenes, torch.Generator().manual_seed(3), tau)
    g = torch.Generator().manual_seed(3)  # the same draws, by hand
    t = torch.rand(2, 4, generator=g).repeat_interleave(c, 1)[..., None, None, None]
    e = torch.randn(x.shape, generator=g)
    s = tau * torch.rand(2, 4, generator=g).repeat_interleave(c, 1)[..., None, None, None]
    ctx = (1 - s) * x + s * torch.randn(x.shape, generator=g)
    z = (1 - t) * x + t * e
    times = torch.cat([s, t], 1).flatten(1)
    v = model(torch.cat([ctx, z], 1), times, actions.repeat(1, 2), scenes, frame_pos=torch.arange(8).repeat(2),
              mask=teacher_forcing_mask(8, c, P))[:, 8:]
    assert 0 < float(s.max()) <= tau
    assert torch.allclose(loss, ((t.clamp(min=T_MIN) * (v - (e - x))) ** 2).mean(), rtol=1e-5)
    # tau = 0 is plain teacher forcing, draw for draw
    plain = video_loss("teacher_forcing", model, x, actions, scenes, torch.Generator().manual_seed(3))
    assert torch.equal(plain, video_loss("teacher_forcing", model, x, actions, scenes,
                                         torch.Generator().manual_seed(3), 0.0))
    assert not torch.allclose(plain, loss)


def test_training_on_latents_lowers_the_loss():
    ae, _ = load_autoencoder()
    config = VideoConfig(size=4, channels=8, patch=2, n_layer=2, n_head=2, n_embd=32, max_frames=4)
    recipe = VideoRecipe(steps=60, batch_size=8, lr=3e-3)
    model, losses, _ = train("diffusion_forcing", VideoTransformer(config), recipe, "cpu", False, autoencoder=ae)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), (losses[:10], losses[-10:])
    assert not any(p.requires_grad for p in ae.parameters())  # the autoencoder stays frozen


def test_teacher_forcing_sequence_is_what_the_sampler_sees():
    """In the doubled [clean | noisy] sequence, noisy chunk k gets the same velocity as at inference:
    the model run on [clean chunks < k | noisy chunk k] under the block-causal mask."""
    model, c, P = random_model(), SMALL.chunk, SMALL.tokens_per_frame
    actions, scenes, z = inputs()
    x, t = torch.rand(2, 8, 3, 16, 16), torch.rand(2, 4).repeat_interleave(c, 1)
    v = model(torch.cat([x, z], 1), torch.cat([torch.zeros_like(t), t], 1), actions.repeat(1, 2), scenes,
              frame_pos=torch.arange(8).repeat(2), mask=teacher_forcing_mask(8, c, P))[:, 8:]
    for k in range(0, 8, c):
        seq = torch.cat([x[:, :k], z[:, k:k + c]], 1)
        times = torch.cat([torch.zeros(2, k), t[:, k:k + c]], 1)
        ref = model(seq, times, actions[:, :k + c], scenes, mask=block_causal_mask(k + c, c, P))[:, k:]
        assert (v[:, k:k + c] - ref).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------------
# The shipped models
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_shipped_models_load_with_their_recipe(name):
    model, meta = load_video_model(name)
    assert meta["method"] == METHODS[name] and model.config == CONFIG and meta["autoencoder"] == "frame-ae"
    assert meta["recipe"]["steps"] == RECIPES[name].steps
    assert meta["recipe"].get("context_noise", 0.0) == RECIPES[name].context_noise
    assert meta["recipe"].get("n_rollouts", 0) == RECIPES[name].n_rollouts
    assert meta["train_seconds"] <= 3600  # the issue's CPU budget
    assert set(meta["toybench_16"]) >= {"validity", "count", "action"}
    assert meta["guided"]["history_guidance"] == GUIDANCE
    assert set(meta["guided"]) >= {"toybench_16", "toybench_16_real_start"}


@pytest.mark.slow
def test_what_the_shipped_models_learned():
    """Fresh decoded samples at the training length (16 frames), from scratch, 32 other videos: the scene
    always, the player steered by the actions (a player that never moves scores ~0.2 on action following),
    whole sprites in most frames (the pixel models shipped first made 0.10 valid frames), diffusion forcing
    ahead of teacher forcing at equal compute, and a noisy context lifting teacher forcing. From scratch
    the issue's 0.85 is missed on validity and count (README); test_the_goal_continuing_a_real_first_chunk
    checks it on the issue's own protocol."""
    ae, _ = load_autoencoder()
    actions, scenes = eval_actions(32, 16, seed=5)
    scores = {}
    for name in MODELS:
        model, _ = load_video_model(name)
        z = sample_video(model, actions, scenes, 8, generator=torch.Generator().manual_seed(5))
        scores[name] = score_video(ae.decode_video(z), scenes, actions)
    df, tf, tfn = scores["video-df"], scores["video-tf"], scores["video-tfn"]
    assert min(s[m] for s in scores.values() for m in ("background", "scene")) >= 0.95, scores
    assert df["validity"] > 0.65 and df["count"] > 0.65 and df["action"] > 0.7, scores
    assert tf["validity"] > 0.4 and tf["action"] > 0.55, scores
    assert tfn["validity"] > 0.35 and tfn["action"] > 0.5, scores
    assert df["validity"] > tf["validity"] and tfn["validity"] > tf["validity"] + 0.05, scores


@pytest.mark.slow
def test_the_goal_continuing_a_real_first_chunk():
    """The issue's goal on its own calibration protocol (two clean context frames): `video-df` continuing
    the first real chunk of 128 held-out clips with history guidance w = 0.5 makes >= 0.85 valid frames,
    right sprite counts and action following (measured 0.877 / 0.902 / 0.895). Guidance lifts validity
    and count on both protocols (plain: 0.850 / 0.881 / 0.882 continuing, 0.771 / 0.805 / 0.850 from
    scratch), and the figures are the checkpoint's own (meta)."""
    model, meta = load_video_model("video-df")
    ae, _ = load_autoencoder()
    plain = evaluate(model, ae)
    guided = evaluate(model, ae, history_guidance=GUIDANCE)
    real = guided["toybench_16_real_start"]
    assert min(real["validity"], real["count"], real["action"]) >= 0.85, guided
    for protocol in ("toybench_16", "toybench_16_real_start"):
        for m in ("validity", "count"):
            assert guided[protocol][m] > plain[protocol][m] + 0.01, (protocol, m, plain, guided)
        for m in ("validity", "count", "action"):
            assert abs(plain[protocol][m] - meta[protocol][m]) < 0.01, (protocol, m)
            assert abs(guided[protocol][m] - meta["guided"][protocol][m]) < 0.01, (protocol, m)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors():
    model = random_model()
    actions, scenes, noise = inputs()
    with pytest.raises(ValueError, match="chunk size .* must divide"):
        sample_video(model, actions[:, :7], scenes, 2)
    with pytest.raises(ValueError, match="chunk size .* must divide"):
        block_causal_mask(5, 2, 16)
    with pytest.raises(ValueError, match="chunk .* must divide max_frames"):
        VideoConfig(max_frames=15, chunk=2)
    with pytest.raises(ValueError, match="patch .* must divide size"):
        VideoConfig(patch=5)
    with pytest.raises(ValueError, match="frames must be"):
        model(torch.zeros(2, 8, 3, 8, 8), torch.zeros(2, 8), actions, scenes)
    with pytest.raises(ValueError, match="frames must be"):
        model(torch.zeros(2, 8, 16, 16), torch.zeros(2, 8), actions, scenes)
    with pytest.raises(ValueError, match=r"actions must be in \[0, 5\)"):
        sample_video(model, actions + 5, scenes, 2)
    with pytest.raises(ValueError, match=r"scene must be in \[0, 4\)"):
        sample_video(model, actions, scenes + 4, 2)
    with pytest.raises(ValueError, match=r"scene must be in \[0, 4\)"):
        sample_video(model, actions, 9, 2)
    with pytest.raises(TypeError, match="actions must be an int64 tensor"):
        sample_video(model, actions.float(), scenes, 2)
    with pytest.raises(ValueError, match="t must lie in"):
        model(noise, torch.full((2, 8), 1.5), actions, scenes)
    with pytest.raises(ValueError, match="noise must be"):
        sample_video(model, actions, scenes, 2, noise=noise[:, :4])
    with pytest.raises(ValueError, match="steps"):
        sample_video(model, actions, scenes, 0)
    with pytest.raises(ValueError, match="lag must be"):
        sample_pyramid(model, actions, scenes, 2, lag=3)
    with pytest.raises(ValueError, match="method must be one of"):
        video_loss("self_forcing", model, noise, actions, scenes)
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match=r"context_noise must be a number in \[0, 1\]"):
            video_loss("teacher_forcing", model, noise, actions, scenes, context_noise=bad)
    with pytest.raises(ValueError, match="context_noise .* diffusion_forcing has no clean half"):
        video_loss("diffusion_forcing", model, noise, actions, scenes, context_noise=0.5)
    with pytest.raises(ValueError, match="unknown video model 'video-xl'"):
        load_video_model("video-xl")
    with pytest.raises(ValueError, match="unknown video model 'text-gpt'"):
        load_video_model("text-gpt")
    with pytest.raises(ValueError, match="context_noise .* must be 0"):
        train("diffusion_forcing", model, VideoRecipe(steps=1, context_noise=0.5), "cpu", False)
    with pytest.raises(ValueError, match=r"start must be \(B, F0, C, H, W\) = \(2, F0, 3, 16, 16\)"):
        sample_video(model, actions, scenes, 2, start=noise[:1, :2])
    for n in (0, 3, 8):
        with pytest.raises(ValueError, match="start must hold a positive multiple of the chunk size"):
            sample_video(model, actions, scenes, 2, start=noise[:, :n])
    for bad in (-0.5, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="history_guidance must be a finite number >= 0"):
            sample_video(model, actions, scenes, 2, history_guidance=bad)
    with pytest.raises(ValueError, match="history_guidance needs a second cache of the same kind"):
        rollout(model, actions, scenes, 2, cache=NaiveSinkCache(2, 0, 8, SMALL.tokens_per_frame), history_guidance=1)


def test_bad_rolling_cache_arguments_raise():
    model = random_model(SMALL16)  # max_frames 16, chunk 2
    actions, scenes, _ = inputs(n_frames=20)
    for kwargs, match in (({"n_sink": -2}, "n_sink must be"), ({"n_sink": 16}, "n_sink must be"),
                          ({"n_sink": 1}, r"n_sink must be .* multiple of the chunk \(2\)"),
                          ({"window": 0}, "window must be"),
                          ({"window": 3}, r"window must be .* multiple of the chunk"),
                          ({"n_sink": 4, "window": 14}, "n_sink \\+ window = 18 exceeds the capacity of 16")):
        with pytest.raises(ValueError, match=match):
            model.new_rolling_cache(2, **kwargs)
    with pytest.raises(ValueError, match=r"n_sink must be .* multiple of the chunk"):
        rollout(model, actions, scenes, 2, cache="rolling", n_sink=3)
    with pytest.raises(ValueError, match="cache must be one of"):
        rollout(model, actions, scenes, 2, cache="ring")
    with pytest.raises(ValueError, match="n_sink counts the sink frames of cache='rolling'"):
        rollout(model, actions, scenes, 2, cache="reencode", n_sink=2)
    cache = model.new_rolling_cache(2, 2, 4)
    cache.advance(cache.capacity)
    with pytest.raises(ValueError, match="feed one chunk"):  # a full ring turns one chunk at a time
        model(torch.zeros(2, 4, 3, 16, 16), torch.zeros(2, 4), actions[:, :4], scenes, cache=cache)


def test_bench_quick_reports_the_issue_figures():
    table, figures = bench(device="cpu", quick=True, repeats=1)
    assert "Rolling frame cache" in table
    assert figures["window"] == 16 and figures["flatness"] > 0 and figures["flatness_growing_cache"] > 0
    assert figures["speedup"] > 0 and figures["speedup_growing_cache"] > 0
    assert figures["cache_bytes"][8] == figures["cache_bytes"][16] == figures["cache_bytes_growing"][16]


def test_a_rollout_longer_than_a_non_rolling_cache_raises():
    model = random_model()
    actions, scenes, _ = inputs(n_frames=10)  # max_frames is 8
    with pytest.raises(ValueError, match="the cache holds max_frames = 8 frames"):
        sample_video(model, actions, scenes, 2)
    cache = model.new_cache(2)
    cache.advance(cache.capacity)
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.zeros(2, 2, 3, 16, 16), torch.zeros(2, 2), actions[:, :2], scenes, cache=cache)
