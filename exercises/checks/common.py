"""Helpers that make check failures read like a good autograder: what was tested, expected, got."""

from __future__ import annotations

import functools
import inspect
import sys
import types
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


# --- off limits: the library's own answer ------------------------------------------------------------
# The library in minimal/ holds a finished version of every exercise. A check names, for each argument it
# receives from the notebook, the library objects that answer it (`@answers(accept_reject=speculative.
# accept_reject)`); the check then fails when the argument *is* one of them (or any other function or
# class of `minimal`), and when calling it runs one of them (a wrapper, a subclass, functools.partial):
# every Python call made during the student's call is watched with sys.setprofile.


def _codes(answer) -> tuple[set, set]:
    """The code objects and whole files an answer stands for: a function, a class's methods, a module."""
    codes, files = set(), set()
    if isinstance(answer, types.ModuleType):
        files.add(answer.__file__)
    elif isinstance(answer, type):
        for klass in answer.__mro__:
            if klass.__module__.startswith("minimal"):
                for value in vars(klass).values():
                    value = getattr(value, "__func__", value)  # classmethod, staticmethod
                    value = getattr(value, "fget", value)  # property
                    if hasattr(value, "__code__"):
                        codes.add(value.__code__)
    else:
        codes.add(inspect.unwrap(answer).__code__)
    return codes, files


def _label(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _library_object(obj) -> bool:
    obj = getattr(obj, "func", obj)  # functools.partial
    return str(getattr(obj, "__module__", "") or "").split(".")[0] == "minimal"


class _Watch:
    """Record the first call into an answer's code while active (nested watches chain to the outer one)."""

    def __init__(self, name: str, answers: tuple):
        self.name, self.answers, self.hit = name, answers, None
        self.codes, self.files = set(), set()
        for answer in answers:
            codes, files = _codes(answer)
            self.codes |= codes
            self.files |= files

    def __call__(self, fn):
        @functools.wraps(fn)
        def watched(*args, **kwargs):
            outer = sys.getprofile()

            def profile(frame, event, arg):
                if event == "call" and self.hit is None and (
                        frame.f_code in self.codes or frame.f_code.co_filename in self.files):
                    self.hit = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
                if outer is not None:
                    outer(frame, event, arg)

            sys.setprofile(profile)
            try:
                return fn(*args, **kwargs)
            finally:
                sys.setprofile(outer)
                if self.hit is not None:
                    self.fail()
        return watched

    def fail(self) -> NoReturn:
        fail(f"{self.name}: your own code, not the library's",
             "no call into " + ", ".join(_label(a) for a in self.answers),
             f"a call to the library's {self.hit}",
             "the library's version is off limits in this exercise: write it with torch and Python")


def _guarded(name: str, obj, answers: tuple):
    """obj as the check will use it: refused if it is the library's, watched on every call otherwise."""
    if any(obj is a for a in answers) or _library_object(obj):
        fail(f"{name}: your own code, not the library's", "a function or class written in this notebook",
             f"{_label(getattr(obj, 'func', obj))}, imported from the library",
             "the library's version is off limits in this exercise: write it with torch and Python")
    watch = _Watch(name, answers)
    if isinstance(obj, type):  # a class: a subclass whose own methods are watched (inherited ones included)
        namespace = {}
        for klass in obj.__mro__:
            if klass is object:
                continue
            for key, value in vars(klass).items():
                if key not in namespace and inspect.isfunction(value):
                    namespace[key] = watch(value)
        return type(obj.__name__, (obj,), {**namespace, "__qualname__": obj.__qualname__,
                                           "__module__": obj.__module__})
    if callable(obj):
        return watch(obj)
    return obj


def answers(**answers_by_argument):
    """Declare, per argument of a check, the library objects that answer it (off limits for the student).

    @answers(accept_reject=speculative.accept_reject, expected=())   # () for an argument with none
    def check_accept_reject(accept_reject): ...

    The first object of each entry that is a function or class is what tests/test_exercises.py submits in
    the student's place (imported, then wrapped), to prove that the check refuses it.
    """
    answers_by_argument = {k: v if isinstance(v, tuple) else (v,) for k, v in answers_by_argument.items()}

    def decorate(check):
        parameters = list(inspect.signature(check).parameters)
        unknown = set(answers_by_argument) - set(parameters)
        if unknown:
            raise TypeError(f"@answers on {check.__name__}: no argument named {sorted(unknown)}")

        @functools.wraps(check)
        def wrapper(*args, **kwargs):
            bound = inspect.signature(check).bind(*args, **kwargs)
            for name, value in list(bound.arguments.items()):
                if answers_by_argument.get(name):
                    bound.arguments[name] = _guarded(name, value, answers_by_argument[name])
            return check(*bound.args, **bound.kwargs)

        wrapper.answers = answers_by_argument
        return wrapper

    return decorate
