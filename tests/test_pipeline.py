"""The streaming engine: its schedule and cache against the slow references, and the pipeline around it."""

import json
import threading

import pytest
import torch

from minimal import pipeline as pipeline_module
from minimal.pipeline import Pacer, StreamPipeline, load_pipeline
from minimal.pipeline_session import demo_script, load_session, play_script, replay, save_gif, save_session
from minimal.stream_batch import NaiveStreamCache, StreamBatch, StreamCache, sample_stream
from minimal.video_model import VideoConfig, VideoTransformer
from minimal.video_sampling import sample_chunks, sample_pyramid

SMALL16 = VideoConfig(n_layer=2, n_head=2, n_embd=32, max_frames=16, chunk=2)


def random_model(dtype=torch.float64, seed=0) -> VideoTransformer:
    """Every weight random (adaLN-Zero would otherwise make the untrained model ignore its input)."""
    torch.manual_seed(seed)
    model = VideoTransformer(SMALL16).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def inputs(n_frames=40, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 5, (2, n_frames), generator=g)
    noise = torch.randn(2, n_frames, *SMALL16.frame_shape, generator=g, dtype=dtype)
    return actions, torch.tensor([0, 3]), noise


TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


# ---------------------------------------------------------------------------------------------------
# The schedule and its cache against the references
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps, n_sink", [(1, 0), (3, 0), (2, 2), (4, 4)])
def test_interactive_is_sample_chunks_on_the_rolling_cache(dtype, steps, n_sink):
    """One chunk at a time with its own context pass: video_sampling.sample_chunks(cache="rolling"),
    over 40 frames (the ring turns many times)."""
    model = random_model(dtype)
    actions, scenes, noise = inputs(dtype=dtype)
    ref = torch.cat(list(sample_chunks(model, actions, scenes, steps, noise, cache="rolling", n_sink=n_sink)), 1)
    out = sample_stream(model, actions, scenes, steps, steps, noise, n_sink, fuse=False)
    assert (out - ref).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps, lag", [(2, 1), (3, 1), (4, 1), (4, 2), (3, 3)])
def test_staggered_is_the_pyramid_schedule(dtype, steps, lag):
    """Chunks in flight at staggered noise levels, the refill fused: diffusion forcing's pyramid recomputed
    from scratch at every call (sample_pyramid), as long as the ring does not turn."""
    model = random_model(dtype)
    S = -(-steps // lag)
    n = SMALL16.max_frames - (S + 1) * SMALL16.chunk  # the ring's window: nothing evicted
    actions, scenes, noise = inputs(n, dtype)
    ref = sample_pyramid(model, actions, scenes, steps, lag, noise)
    assert (sample_stream(model, actions, scenes, steps, lag, noise) - ref).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps, lag, n_sink, fuse", [(4, 1, 0, True), (3, 1, 2, True), (4, 2, 2, True),
                                                     (2, 2, 4, False), (3, 1, 0, False)])
def test_ring_and_tail_equal_the_list_cache_over_long_streams(dtype, steps, lag, n_sink, fuse):
    """Past max_frames: the preallocated ring + tail (StreamCache) equals NaiveStreamCache's lists of
    frames evicted by slicing, positions renumbered, over 40 frames."""
    model = random_model(dtype)
    actions, scenes, noise = inputs(dtype=dtype)
    ref = sample_stream(model, actions, scenes, steps, lag, noise, n_sink, fuse, reference=True)
    out = sample_stream(model, actions, scenes, steps, lag, noise, n_sink, fuse)
    assert (out - ref).abs().max() <= TOL[dtype]


def test_the_cache_is_fixed_and_its_positions_stay_inside_max_frames():
    model = random_model(torch.float32)
    stream = StreamBatch(model, 4, 1, batch_size=2, n_sink=2)
    k_buffer, seen = stream.cache.k, []
    original = StreamCache.key_positions

    def recording(cache):
        seen.append(original(cache))
        return seen[-1]

    actions, scenes, noise = inputs(60, torch.float32)
    StreamCache.key_positions = recording
    try:
        for k in range(30):
            c = slice(2 * k, 2 * k + 2)
            stream.step((noise[:, c], actions[:, c], scenes) if stream.due else None)
    finally:
        StreamCache.key_positions = original
    assert stream.cache.k is k_buffer and max(int(p.max()) for p in seen) < SMALL16.max_frames
    ring = [p for p in seen if len(p) == len(seen[-1])]
    assert all(sorted(p.unique().tolist()) == list(range(16)) for p in ring)  # every position, none beyond


def test_a_chunk_comes_out_of_every_call_once_the_stagger_is_full():
    model = random_model(torch.float32)
    stream = StreamBatch(model, 4, 1)
    actions, scenes, noise = inputs(40, torch.float32)
    out = [stream.step((noise[:1, 2 * k:2 * k + 2], actions[:1, 2 * k:2 * k + 2], scenes[:1])) for k in range(12)]
    assert [x is not None for x in out] == [False] * 3 + [True] * 9 and stream.calls == 12
    interactive = StreamBatch(model, 4, 4, fuse=False)
    assert interactive.S == 1 and stream.S == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0, lag=1), "steps"), (dict(steps=4, lag=0), "lag must be"), (dict(steps=4, lag=5), "lag must be"),
    (dict(steps=4, lag=1, n_sink=6), r"n_sink must be an int in \[0, 4\]"),
    (dict(steps=4, lag=4, n_sink=14, fuse=False), r"n_sink must be an int in \[0, 12\]"),
    (dict(steps=4, lag=1, n_sink=-2), "n_sink"), (dict(steps=4, lag=1, n_sink=1), "multiple of the chunk"),
    (dict(steps=2, lag=1, ts=torch.tensor([1.0, 0.2, 0.5])), "fall strictly"),
    (dict(steps=2, lag=1, ts=torch.tensor([1.0, 0.0])), "steps \\+ 1 = 3"),
])
def test_bad_stream_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamBatch(random_model(torch.float32), **kwargs)


def test_a_chunk_enters_only_when_due():
    stream = StreamBatch(random_model(torch.float32), 4, 4)
    actions, scenes, noise = inputs(8, torch.float32)
    stream.step((noise[:1, :2], actions[:1, :2], scenes[:1]))
    with pytest.raises(ValueError, match="a new chunk enters every 4 steps"):
        stream.step((noise[:1, 2:4], actions[:1, 2:4], scenes[:1]))


def test_naive_stream_cache_is_what_it_says():
    cache = NaiveStreamCache(1, n_sink=2, window=2, tokens_per_frame=1, chunk=2)
    for k in range(4):  # commit chunks 0..3 of two frames each
        cache.next_positions(2)
        cache.update(0, torch.full((1, 1, 2, 1), float(k)), torch.zeros(1, 1, 2, 1))
        cache.advance(2)
    assert [float(f[0]) for f in cache.kept[0]] == [0.0, 0.0, 3.0, 3.0]  # the sinks and the newest chunk


# ---------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    """video-df and frame-ae, loaded once."""
    pipe = load_pipeline("video-df", steps=4, device="cpu")
    return pipe.model, pipe.ae


def pipe_of(shipped, **kwargs) -> StreamPipeline:
    model, ae = shipped
    settings = dict(steps=4, n_sink=0, stagger=False, batch_size=1) | kwargs
    return StreamPipeline(model, ae, "video-df", **settings)


def decode(ae, z):
    with torch.no_grad():
        return (ae.decode_video(z) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)  # (B, F, H, W, 3)


@pytest.mark.slow
@pytest.mark.parametrize("stagger", [False, True])
def test_the_pipeline_streams_what_the_samplers_sample(shipped, stagger):
    """The shipped model streamed: interactive equals sample_chunks(cache="rolling") and staggered equals
    sample_stream's fused schedule, on the same noise (stream i's generator, seed + i) and actions, over
    40 frames; decoded frames agree to one level of 255."""
    model, ae = shipped
    actions = torch.tensor([[1] * 10 + [4] * 10 + [0] * 10 + [2] * 10, [3] * 40])
    pipe = pipe_of(shipped, stagger=stagger, batch_size=2)
    pipe.reset(scene=["night", "desert"], seed=5)
    frames = []
    for f in range(40):
        frames.append(pipe.next_frame(actions[:, f].tolist()))
    frames = torch.stack(frames, 1)  # (B, F, H, W, 3)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    noise = torch.cat([torch.stack([torch.randn(2, *model.config.frame_shape, generator=g) for g in gens])
                       for _ in range(20)], 1)
    scenes = torch.tensor([0, 3])
    if stagger:  # a chunk's actions are the ones in force when it entered, three chunks before it shows
        chunk_actions = torch.tensor([a for a, _ in pipe.session()["chunks"]]).T.repeat_interleave(2, 1)[:, :40]
        z = sample_stream(model, chunk_actions, scenes, 4, 1, noise)
    else:
        z = torch.cat(list(sample_chunks(model, actions, scenes, 4, noise, cache="rolling")), 1)
    assert (frames.int() - decode(ae, z).int()).abs().max() <= 1


def test_each_stream_of_a_batch_is_the_stream_alone(shipped):
    alone = []
    for i, (scene, action) in enumerate((("day", "left"), ("forest", "up"))):
        pipe = pipe_of(shipped)
        pipe.reset(scene=scene, seed=7 + i)
        alone.append(torch.stack([pipe.next_frame(action) for _ in range(10)]))
    pipe = pipe_of(shipped, batch_size=2)
    pipe.reset(scene=["day", "forest"], seed=7)
    batch = torch.stack([pipe.next_frame(["left", "up"]) for _ in range(10)], 1)  # (B, F, H, W, 3)
    assert batch.shape == (2, 10, 16, 16, 3) and batch.dtype == torch.uint8
    assert all((batch[i].int() - alone[i].int()).abs().max() <= 1 for i in range(2))


def test_an_action_holds_and_reaches_the_next_chunk(shipped):
    pipe = pipe_of(shipped)
    pipe.reset(seed=0)
    pipe.next_frame("right")  # chunk 0 enters with "right"
    pipe.next_frame()  # its second frame
    pipe.next_frame()  # chunk 1: the action held
    pipe.next_frame("down")  # mid-chunk: chunk 1 is done, "down" waits for chunk 2
    pipe.next_frame()
    assert [a for a, _ in pipe.session()["chunks"]] == [[4], [4], [2]]
    stagger = pipe_of(shipped, stagger=True)
    stagger.reset(seed=0)
    stagger.next_frame("left")  # fills the pipeline: four chunks enter with "left" before one shows
    assert [a for a, _ in stagger.session()["chunks"]] == [[3]] * 4 and stagger.stats()["action_lag_frames"] == 6


def test_controls_from_another_thread(shipped):
    """One thread streams while another sets actions and scenes as fast as it can: every chunk entered
    with a complete pair of controls that was set, and the recorded session replays to the same frames."""
    pipe = pipe_of(shipped, batch_size=2)
    pipe.reset(seed=3)
    choices = [(["up", "down"], ["night", "day"]), (["left", "none"], ["forest", "desert"])]
    stop = threading.Event()

    def steer():
        i = 0
        while not stop.is_set():
            actions, scenes = choices[i % 2]
            pipe.set_action(actions)
            pipe.set_scene(scenes)
            i += 1

    thread = threading.Thread(target=steer)
    thread.start()
    try:
        frames = torch.stack([pipe.next_frame() for _ in range(24)])
    finally:
        stop.set()
        thread.join()
    allowed = {(1, 2), (3, 0), (0, 0)}  # per stream index pairs that were ever set (or the reset's default)
    assert all(tuple(a) in allowed for a, _ in pipe.session()["chunks"])
    session = pipe.session()
    assert torch.equal(replay(session), frames)


def test_sessions_save_load_and_replay_identically(shipped, tmp_path):
    pipe = pipe_of(shipped)
    frames, actions, scenes = play_script(pipe, demo_script(16), 16, seed=2)
    assert frames.shape == (16, 16, 16, 3) and actions[:8].tolist() == [0] * 8 and actions[8:].tolist() == [1] * 8
    assert scenes[:8].tolist() == [0] * 8 and scenes[8:].tolist() == [2] * 8
    path = save_session(pipe.session(), tmp_path / "s.json")
    assert json.loads(path.read_text())["seed"] == 2
    assert torch.equal(replay(load_session(path)), frames)
    gif = save_gif(frames, tmp_path / "s.gif", scale=4)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.size == (64, 64) and im.n_frames == 16
    (tmp_path / "bad.json").write_text(json.dumps({"model": "video-df"}))
    with pytest.raises(ValueError, match="not a pipeline session"):
        load_session(tmp_path / "bad.json")


def test_bad_input_raises_clear_errors(shipped, monkeypatch):
    pipe = pipe_of(shipped, batch_size=2)
    with pytest.raises(RuntimeError, match="call reset"):
        pipe.next_frame()
    pipe.reset(seed=0)
    for bad, match in (("jump", "unknown action 'jump'"), (5, "unknown action 5"), (["up"], "one action for every")):
        with pytest.raises(ValueError, match=match):
            pipe.next_frame(bad)
    for bad, match in (("moon", "unknown scene 'moon'"), (-1, "unknown scene -1")):
        with pytest.raises(ValueError, match=match):
            pipe.set_scene(bad)
    with pytest.raises(TypeError, match="seed must be an int"):
        pipe.reset(seed="0")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        pipe_of(shipped, batch_size=0)
    with pipe:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        pipe.next_frame()
    with pytest.raises(ValueError, match="unknown video model 'text-gpt'"):
        load_pipeline("text-gpt")
    with pytest.raises(ValueError, match="steps"):
        load_pipeline(steps=0)
    with pytest.raises(ValueError, match=r"n_sink must be an int in \[0, 4\]"):
        load_pipeline(steps=4, stagger=True, n_sink=6)  # 4 chunks in flight + the refill leave 6 frames
    with pytest.raises(ValueError, match="give steps <= 6"):
        load_pipeline(stagger=True)  # video-df's own 8 steps: 8 chunks in flight do not fit in 16 frames
    real = pipeline_module.load_pretrained

    def student(name, device=None, kind=None):  # a distilled student knows its schedules
        model, meta = real(name, device=device, kind=kind)
        return model, {**meta, "schedules": {"4": [1.0, 0.9, 0.6, 0.3, 0.0]}}

    monkeypatch.setattr(pipeline_module, "load_pretrained", student)
    assert load_pipeline().stream.steps == 4 and load_pipeline().stream.ts[1] == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"samples with \[4\] steps"):
        load_pipeline(steps=8)


def test_pacer_slows_down_instead_of_dropping(monkeypatch):
    """A fake clock: on time, frames leave one period apart; after a stall the late frame is shown at
    once and the schedule restarts from it."""
    now = [0.0]
    monkeypatch.setattr(pipeline_module.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(pipeline_module.time, "sleep", lambda s: now.__setitem__(0, now[0] + max(s, 1e-4)))
    pacer, shown = Pacer(10), []
    for work in (0.0, 0.02, 0.05, 0.35, 0.01, 0.01):
        now[0] += work
        late = pacer.wait()
        shown.append((round(now[0], 3), round(late, 3)))
    times = [t for t, _ in shown]
    assert times[:3] == pytest.approx([0.0, 0.1, 0.2], abs=2e-3) and shown[3][0] == pytest.approx(0.55, abs=2e-3)
    assert times[4:] == pytest.approx([0.65, 0.75], abs=2e-3)  # re-anchored at the late frame, no catch-up burst
    with pytest.raises(ValueError, match="fps must be"):
        Pacer(0)


@pytest.mark.cuda
@pytest.mark.parametrize("stagger", [False, True])
def test_the_cuda_pipeline_in_bfloat16_follows_float32(stagger):
    """On a GPU the pipeline runs the model in bfloat16: its latents stay close to the float32 model's on
    the same noise and actions (bf16 keeps about three digits; 16 frames of feedback widen that)."""
    pipe = load_pipeline("video-df", steps=4, stagger=stagger, device="cuda")
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    actions = torch.randint(0, 5, (1, 16), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 16, *pipe.model.config.frame_shape, generator=torch.Generator().manual_seed(1))
    ref_model = pipe.model.float()
    ref = sample_stream(ref_model, actions.cuda(), torch.tensor([2]).cuda(), 4, 1 if stagger else 4, noise.cuda(),
                        fuse=stagger)
    low = sample_stream(ref_model.bfloat16(), actions.cuda(), torch.tensor([2]).cuda(), 4, 1 if stagger else 4,
                        noise.cuda(), fuse=stagger)
    assert ((low.float() - ref).abs().mean() / ref.abs().mean()) < 0.05


@pytest.mark.cuda
@pytest.mark.parametrize("steps, lag, fuse", [(4, 1, True), (4, 4, False)])
def test_captured_cuda_graphs_replay_the_eager_calls(steps, lag, fuse):
    """Once the ring has turned, each kind of model call is captured and replayed as a CUDA graph; over
    40 frames (many turns) the stream equals the eager one, and graphs were really used."""
    model = random_model(torch.float32).cuda()
    actions, scenes, noise = inputs(40, torch.float32)
    args = (actions.cuda(), scenes.cuda(), noise.cuda())
    stream, out, k = StreamBatch(model, steps, lag, batch_size=2, fuse=fuse, graphs=True), [], 0
    while len(out) < 20:  # sample_stream's loop
        new = None
        if stream.due and k < 20:
            new, k = (args[2][:, 2 * k:2 * k + 2], args[0][:, 2 * k:2 * k + 2], args[1]), k + 1
        x = stream.step(new)
        if x is not None:
            out.append(x)
    eager = sample_stream(model, *args[:2], steps, lag, args[2], fuse=fuse)
    assert stream.graphs and (torch.cat(out, 1) - eager).abs().max() <= 1e-4


@pytest.mark.slow
def test_the_pipeline_benches_report_their_figures():
    """The plumbing of `python -m minimal.bench pipeline` and `soak` (tiny sizes; the figures are the bench's)."""
    from minimal.pipeline_bench import bench, soak

    table, figures = bench(device="cpu", quick=True)
    keys = {"fps", "fps_interactive", "chunk_p50_ms", "chunk_p99_ms", "ttff_ms", "overhead", "stagger_speedup",
            "flatness", "action_latency_frames", "action_latency_frames_stagger", "paced_jitter_ms", "threads"}
    assert keys <= set(figures) and figures["threads"] in (1, 2) and "stagger speedup" in table
    assert set(figures["quality"]) == {"sequential", "stagger"} and "ci95" in figures["quality"]["stagger"]
    table, figures = soak(device="cpu", quick=True)
    assert figures["nonfinite_chunks"] == 0 and figures["frames"] == 2000 and "drift" in figures
