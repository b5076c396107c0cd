"""Honest timing: warm up, synchronise the GPU, repeat, report the median and the 99th percentile.

A single wall-clock reading says little: the first call pays for lazy initialisation and caching,
CUDA kernels run asynchronously (the Python call returns before the GPU is done), and the machine is
noisy. So: run `warmup` untimed calls, then `repeats` timed ones, each closed by a
`torch.cuda.synchronize()` when a CUDA device is involved, and report the median (the typical cost)
and p99 (the tail a real-time system must budget for). Compare methods by ratios measured side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def resolve_device(device=None) -> torch.device:
    """None -> "cuda" when available, else "cpu"; anything else is validated."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA GPU is available")
    return device


@contextmanager
def cpu_threads(n: int, device) -> Iterator[None]:
    """Run with n intra-op threads on the CPU, restored afterwards (a no-op on other devices). Small models
    gain little from a second thread, and on a shared 2-core machine it makes timings erratic."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def synchronize(device=None) -> None:
    """Wait for queued GPU work; a no-op on the CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, like numpy's default."""
    if not xs:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Timing:
    times: list[float]  # seconds per call

    @property
    def median(self) -> float:
        return percentile(self.times, 50)

    @property
    def p99(self) -> float:
        return percentile(self.times, 99)

    def __str__(self) -> str:
        return f"median {self.median * 1e3:.3f} ms, p99 {self.p99 * 1e3:.3f} ms over {len(self.times)} runs"


class Timer:
    """Context manager: elapsed seconds between enter and exit, GPU-synchronised on both ends."""

    def __init__(self, device=None):
        self.device, self.seconds = device, float("nan")

    def __enter__(self):
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


def measure(fn: Callable[[], object], warmup: int = 2, repeats: int = 10, device=None) -> Timing:
    """Time fn() `repeats` times after `warmup` untimed calls."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        times.append(t.seconds)
    return Timing(times)
