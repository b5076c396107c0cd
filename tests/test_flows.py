"""Flow matching and the MeanFlow losses: the JVP, the targets against closed forms, samplers, recipes,
the shipped models (their figures recomputed), bad input."""

import dataclasses
import inspect
import json
import math

import pytest
import torch
from torch.func import jvp

from minimal import bench, train
from minimal.checkpoints import PRETRAINED_DIR, load_checkpoint, load_pretrained
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
from minimal.flow_metrics import (
    EVAL_SEEDS,
    evaluate_2d,
    frames,
    generated_validity,
    real_validity,
    sample,
    validity_spread,
)
from minimal.flow_recipes import METHODS, RECIPES, FlowRecipe, load_teacher, train_flow_2d
from minimal.mean_flow import (
    adaptive_weight_loss,
    gaussian_average_velocity,
    gaussian_velocity,
    imf_loss,
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


MEANS = torch.tensor([0.7, -0.5, 1.2], dtype=torch.float64)  # class-conditional Gaussians N(MEANS[y], S^2 I)


def conditional_u(z, t, h, y=None):
    """The exact average velocity of class y's data: a different field for every label."""
    return gaussian_average_velocity(z, t - h, t, MEANS[y][:, None], S)


def test_imf_jvp_runs_along_the_models_own_conditional_velocity():
    """iMF's tangent is u(z, t, t | y), the model's own velocity, unguided: for the exact class-conditional u
    the compound velocity V is then exactly the marginal v(z, t | y), so the loss is ||v(z_t, t | y) - (e - x)||^2
    with the loss's own draws. Any other tangent (another label's field, or a guided mix of two, which is
    what the guidance option used to apply on top of a field that had already learned the guidance) breaks it."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (512,), generator=g)
    x = MEANS[y][:, None] + S * torch.randn(512, 2, generator=g, dtype=torch.float64)
    loss = imf_loss(conditional_u, x, y, generator=torch.Generator().manual_seed(1)).item()
    g = torch.Generator().manual_seed(1)  # the loss's draws, in its order
    e = torch.randn(x.shape, generator=g).double()
    r, t = (q.double() for q in sample_r_t(512, 0.75, "uniform", generator=g))
    z = interpolate(x, e, t)
    v = conditional_u(z, t, torch.zeros_like(t), y)  # v(z, t | y)
    assert (r < t).float().mean() > 0.5
    assert abs(loss - ((v - (e - x)) ** 2).sum(1).mean().item()) < 1e-6  # r, t are float32 draws
    u, dudt = total_derivative(conditional_u, z, r, t, conditional_u(z, t, torch.zeros_like(t), (y + 1) % 3), y)
    wrong = ((u + (t - r)[:, None] * dudt - (e - x)) ** 2).sum(1).mean().item()  # tangent: another label's field
    assert wrong > loss + 0.01


@pytest.mark.parametrize("loss", [mean_flow_loss, imf_loss, split_loss])
def test_each_loss_is_one_published_method_with_few_parameters(loss):
    """One function per paper, each naming it; at most 8 parameters; no guidance scale (no model here samples
    with guidance, and a scale in the iMF form guided the tangent a second time)."""
    params = inspect.signature(loss).parameters
    assert len(params) <= 8, list(params)
    assert not {"cfg_w", "w", "guidance", "residual"} & set(params)
    paper = {mean_flow_loss: "MeanFlow", imf_loss: "Improved MeanFlow", split_loss: "SplitMeanFlow"}[loss]
    assert paper.lower() in loss.__doc__.lower()
    assert ("teacher" in params) == (loss is split_loss)  # distillation where a shipped recipe uses it


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


@pytest.mark.parametrize("loss", [mean_flow_loss, imf_loss])
def test_jvp_losses_gradient_by_hand(loss):
    """p = 0. With u = a z + b t + c h the JVP along (w, 0, 1) is a w + b + c, so the two losses differ:
    MeanFlow's regresses u onto sg(v - h (a v + b + c)): dL/dtheta = 2 (u - u_tgt) du/dtheta;
    iMF's regresses V = u + h (a w + b + c), w = sg(u(z, t, t)), onto v: 2 (V - v) dV/dtheta."""
    net, x = Linear(), torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value = loss(net, x, ratio_neq=0.75, p=0.0, dist="uniform", generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(value, [net.a, net.b, net.c])
    g = torch.Generator().manual_seed(1)  # the loss's own draws, in its order
    e = torch.randn(x.shape, generator=g).double()
    r, t = (s.double() for s in sample_r_t(64, 0.75, "uniform", generator=g))
    z, v, h = interpolate(x, e, t), e - x, (t - r)[:, None]
    a, b, c = net.a.detach(), net.b.detach(), net.c.detach()
    u = a * z + b * t[:, None] + c * h
    if loss is imf_loss:
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


def test_frame_unet_shapes_and_labels():
    """The label reaches the output. A fresh network predicts 0 whatever its input (its last layers start
    at zero), so the weights are randomised first: otherwise this test could not fail."""
    torch.manual_seed(0)
    net = FrameUNet(FrameUNetConfig(size=8, channels=8, n_head=2))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    z = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1)
    t = torch.full((2,), 0.5)
    out = net(z, t, t, torch.tensor([0, 3]))
    assert out.shape == (2, 3, 8, 8) and (out[0] - out[1]).abs().max() > 1e-3  # two labels, two outputs
    assert torch.allclose(net(z, t, t, torch.tensor([3, 3]))[0], out[1], atol=1e-6)  # the same label, the same output
    null = net(z, t, t)  # no label: the classifier-free "null" class, a label of its own
    assert torch.allclose(null, net(z, t, t, torch.tensor([4, 4])), atol=1e-6) and (null[0] - out[0]).abs().max() > 1e-3


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
    with pytest.raises(TypeError, match="teacher must be a flow-matching network"):
        split_loss(net, z, teacher="flow-2d")
    with pytest.raises(ValueError, match="dist"):
        sample_time(4, "gamma")
    with pytest.raises(ValueError, match="width"):
        FlowMLPConfig(width=0)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(torch.randn(5, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample("rectified", net, torch.randn(2, 2), 1)
    with pytest.raises(ValueError, match="label_dropout"):
        frames(2, label_dropout=1.5)


def test_a_recipe_names_one_loss_and_only_its_settings():
    """One recipe per method: the MeanFlow settings only for the MeanFlow losses, a teacher only for split,
    and at least one optimiser step."""
    assert set(METHODS) == {"flow_matching", "mean_flow", "imf", "split"}
    assert {name: r.method for name, r in RECIPES.items()} == {
        "flow-2d": "flow_matching", "mean-flow-2d": "imf", "flow-frames": "flow_matching", "mean-flow-frames": "split"}
    with pytest.raises(ValueError, match="method must be one of"):
        FlowRecipe("residual")
    with pytest.raises(ValueError, match="flow matching has no ratio_neq"):
        FlowRecipe("flow_matching", ratio_neq=0.25)
    with pytest.raises(ValueError, match="p must be set for 'imf'"):
        FlowRecipe("imf", ratio_neq=0.75)
    with pytest.raises(ValueError, match="only the split loss distils"):
        FlowRecipe("imf", ratio_neq=0.75, p=0.0, teacher="flow-2d")
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            FlowRecipe("flow_matching", steps=steps)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        train.main(["flow-2d", "--steps", "0", "--device", "cpu"])


def test_frame_data_and_validity_from_pixels():
    x, y = frames(64, torch.Generator().manual_seed(0), label_dropout=0.25)
    assert x.shape == (64, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (y == 4).any() and ((y >= 0) & (y <= 4)).all()  # 4 = the "no label" class
    assert real_validity(200) > 0.95  # a real frame fails only when a sprite is fully hidden
    net = FrameUNet(FrameUNetConfig(channels=8, n_head=2))  # untrained: predicts v = 0, returns the noise
    assert generated_validity("flow_matching", net, 1, n=16) == 0
    spread = validity_spread(lambda seed: [0.5, 0.7, 0.9][seed])
    assert spread["per_seed"] == {"0": 0.5, "1": 0.7, "2": 0.9} and abs(spread["mean"] - 0.7) < 1e-12
    assert abs(spread["std"] - 0.2) < 1e-12  # the sample standard deviation over the seeds


def test_benches_and_the_2d_recipe_run_and_write_nothing(capsys, one_thread):
    figures = bench.main(["flows", "--quick", "--json", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    for name in ("flow_matching", "mean_flow"):
        assert set(figures[name]) == {"1", "2", "4", "8", "32"} and figures["train_seconds"][name] > 0
    assert figures["method"] == {"flow_matching": "flow_matching", "mean_flow": "imf"}
    assert figures["floor"] > 0 and figures["mean_flow_1_over_flow_matching_32"] > 0
    weight = bench.main(["flows-weight", "--quick", "--device", "cpu"])
    assert set(weight["p=0"]) == set(weight["p=1"]) == {"1", "2", "4", "8", "32"} and weight["p1_over_p0_at_32"] > 0
    losses = bench.main(["flows-imf", "--quick", "--device", "cpu"])
    assert set(losses["mean_flow"]) == set(losses["imf"]) == {"1", "2", "4", "8", "32"}
    assert losses["mean_flow_over_imf_at_1"] > 0
    shipped = {p: p.stat().st_mtime_ns for p in PRETRAINED_DIR.glob("*.pt")}
    net, meta = train_flow_2d(device="cpu", steps=2)  # a recipe returns its model; only the registry saves
    assert {p: p.stat().st_mtime_ns for p in PRETRAINED_DIR.glob("*.pt")} == shipped
    assert isinstance(net, FlowMLP) and meta["method"] == "flow_matching" and meta["recipe"]["steps"] == 2
    assert meta["loss"] == METHODS["flow_matching"] and set(meta["sliced_wasserstein"]) == {"1", "2", "4", "8", "32"}


@pytest.mark.slow
def test_mean_flow_frames_recipe_runs_end_to_end(tmp_path, one_thread):
    """Two steps of the shipped frames recipe, saved by the registry: fine-tuned from flow-frames, which is
    also its teacher; scored at 1, 2, 4 and 8 jumps over the evaluation seeds."""
    result = train.main(["mean-flow-frames", "--steps", "2", "--out", str(tmp_path / "m.pt"), "--device", "cpu"])
    net, meta = load_checkpoint(tmp_path / "m.pt")
    assert isinstance(net, FrameUNet) and meta["method"] == "split" and meta["recipe"]["steps"] == 2
    assert meta["recipe"]["teacher"] == meta["recipe"]["init"] == "flow-frames"
    assert set(result["validity"]) == {"1", "2", "4", "8"}
    assert set(result["validity"]["1"]["per_seed"]) == {str(s) for s in EVAL_SEEDS}


@pytest.mark.slow
def test_a_teacher_must_be_a_flow_matching_checkpoint():
    assert not any(p.requires_grad for p in load_teacher("flow-frames").parameters())
    with pytest.raises(ValueError, match="a teacher must be a flow-matching checkpoint"):
        load_teacher("mean-flow-2d")


@pytest.mark.slow
def test_the_shipped_2d_models_meet_the_bench_goal():
    """Recomputed: mean-flow-2d's one jump is within 1.5x of flow-2d's 32 Euler steps (the issue's goal), more
    jumps only help, the stored figures are what the weights give, and both were trained by the committed
    recipes (same steps, batch, lr and seed) with the loss their meta names."""
    fm, fm_meta = load_pretrained("flow-2d")
    mf, mf_meta = load_pretrained("mean-flow-2d")
    for name, meta in (("flow-2d", fm_meta), ("mean-flow-2d", mf_meta)):
        assert meta["recipe"] == dataclasses.asdict(RECIPES[name]) and meta["loss"] == METHODS[meta["method"]]
    assert all(fm_meta["recipe"][k] == mf_meta["recipe"][k] for k in ("steps", "batch_size", "lr", "seed"))
    fm_sw, mf_sw = evaluate_2d("flow_matching", fm), evaluate_2d("mean_flow", mf)
    assert mf_sw[1] <= 1.5 * fm_sw[32] and fm_sw[1] >= 3 * fm_sw[32]
    assert all(mf_sw[a] > mf_sw[b] for a, b in ((1, 2), (2, 4), (4, 32)))
    for sw, meta in ((fm_sw, fm_meta), (mf_sw, mf_meta)):
        assert all(abs(sw[k] - meta["sliced_wasserstein"][str(k)]) < 0.005 for k in sw)


@pytest.mark.slow
def test_the_shipped_frame_models_figures_are_recomputed(one_thread):
    """Recomputed on seed 0 (400 frames): the stored validity is what the shipped weights give (within 4 frames
    of 400: thread counts may round differently), MeanFlow's jumps beat flow matching's Euler steps at equal
    NFE, and real frames are nearly all valid."""
    fm, fm_meta = load_pretrained("flow-frames")
    mf, mf_meta = load_pretrained("mean-flow-frames")
    assert fm_meta["method"] == "flow_matching" and mf_meta["method"] == "split"
    fm_rates = {k: generated_validity("flow_matching", fm, k, seed=0) for k in (2, 8)}
    mf_rates = {k: generated_validity("mean_flow", mf, k, seed=0) for k in (1, 2, 8)}
    for rates, meta in ((fm_rates, fm_meta), (mf_rates, mf_meta)):
        assert all(abs(v - meta["validity"][str(k)]["per_seed"]["0"]) <= 0.01 for k, v in rates.items())
    assert mf_rates[2] > fm_rates[2] + 0.2 and mf_rates[8] > fm_rates[8]
    assert mf_rates[1] < mf_rates[2] < mf_rates[8]
    assert abs(real_validity(seed=0) - fm_meta["real_validity"]["per_seed"]["0"]) < 1e-9
    assert fm_meta["real_validity"]["mean"] > 0.98
