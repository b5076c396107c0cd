"""Scale-out: continuous batching, serving across processes, pipeline parallelism over blocks and over steps,
each against the single-process pipeline on the same seeds and scripts; faults and bad sizes.

The multi-process tests start 2 CPU processes with gloo through distributed.launch (a rendezvous file, no
port to pick); every launch has a timeout, so a hang fails instead of blocking the suite."""

import os
import random
import signal
import threading
import time

import pytest
import torch
from conftest import random_weights

from minimal.continuous_batching import ContinuousBatcher, StreamRequest, reference_stream
from minimal.distributed import WorkerError, Workload, check_world, launch, serve_rank
from minimal.pipeline_parallel import blocks_rank, blocks_schedule, bubble_model, split_blocks, steps_rank
from minimal.video_model import VideoConfig, VideoTransformer

SMALL = VideoConfig(n_layer=2, n_head=2, n_embd=32, max_frames=16, chunk=2)
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
STEPS, N_SINK = 2, 2


def random_model(dtype=torch.float64, seed=0) -> VideoTransformer:
    """Every weight random (conftest.random_weights), in `dtype`."""
    return random_weights(VideoTransformer(SMALL), seed).to(dtype)


def requests(n: int, lengths=(3, 12), seed=0) -> list[StreamRequest]:
    """n streams with random seeds, actions and scenes (scene switches included), of random lengths; past 8
    chunks (16 frames) the ring turns."""
    rng = random.Random(seed)
    return [StreamRequest(i, 100 + i, [(rng.randrange(5), rng.randrange(4)) for _ in range(rng.randrange(*lengths))])
            for i in range(n)]


def expect_alone(model, got: dict, reqs, steps=STEPS, n_sink=N_SINK, stagger=False, dtype=torch.float64):
    """Every stream's latents equal the same stream run alone (a prefix of it, for a stream that left early)."""
    for r in reqs:
        ref = reference_stream(model, r, steps, n_sink, stagger=stagger)
        x = got[r.id]
        assert 0 < x.shape[0] <= ref.shape[0]
        assert (x - ref[:x.shape[0]]).abs().max() <= TOL[dtype], f"stream {r.id}"


# ---------------------------------------------------------------------------------------------------
# Continuous batching, one process
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_sink, manual", [(0, True), (2, True), (2, False)])
def test_a_stream_is_the_same_whoever_joins_and_leaves(dtype, n_sink, manual):
    model, reqs, rng = random_model(dtype), requests(7), random.Random(1)
    batcher, out, pending, tick = ContinuousBatcher(model, STEPS, n_sink, capacity=3, manual=manual), {}, list(reqs), 0
    while pending or batcher.active:
        while pending and batcher.free and rng.random() < 0.6:  # joins at random ticks, into reused slots
            batcher.join(pending.pop(0))
        if tick == 4 and 2 in [r.id for r in batcher.slots if r]:
            batcher.leave(2)  # one leaves early
        for sid, x in batcher.step().items():
            out.setdefault(sid, []).append(x)
        tick += 1
    expect_alone(model, {k: torch.cat(v) for k, v in out.items()}, reqs, n_sink=n_sink, dtype=dtype)
    assert len(out[2]) <= 4 and batcher.calls == tick * (STEPS + 1)


def test_the_batcher_equals_the_pipeline_on_the_shipped_model():
    """video-df, float32: the batcher's frames (decoded) are the interactive StreamPipeline's, stream by stream
    (each stream in one scene: the pipeline may re-cache its context at a scene switch, which the batcher
    does not; with switches the batcher equals the engine, stream_batch, as the tests above check)."""
    from minimal.autoencoder import load_autoencoder
    from minimal.pipeline import StreamPipeline
    from minimal.video_recipes import load_video_model

    model, _ = load_video_model("video-df")
    ae, _ = load_autoencoder("cpu")
    reqs = [StreamRequest(r.id, r.seed, [(a, r.id) for a, _ in r.script]) for r in requests(3, (4, 10))]  # one scene
    batcher, out, pending = ContinuousBatcher(model, 4, 2, capacity=2), {}, list(reqs)
    for tick in range(40):
        if pending and batcher.free and tick in (0, 2) or tick > 5:  # the third waits for a free slot
            batcher.join(pending.pop(0)) if pending and batcher.free else None
        for sid, x in batcher.step().items():
            out.setdefault(sid, []).append(x)
    for r in reqs:
        pipe = StreamPipeline(model, ae, "video-df", 4, n_sink=2)
        pipe.reset(seed=r.seed, replay=[[[a], [s]] for a, s in r.script])
        want = torch.stack([pipe.next_frame() for _ in range(2 * len(r.script))])
        with torch.inference_mode():
            got = (ae.decode(torch.cat(out[r.id])) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert (got.int() - want.int()).abs().max() <= 1  # float32 rounding may move a pixel one level


def test_bad_batcher_settings_raise():
    model = random_model(torch.float32)
    with pytest.raises(ValueError, match="capacity must be an int >= 1"):
        ContinuousBatcher(model, 2, capacity=0)
    with pytest.raises(ValueError, match=r"n_sink must be an int in \[0, 12\]"):
        ContinuousBatcher(model, 2, n_sink=14)
    batcher = ContinuousBatcher(model, 2, capacity=1)
    batcher.join(StreamRequest(0, 0, [(0, 0)]))
    with pytest.raises(RuntimeError, match="all 1 slots are busy"):
        batcher.join(StreamRequest(1, 0, [(0, 0)]))
    with pytest.raises(ValueError, match="already being served"):
        batcher.join(StreamRequest(0, 0, [(0, 0)]))
    with pytest.raises(ValueError, match="unknown action 'jump'"):
        StreamRequest(2, 0, [("jump", 0)])


# ---------------------------------------------------------------------------------------------------
# Across 2 processes
# ---------------------------------------------------------------------------------------------------

def all_schemes(rank, world_size, model, workload, fixed):
    """Every scheme on one process group: serving with joins and leaves, blocks with 1 and 2 micro-batches, steps."""
    return {"serve": serve_rank(rank, world_size, model, workload, STEPS, N_SINK, 2),
            "blocks1": blocks_rank(rank, world_size, model, fixed, STEPS, N_SINK, 1),
            "blocks2": blocks_rank(rank, world_size, model, fixed, STEPS, N_SINK, 2),
            "steps": steps_rank(rank, world_size, model, fixed, world_size, N_SINK)}


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def two_ranks(request):
    dtype = request.param
    model, reqs, fixed = random_model(dtype), requests(7), requests(3, (10, 11), seed=5)
    workload = Workload(reqs, arrive={r.id: i // 2 for i, r in enumerate(reqs)}, leave={3: 6})
    out = launch(all_schemes, 2, model, workload, fixed, timeout=120)
    return dtype, model, reqs, fixed, out


def test_serving_across_ranks_equals_each_stream_alone(two_ranks):
    dtype, model, reqs, _, out = two_ranks
    served = out[0]["serve"]
    expect_alone(model, served["frames"], reqs, dtype=dtype)
    assert set(served["placement"].values()) == {0, 1}  # both ranks served
    assert served["frames"][3].shape[0] < 2 * len(reqs[3].script)  # stream 3 left early
    assert all(served["frames"][r.id].shape[0] == 2 * len(r.script) for r in reqs if r.id != 3)
    assert out[1]["serve"]["chunks"] > 0


@pytest.mark.parametrize("scheme", ["blocks1", "blocks2"])
def test_pipeline_over_blocks_equals_the_pipeline(two_ranks, scheme):
    dtype, model, _, fixed, out = two_ranks
    expect_alone(model, out[0][scheme]["frames"], fixed, dtype=dtype)
    assert set(out[1][scheme]) == {"busy_ms"}  # the frames come back to rank 0 only


def test_pipeline_over_steps_equals_the_staggered_pipeline(two_ranks):
    dtype, model, _, fixed, out = two_ranks
    expect_alone(model, out[1]["steps"]["frames"], fixed, steps=2, stagger=True, dtype=dtype)


def test_one_process_runs_the_same_code():
    model, fixed = random_model(), requests(2, (9, 10), seed=3)
    expect_alone(model, blocks_rank_alone(model, fixed), fixed)


def blocks_rank_alone(model, fixed):
    return launch(blocks_rank, 1, model, fixed, STEPS, N_SINK, 2, timeout=60)[0]["frames"]


# ---------------------------------------------------------------------------------------------------
# Faults and bad sizes
# ---------------------------------------------------------------------------------------------------

def killed_mid_stream(rank, world_size, scheme, model, workload, stamp):
    """Rank 1 kills itself (SIGKILL: no goodbye) a moment into the scheme; the time is written to `stamp`."""
    if rank == 1:
        def kill():
            with open(stamp, "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Timer(1.5, kill).start()
    if scheme == "serve":
        return serve_rank(rank, world_size, model, workload, STEPS, N_SINK, 4)
    if scheme == "blocks":
        return blocks_rank(rank, world_size, model, workload.requests, STEPS, N_SINK, 2)
    return steps_rank(rank, world_size, model, workload.requests, world_size, N_SINK)


@pytest.mark.parametrize("scheme, where", [("serve", "tick"), ("blocks", "call"), ("steps", "rank 1")])
def test_a_killed_worker_stops_the_others_with_a_clear_error(tmp_path, scheme, where):
    model = random_model(torch.float32)
    workload = Workload([StreamRequest(i, i, [(0, 0)] * 20_000) for i in range(4)])
    stamp = tmp_path / "killed"
    with pytest.raises(WorkerError) as err:
        launch(killed_mid_stream, 2, scheme, model, workload, str(stamp), timeout=60)
    errors = err.value.errors
    assert "code -9" in errors[1][0]  # the killed rank
    message, stopped = errors[0]
    assert "a peer process has stopped" in message and where in message, message
    assert stopped - float(stamp.read_text()) < 10  # no hang: the survivor stopped within 10 s


def test_bad_world_sizes_and_stage_counts_raise():
    with pytest.raises(ValueError, match=r"stages \(the world size, 3\) must divide the model's 4 blocks"):
        split_blocks(4, 3)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        check_world(0)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        launch(serve_rank, 0)
    with pytest.raises(ValueError, match=r"steps \(4\) must equal the world size \(2\)"):
        steps_rank(0, 2, random_model(), requests(1), 4)
    with pytest.raises(ValueError, match=r"micro_batches must be an int in \[1, 2\]"):
        blocks_rank(0, 1, random_model(), requests(2, (5, 6)), STEPS, 0, 3)
    with pytest.raises(ValueError, match="same length"):
        blocks_rank(0, 1, random_model(), [StreamRequest(0, 0, [(0, 0)]), StreamRequest(1, 0, [(0, 0)] * 2)], 2)
    assert [list(r) for r in split_blocks(4, 2)] == [[0, 1], [2, 3]]


def test_the_load_driver_runs_under_torchrun():
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "minimal.serve", "--streams", "4", "--chunks", "4", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    fig = json.loads(run.stdout.strip().splitlines()[-1])
    assert fig["processes"] == 2 and fig["streams"] == 4 and sum(fig["streams_per_rank"]) == 4 and fig["fps"] > 0


@pytest.mark.parametrize("N, M, P, delay", [(1, 3, 2, 0), (2, 1, 3, 0), (2, 2, 3, 0), (2, 4, 2, 1), (4, 2, 3, 2)])
def test_the_schedule_is_the_bubble_model(N, M, P, delay):
    grid = blocks_schedule(N, M, P, delay)
    assert bubble_model(N, M, P, delay) == pytest.approx(N * P * M / len(grid))
    for s in range(N):  # every stage runs every call once, in stage 0's order, one tick after the stage before
        items = [(t, row[s]) for t, row in enumerate(grid) if row[s] is not None]
        assert [x for _, x in items] == [(m, j) for j in range(P) for m in range(M)]
        if s:
            assert [t for t, _ in items] == [t + 1 for t, row in enumerate(grid) if row[s - 1] is not None]


def test_the_bubble_model():
    assert bubble_model(1, 4, 10) == 1.0  # one stage: no pipeline
    assert bubble_model(2, 1, 10) == 1.0  # one micro-batch: the stages take turns
    assert bubble_model(2, 2, 10) == pytest.approx(2 * 10 * 2 / 21)  # the fill costs one tick
    assert bubble_model(4, 2, 10) == pytest.approx(2 * 4 * 10 / (4 * 10 + 1))  # M < N: about M


def test_the_bench_runs_and_names_the_issue_figures(capsys):
    import json

    from minimal import bench

    figures = bench.main(["distributed", "--quick", "--json", "--device", "cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads(json.dumps(figures)) and "continuous batching" in out[1]
    assert {"streams8_speedup", "streams32_speedup", "serving_speedup"} <= set(figures)
    assert {"speedup", "predicted", "latency_ratio"} <= set(figures["pipeline_parallel"])
    assert all(figures[k] > 0 for k in ("streams8_speedup", "streams32_speedup", "serving_speedup"))
