"""Flow matching and MeanFlow: the JVP, the MeanFlow target against closed forms, samplers, bad input."""

import dataclasses
import json
import math

import pytest
import torch
from torch.func import jvp

from minimal import bench, train
from minimal.checkpoints import load_checkpoint, load_pretrained
from minimal.flow_bench import (
    RECIPES_2D,
    TrainRecipe,
    checkerboard,
    evaluate_2d,
    frame_validity,
    frames,
    real_frame_validity,
    sample,
)
from minimal.flow_bench import train as flow_train
from minimal.flow_matching import (
    FlowMLP,
    FlowMLPConfig,
    FrameUNet,
    FrameUNetConfig,
    euler_sample,
    fm_loss,
    interpolate,
    sample_time,
    sliced_wasserstein,
)
from minimal.mean_flow import (
    adaptive_weight_loss,
    gaussian_average_velocity,
    gaussian_velocity,
    mean_flow_loss,
    mean_flow_sample,
    mean_flow_target,
    sample_r_t,
    split_loss,
    total_derivative,
)

M, S = 0.7, 0.5  # Gaussian data x ~ N(M, S^2 I)


def analytic_u(z, t, h, y=None):
    """The exact average velocity of Gaussian data, with the network's (z, t, h = t - r) signature."""
    return gaussian_average_velocity(z, t - h, t, M, S)


def analytic_v(z, t, h, y=None):
    return gaussian_velocity(z, t, M, S)


def random_interval(n, generator):
    t = torch.rand(n, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    return t * torch.rand(n, generator=generator, dtype=torch.float64), t


def test_interpolation_endpoints_and_velocity():
    x, e = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(interpolate(x, e, torch.zeros(5)), x)
    assert torch.equal(interpolate(x, e, torch.ones(5)), e)
    t = 0.05 + 0.9 * torch.rand(5)  # away from the ends, so t +- dt stays in [0, 1]
    dt = 1e-3
    fd = (interpolate(x, e, t + dt) - interpolate(x, e, t - dt)) / (2 * dt)
    assert torch.allclose(fd, e - x, atol=1e-3)  # v = dz_t/dt = e - x


def test_gaussian_closed_forms_are_consistent():
    """u at r = t is v; u is the finite-difference slope of the exact flow map; dz/dt = v along it."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 3, generator=g, dtype=torch.float64)
    r, t = random_interval(64, g)
    assert torch.allclose(gaussian_average_velocity(z, t, t, M, S), gaussian_velocity(z, t, M, S))
    # integrate dz/dtau = v from t down to r with many small Euler steps: the jump is (t - r) u
    zz, n = z.clone(), 4000
    for k in range(n):
        tau = t - (t - r) * k / n
        zz = zz - ((t - r) / n)[:, None] * gaussian_velocity(zz, tau, M, S)
    assert torch.allclose((z - zz) / (t - r)[:, None], gaussian_average_velocity(z, r, t, M, S), atol=1e-3)


def test_mean_flow_target_equals_analytic_u_for_gaussian_data():
    """With the exact u as the network and the marginal v as tangent, u_tgt = v - (t - r) du/dt = u."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(256, 4, generator=g, dtype=torch.float64)
    r, t = random_interval(256, g)
    v = gaussian_velocity(z, t, M, S)
    u, u_tgt = mean_flow_target(analytic_u, z, r, t, v)
    assert (u_tgt - u).abs().max() < 1e-10
    assert (u - gaussian_average_velocity(z, r, t, M, S)).abs().max() < 1e-12


def test_conditional_target_is_unbiased_for_gaussian_data():
    """Training uses v = e - x, not the marginal v; averaged over (x, e) meeting at z it gives the same u."""
    g = torch.Generator().manual_seed(2)
    n = 200_000
    x = M + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
    e = torch.randn(n, 1, generator=g, dtype=torch.float64)
    r = torch.full((n,), 0.2, dtype=torch.float64)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    z = interpolate(x, e, t)
    _, u_tgt = mean_flow_target(analytic_u, z, r, t, e - x)
    # the target is affine in v, so its regression on z (least squares) recovers u exactly in expectation
    features = torch.cat([torch.ones_like(z), z], dim=1)
    coef = torch.linalg.lstsq(features, u_tgt).solution
    zs = torch.linspace(-1, 2, 7, dtype=torch.float64)[:, None]
    u_true = gaussian_average_velocity(zs, r[:7], t[:7], M, S)
    assert torch.allclose(torch.cat([torch.ones_like(zs), zs], 1) @ coef, u_true, atol=0.01)


@pytest.mark.parametrize("make", [lambda: FlowMLP(FlowMLPConfig(dim=2, width=32, depth=2)),
                                  lambda: FrameUNet(FrameUNetConfig(size=8, channels=8, n_head=2))])
def test_jvp_total_derivative_matches_finite_differences(make):
    torch.manual_seed(0)
    net = make().double()
    for p in net.parameters():  # move the zero-initialised output layers off zero
        p.data.add_(0.05 * torch.randn_like(p))
    shape = (6, 2) if isinstance(net, FlowMLP) else (6, 3, 8, 8)
    z, v = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.5 + 0.3
    r = t * 0.4
    u, u_tgt = mean_flow_target(net, z, r, t, v)
    eps = 1e-6
    with torch.no_grad():  # d/dt u(z + (t' - t) v, r, t') at t' = t, by central differences
        plus = net(z + eps * v, t + eps, t + eps - r)
        minus = net(z - eps * v, t - eps, t - eps - r)
    dudt = (plus - minus) / (2 * eps)
    gap = (t - r).view(-1, *[1] * (z.ndim - 1))
    assert torch.allclose(u_tgt, v - gap * dudt, atol=1e-6)
    assert torch.allclose(u, net(z, t, t - r))


def test_jvp_through_attention_uses_the_math_backend():
    """The fused CPU attention kernel has no forward-mode rule; the target runs the math backend and
    agrees with the hand-written attention path."""
    torch.manual_seed(0)
    net = FrameUNet(FrameUNetConfig(size=8, channels=8, n_head=2))
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    z, v = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.9, 0.5, 0.3])
    r = torch.tensor([0.1, 0.5, 0.0])
    tangents = (v, torch.zeros_like(r), torch.ones_like(t))
    with pytest.raises(Exception, match="forward AD"):
        jvp(lambda z_, r_, t_: net(z_, t_, t_ - r_), (z, r, t), tangents)
    _, manual = jvp(lambda z_, r_, t_: net(z_, t_, t_ - r_, None, manual=True), (z, r, t), tangents)
    u, u_tgt = mean_flow_target(net, z, r, t, v)
    assert torch.allclose(u_tgt, v - (t - r).view(-1, 1, 1, 1) * manual, atol=1e-5)


def test_mean_flow_loss_trains_the_network_and_u_keeps_its_graph():
    torch.manual_seed(0)
    net = FlowMLP(FlowMLPConfig(width=32, depth=2))
    x = torch.randn(16, 2)
    loss = mean_flow_loss(net, x, ratio_neq=0.5)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters()) and torch.isfinite(loss)
    # the primal output of the JVP is differentiable: same gradient as a plain forward pass
    z, r, t = torch.randn(4, 2), torch.full((4,), 0.2), torch.full((4,), 0.6)
    u, _ = mean_flow_target(net, z, r, t, torch.randn(4, 2))
    grads = torch.autograd.grad(u.sum(), list(net.parameters()))
    plain = torch.autograd.grad(net(z, t, t - r).sum(), list(net.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(grads, plain, strict=True))


def test_compound_velocity_is_v_for_gaussian_data():
    """The residual form's V = u + (t - r) du/dt, along the model's own v = u(z, t, t), is the marginal v."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(256, 3, generator=g, dtype=torch.float64)
    r, t = random_interval(256, g)
    u, dudt = total_derivative(analytic_u, z, r, t, analytic_u(z, t, torch.zeros_like(t)))
    assert (u + (t - r)[:, None] * dudt - gaussian_velocity(z, t, M, S)).abs().max() < 1e-10


def test_distillation_removes_the_sampling_noise():
    """With the marginal velocity as teacher, both forms' loss vanishes at the exact u; with e - x the
    paper's target carries the noise of a single pair, so its loss at the exact u does not."""
    x = M + S * torch.randn(512, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(**kw):
        return mean_flow_loss(analytic_u, x, ratio_neq=0.75, p=0.0, dist="uniform",
                              generator=torch.Generator().manual_seed(1), **kw).item()

    assert loss(teacher=analytic_v) < 1e-10 and loss(teacher=analytic_v, residual=True) < 1e-10
    assert loss() > 0.1


def test_split_loss_vanishes_at_the_exact_u():
    """The exact average velocity is additive over split intervals: with the marginal velocity as
    teacher, the splitting loss is 0 at the analytic u; with e - x at r = t it is not."""
    x = M + S * torch.randn(512, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(**kw):
        return split_loss(analytic_u, x, generator=torch.Generator().manual_seed(1), **kw).item()

    assert loss(teacher=analytic_v) < 1e-10 and loss() > 0.1


def test_split_loss_gradient_by_hand():
    """p = 0, u = a z + b t + c h: the target is the average of two half-jumps (v = e - x at r = t), detached."""
    net, x = Linear(), torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = split_loss(net, x, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(loss, [net.a, net.b, net.c])
    g = torch.Generator().manual_seed(1)
    e = torch.randn(x.shape, generator=g).double()
    r, t = (q.double()[:, None] for q in sample_r_t(64, 0.75, "uniform", generator=g))
    a, b, c = net.a.detach(), net.b.detach(), net.c.detach()
    z, s = (1 - t) * x + t * e, (r + t) / 2
    u_ts = a * z + b * t + c * (t - s)
    u_sr = a * (z - (t - s) * u_ts) + b * s + c * (s - r)
    target = torch.where(r == t, e - x, (u_ts + u_sr) / 2)
    err = a * z + b * t + c * (t - r) - target
    expected = [(2 * err * d).sum(1).mean() for d in (z, t.expand_as(z), (t - r).expand_as(z))]
    assert (r == t).any() and (r < t).any()
    assert all(torch.allclose(g_, e_) for g_, e_ in zip(grads, expected, strict=True))


class Linear(torch.nn.Module):
    """u = a z + b t + c h: small enough to differentiate the MeanFlow losses by hand."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in (0.3, -0.2, 0.5))

    def forward(self, z, t, h, y=None):
        return self.a * z + self.b * t[:, None] + self.c * h[:, None]


@pytest.mark.parametrize("residual", [False, True])
def test_mean_flow_loss_gradient_by_hand(residual):
    """p = 0. With u = a z + b t + c h the JVP along (w, 0, 1) is a w + b + c, so the two forms differ:
    the paper's regresses u onto sg(v - h (a v + b + c)): dL/dtheta = 2 (u - u_tgt) du/dtheta;
    the residual's regresses V = u + h (a w + b + c), w = sg(u(z, t, t)), onto v: 2 (V - v) dV/dtheta."""
    net, x = Linear(), torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = mean_flow_loss(net, x, ratio_neq=0.75, p=0.0, dist="uniform", residual=residual,
                          generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(loss, [net.a, net.b, net.c])
    g = torch.Generator().manual_seed(1)  # the loss's own draws, in its order
    e = torch.randn(x.shape, generator=g).double()
    r, t = (s.double() for s in sample_r_t(64, 0.75, "uniform", generator=g))
    z, v, h = interpolate(x, e, t), e - x, (t - r)[:, None]
    a, b, c = net.a.detach(), net.b.detach(), net.c.detach()
    u = a * z + b * t[:, None] + c * h
    if residual:
        w = a * z + b * t[:, None]  # the model's v = u(z, t, t), detached
        err = u + h * (a * w + b + c) - v
        du = (z + h * w, t[:, None] + h, 2 * h)  # dV/d(a, b, c)
    else:
        err = u - (v - h * (a * v + b + c))
        du = (z, t[:, None].expand_as(z), h.expand_as(z))  # du/d(a, b, c)
    expected = [(2 * err * d).sum(1).mean() for d in du]
    assert all(torch.allclose(g_, e_) for g_, e_ in zip(grads, expected, strict=True))


def test_samplers_are_exact_for_exact_fields():
    """One MeanFlow jump with the exact u lands on the data distribution; Euler converges with steps."""
    e = torch.randn(4096, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x1 = mean_flow_sample(analytic_u, e, 1)
    assert torch.allclose(x1, M + S * e)  # the flow map of N(0, I) -> N(M, S^2 I) is affine
    assert torch.allclose(mean_flow_sample(analytic_u, e, 4), x1)  # composing exact jumps changes nothing
    err = [(euler_sample(analytic_v, e, n) - x1).abs().max().item() for n in (2, 8, 32, 256)]
    assert err[0] > err[1] > err[2] > err[3] and err[3] < 0.02  # first order: error ~ 1 / steps
    path = euler_sample(analytic_v, e, 8, return_path=True)
    assert path.shape == (9, 4096, 2) and torch.equal(path[0], e)


def test_fm_loss_is_minimised_by_the_marginal_velocity():
    g = torch.Generator().manual_seed(4)
    x = M + S * torch.randn(20000, 2, generator=g, dtype=torch.float64)
    exact = fm_loss(analytic_v, x, generator=torch.Generator().manual_seed(5))
    worse = fm_loss(lambda z, t, h, y=None: 1.1 * gaussian_velocity(z, t, M, S), x,
                    generator=torch.Generator().manual_seed(5))
    assert exact < worse


def _weighted_fit(y: torch.Tensor, p: float) -> float:
    """The scalar u that full-batch gradient descent on adaptive_weight_loss((u - y)^2, p) settles at."""
    u = y.mean().clone().requires_grad_(True)  # start at the mean: where squared error stops
    opt = torch.optim.SGD([u], lr=0.002)
    for _ in range(4000):
        opt.zero_grad()
        adaptive_weight_loss((u - y) ** 2, p).backward()
        opt.step()
    return u.item()


def test_adaptive_weight_moves_the_fit_from_the_mean_to_the_mode():
    # noisy targets from two clusters: 70% at +1, 30% at -1 (mean 0.4); flow matching needs the mean
    g = torch.Generator().manual_seed(0)
    y = torch.where(torch.rand(4000, generator=g) < 0.7, 1.0, -1.0) + 0.05 * torch.randn(4000, generator=g)
    assert abs(_weighted_fit(y, 0.0) - y.mean().item()) < 1e-3  # p = 0: squared error, the mean
    assert abs(_weighted_fit(y, 1.0) - 1.0) < 0.05  # p = 1 (MeanFlow's): the dominant cluster
    with pytest.raises(ValueError, match="p .* must be >= 0"):
        adaptive_weight_loss(y, -1.0)
    with pytest.raises(ValueError, match="c .* must be > 0"):
        adaptive_weight_loss(y, 1.0, c=0.0)


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    r, t = sample_r_t(10000, ratio_neq=0.25, generator=g)
    assert ((r <= t) & (r >= 0) & (t <= 1)).all()
    assert abs((r != t).float().mean().item() - 0.25) < 0.02
    assert abs(torch.logit(sample_time(10000, "logit_normal", generator=g)).mean().item() + 0.4) < 0.05


def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 2, generator=g)
    assert sliced_wasserstein(a, a) == 0
    shift = torch.tensor([0.3, -0.4])  # |shift| = 0.5; projections of a translation move by theta . shift
    sw = sliced_wasserstein(a, a + shift, n_projections=1000, generator=g)
    assert abs(sw - 0.5 / math.sqrt(2)) < 0.02  # sqrt(E (theta . d)^2) = |d| / sqrt(D)


def test_frame_dit_shapes_and_labels():
    net = FrameUNet(FrameUNetConfig(size=8, channels=8, n_head=2))
    z = torch.randn(2, 3, 8, 8)
    t = torch.rand(2)
    assert net(z, t, t, torch.tensor([0, 3])).shape == (2, 3, 8, 8)
    assert net(z, t, t).shape == (2, 3, 8, 8)  # no label: the classifier-free "null" class


def test_bad_input_raises_clear_errors():
    net = FlowMLP(FlowMLPConfig(width=8, depth=1))
    z = torch.randn(3, 2)
    with pytest.raises(ValueError, match="r must be <= t"):
        mean_flow_target(net, z, torch.full((3,), 0.8), torch.full((3,), 0.2), z)
    for bad in (torch.tensor([-0.1, 0.5, 0.5]), torch.tensor([0.5, 1.2, 0.5])):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            mean_flow_target(net, z, torch.zeros(3), bad, z)
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            interpolate(z, z, bad)
    with pytest.raises(ValueError, match=r"r must lie in \[0, 1\]"):
        mean_flow_target(net, z, torch.full((3,), -0.5), torch.ones(3), z)
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            euler_sample(net, z, steps)
        with pytest.raises(ValueError, match="steps"):
            mean_flow_sample(net, z, steps)
    with pytest.raises(ValueError, match="same shape"):
        interpolate(z, torch.randn(3, 3), torch.rand(3))
    with pytest.raises(ValueError, match="v must have the shape"):
        mean_flow_target(net, z, torch.zeros(3), torch.ones(3), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"z must be \(B, 2\)"):
        euler_sample(net, torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match=r"z must be \(B, 3, 8, 8\)"):
        FrameUNet(FrameUNetConfig(size=8, channels=8, n_head=2))(torch.randn(1, 3, 4, 4), z[:1, 0], z[:1, 0])
    with pytest.raises(ValueError, match="size must be divisible by 4"):
        FrameUNetConfig(size=10)
    with pytest.raises(ValueError, match="ratio_neq"):
        sample_r_t(4, ratio_neq=1.5)
    with pytest.raises(TypeError, match="residual must be a bool"):
        mean_flow_loss(net, z, residual="yes")
    for loss in (mean_flow_loss, split_loss):
        with pytest.raises(TypeError, match="teacher must be a flow-matching network"):
            loss(net, z, teacher="flow-2d")
    with pytest.raises(ValueError, match="split and recipe.residual"):
        flow_train("mean_flow", net, checkerboard, TrainRecipe(steps=1, split=True, residual=True), "cpu")
    for recipe, teacher in ((TrainRecipe(steps=1, distill=True), None), (TrainRecipe(steps=1), net)):
        with pytest.raises(ValueError, match="teacher is needed exactly when recipe.distill"):
            flow_train("mean_flow", net, checkerboard, recipe, "cpu", progress=False, teacher=teacher)
    with pytest.raises(ValueError, match="dist"):
        sample_time(4, "gamma")
    with pytest.raises(ValueError, match="width"):
        FlowMLPConfig(width=0)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(torch.randn(5, 2), torch.randn(4, 2))


def test_frame_data_and_validity_from_pixels():
    x, y = frames(64, torch.Generator().manual_seed(0), label_dropout=0.25)
    assert x.shape == (64, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (y == 4).any() and ((y >= 0) & (y <= 4)).all()  # 4 = the "no label" class
    assert real_frame_validity(200) > 0.7  # only overlapping sprites fail
    net = FrameUNet(FrameUNetConfig(channels=8, n_head=2))  # untrained: predicts v = 0, returns the noise
    assert frame_validity("flow_matching", net, 1, n=16) == 0


def test_bench_and_recipes_run_end_to_end(tmp_path, capsys, one_thread):
    figures = bench.main(["flows", "--quick", "--json", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    for method in ("flow_matching", "mean_flow"):
        assert set(figures[method]) == {"1", "2", "4", "8", "32"} and figures["train_seconds"][method] > 0
    assert figures["floor"] > 0 and figures["mean_flow_1_over_flow_matching_32"] > 0
    weight = bench.main(["flows-weight", "--quick", "--device", "cpu"])
    assert set(weight["p=0"]) == set(weight["p=1"]) == {"1", "2", "4", "8", "32"} and weight["p1_over_p0_at_32"] > 0
    forms = bench.main(["flows-residual", "--quick", "--device", "cpu"])
    assert set(forms["stop_gradient"]) == set(forms["residual"]) == {"1", "2", "4", "8", "32"}
    assert forms["stop_gradient_over_residual_at_1"] > 0
    result = train.main(["flow-2d", "--steps", "2", "--out", str(tmp_path / "f.pt"), "--device", "cpu"])
    net, meta = load_checkpoint(tmp_path / "f.pt", FlowMLP, FlowMLPConfig)
    assert meta["recipe"]["steps"] == 2 and set(result["sliced_wasserstein"]) == {"1", "2", "4", "8", "32"}


def test_mean_flow_frames_recipe_runs_end_to_end(tmp_path, one_thread):
    """Two steps of the shipped frames recipe: fine-tuned from flow-frames, which is also its teacher."""
    result = train.main(["mean-flow-frames", "--steps", "2", "--out", str(tmp_path / "m.pt"), "--device", "cpu"])
    net, meta = load_checkpoint(tmp_path / "m.pt", FrameUNet, FrameUNetConfig)
    assert meta["recipe"]["split"] and meta["recipe"]["distill"] and meta["init"] == "flow-frames"
    assert set(result["validity"]) == {"1", "2", "4"} and meta["recipe"]["steps"] == 2


def test_the_shipped_2d_models_meet_the_bench_goal():
    """mean-flow-2d's one jump is within 1.5x of flow-2d's 32 Euler steps (the issue's goal), more jumps
    only help, and both were trained by the committed recipes with equal steps, batch, lr and seed."""
    fm, fm_meta = load_pretrained("flow-2d", FlowMLP, FlowMLPConfig)
    mf, mf_meta = load_pretrained("mean-flow-2d", FlowMLP, FlowMLPConfig)
    for method, meta in (("flow_matching", fm_meta), ("mean_flow", mf_meta)):  # flow-2d predates the
        recipe = dataclasses.asdict(RECIPES_2D[method])  # MeanFlow-only fields t_dist and residual
        assert all(recipe[k] == v for k, v in meta["recipe"].items()) and "residual" in mf_meta["recipe"]
    assert all(fm_meta["recipe"][k] == mf_meta["recipe"][k] for k in ("steps", "batch_size", "lr", "seed"))
    fm_sw, mf_sw = evaluate_2d("flow_matching", fm), evaluate_2d("mean_flow", mf)
    assert mf_sw[1] <= 1.5 * fm_sw[32] and fm_sw[1] >= 3 * fm_sw[32]
    assert all(mf_sw[a] > mf_sw[b] for a, b in ((1, 2), (2, 4), (4, 32)))
    assert all(abs(mf_sw[k] - mf_meta["sliced_wasserstein"][str(k)]) < 0.005 for k in mf_sw)


def test_method_names_are_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        sample("rectified", FlowMLP(FlowMLPConfig(width=8, depth=1)), torch.randn(2, 2), 1)
