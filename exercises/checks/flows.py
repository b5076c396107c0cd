"""Checks for exercises 04, flow matching, and 05, MeanFlow (exercises/solutions/04_flow_matching.ipynb and
05_mean_flow.ipynb).

Every check compares the student's code with an independent reference: `minimal.flow_matching` and
`minimal.mean_flow` themselves, a recomputation, central finite differences in float64, and the closed
forms of Gaussian data x ~ N(M, S^2 I), for which the instantaneous velocity v(z, t) and the average
velocity u(z, r, t) are known exactly (`gaussian_velocity`, `gaussian_average_velocity`): Euler with the
exact v converges to the flow map e -> M + S e, one exact MeanFlow jump lands on it, and the MeanFlow
target v - (t - r) du/dt equals u. The network is a tiny smooth MLP of (z, t, h, y) defined here, so that
every input matters and finite differences are accurate. When a result is wrong, the checks also
recompute the classic mistakes (a tangent (v, 0, 0), a sign error, t instead of t - r...) and name the
one the result matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.func import jvp

from minimal import flow_matching as library_flow_matching
from minimal import mean_flow as library_mean_flow
from minimal.flow_matching import euler_sample as reference_euler_sample
from minimal.flow_matching import interpolate as reference_interpolate
from minimal.mean_flow import gaussian_average_velocity, gaussian_velocity
from minimal.mean_flow import mean_flow_sample as reference_mean_flow_sample
from minimal.mean_flow import mean_flow_target as reference_mean_flow_target

from .common import (
    answers,
    call_student,
    expect_close,
    expect_equal,
    expect_raises,
    expect_shape,
    expect_tensor,
    fail,
    passed,
    single_thread,
)

M, S = 0.7, 0.5  # Gaussian data x ~ N(M, S^2 I): its flow from noise e is x = M + S e


class TinyNet(nn.Module):
    """A smooth stand-in network u(z, t, h, y) for data of any shape (B, ...): a tanh MLP of the flattened
    z, smooth features of t and h, and a label embedding (label n_classes or y=None: no label)."""

    def __init__(self, dim: int, width: int = 32, n_classes: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_classes = n_classes
        self.inp = nn.Linear(dim + 6, width)
        self.hid = nn.Linear(width, width)
        self.out = nn.Linear(width, dim)
        self.label = nn.Embedding(n_classes + 1, width)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, z, t, h, y=None):
        B = z.shape[0]
        if not (isinstance(t, torch.Tensor) and isinstance(h, torch.Tensor) and t.shape == (B,) == h.shape):
            raise ValueError(f"the network takes t and h as tensors of shape (B,) = ({B},), got "
                             f"t: {_describe(t)}, h: {_describe(h)}")
        y = torch.full((B,), self.n_classes) if y is None else y
        feats = torch.stack([t, h, torch.sin(3 * t), torch.cos(2 * h), t * h, t ** 2], dim=1).to(z.dtype)
        a = torch.tanh(self.inp(torch.cat([z.flatten(1), feats], dim=1)) + self.label(y).to(z.dtype))
        a = torch.tanh(self.hid(a)) + a
        return self.out(a).view(z.shape)


class Recorder(nn.Module):
    """Wraps a network and records every call: (z, t, h, y) detached, or only a count (inside a JVP)."""

    def __init__(self, net, record: bool = True):
        super().__init__()
        self.net, self.record, self.calls, self.n_calls = net, record, [], 0

    def forward(self, z, t, h, y=None):
        self.n_calls += 1
        if self.record:
            self.calls.append(tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in (z, t, h, y)))
        return self.net(z, t, h, y)


def exact_u(z, t, h, y=None):
    """The exact average velocity of the Gaussian data, with the network signature (z, t, h = t - r, y)."""
    return gaussian_average_velocity(z, t - h, t, M, S)


def exact_v(z, t, h, y=None):
    """The exact (marginal) velocity of the Gaussian data; ignores h."""
    return gaussian_velocity(z, t, M, S)


def _describe(a) -> str:
    if isinstance(a, torch.Tensor):
        return f"tensor of shape {tuple(a.shape)}"
    return f"{type(a).__name__} {a!r}"[:80]


def _pair(what: str, out, names: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(out, tuple | list) and len(out) == 2):
        fail(what, f"a tuple ({names}) of two tensors", _describe(out))
    first, second = names.split(", ")
    return expect_tensor(f"{what} ({first})", out[0]), expect_tensor(f"{what} ({second})", out[1])


def _matches(got: torch.Tensor, variants: dict[str, torch.Tensor], atol: float) -> str | None:
    """The name of the classic mistake whose result `got` reproduces, if any."""
    for name, value in variants.items():
        if got.shape == value.shape and float((got.detach().double() - value.double()).abs().max()) <= atol:
            return name
    return None


def _close_or_diagnose(what: str, got, expected: torch.Tensor, atol: float, hint: str,
                       variants: dict[str, torch.Tensor]) -> float:
    """expect_close, but a failure names the classic mistake that gives the same numbers."""
    expect_shape(what, got, tuple(expected.shape), hint)
    got = got.detach()
    if float((got.double() - expected.double()).abs().max()) > atol:
        mistake = _matches(got, variants, atol)
        if mistake:
            hint = f"your result equals what {mistake} gives. {hint}"
    return expect_close(what, got, expected, atol, hint)


def _times(calls, index: int) -> list[float]:
    return [round(float(c[index][0]), 6) for c in calls]


def _expect_calls(what: str, rec: Recorder, ts: torch.Tensor, hs: torch.Tensor, B: int, hint: str) -> None:
    """The sampler evaluated the network once per step, at times ts[k] with second input hs[k]."""
    calls = rec.calls
    want_t, want_h = [round(float(t), 6) for t in ts], [round(float(h), 6) for h in hs]
    if len(calls) != len(ts):
        fail(f"{what}: network evaluations (NFE)", f"{len(ts)} call(s), at t = {want_t}", f"{len(calls)} call(s)",
             hint)
    for k, (z, t, h, _) in enumerate(calls):
        for name, a in (("t", t), ("h", h)):
            if not isinstance(a, torch.Tensor) or tuple(a.shape) != (B,):
                fail(f"{what}: the {name} passed to the network at step {k + 1}",
                     f"a tensor of shape (B,) = ({B},)", _describe(a),
                     "expand the scalar time to the batch, e.g. t.expand(B) or torch.full((B,), t)")
        if tuple(z.shape) != (B, *calls[0][0].shape[1:]):
            fail(f"{what}: z passed to the network at step {k + 1}", "the batch of states", _describe(z))
    got_t, got_h = _times(calls, 1), _times(calls, 2)
    if max(abs(a - b) for a, b in zip(got_t, want_t, strict=True)) > 1e-5:
        fail(f"{what}: the times t at which the network is evaluated, step by step", want_t, got_t, hint)
    if max(abs(a - b) for a, b in zip(got_h, want_h, strict=True)) > 1e-5:
        fail(f"{what}: the second network input h at each step", want_h, got_h, hint)
    for k, (_, t, h, _) in enumerate(calls):
        if not (torch.allclose(t.double(), t[0].double().expand_as(t)) and
                torch.allclose(h.double(), h[0].double().expand_as(h))):
            fail(f"{what}: t and h at step {k + 1} (one time for the whole batch)", "the same value for every "
                 "sample", f"t from {float(t.min()):.4g} to {float(t.max()):.4g}")


# ---------------------------------------------------------------------------------------------------
# Exercise 04: flow matching
# ---------------------------------------------------------------------------------------------------

@answers(interpolate=library_flow_matching.interpolate)
@single_thread
def check_interpolate(interpolate) -> None:
    """interpolate(x, e, t) -> (z_t, v): z_t = (1 - t) x + t e, v = e - x, t (B,) broadcast over data dims."""
    g = torch.Generator().manual_seed(0)
    hint = "z_t = (1 - t) x + t e: t = 0 is the data x, t = 1 the noise e; reshape t (B,) to (B, 1, ..., 1)"
    worst = 0.0
    for shape in ((5, 3), (3, 3), (4, 2, 3, 3)):
        x, e = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        B = shape[0]
        for label, t in (("t = 0 (data)", torch.zeros(B)), ("t = 1 (noise)", torch.ones(B)),
                         ("random t in (0, 1)", torch.rand(B, generator=g))):
            what = f"interpolate(x, e, t) for x, e of shape {shape}, {label}"
            z, v = _pair(what, call_student(what, interpolate, x, e, t, hint=hint), "z_t, v")
            worst = max(worst, _close_or_diagnose(
                f"{what}: z_t", z, reference_interpolate(x, e, t), 1e-6, hint,
                {"t and 1 - t swapped (t = 0 would be the noise)": reference_interpolate(e, x, t)}))
            worst = max(worst, expect_close(f"{what}: the velocity v", v, e - x, 1e-6,
                                            "v = dz_t/dt: differentiate (1 - t) x + t e with respect to t"))
    # v is the time derivative of the path: central differences of the student's own z_t
    x, e = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.8 + 0.1
    (zp, _), (zm, _) = interpolate(x, e, t + 1e-4), interpolate(x, e, t - 1e-4)
    _, v = interpolate(x, e, t)
    expect_close("v against the finite-difference derivative (z_{t+eps} - z_{t-eps}) / (2 eps) of your path",
                 v, (zp - zm) / 2e-4, 1e-8, "v must be dz_t/dt, the slope of the straight line from x to e")
    passed("check_interpolate", "z_t = (1 - t) x + t e at t = 0, 1 and random t for 2-D and 4-D data, "
                                f"v = e - x = dz_t/dt (max |difference| {worst:.1e})")


@answers(flow_matching_loss=(library_flow_matching.fm_loss, library_flow_matching.interpolate))
@single_thread
def check_fm_loss(flow_matching_loss) -> None:
    """flow_matching_loss(net, x, e, t, y) = mean over all elements of (net(z_t, t, 0, y) - (e - x))^2."""
    g = torch.Generator().manual_seed(1)
    B, D = 8, 3
    x, e, t = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.rand(B, generator=g)
    y = torch.randint(0, 3, (B,), generator=g)

    # 1. a network that predicts 0: the loss is the mean squared velocity, whatever t
    what = "flow_matching_loss(net = 0, x, e, t)"
    loss = call_student(what, flow_matching_loss, lambda z, t, h, y=None: torch.zeros_like(z), x, e, t)
    expect_shape(what + " (a scalar)", loss, (), "average over the batch and the data dimensions: .mean()")
    expect_close(what + ": with a network that predicts 0 the loss is mean((e - x)^2)", loss.detach(),
                 ((e - x) ** 2).mean(), 1e-5,
                 "regress onto the velocity v = e - x (not onto x or e), averaged over every element")

    # 2. what the network is given: one call with (z_t, t, h = 0, y)
    rec = Recorder(TinyNet(D, seed=2))
    what = "flow_matching_loss(net, x, e, t, y)"
    loss = call_student(what, flow_matching_loss, rec, x, e, t, y)
    expect_equal(what + ": number of network calls", len(rec.calls), 1)
    z_in, t_in, h_in, y_in = rec.calls[0]
    expect_close(what + ": the z given to the network", z_in, reference_interpolate(x, e, t), 1e-6,
                 "the network sees the point z_t = (1 - t) x + t e on the path")
    expect_close(what + ": the t given to the network", expect_tensor("t", t_in), t, 0.0)
    hint_h = "flow matching leaves the second time input at 0: h = torch.zeros_like(t), shape (B,)"
    if not isinstance(h_in, torch.Tensor):
        fail(what + ": the h given to the network", "a tensor of zeros of shape (B,)", _describe(h_in), hint_h)
    expect_close(what + ": the h given to the network", h_in, torch.zeros(B), 0.0, hint_h)
    if not (isinstance(y_in, torch.Tensor) and torch.equal(y_in, y)):
        fail(what + ": the label y given to the network", y.tolist(), _describe(y_in), "pass y on: net(z, t, h, y)")

    # 3. the value and the gradient, against a recomputation
    net = TinyNet(D, seed=2)
    ref = ((net(reference_interpolate(x, e, t), t, torch.zeros(B), y) - (e - x)) ** 2).mean()
    ref_grads = torch.autograd.grad(ref, list(net.parameters()))
    loss = flow_matching_loss(net, x, e, t, y)
    expect_shape(what + " (a scalar)", loss, ())
    expect_close(what + ": the loss value", loss.detach(), ref.detach(), 1e-5)
    if not loss.requires_grad:
        fail(what + ": the loss must be differentiable with respect to the network", "loss.requires_grad True",
             "False", "do not detach the network output or compute it under torch.no_grad()")
    grads = torch.autograd.grad(loss, list(net.parameters()))
    for (name, _), a, b in zip(net.named_parameters(), grads, ref_grads, strict=True):
        expect_close(f"{what}: gradient of the loss with respect to net.{name}", a, b, 1e-5)
    passed("check_fm_loss", "one network call at (z_t, t, h = 0, y); the loss is mean((v_theta - (e - x))^2) "
                            "and its gradient matches a recomputation")


def _grid(steps: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


SKEWED = torch.tensor([1.0, 0.9, 0.6, 0.45, 0.1, 0.0], dtype=torch.float64)  # an uneven grid of 5 steps


def _euler_reference(net, e, ts, y=None):
    z = e
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        tb = torch.full((e.shape[0],), t, dtype=e.dtype)
        z = z - (t - t_next) * net(z, tb, torch.zeros_like(tb), y)
    return z


def _heun_reference(net, e, ts, y=None):
    z = e
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        ta, tb = (torch.full((e.shape[0],), s, dtype=e.dtype) for s in (t, t_next))
        d1 = net(z, ta, torch.zeros_like(ta), y)
        d2 = net(z - (t - t_next) * d1, tb, torch.zeros_like(tb), y)
        z = z - (t - t_next) * (d1 + d2) / 2
    return z


@answers(euler_sample=library_flow_matching.euler_sample)
@single_thread
def check_euler_sample(euler_sample) -> None:
    """Euler on a grid ts: z <- z - (t_k - t_k+1) v(z, t_k), the network called at t_0, ..., t_K-1."""
    g = torch.Generator().manual_seed(3)
    B = 512
    e = torch.randn(B, 2, generator=g, dtype=torch.float64)
    hint = ("integrate from ts[0] = 1 (noise) down to ts[-1] = 0 (data), one step per interval: "
            "z <- z - (ts[k] - ts[k + 1]) * net(z, t_k, 0, y) at the step's start time t_k (never at t = 0)")

    # 1. the schedule: where the network is evaluated, on equal and uneven grids
    for ts in (_grid(1), _grid(4), SKEWED):
        rec = Recorder(exact_v)
        what = f"euler_sample(net, e, ts={[round(float(t), 3) for t in ts]})"
        out = call_student(what, euler_sample, rec, e[:4], ts, hint=hint)
        expect_shape(what, out, (4, 2), "return the final state z_0 only, shape of e")
        _expect_calls(what, rec, ts[:-1], torch.zeros(len(ts) - 1), 4, hint)

    # 2. the Gaussian closed form: v(e, 1) = e - M, so one Euler step sends every sample to the mean M
    x1 = euler_sample(exact_v, e, _grid(1))
    variants = {"a step up (z + dt v)": 2 * e - M, "evaluating v at the end of the step, t - dt": 2 * e}
    _close_or_diagnose("one Euler step with the exact velocity of N(M, S^2) data: v(e, t=1) = e - M, "
                       "so z_0 = e - (e - M) = M for every sample", x1, torch.full_like(e, M), 1e-6, hint, variants)

    # 3. the library (equal grids), a recomputation (uneven grids), the convergence to the flow map e -> M + S e
    exact = M + S * e
    errors = {}
    for n in (3, 16, 64):
        got = euler_sample(exact_v, e, _grid(n))
        expect_close(f"euler_sample(exact Gaussian velocity, e, ts = {n} equal steps) against minimal.flow_matching."
                     "euler_sample", got, reference_euler_sample(exact_v, e, n), 1e-6, hint)
        errors[n] = float((got - exact).abs().max())
    if not errors[3] > errors[16] > errors[64] or errors[64] > 0.05:
        fail("Euler with the exact velocity converges to the flow map M + S e as steps grow",
             "max error decreasing like 1/steps, below 0.05 at 64 steps",
             ", ".join(f"{n} steps: {err:.3g}" for n, err in errors.items()), hint)
    expect_close("euler_sample(exact Gaussian velocity, e, an uneven grid of 5 steps) against a recomputation",
                 euler_sample(exact_v, e, SKEWED), _euler_reference(exact_v, e, SKEWED), 1e-9,
                 "each step has its own length ts[k] - ts[k + 1]")
    net, y = TinyNet(2, seed=4).double(), torch.randint(0, 3, (4,), generator=g)
    with torch.no_grad():
        expect_close("euler_sample(tiny net, e, ts = 5 equal steps, y) against minimal.flow_matching.euler_sample",
                     euler_sample(net, e[:4], _grid(5), y), reference_euler_sample(net, e[:4], 5, y), 1e-6,
                     "pass the label y to the network at every step")
    passed("check_euler_sample", "one call per step at its start time with h = 0, on equal and uneven grids; 1 step "
                                 "sends N(M, S^2)'s noise to M; matches the library; max error to M + S e "
                                 + ", ".join(f"{err:.3f} ({n} steps)" for n, err in errors.items()))


@answers(shifted_times=())
def check_shifted_times(shifted_times) -> None:
    """t_k = s tau_k / (1 + (s - 1) tau_k), tau the equal grid from 1 to 0; ValueError for bad arguments."""
    hint = ("tau = torch.linspace(1, 0, steps + 1, dtype=torch.float64), then shift * tau / (1 + (shift - 1) * tau)")
    shown = {}
    for steps, shift in ((1, 3.0), (4, 1.0), (8, 3.0), (8, 0.5), (5, 2.5)):
        what = f"shifted_times(steps={steps}, shift={shift})"
        got = expect_tensor(what, call_student(what, shifted_times, steps, shift, hint=hint), hint)
        if got.dtype != torch.float64:
            fail(what + ": dtype", "torch.float64", str(got.dtype), "build tau with dtype=torch.float64")
        tau = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        want = shift * tau / (1 + (shift - 1) * tau)
        variants = {"the shift applied to 1 - tau (towards the data end)":
                    1 - shift * (1 - tau) / (1 + (shift - 1) * (1 - tau)),
                    "the inverse shift, tau / (s - (s - 1) tau)": tau / (shift - (shift - 1) * tau),
                    "the grid from 0 to 1": want.flip(0)}
        _close_or_diagnose(what, got, want, 1e-12, hint, variants)
        shown[(steps, shift)] = got
    mid = {s: float(shown[(8, s)][4]) for s in (3.0, 0.5)}
    for steps, shift in ((0, 1.0), (4, 0.0), (4, -1.0)):
        expect_raises(f"shifted_times(steps={steps}, shift={shift})", ValueError,
                      lambda n=steps, s=shift: shifted_times(n, s), "steps >= 1 and shift > 0")
    passed("check_shifted_times", f"the shifted grids at 5 (steps, shift); halfway through 8 steps t = {mid[3.0]:.2f} "
                                  f"with shift 3, {mid[0.5]:.2f} with shift 0.5; ValueError for bad arguments")


@answers(heun_sample=library_flow_matching.euler_sample)
@single_thread
def check_heun_sample(heun_sample) -> None:
    """Heun on a grid: slopes at both ends of each step, averaged; error ~ 1 / K^2."""
    g = torch.Generator().manual_seed(14)
    B = 512
    e = torch.randn(B, 2, generator=g, dtype=torch.float64)
    hint = ("per step: d1 = net(z, t_k, 0, y), z_e = z - dt * d1, d2 = net(z_e, t_k+1, 0, y), "
            "z <- z - dt * (d1 + d2) / 2 with dt = ts[k] - ts[k + 1]")

    # 1. two calls per step, at t_k then t_k+1, the second at Euler's guess of the end of the step
    for ts in (_grid(1), SKEWED):
        rec = Recorder(exact_v)
        what = f"heun_sample(net, e, ts={[round(float(t), 3) for t in ts]})"
        out = call_student(what, heun_sample, rec, e[:4], ts, hint=hint)
        expect_shape(what, out, (4, 2), "return the final state z_0 only, shape of e")
        want_t = torch.stack([ts[:-1], ts[1:]], 1).flatten()  # t_0, t_1, t_1, t_2, ...
        _expect_calls(what, rec, want_t, torch.zeros(len(want_t)), 4, hint)
        z = e[:4]
        for k in range(len(ts) - 1):
            dt = float(ts[k] - ts[k + 1])
            guess = rec.calls[2 * k][0] - dt * exact_v(*rec.calls[2 * k][:3])
            expect_close(f"{what}: the state passed to the second call of step {k + 1}", rec.calls[2 * k + 1][0],
                         guess, 1e-9, "the second slope is taken at Euler's guess z - dt * d1, at time t_k+1")
            z = _heun_reference(exact_v, z, ts[k:k + 2])
            expect_close(f"{what}: the state passed to the first call of step {k + 2}" if k + 2 < len(ts) else
                         f"{what}: the result", rec.calls[2 * k + 2][0] if k + 2 < len(ts) else out, z, 1e-9,
                         hint)

    # 2. a reference with a labelled network, and the order of convergence on Gaussian data
    net, y = TinyNet(2, seed=15).double(), torch.randint(0, 3, (4,), generator=g)
    with torch.no_grad():
        expect_close("heun_sample(tiny net, e, uneven grid, y) against a recomputation",
                     heun_sample(net, e[:4], SKEWED, y), _heun_reference(net, e[:4], SKEWED, y), 1e-9,
                     "pass the label y to the network at both calls of every step")
    exact = M + S * e
    heun = {n: float((heun_sample(exact_v, e, _grid(n)) - exact).abs().max()) for n in (8, 16, 32)}
    euler = {n: float((_euler_reference(exact_v, e, _grid(2 * n)) - exact).abs().max()) for n in (8, 16, 32)}
    if not (heun[16] / heun[32] > 3 and all(heun[n] < euler[n] for n in heun)):
        fail("Heun with the exact velocity: error against M + S e", "falling about 4x when the steps double, and "
             "below Euler's with twice the steps (the same evaluations)",
             "Heun " + ", ".join(f"{n} steps: {v:.3g}" for n, v in heun.items()) + "; Euler "
             + ", ".join(f"{2 * n} steps: {v:.3g}" for n, v in euler.items()), hint)
    errors = ", ".join(f"{v:.4f} ({n} steps, Euler with {2 * n}: {euler[n]:.3f})" for n, v in heun.items())
    passed("check_heun_sample", "two calls per step at t_k and t_k+1, the second at Euler's guess; matches a "
                                f"recomputation; max error to M + S e {errors}")


# ---------------------------------------------------------------------------------------------------
# Exercise 05: MeanFlow
# ---------------------------------------------------------------------------------------------------

@answers(r_t_from_draws=(library_mean_flow.sample_r_t, library_mean_flow._draws))
@single_thread
def check_r_t(r_t_from_draws) -> None:
    """(r, t) from two draws a, b and a mask: t = max(a, b), r = min(a, b), r = t where equal."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(12, generator=g), torch.rand(12, generator=g)
    equal = torch.tensor([True, False] * 6)
    what = "r_t_from_draws(a, b, equal)"
    r, t = _pair(what, call_student(what, r_t_from_draws, a, b, equal), "r, t")
    want_t = torch.maximum(a, b)
    want_r = torch.where(equal, want_t, torch.minimum(a, b))
    variants = {"an inverted mask (r = t where equal is False)": torch.where(equal, torch.minimum(a, b), want_t)}
    expect_close(what + ": t", t, want_t, 0.0, "t is the later time, the max of the two draws")
    _close_or_diagnose(what + ": r", r, want_r, 0.0,
                       "r = min(a, b), except where equal[i] is True: there r[i] = t[i] (an interval of length 0, "
                       "i.e. plain flow matching)", variants)
    expect_equal(what + ": r <= t everywhere", bool((r <= t).all()), True)
    passed("check_r_t", "t = max(a, b), r = min(a, b), and r = t exactly where equal")


def _interval(B: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 0 <= r <= t <= 1 (float64), with the corner cases r = t, (r, t) = (0, 1) and r = 0."""
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(B, generator=g, dtype=torch.float64)
    r[:3] = t[:3]
    r[3], t[3] = 0.0, 1.0
    r[4] = 0.0
    return r, t


def _target_variants(net, z, r, t, v, y=None) -> dict[str, torch.Tensor]:
    """u_tgt as the classic mistakes compute it."""
    def u_fn(z_, r_, t_):
        return net(z_, t_, t_ - r_, y)

    gap = (t - r).view(-1, *[1] * (z.ndim - 1))
    tv = t.view(-1, *[1] * (z.ndim - 1))
    _, d_t = jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    _, d_z = jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.zeros_like(t)))
    _, d_r = jvp(u_fn, (z, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))
    _, d_partial = jvp(u_fn, (z, r, t), (torch.zeros_like(v), torch.zeros_like(r), torch.ones_like(t)))
    return {"the tangent (v, 0, 0), which drops d_t u": v - gap * d_z,
            "the tangent on r, (v, 1, 0), instead of on t": v - gap * d_r,
            "the tangent (0, 0, 1), the partial derivative d_t u instead of the total one": v - gap * d_partial,
            "a sign error, v + (t - r) du/dt": v + gap * d_t,
            "t instead of (t - r) as the factor of du/dt": v - tv * d_t,
            "u_tgt = v (no correction)": v.clone()}


@answers(mean_flow_target=(library_mean_flow.mean_flow_target, library_mean_flow.total_derivative))
@single_thread
def check_mean_flow_target(mean_flow_target) -> None:
    """u = net(z, t, t - r, y) and u_tgt = v - (t - r) du/dt, du/dt one JVP with tangents (v, 0, 1)."""
    g = torch.Generator().manual_seed(6)
    hint = ("u_tgt = v - (t - r) * du/dt, with (u, du/dt) = torch.func.jvp(lambda z, r, t: net(z, t, t - r, y), "
            "(z, r, t), (v, zeros_like(r), ones_like(t))); (t - r) reshaped to (B, 1, ...)")

    # 1. Gaussian data in closed form: with the exact u as the network and the exact v as tangent, u_tgt = u
    B = 64
    z = torch.randn(B, 3, generator=g, dtype=torch.float64)
    r, t = _interval(B, g)
    v = gaussian_velocity(z, t, M, S)
    rec = Recorder(exact_u, record=False)
    what = "mean_flow_target(exact u of Gaussian data, z, r, t, exact v)"
    u, u_tgt = _pair(what, call_student(what, mean_flow_target, rec, z, r, t, v, hint=hint), "u, u_tgt")
    expect_equal(what + ": network evaluations (the JVP returns u and du/dt from one call)", rec.n_calls, 1,
                 "one torch.func.jvp evaluates the network once and gives both u and du/dt; no finite differences")
    expect_close(what + ": u, the network at (z, t, h = t - r)", u, gaussian_average_velocity(z, r, t, M, S), 1e-10,
                 "u = net(z, t, t - r, y): the network's second time input is the interval length h = t - r")
    _close_or_diagnose(what + ": u_tgt, which the MeanFlow identity makes equal to the exact u", u_tgt, u.detach(),
                       1e-9, hint, _target_variants(exact_u, z, r, t, v))

    # 2. a real network, float64: against central finite differences of the total derivative and the library
    net = TinyNet(3, seed=7).double()
    y = torch.randint(0, 4, (B,), generator=g)
    z, v = torch.randn(B, 3, generator=g, dtype=torch.float64), torch.randn(B, 3, generator=g, dtype=torch.float64)
    what = "mean_flow_target(tiny net, z, r, t, v, y), float64"
    u, u_tgt = _pair(what, mean_flow_target(net, z, r, t, v, y), "u, u_tgt")
    eps = 1e-5
    with torch.no_grad():  # d/dt u(z + (t' - t) v, r, t') at t' = t, r fixed
        dudt = (net(z + eps * v, t + eps, t + eps - r, y) - net(z - eps * v, t - eps, t - eps - r, y)) / (2 * eps)
    with torch.no_grad():
        expect_close(what + ": u", u, net(z, t, t - r, y), 1e-12, "u = net(z, t, t - r, y)")
        variants = _target_variants(net, z, r, t, v, y)
    fd_target = v - (t - r)[:, None] * dudt
    _close_or_diagnose(what + ": u_tgt against v - (t - r) (u(z + eps v, r, t + eps) - u(z - eps v, r, t - eps)) "
                       "/ (2 eps)", u_tgt, fd_target, 1e-7, hint, variants)
    ref_u, ref_tgt = reference_mean_flow_target(net, z, r, t, v, y)
    expect_close(what + ": u_tgt against minimal.mean_flow.mean_flow_target", u_tgt, ref_tgt, 1e-10, hint)

    # 3. images (B, C, H, W): (t - r) broadcast over every data dimension
    net4 = TinyNet(2 * 3 * 3, seed=8).double()
    z4, v4 = (torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    r4, t4 = _interval(5, g)
    what = "mean_flow_target(net, z, r, t, v) for z of shape (5, 2, 3, 3)"
    u, u_tgt = _pair(what, call_student(what, mean_flow_target, net4, z4, r4, t4, v4, hint=hint), "u, u_tgt")
    expect_close(what + ": u_tgt against minimal.mean_flow.mean_flow_target", u_tgt,
                 reference_mean_flow_target(net4, z4, r4, t4, v4)[1], 1e-10,
                 "reshape t - r (B,) to (B, 1, 1, 1) so it scales every element of sample b")
    passed("check_mean_flow_target", "u_tgt = u exactly for Gaussian data (one network call), u_tgt matches finite "
                                     "differences (float64) and the library for vectors and images")


@answers(mean_flow_target=(library_mean_flow.mean_flow_target, library_mean_flow.total_derivative))
@single_thread
def check_mean_flow_target_gradients(mean_flow_target) -> None:
    """u_tgt is detached (a regression target); u keeps its graph, with the gradient of a plain forward."""
    g = torch.Generator().manual_seed(9)
    net = TinyNet(2, seed=10)
    z, v = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    r, t = torch.full((6,), 0.2), torch.full((6,), 0.7)
    what = "mean_flow_target(net, z, r, t, v) with a trainable network"
    u, u_tgt = _pair(what, call_student(what, mean_flow_target, net, z, r, t, v), "u, u_tgt")
    if u_tgt.requires_grad:
        fail(what + ": u_tgt must be a constant target (stop-gradient)", "u_tgt.requires_grad False", "True",
             "return u_tgt.detach(): the loss must not back-propagate through the JVP (second derivatives)")
    if not u.requires_grad:
        fail(what + ": u must stay differentiable with respect to the network", "u.requires_grad True", "False",
             "return the primal output of the JVP as it is: do not detach u or run the JVP under torch.no_grad()")
    grads = torch.autograd.grad(u.sum(), list(net.parameters()))
    plain = torch.autograd.grad(net(z, t, t - r).sum(), list(net.parameters()))
    for (name, _), a, b in zip(net.named_parameters(), grads, plain, strict=True):
        expect_close(f"{what}: gradient of u.sum() with respect to net.{name} vs. a plain forward pass", a, b, 1e-5)
    passed("check_mean_flow_target_gradients", "u_tgt is detached; u has the gradient of net(z, t, t - r)")


def _weighted(u0, u_tgt, p, c, stop_gradient: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive loss and its gradient with respect to u, with or without the stop-gradient."""
    u = u0.clone().requires_grad_(True)
    delta = ((u - u_tgt) ** 2).flatten(1).sum(1)
    weight = (delta.detach() if stop_gradient else delta) + c
    loss = (delta / weight ** p).mean()
    return loss.detach(), torch.autograd.grad(loss, u)[0]


@answers(adaptive_loss=(library_mean_flow.adaptive_weight_loss, library_mean_flow.mean_flow_loss))
@single_thread
def check_adaptive_loss(adaptive_loss) -> None:
    """mean over the batch of Delta / sg((Delta + c)^p), Delta the per-sample sum of squared errors."""
    g = torch.Generator().manual_seed(11)
    hint = ("Delta = ((u - u_tgt) ** 2).flatten(1).sum(1), one value per sample; "
            "loss = (Delta / (Delta.detach() + c) ** p).mean()")
    worst = 0.0
    for shape in ((6, 2), (4, 3, 2, 2)):
        u0, u_tgt = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g,
                                                                                      dtype=torch.float64)
        u0[0] = u_tgt[0] + 0.01  # one nearly fitted sample: its weight 1 / (Delta + c)^p is large
        for p, c in ((0.0, 1e-3), (0.5, 1e-3), (1.0, 1e-3), (1.0, 0.5)):
            ref, ref_grad = _weighted(u0, u_tgt, p, c, stop_gradient=True)
            _, no_sg_grad = _weighted(u0, u_tgt, p, c, stop_gradient=False)
            delta = ((u0 - u_tgt) ** 2).flatten(1).sum(1)
            n = u0[0].numel()
            variants = {"Delta averaged over the data dimensions instead of summed":
                        (delta / n / (delta / n + c) ** p).mean(),
                        "summing over the batch instead of averaging": (delta / (delta + c) ** p).sum()}
            u = u0.clone().requires_grad_(True)
            what = f"adaptive_loss(u, u_tgt, p={p}, c={c}) for u of shape {shape}"
            loss = call_student(what, adaptive_loss, u, u_tgt, p, c, hint=hint)
            expect_shape(what + " (a scalar)", loss, (), "average the weighted per-sample errors over the batch")
            worst = max(worst, _close_or_diagnose(what + ": value", loss, ref, 1e-10, hint, variants))
            if not loss.requires_grad:
                fail(what + ": the loss must be differentiable with respect to u", "requires_grad True", "False",
                     "do not detach Delta itself, only the weight")
            (grad,) = torch.autograd.grad(loss, u)
            if p and torch.allclose(grad, no_sg_grad, atol=1e-10, rtol=0):
                hint_grad = ("your gradient is that of Delta / (Delta + c)^p without the stop-gradient: the "
                             "weight must be a constant, (Delta.detach() + c) ** p")
            else:
                hint_grad = hint
            expect_close(what + ": gradient with respect to u (the weight 1 / (Delta + c)^p is a constant)", grad,
                         ref_grad, 1e-10, hint_grad)
    passed("check_adaptive_loss", f"value and gradient of mean(Delta / sg((Delta + c)^p)) for p = 0, 0.5, 1 "
                                  f"on vectors and images (max |difference| {worst:.1e})")


@answers(mean_flow_sample=library_mean_flow.mean_flow_sample)
@single_thread
def check_mean_flow_sample(mean_flow_sample) -> None:
    """n jumps z_r = z_t - (t - r) u(z_t, r, t) over t = 1, 1 - 1/n, ..., 0; one exact jump is the flow map."""
    g = torch.Generator().manual_seed(12)
    B = 256
    e = torch.randn(B, 2, generator=g, dtype=torch.float64)
    hint = ("n equal jumps from t = 1 to r = t - 1/n, down to 0: z <- z - (t - r) * net(z, t, t - r, y), "
            "with t and h = t - r as tensors of shape (B,)")

    # 1. the schedule
    for n in (1, 4):
        rec = Recorder(exact_u)
        what = f"mean_flow_sample(net, e, steps={n})"
        out = call_student(what, mean_flow_sample, rec, e[:4], n, hint=hint)
        expect_shape(what, out, (4, 2), "return the final state only, shape of e")
        _expect_calls(what, rec, torch.linspace(1, 0, n + 1)[:-1], torch.full((n,), 1 / n), 4, hint)

    # 2. the Gaussian closed form: the exact u jumps straight onto the flow map e -> M + S e
    exact = M + S * e
    for n in (1, 4):
        got = mean_flow_sample(exact_u, e, n)
        variants = {"h = 0 (flow-matching Euler, the network's instantaneous velocity)":
                    reference_euler_sample(exact_v, e, n)}
        if n == 1:
            variants["a jump up, z + (t - r) u"] = 2 * e - exact
        _close_or_diagnose(f"mean_flow_sample(exact u of Gaussian data, e, steps={n}): exact jumps land on the "
                           "flow map M + S e", got, exact, 1e-6, hint, variants)

    # 3. a network with labels, against the library
    net, y = TinyNet(2, seed=13).double(), torch.randint(0, 3, (4,), generator=g)
    with torch.no_grad():
        for n in (1, 3):
            expect_close(f"mean_flow_sample(tiny net, e, steps={n}, y) against minimal.mean_flow.mean_flow_sample",
                         mean_flow_sample(net, e[:4], n, y), reference_mean_flow_sample(net, e[:4], n, y), 1e-6,
                         hint)
    passed("check_mean_flow_sample", "n calls at t = 1, ..., 1/n with h = 1/n; one and four exact jumps map e to "
                                     "M + S e; matches the library with labels")
