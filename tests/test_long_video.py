"""Long horizons: every policy and the re-cache against plain loops on list caches, Self-Forcing++'s long
rollout against the sampler, the repaint on real frames, and the bad input each must refuse."""

import pytest
import torch
from conftest import random_weights

from minimal.data import VIDEO_WORLD, SpriteWorld
from minimal.long_video import (
    COMPRESS,
    DEEP_SINK,
    FrameCompressingCache,
    NaiveFrameCompressingCache,
    long_rollout,
    recache_settings,
    repaint,
)
from minimal.self_forcing import SelfForcingRecipe, rollout_with_exit, schedule, train_student
from minimal.sinks import NaiveSinkCache
from minimal.stream_batch import StreamBatch, sample_stream
from minimal.toybench import validity_rate
from minimal.video_model import VideoConfig, VideoTransformer

SMALL16 = VideoConfig(n_layer=2, n_head=2, n_embd=32, max_frames=16, chunk=2)
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
TS = torch.tensor([1.0, 0.7, 0.3, 0.0])  # a non-uniform 3-step schedule, as a student's


def random_model(dtype=torch.float64) -> VideoTransformer:
    return random_weights(VideoTransformer(SMALL16)).to(dtype)


def inputs(n_frames=48, dtype=torch.float64, seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 5, (batch, n_frames), generator=g)
    noise = torch.randn(batch, n_frames, *SMALL16.frame_shape, generator=g, dtype=dtype)
    return actions, torch.tensor([0, 3])[:batch], noise


def list_cache(policy: str, model):
    """The policy's cache as plain lists (sinks.NaiveSinkCache, NaiveFrameCompressingCache)."""
    cfg = model.config
    if policy == "compress":
        return NaiveFrameCompressingCache(cfg.n_layer, **COMPRESS, tokens_per_frame=cfg.tokens_per_frame,
                                          chunk=cfg.chunk)
    n_sink = DEEP_SINK if policy == "deep_sink" else 0
    return NaiveSinkCache(cfg.n_layer, n_sink, cfg.max_frames - n_sink, cfg.tokens_per_frame)


def plain_loop(model, actions, scene, ts, noise, policy, switch=None):
    """The slow reference: chunk by chunk, each Euler step on ts and the clean context pass written out, on a
    list cache. switch = (frame, new scene (B,), t, repaint or None): there the kept frames (the first sinks and
    the newest max_frames - sinks - c) are re-encoded from scratch under the new scene."""
    cfg, c, P = model.config, model.config.chunk, model.config.tokens_per_frame
    B, Fr = actions.shape
    cache, frames, g = list_cache(policy, model), [], torch.Generator().manual_seed(11)
    with torch.no_grad():
        for k in range(0, Fr, c):
            if switch is not None and k == switch[0]:
                _, new, t, paint = switch
                n_sink = DEEP_SINK if policy == "deep_sink" else 0
                keep = list(range(n_sink)) + list(range(max(n_sink, k - (cfg.max_frames - n_sink - c)), k))
                cache, scene = list_cache(policy, model), new
                for j in keep[::c]:
                    x = frames[j // c] if paint is None else paint(frames[j // c], None, new)
                    if t:
                        x = (1 - t) * x + t * torch.randn(x.shape, generator=g).to(x)
                    model(x, torch.full((B, c), float(t), dtype=x.dtype), actions[:, j:j + c], scene, cache=cache)
                    cache.advance(c * P)
            a, z = actions[:, k:k + c], noise[:, k:k + c]
            for i in range(len(ts) - 1):
                v = model(z, torch.full((B, c), float(ts[i]), dtype=z.dtype), a, scene, cache=cache)
                z = z - (ts[i] - ts[i + 1]) * v
            model(z, torch.zeros(B, c, dtype=z.dtype), a, scene, cache=cache)
            cache.advance(c * P)
            frames.append(z)
    return torch.cat(frames, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("policy", ["rolling", "deep_sink", "compress"])
def test_every_chunk_by_chunk_policy_is_the_plain_loop(dtype, policy):
    """48 frames (3x max_frames) with a student's schedule through the pipeline's engine equal the plain loop
    on lists; the compressing cache compresses many times on the way."""
    model = random_model(dtype)
    actions, scenes, noise = inputs(dtype=dtype)
    ref = plain_loop(model, actions, scenes, TS.to(dtype), noise, policy)
    out = long_rollout(model, actions, scenes, 3, noise, policy, ts=TS.to(dtype))
    assert (out - ref).abs().max() <= TOL[dtype]
    assert (long_rollout(model, actions, scenes, 3, noise, policy, ts=TS.to(dtype), reference=True) - ref).abs().max() \
        <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_frame_compression_equals_its_list_reference_and_keeps_the_budget(dtype):
    model = random_model(dtype)
    actions, scenes, noise = inputs(dtype=dtype)
    cfg = model.config
    cache = FrameCompressingCache(cfg.n_layer, 2, cfg.n_head, cfg.head_dim, **COMPRESS, tail=2,
                                  tokens_per_frame=cfg.tokens_per_frame, chunk=2, max_frames=16, dtype=dtype)
    naive = NaiveFrameCompressingCache(cfg.n_layer, **COMPRESS, tokens_per_frame=cfg.tokens_per_frame, chunk=2)
    out = sample_stream(model, actions, scenes, 2, 2, noise, fuse=False, cache=cache)
    ref = sample_stream(model, actions, scenes, 2, 2, noise, fuse=False, cache=naive)
    assert (out - ref).abs().max() <= TOL[dtype]
    # 48 frames: kept frames grow 2 per chunk from 0 past 14, then from 8 past 14 every 4 chunks
    assert cache.compressions == 1 + (48 // 2 - 8 - 1) // 4 and cache.length <= 14 * cfg.tokens_per_frame
    assert len(naive.frames[0]) == cache.length // cfg.tokens_per_frame


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rolling_forcing_is_the_stagger_on_lists_with_a_students_schedule(dtype):
    """The rolling window (lag 1, the refill fused) over 48 frames equals the same schedule on
    NaiveStreamCache's lists; within max_frames the pipeline's tests check it against the pyramid."""
    model = random_model(dtype)
    actions, scenes, noise = inputs(dtype=dtype)
    out = long_rollout(model, actions, scenes, 3, noise, "rolling_forcing", ts=TS.to(dtype))
    ref = long_rollout(model, actions, scenes, 3, noise, "rolling_forcing", ts=TS.to(dtype), reference=True)
    assert (out - ref).abs().max() <= TOL[dtype]
    chunkwise = long_rollout(model, actions, scenes, 3, noise, ts=TS.to(dtype))
    assert not torch.allclose(out, chunkwise)  # a sampler of its own


def paint(z, old, new):
    """A stand-in for repaint on random weights: any change that depends on the new scene."""
    return 0.5 * z + new.to(z)[:, None, None, None, None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("policy, t, painter", [("rolling", 0.0, None), ("deep_sink", 0.0, None),
                                                ("rolling", 0.6, None), ("deep_sink", 0.0, paint)])
def test_recache_re_encodes_the_kept_frames_under_the_new_scene(dtype, policy, t, painter):
    """A switch at frame 30 of 48: the plain loop rebuilds its list cache from the kept frames (noised at t,
    or repainted) under the new scene; the engine's recache gives the same frames after the switch, which
    differ from the frames without a re-cache."""
    model = random_model(dtype)
    actions, scenes, noise = inputs(dtype=dtype)
    new = torch.tensor([2, 1])
    scene = scenes[:, None].repeat(1, 48)
    scene[:, 30:] = new[:, None]
    ref = plain_loop(model, actions, scenes, TS.to(dtype), noise, policy, switch=(30, new, t, painter))
    settings = {"t": t, "generator": torch.Generator().manual_seed(11), "repaint": painter}
    n_sink = DEEP_SINK if policy == "deep_sink" else 0
    out = sample_stream(model, actions, scene, 3, 3, noise, n_sink, fuse=False, ts=TS.to(dtype), recache=settings)
    assert (out - ref).abs().max() <= TOL[dtype]
    plain = sample_stream(model, actions, scene, 3, 3, noise, n_sink, fuse=False, ts=TS.to(dtype))
    assert torch.equal(plain[:, :30], out[:, :30]) and (plain[:, 30:] - out[:, 30:]).abs().max() > 1e-3


def test_each_recache_mode_of_long_rollout_acts():
    """recache="relabel" (no keyword arguments to StreamBatch.recache) is a re-cache too: the frames after the
    switch equal sample_stream(recache=True)'s and differ from the stream without one."""
    model = random_model()
    actions, scenes, noise = inputs(32)
    scene = scenes[:, None].repeat(1, 32)
    scene[:, 20:] = torch.tensor([2, 1])[:, None]
    none = long_rollout(model, actions, scene, 2, noise)
    relabel = long_rollout(model, actions, scene, 2, noise, recache="relabel")
    assert torch.equal(relabel, sample_stream(model, actions, scene, 2, 2, noise, fuse=False, recache=True))
    assert (relabel[:, 20:] - none[:, 20:]).abs().max() > 1e-3
    noised = long_rollout(model, actions, scene, 2, noise, recache="noised")
    assert (noised[:, 20:] - relabel[:, 20:]).abs().max() > 1e-3


def test_recache_in_the_stagger_takes_the_chunks_in_flight_along():
    """Staggered, a switch re-encodes the ring and relabels the chunks in flight: the list-cache engine
    agrees, and the recache costs one call per kept chunk."""
    model = random_model()
    actions, scenes, noise = inputs()
    scene = scenes[:, None].repeat(1, 48)
    scene[:, 24:] = torch.tensor([1, 1])[:, None]
    out = sample_stream(model, actions, scene, 3, 1, noise, 2, recache=True)
    ref = sample_stream(model, actions, scene, 3, 1, noise, 2, recache=True, reference=True)
    assert (out - ref).abs().max() <= 1e-9
    stream = StreamBatch(model, 3, 1, 2, n_sink=2)
    for k in range(12):
        stream.step((noise[:, 2 * k:2 * k + 2], actions[:, 2 * k:2 * k + 2], scenes) if stream.due else None)
    calls = stream.calls
    stream.recache(torch.tensor([1, 1]))
    assert len(stream.history) == 16 // 2 - 4 and stream.calls == calls  # sinks + recent chunks; not stream calls
    assert (stream.scene == 1).all()


@pytest.mark.parametrize("steps", [4, 1])
def test_self_forcing_pp_rollout_is_the_sampler_past_max_frames(steps):
    """A 40-frame training rollout with every exit at the last step: its last 16 frames are the inference
    rollout's (the rolling cache), and the gradient reaches the weights from the window only."""
    model = random_model()
    actions, scenes, noise = inputs(40)
    K = SMALL16.max_frames // SMALL16.chunk
    x = rollout_with_exit(model, actions, scenes, steps, noise, torch.full((K,), steps - 1))
    ref = long_rollout(model, actions, scenes, steps, noise, ts=torch.tensor(schedule(steps), dtype=torch.float64))
    assert x.shape == (2, 16, *SMALL16.frame_shape)
    torch.testing.assert_close(x.detach(), ref[:, -16:], rtol=0, atol=1e-10)
    x.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_self_forcing_pp_trains_on_long_rollouts(one_thread):
    teacher = random_model(torch.float32)
    seen = []

    def conditions(g):
        return torch.randint(0, 5, (2, 24), generator=g), torch.randint(0, 4, (2,), generator=g)

    hook = teacher.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    recipe = SelfForcingRecipe(steps=2, critic_ratio=2, batch_size=2, horizon=24)
    student, log, _ = train_student(teacher, 4, recipe, conditions, progress=False)
    hook.remove()
    assert len(log["dmd"]) == 2 and len(log["critic"]) == 4
    # (the student and critic are copies, hook included) chunks of the rollout, and 16-frame windows judged
    # as [past | noisy]: nothing longer, whatever the rollout's length
    assert set(seen) == {2, 32}
    with pytest.raises(ValueError, match="horizon must be None or an int >= max_frames"):
        train_student(teacher, 4, SelfForcingRecipe(horizon=25), conditions)
    with pytest.raises(ValueError, match="conditions gave 24 frames"):
        train_student(teacher, 4, SelfForcingRecipe(steps=4, horizon=64), conditions, progress=False)


def test_bad_input_raises_clear_errors():
    model = random_model()
    actions, scenes, noise = inputs(24)
    with pytest.raises(ValueError, match="window must hold one chunk per denoising step"):
        long_rollout(model, actions, scenes, 4, noise, "rolling_forcing", window=2)
    with pytest.raises(ValueError, match="window is the rolling_forcing policy's"):
        long_rollout(model, actions, scenes, 4, noise, "rolling", window=4)
    with pytest.raises(ValueError, match=r"n_sink must be an int in \[0, 12\]"):  # the pipeline's rule
        sample_stream(model, actions, scenes, 4, 4, noise, n_sink=14, fuse=False)
    with pytest.raises(ValueError, match="budget must be an int >= n_sink \\+ recent = 6"):
        FrameCompressingCache(2, 1, 2, 16, n_sink=2, recent=4, budget=4, capacity=14, tail=2, tokens_per_frame=4,
                              chunk=2, max_frames=16)
    with pytest.raises(ValueError, match="budget must be a multiple of the chunk"):
        FrameCompressingCache(2, 1, 2, 16, n_sink=2, recent=4, budget=7, capacity=14, tail=2, tokens_per_frame=4,
                              chunk=2, max_frames=16)
    with pytest.raises(ValueError, match="capacity must be at most 12"):
        FrameCompressingCache(2, 1, 2, 16, n_sink=2, recent=4, budget=8, capacity=14, tail=4, tokens_per_frame=4,
                              chunk=2, max_frames=16)
    with pytest.raises(ValueError, match="unknown scene"):
        long_rollout(model, actions, 7, 4, noise)
    with pytest.raises(ValueError, match="policy must be one of"):
        long_rollout(model, actions, scenes, 4, noise, "infinite")
    with pytest.raises(ValueError, match="recache must be one of"):
        long_rollout(model, actions, scenes, 4, noise, recache="forget")
    with pytest.raises(ValueError, match="needs the frame autoencoder"):
        long_rollout(model, actions, scenes, 4, noise, recache="repaint")
    with pytest.raises(ValueError, match="keeps its own selection"):
        long_rollout(model, actions, scenes, 4, noise, "compress", recache="relabel")
    with pytest.raises(ValueError, match=r"t \(the noise level"):
        StreamBatch(model, 2, 2).recache(scenes, t=1.5)


@pytest.mark.slow
def test_repaint_turns_real_frames_into_valid_frames_of_the_new_scene():
    """Real SpriteWorld frames in one scene, encoded, repainted into each other scene and decoded: valid
    frames of the new scene (toybench), where the frames not repainted are not."""
    from minimal.autoencoder import load_autoencoder

    ae, _ = load_autoencoder()
    world = SpriteWorld(VIDEO_WORLD)
    g = torch.Generator().manual_seed(0)
    frames = torch.stack([world.rollout(4, scene=0, generator=g)[0] for _ in range(8)])  # (8, 4, 3, H, W)
    with torch.no_grad():
        z = ae.encode_video(frames)
        for new in (1, 2, 3):
            painted = ae.decode_video(repaint(ae, z, torch.zeros(8, dtype=torch.long), torch.full((8,), new)))
            assert validity_rate(painted.flatten(0, 1), new) >= 0.9
            assert validity_rate(ae.decode_video(z).flatten(0, 1), new) == 0.0
        same = repaint(ae, z, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long))
        assert torch.equal(same, z)  # a stream whose scene stays is left as it is


@pytest.mark.slow
def test_the_pipeline_re_caches_on_a_scene_switch():
    """set_scene mid-stream: the shipped student's frames equal long_rollout's with recache="repaint" on the
    same noise, the switch is counted, and without re-cache the frames after the switch differ."""
    from minimal.pipeline import load_pipeline

    frames = {}
    for mode in ("repaint", None):
        pipe = load_pipeline("video-sf", device="cpu", recache=mode)
        pipe.reset(scene="night", seed=3, action="right")
        shown = [pipe.next_frame() for _ in range(24)]
        pipe.set_scene("desert")
        shown += [pipe.next_frame() for _ in range(8)]
        frames[mode] = torch.stack(shown)  # (32, H, W, 3)
        assert pipe.stats()["recaches"] == (mode is not None)
    model, ae = pipe.model, pipe.ae
    g = torch.Generator().manual_seed(3)
    noise = torch.cat([torch.randn(1, 2, *model.config.frame_shape, generator=g) for _ in range(16)], 1)
    scene = torch.tensor([[0] * 24 + [3] * 8])
    ts = torch.tensor(schedule(4))
    z = long_rollout(model, torch.full((1, 32), 4), scene, 4, noise, ts=ts, recache=recache_settings("repaint", ae))
    with torch.no_grad():
        ref = (ae.decode_video(z)[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert (frames["repaint"].int() - ref.int()).abs().max() <= 1
    assert torch.equal(frames["repaint"][:24], frames[None][:24])
    assert (frames["repaint"][24:].int() - frames[None][24:].int()).abs().max() > 10


@pytest.mark.slow
def test_the_long_bench_reports_its_figures(capsys):
    from minimal import bench

    figures = bench.main(["long", "--quick", "--json", "--device", "cpu"])
    assert set(figures) >= {"best", "kept", "level", "best_1step", "kept_1step", "methods", "switch"}
    assert figures["best"] in figures["methods"] and figures["methods"][figures["best"]]["videos"] == 2
    assert set(figures["kept"]) >= {"validity", "action", "motion", "spread"}
    for mode in ("recache", "no_recache", "relabel", "noised", "repaint"):
        assert set(figures["switch"][mode]) >= {"1", "2", "4", "old_palette_sprites"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
