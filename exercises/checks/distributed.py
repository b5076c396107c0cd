"""Checks for exercise 10, the pipeline schedule (exercises/solutions/10_scaling_out.ipynb).

- `pipeline_schedule` is compared tick by tick with `minimal.pipeline_parallel.blocks_schedule`, the schedule
  the library's blocks pipeline (`blocks_rank`) runs and the bubble model counts, for every small setting;
- `pipeline_seconds` (stages of unequal speed) is compared with an event-by-event recurrence written here:
  every call's start at every stage is the later of "it has arrived" and "the stage is free", and at stage 0
  also "the micro-batch's previous call is back"; with equal stages it must be the library's tick count
  times the stage time, with one stage the plain sum.
"""

from __future__ import annotations

import itertools
import random

from minimal import pipeline_parallel as library_pipeline_parallel

from .common import answers, call_student, expect_raises, fail, passed

SETTINGS = list(itertools.product(range(1, 5), range(1, 6), range(1, 5), range(0, 4)))  # stages, M, calls, delay
SCHEDULE_HINT = ("stage 0 takes the calls in the order call 0 of micro-batches 0 .. M - 1, then call 1 of each, ...; "
                 "a call crosses one stage per tick; call j + 1 of a micro-batch enters stage 0 at the earliest "
                 "`delay` ticks after the tick that follows call j's tick at the last stage")


def _table(grid) -> str:
    rows = [f"{'tick':>8} " + " ".join(f"{t:>4}" for t in range(len(grid)))]
    for s in range(len(grid[0])):
        cells = ("   ." if row[s] is None else f"{row[s][0]:>2}:{row[s][1]}" for row in grid)
        rows.append(f"{'stage ' + str(s):>8} " + " ".join(cells))
    return "\n".join(rows)


def _normalise(what: str, got):
    if not isinstance(got, list | tuple) or not all(isinstance(row, list | tuple) for row in got):
        fail(what, "a list of ticks, each a list with one entry per stage", f"{type(got).__name__} {got!r}"[:200],
             "return [[(micro_batch, call) or None for each stage] for each tick]")
    try:
        return [[None if x is None else (int(x[0]), int(x[1])) for x in row] for row in got]
    except (TypeError, ValueError, IndexError):
        fail(what, "entries (micro_batch, call) or None", repr(got)[:200], SCHEDULE_HINT)


@answers(pipeline_schedule=(library_pipeline_parallel.blocks_schedule, library_pipeline_parallel))
def check_pipeline_schedule(pipeline_schedule) -> None:
    """pipeline_schedule(stages, micro_batches, calls, delay) == blocks_schedule tick by tick; ValueError for bad
    sizes."""
    for N, M, P, d in SETTINGS:
        what = f"pipeline_schedule(stages={N}, micro_batches={M}, calls={P}, delay={d})"
        got = _normalise(what, call_student(what, pipeline_schedule, N, M, P, d, hint=SCHEDULE_HINT))
        want = [list(row) for row in library_pipeline_parallel.blocks_schedule(N, M, P, d)]
        for t, (a, b) in enumerate(zip(got, want, strict=False)):
            if len(a) != N:
                fail(f"{what}: tick {t}", f"one entry per stage ({N})", f"{len(a)} entries", SCHEDULE_HINT)
            if a != b:
                fail(f"{what}: tick {t}, (micro-batch, call) at each stage", b, a,
                     SCHEDULE_HINT + f"\n  the whole schedule expected:\n{_table(want)}")
        if len(got) != len(want):
            fail(f"{what}: the number of ticks", f"{len(want)} (from the first call's entry to the last call leaving "
                 "the last stage)", len(got), "T = (calls - 1) max(M, N + delay) + M + N - 1 for this schedule")
    for args in ((0, 2, 3, 0), (2, 0, 3, 0), (2, 2, 0, 0), (2, 2, 3, -1)):
        expect_raises(f"pipeline_schedule{args}: a size below its minimum", ValueError,
                      lambda a=args: pipeline_schedule(*a),
                      "stages, micro_batches and calls must be >= 1 and delay >= 0: raise ValueError otherwise")
    passed("check_pipeline_schedule", f"{len(SETTINGS)} settings equal the library's blocks pipeline tick by tick; "
                                      "2 stages, 3 micro-batches, 2 calls, delay 1 (micro-batch:call):\n"
                                      + _table(pipeline_schedule(2, 3, 2, 1)))


def reference_seconds(stage_seconds: list[float], micro_batches: int, calls: int, delay_seconds: float) -> float:
    """The pipeline's wall time, call by call: start = max(arrived, stage free[, previous call back])."""
    N, M = len(stage_seconds), micro_batches
    order = [m for _call in range(calls) for m in range(M)]  # the micro-batch of each call, in stage 0's order
    free, back, end = [0.0] * N, {}, 0.0
    for m in order:
        t = max(free[0], back.get(m, 0.0))
        for s, dt in enumerate(stage_seconds):
            t = max(t, free[s]) + dt  # wait for the stage, then run on it
            free[s] = t
        back[m], end = t + delay_seconds, t
    return end


@answers(pipeline_seconds=(library_pipeline_parallel.bubble_model, library_pipeline_parallel))
def check_pipeline_seconds(pipeline_seconds) -> None:
    """pipeline_seconds(stage_seconds, micro_batches, calls, delay_seconds) == the event recurrence above; equal
    stages: the library's ticks x the stage time."""
    hint = ("a stage starts a call when the call has left the stage before it and the stage has finished its "
            "previous call; stage 0 also waits until the micro-batch's previous call has left the last stage, "
            "plus delay_seconds. Return the time the last call leaves the last stage")
    for N, M, P, d in SETTINGS:  # equal stages of 0.5 s: the schedule's ticks
        stage = [0.5] * N
        what = f"pipeline_seconds({stage}, micro_batches={M}, calls={P}, delay_seconds={0.5 * d})"
        got = call_student(what, pipeline_seconds, stage, M, P, 0.5 * d, hint=hint)
        want = 0.5 * len(library_pipeline_parallel.blocks_schedule(N, M, P, d))
        if not isinstance(got, int | float) or abs(got - want) > 1e-9:
            fail(what + ": equal stages", f"{want} s ({want / 0.5:.0f} ticks of 0.5 s: the bubble model)", got, hint)
    rng = random.Random(10)
    for _ in range(200):  # stages of unequal speed
        N, M, P = rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 4)
        stage, d = [round(rng.uniform(0.1, 2.0), 2) for _ in range(N)], rng.choice((0.0, 0.3, 1.7))
        what = f"pipeline_seconds({stage}, micro_batches={M}, calls={P}, delay_seconds={d})"
        got = call_student(what, pipeline_seconds, stage, M, P, d, hint=hint)
        want = reference_seconds(stage, M, P, d)
        if not isinstance(got, int | float) or abs(got - want) > 1e-9:
            fail(what + ": unequal stages", f"{want:.4f} s", got, hint)
    slow = pipeline_seconds([1.0, 3.0], 4, 10, 0.0)
    passed("check_pipeline_seconds", f"{len(SETTINGS)} equal-stage settings equal the bubble model, 200 unequal ones "
                                     f"the event recurrence; stages of 1 s and 3 s, 4 micro-batches of 10 calls: "
                                     f"{slow:.0f} s, against {4 * 10 * 4:.0f} s in one process")
