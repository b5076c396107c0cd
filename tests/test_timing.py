import pytest

from minimal.timing import Timer, Timing, measure, percentile, resolve_device


def test_percentile_matches_linear_interpolation():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 50) == 3.0 and percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0
    assert percentile(xs, 25) == 2.0 and percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_measure_warms_up_then_repeats():
    calls = []
    timing = measure(lambda: calls.append(1), warmup=3, repeats=7)
    assert len(calls) == 10 and len(timing.times) == 7
    assert isinstance(timing, Timing) and timing.p99 >= timing.median >= 0
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)


def test_timer_and_device():
    with Timer() as t:
        sum(range(1000))
    assert t.seconds >= 0
    assert resolve_device("cpu").type == "cpu"
