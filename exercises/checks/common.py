"""Helpers that make check failures read like a good autograder: what was tested, expected, got."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn

import torch


def fail(what: str, expected, got, hint: str | None = None) -> NoReturn:
    """Raise an AssertionError that names the test, the expected and the actual value."""
    msg = f"{what}\n  expected: {expected}\n  got:      {got}"
    if hint:
        msg += f"\n  hint:     {hint}"
    raise AssertionError(msg)


def call_student(what: str, fn, *args, hint: str | None = None, **kwargs):
    """Call the student's function; an unexpected error becomes a readable failure (stubs pass through)."""
    try:
        return fn(*args, **kwargs)
    except AssertionError:
        raise
    except NotImplementedError as e:
        if "your code here" in str(e):  # a stub: say so
            raise
        fail(what, "no error", f"NotImplementedError: {e}"[:300], hint)  # e.g. an operation torch lacks
    except Exception as e:  # noqa: BLE001 - report any crash of the student's code as a failed check
        fail(what, "no error", f"{type(e).__name__}: {e}"[:300], hint)


def expect_equal(what: str, got, expected, hint: str | None = None) -> None:
    if got != expected:
        fail(what, repr(expected), repr(got), hint)


def expect_tensor(what: str, got, hint: str | None = None) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        fail(what, "a torch.Tensor", f"{type(got).__name__} {got!r}"[:200], hint)
    return got


def expect_shape(what: str, got, shape: tuple, hint: str | None = None) -> None:
    expect_tensor(what, got, hint)
    if tuple(got.shape) != tuple(shape):
        fail(what, f"shape {tuple(shape)}", f"shape {tuple(got.shape)}", hint)


def expect_close(what: str, got, expected: torch.Tensor, atol: float, hint: str | None = None) -> float:
    """Same shape and max |got - expected| <= atol; returns the max difference."""
    expect_shape(what, got, tuple(expected.shape), hint)
    diff = (got.detach().double() - expected.detach().double()).abs()
    if diff.numel() == 0:
        return 0.0
    worst = float(diff.max())
    if not worst <= atol:  # also catches NaN
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if worst == worst else "?"
        if worst != worst:
            idx = tuple(int(i) for i in torch.nonzero(diff.isnan())[0])
        fail(what, f"max |difference| <= {atol:g}",
             f"max |difference| = {worst:.3g}, at index {idx}: {float(got[idx]):.6g} instead of "
             f"{float(expected[idx]):.6g}", hint)
    return worst


def expect_raises(what: str, exc: type[BaseException], fn: Callable[[], object], hint: str | None = None):
    """fn() must raise `exc`. A NotImplementedError passes through, so an unfinished stub says so."""
    try:
        fn()
    except NotImplementedError:
        raise
    except exc:
        return
    except Exception as e:  # the wrong kind of error
        fail(what, exc.__name__, f"{type(e).__name__}: {e}", hint)
    fail(what, exc.__name__, "no error", hint)


def passed(name: str, details: str) -> None:
    print(f"✓ {name} passed: {details}")


def single_thread(check: Callable) -> Callable:
    """Run a check on one CPU thread: its models are tiny, and on a busy machine extra threads only wait."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def random_kv(*shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random keys and values of the given shape."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def kv_pair(what: str, out) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that `out` is a (keys, values) pair of tensors and return it."""
    if not (isinstance(out, tuple | list) and len(out) == 2):
        fail(what, "a tuple (keys, values) of two tensors", f"{type(out).__name__}")
    return expect_tensor(what + " (keys)", out[0]), expect_tensor(what + " (values)", out[1])
