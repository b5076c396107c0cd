"""Checks for exercise 09, the staggered-denoising schedule (exercises/solutions/09_realtime_pipeline.ipynb).

Every check compares the student's code with the library as it runs:
- `minimal.stream_batch.StreamBatch` driven call by call on a tiny video transformer with random weights:
  after every call, which chunk entered, the steps taken by each chunk still in flight (`stream.levels`),
  which chunk came out clean, and how many chunks have had their actions fixed;
- `minimal.video_sampling.sample_pyramid`, the same schedule recomputed from scratch: the flow time t that
  every model call hands each chunk, read back as the step s of t = 1 - s / steps (step g - k lag);
- `minimal.pipeline.StreamPipeline.next_frame`, the pipeline's own loop, with "right" pressed at a given
  frame: its session records the action every chunk entered with, so the first frame drawn with the new
  action is read off it. The pipeline builds lag 1 (staggered) or lag = steps (chunk by chunk); the check
  swaps in a StreamBatch of any lag, which the pipeline drives the same way.
The model's outputs never matter here, only the bookkeeping, so the models are as small as they come.
"""

from __future__ import annotations

import functools
import math
import sys

import torch

from minimal import stream_batch as library_stream_batch
from minimal.data import ACTIONS
from minimal.pipeline import StreamPipeline
from minimal.stream_batch import StreamBatch
from minimal.video_model import VideoConfig, VideoTransformer
from minimal.video_sampling import sample_pyramid

from .common import answers, expect_raises, fail, passed, single_thread

SCHEDULE_SETTINGS = [(steps, lag) for steps in range(1, 7) for lag in range(1, steps + 1)]
CHUNK_COUNTS = (1, 2, 3, 7)
PYRAMID_SETTINGS = ((4, 1, 5), (4, 2, 4), (3, 2, 5), (5, 3, 3), (2, 2, 3), (6, 4, 3))
LATENCY_SETTINGS = [(steps, lag) for steps in range(1, 5) for lag in range(1, steps + 1)]
KEYS = ("enter", "levels", "out", "committed")


@functools.cache
def tiny_stream_model(chunk: int = 2, max_frames: int = 16) -> VideoTransformer:
    """A 1-layer VideoTransformer on (8, 4, 4) latents (4 tokens per frame), every weight random."""
    cfg = VideoConfig(size=4, channels=8, patch=2, chunk=chunk, max_frames=max_frames, n_layer=1, n_head=2, n_embd=16)
    model = VideoTransformer(cfg).eval()
    g = torch.Generator().manual_seed(chunk)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _chunk(model: VideoTransformer, k: int):
    """Chunk k's conditioning for StreamBatch.step: noise (1, c, 8, 4, 4), actions (1, c), scene (1,)."""
    cfg = model.config
    noise = torch.randn(1, cfg.chunk, *cfg.frame_shape, generator=torch.Generator().manual_seed(k))
    return noise, torch.full((1, cfg.chunk), k % len(ACTIONS)), torch.tensor([0])


def library_schedule(steps: int, lag: int, n_chunks: int) -> list[dict]:
    """StreamBatch driven as the pipeline drives it (a chunk enters whenever due), read after every call."""
    model = tiny_stream_model()
    stream, calls, entered, left = StreamBatch(model, steps, lag), [], 0, 0
    while left < n_chunks:
        enter = None
        if stream.due and entered < n_chunks:
            enter, entered = entered, entered + 1
        x = stream.step(None if enter is None else _chunk(model, enter))
        out = None
        if x is not None:
            out, left = left, left + 1
        first = entered - len(stream.levels)  # the oldest chunk still in flight
        calls.append({"enter": enter, "levels": [(first + i, s) for i, s in enumerate(stream.levels)], "out": out,
                      "committed": entered})
    return calls


def pyramid_during(steps: int, lag: int, n_chunks: int) -> list[dict[int, int]]:
    """{chunk: step} of the chunks sample_pyramid denoises at each call (t > 0), from the t it passes in."""
    model = tiny_stream_model(chunk=2, max_frames=2 * n_chunks)
    seen = []

    def record(module, args):
        seen.append(args[1][0, ::module.config.chunk].tolist())  # t of every chunk in the call

    handle = model.register_forward_pre_hook(record)
    try:
        sample_pyramid(model, torch.zeros(1, 2 * n_chunks, dtype=torch.long), 0, steps, lag,
                       noise=torch.zeros(1, 2 * n_chunks, *model.config.frame_shape))
    finally:
        handle.remove()
    return [{k: round((1 - t) * steps) for k, t in enumerate(ts) if t > 0} for ts in seen]


class _Runaway(Exception):
    """The student's code ran far more lines than the schedule needs: a loop that never ends."""


LINE_LIMIT = 200_000  # Python lines one call may run; the schedules checked here need a few thousand


def _bounded(fn, *args):
    """fn(*args), stopped with _Runaway after LINE_LIMIT traced lines: a loop that never ends would otherwise
    fill the memory with calls (a list that grows without end) before any check could fail."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        if count > LINE_LIMIT:
            raise _Runaway
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        return fn(*args)
    finally:
        sys.settrace(previous)


def _call(what: str, fn, *args, hint: str | None = None):
    """Call the student's function; an unexpected error becomes a readable failure (stubs pass through)."""
    try:
        return _bounded(fn, *args)
    except AssertionError:
        raise
    except _Runaway:
        fail(what, "a result after a few thousand Python lines at most", f"no result after {LINE_LIMIT:,} lines",
             "a loop that never ends: does every chunk enter (while chunks remain) and does the oldest leave once "
             "it has taken `steps` steps? The stream ends when every chunk has entered and none is in flight (and "
             "a schedule needs no more chunks than the question asks about)")
    except NotImplementedError as e:
        if "your code here" in str(e):  # a stub: say so
            raise
        fail(what, "no error", f"NotImplementedError: {e}"[:300], hint)
    except Exception as e:  # noqa: BLE001 - report any crash of the student's code as a failed check
        fail(what, "no error", f"{type(e).__name__}: {e}"[:300], hint)


SCHEDULE_HINTS = {
    "enter": "chunk k enters at call k * lag (calls count from 0) while chunks remain to enter; at the other "
             "calls no chunk enters (None)",
    "levels": "after call g, a chunk in flight has taken one step at every call since it entered, the entering "
              "call included: chunk k has taken g - k * lag + 1 steps. List the chunks still in flight (fewer than "
              "`steps` taken) as (chunk, steps taken), oldest first, as StreamBatch.levels",
    "out": "a chunk comes out clean at the call that gives it its last step: chunk k at call k * lag + steps - 1, "
           "and it is no longer in flight after that call",
    "committed": "a chunk's actions are fixed when it enters (the model reads them at every step), so after a call "
                 "the committed chunks are all those that have entered, this call's included",
}


def _normalise(what: str, got, hint: str) -> list[dict]:
    if not isinstance(got, list | tuple):
        fail(what, "a list with one dict per model call", f"{type(got).__name__} {got!r}"[:200], hint)
    out = []
    for g, call in enumerate(got):
        if not isinstance(call, dict) or set(call) != set(KEYS):
            fail(f"{what}, call {g}", f"a dict with exactly the keys {KEYS}",
                 f"{type(call).__name__} {call!r}"[:200], hint)
        try:
            levels = [(int(k), int(s)) for k, s in call["levels"]]
        except (TypeError, ValueError):
            fail(f"{what}, call {g}: levels", "a list of (chunk, steps taken) pairs", repr(call["levels"])[:200],
                 SCHEDULE_HINTS["levels"])
        out.append({"enter": call["enter"], "levels": levels, "out": call["out"], "committed": call["committed"]})
    return out


def _compare_schedule(what: str, got: list[dict], want: list[dict]) -> None:
    for g, (a, b) in enumerate(zip(got, want, strict=False)):  # the lengths are compared below
        for key in KEYS:
            if a[key] != b[key]:
                fail(f"{what}: call {g}, {key!r}", repr(b[key]), repr(a[key]), SCHEDULE_HINTS[key])
    if len(got) != len(want):
        fail(f"{what}: the number of calls", f"{len(want)} (until the last chunk comes out)", len(got),
             "one entry per model call, from the first chunk's entry to the call the last chunk comes out of: "
             "(n_chunks - 1) * lag + steps calls")


def _table(calls: list[dict], steps: int) -> str:
    """The schedule as text: one row per chunk, one column per call, the steps taken after the call."""
    n = max(c["committed"] for c in calls)
    rows = [f"{'call':>9} " + " ".join(f"{g:>2}" for g in range(len(calls)))]
    for k in range(n):
        cells = []
        for call in calls:
            taken = dict(call["levels"]).get(k)
            cells.append(" " + str(steps) if call["out"] == k else "  " if taken is None else f"{taken:>2}")
        rows.append(f"{'chunk ' + str(k):>9} " + " ".join(cells))
    return "\n".join(rows)


@answers(stagger_schedule=(library_stream_batch.StreamBatch, library_stream_batch.sample_stream))
@single_thread
def check_stagger_schedule(stagger_schedule) -> None:
    """stagger_schedule(steps, lag, n_chunks) == StreamBatch's bookkeeping call by call, and sample_pyramid's
    step g - k lag; ValueError for a lag outside [1, steps]."""
    hint = ("return a list, one dict per model call: {'enter': chunk or None, 'levels': [(chunk, steps taken), ...] "
            "after the call, oldest first, 'out': chunk or None, 'committed': chunks entered so far}")
    n_cases = 0
    for steps, lag in SCHEDULE_SETTINGS:
        for n_chunks in CHUNK_COUNTS:
            what = f"stagger_schedule(steps={steps}, lag={lag}, n_chunks={n_chunks})"
            got = _normalise(what, _call(what, stagger_schedule, steps, lag, n_chunks, hint=hint), hint)
            _compare_schedule(what + " against StreamBatch", got, library_schedule(steps, lag, n_chunks))
            n_cases += 1
    for steps, lag, n_chunks in PYRAMID_SETTINGS:  # the uncached reference, from the times it hands the model
        what = f"stagger_schedule(steps={steps}, lag={lag}, n_chunks={n_chunks}) against sample_pyramid"
        got = _normalise(what, _call(what, stagger_schedule, steps, lag, n_chunks, hint=hint), hint)
        want = pyramid_during(steps, lag, n_chunks)
        for g, call in enumerate(got[:len(want)]):
            during = {k: s - 1 for k, s in call["levels"]}  # the step each chunk was at while the call ran
            if call["out"] is not None:
                during[call["out"]] = steps - 1
            if during != want[g]:
                fail(f"{what}: call {g}, the step of every chunk the call denoises (chunk: step before the call)",
                     want[g], dict(sorted(during.items())),
                     f"at call g chunk k is at step g - k * lag (sample_pyramid), for 0 <= g - k * lag < {steps}")
    for steps, lag in ((4, 0), (4, 5), (1, 2), (3, -1)):
        expect_raises(f"stagger_schedule(steps={steps}, lag={lag}, n_chunks=3): lag outside [1, steps]", ValueError,
                      lambda s=steps, a=lag: _bounded(stagger_schedule, s, a, 3),
                      "raise ValueError unless 1 <= lag <= steps: with lag > steps the stream would sit empty "
                      "between chunks, and lag 0 never lets a chunk go")
    table = _table(stagger_schedule(4, 1, 5), 4)
    passed("check_stagger_schedule", f"{n_cases} (steps, lag, n_chunks) settings equal StreamBatch call by call, "
                                     f"{len(PYRAMID_SETTINGS)} equal sample_pyramid's steps; steps taken after each "
                                     "call for steps 4, lag 1 (the stream batch):\n" + table)


class _NoDecoder:
    """Stands in for the autoencoder: the frames themselves do not matter here, only when chunks enter."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], 3, 1, 1)


def library_latency(steps: int, lag: int, chunk: int, switch: int) -> int:
    """Frames from `switch`, where next_frame("right") is called after "none", to the first frame shown from a
    chunk that entered with "right", read off the pipeline's session."""
    model = tiny_stream_model(chunk=chunk, max_frames=6 * chunk)
    pipe = StreamPipeline(model, _NoDecoder(), "tiny", steps, stagger=True)
    pipe.stream = StreamBatch(model, steps, lag)  # the pipeline drives a StreamBatch of any lag the same way
    pipe.reset(action="none")
    S = -(-steps // lag)
    for f in range(switch + (S + 1) * chunk + 1):
        pipe.next_frame("right" if f == switch else None)
    entered = [a[0] for a, _ in pipe.session()["chunks"]]
    return chunk * entered.index(ACTIONS.index("right")) - switch


@answers(action_latency=(library_stream_batch.StreamBatch, library_stream_batch.sample_stream))
@single_thread
def check_action_latency(action_latency) -> None:
    """action_latency(steps, lag, chunk, switch) == what StreamPipeline.next_frame does, for every key press
    position in the first chunks, chunks of 1 to 3 frames, and every lag."""
    hint = ("the key press reaches the first chunk that *enters* after the calls already run when frame `switch` "
            "is asked for; that chunk's first frame is shown at frame chunk * k")
    n_cases = 0
    for steps, lag in LATENCY_SETTINGS:
        S = math.ceil(steps / lag)
        for chunk in (1, 2, 3):
            for switch in sorted({0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk - 1, 3 * chunk, 3 * chunk + 1}):
                what = f"action_latency(steps={steps}, lag={lag}, chunk={chunk}, switch={switch})"
                got = _call(what, action_latency, steps, lag, chunk, switch, hint=hint)
                want = library_latency(steps, lag, chunk, switch)
                if not isinstance(got, int) or isinstance(got, bool) or got != want:
                    where = ("at frame 0, before any call (every chunk enters after it)" if switch == 0 else
                             "at a chunk boundary" if switch % chunk == 0 else
                             f"at frame {switch % chunk} of a chunk of {chunk} (mid-chunk)")
                    fail(f"{what}: {S} chunk(s) in flight, the key pressed {where}",
                         f"{want} frame{'' if want == 1 else 's'} (StreamPipeline's session)", repr(got), hint)
                n_cases += 1
    passed("check_action_latency", f"{n_cases} cases equal the pipeline's own session; steps 4, chunks of 2: "
                                   f"lag 4 {[action_latency(4, 4, 2, f) for f in range(16, 20)]}, "
                                   f"lag 1 {[action_latency(4, 1, 2, f) for f in range(16, 20)]} frames for a key "
                                   "pressed at frames 16, 17, 18, 19")
