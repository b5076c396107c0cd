"""Checks for exercise 03, speculative decoding (exercises/solutions/03_speculative.ipynb).

The sampling rules are checked by what they must guarantee, not by how they draw their random numbers:
the emitted tokens follow the target's distribution at every position (20 000 rounds, total variation),
the acceptance rates are the exact ones (sum_y min(p, q) for one draft, the residual recursion for k
candidates), greedy (one-hot) inputs give the target's argmax, and the bonus token comes from the last
target distribution. The best draft length is compared with a search over the speedup formula.
"""

from __future__ import annotations

import torch

from minimal import speculative as library_speculative
from minimal.speculative import expected_tokens as reference_expected_tokens

from .common import answers, call_student, expect_equal, fail, passed, single_thread

ROUNDS = 20_000
TV_TOL = 0.02  # 20 000 draws over 5 tokens: sampling noise alone is about 0.005


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a.double() - b.double()).abs().sum())


def _batched_result(what: str, out, B: int, gamma: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(out, tuple | list) and len(out) == 2):
        fail(what, "a tuple (n, token) of two tensors of shape (B,)", f"{type(out).__name__}")
    n, t = out
    for name, x in (("n", n), ("token", t)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (B,):
            fail(f"{what}: {name}", f"a tensor of shape ({B},), one value per row",
                 f"{type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}",
                 "n and token are (B,) tensors: index a (B, 1) multinomial draw with [:, 0]")
        if x.is_floating_point():
            fail(f"{what}: {name}.dtype", "an integer dtype (torch.long)", str(x.dtype))
    if int(n.min()) < 0 or int(n.max()) > gamma:
        fail(f"{what}: n", f"values in [0, gamma = {gamma}]", f"values in [{int(n.min())}, {int(n.max())}]")
    return n.long(), t.long()


def _emitted_batched(accept_reject_batched, p, q, seed: int):
    """ROUNDS rounds in one call (p, q (gamma + 1, V) and (gamma, V), the same for every row); per-position
    counts of emitted tokens, and the share of rounds that accepted the first draft."""
    gamma, V = q.shape
    g = torch.Generator().manual_seed(seed)
    d = torch.multinomial(q, ROUNDS, replacement=True, generator=g).T.contiguous()  # (ROUNDS, gamma)
    P, Q = p.expand(ROUNDS, -1, -1).contiguous(), q.expand(ROUNDS, -1, -1).contiguous()
    what = "accept_reject_batched(p, q, d, generator) with B = 20000 rows"
    n, t = _batched_result(what, call_student(what, accept_reject_batched, P, Q, d, g), ROUNDS, gamma)
    emitted = torch.cat([d, torch.zeros(ROUNDS, 1, dtype=torch.long)], 1)  # (ROUNDS, gamma + 1)
    emitted[torch.arange(ROUNDS), n] = t  # the accepted run, then the drawn token
    counts = torch.zeros(gamma + 1, V)
    for i in range(gamma + 1):
        rows = n >= i  # rounds that emitted a token at position i
        counts[i] = torch.bincount(emitted[rows, i], minlength=V).float()
    return counts, float((n > 0).float().mean()), n


def _expect_target(what: str, counts: torch.Tensor, p: torch.Tensor, hint: str, min_count: int = 3000) -> None:
    for i in range(counts.shape[0]):
        total = float(counts[i].sum())
        if total < min_count:
            continue
        tv = _tv(counts[i] / total, p[i])
        if tv > TV_TOL:
            fail(f"{what}: tokens emitted at position {i + 1} (over {int(total)} rounds)",
                 f"the target's distribution p_{i + 1}, total variation <= {TV_TOL}",
                 f"total variation {tv:.3f}: frequencies {[round(float(c), 3) for c in counts[i] / total]}, "
                 f"p = {[round(float(x), 3) for x in p[i]]}", hint)


@answers(accept_reject_batched=(library_speculative.accept_reject, library_speculative))
@single_thread
def check_accept_reject_batched(accept_reject_batched) -> None:
    V, gamma = 5, 3
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(gamma + 1, V, generator=g), -1)  # (gamma + 1, V)

    # 1. a draft far from the target: the output must still be the target's
    far = 0.8 * p[:gamma].roll(2, dims=-1) + 0.2 / V
    counts, accept_rate, n = _emitted_batched(accept_reject_batched, p, far, seed=1)
    _expect_target("draft far from the target", counts, p,
                   "accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); n is the run of acceptances before "
                   "the first rejection (cumprod); there, draw from max(0, p_n - q_n), normalised")
    alpha = float(torch.minimum(p[0], far[0]).sum())
    if abs(accept_rate - alpha) > 0.02:
        fail("how often the first drafted token is accepted", f"sum_y min(p_1, q_1) = {alpha:.3f}",
             f"{accept_rate:.3f}", "the acceptance probability is min(1, p(d) / q(d)), not q / p")
    ratio = (p[:gamma] / far).clamp(max=1)  # (gamma, V)
    accept_i = (far * ratio).sum(-1)  # (gamma,): probability that draft i is accepted, whatever came before
    want_mean = float(sum(torch.prod(accept_i[:k]) for k in range(1, gamma + 1)))
    if abs(float(n.float().mean()) - want_mean) > 0.03:
        fail("mean number of accepted drafts n", f"{want_mean:.3f} (the leading run of acceptances only)",
             f"{float(n.float().mean()):.3f}", "a draft accepted after a rejection does not count: n is the "
             "length of the leading run of True in the acceptances, e.g. accepted.long().cumprod(1).sum(1)")

    # 2. a draft close to the target: most rounds reach the bonus token, which must come from p_{gamma+1}
    close = 0.9 * p[:gamma] + 0.1 / V
    counts, _, _ = _emitted_batched(accept_reject_batched, p, close, seed=2)
    _expect_target("draft close to the target", counts, p,
                   "when all gamma drafts are accepted, the bonus token is drawn from p[:, gamma], the last position")

    # 3. rows with different targets and drafts in one batch: each follows its own target
    p2 = torch.softmax(2 * torch.randn(gamma + 1, V, generator=g), -1)
    half = ROUNDS // 2
    P = torch.cat([p.expand(half, -1, -1), p2.expand(half, -1, -1)]).contiguous()
    Q = torch.cat([far.expand(half, -1, -1), p2[:gamma].roll(1, dims=-1).expand(half, -1, -1)]).contiguous()
    g3 = torch.Generator().manual_seed(3)
    d = torch.stack([torch.multinomial(Q[b], 1, generator=g3)[:, 0] for b in (0, half)])  # (2, gamma)
    d = d.repeat_interleave(half, 0)  # every row of a half drafts the same tokens: the first emitted token
    what = "accept_reject_batched with two different targets in one batch (10 000 rows each)"
    n, t = _batched_result(what, call_student(what, accept_reject_batched, P, Q, d, g3), ROUNDS, gamma)
    for b, (pb, qb) in enumerate(((p, far), (p2, p2[:gamma].roll(1, dims=-1)))):
        rows = slice(b * half, (b + 1) * half)
        first = torch.where(n[rows] > 0, d[rows, 0], t[rows])
        freq = torch.bincount(first, minlength=V).float() / half
        x = int(d[b * half, 0])  # given the draft x: emitted x w.p. min(1, p/q), else the residual
        acc = min(1.0, float(pb[0, x] / qb[0, x]))
        residual = (pb[0] - qb[0]).clamp(min=0)
        residual = residual / residual.sum() if residual.sum() > 0 else pb[0]
        want = (1 - acc) * residual
        want[x] += acc
        if _tv(freq, want) > TV_TOL:
            fail(f"{what}: first emitted token of the rows {b * half}..{(b + 1) * half - 1}, all drafting {x}",
                 f"{[round(float(w), 3) for w in want]} (accept {x} w.p. min(1, p/q) of these rows, else their "
                 "residual)", f"{[round(float(f), 3) for f in freq]}",
                 "use each row's own p[b] and q[b]: pick the rows' positions with p[torch.arange(B), n]")

    # 4. greedy: one-hot p and q, accept iff the draft is the target's argmax
    eye = torch.eye(V)
    p1 = torch.stack([eye[[1, 2, 3, 4]], eye[[0, 0, 0, 0]], eye[[1, 2, 3, 4]]])  # (3, gamma + 1, V)
    q1 = torch.stack([eye[[1, 2, 0]], eye[[3, 0, 0]], eye[[1, 2, 3]]])  # (3, gamma, V)
    d1 = q1.argmax(-1)
    what = "greedy inputs (one-hot p and q), 3 rows"
    n, t = _batched_result(what, call_student(what, accept_reject_batched, p1, q1, d1, torch.Generator()), 3, gamma)
    expect_equal(what + ": accepted drafts, then the token, per row", (n.tolist(), t.tolist()), ([2, 0, 3], [3, 0, 4]),
                 "with one-hot rows, p/q is 1 for the argmax and 0 otherwise, max(0, p - q) is p's argmax, and a "
                 "row that accepts every draft draws its bonus token from p[b, gamma]")
    passed("check_accept_reject_batched", f"the output follows the target at every position over {ROUNDS} rows "
           f"(drafts far and close), the acceptance rate is sum min(p, q) = {alpha:.3f}, each row follows its own "
           "target, greedy is exact")


@answers(expected_tokens=(library_speculative.expected_tokens, library_speculative))
def check_expected_tokens(expected_tokens) -> None:
    for alpha, gamma in ((0.0, 4), (0.5, 1), (0.5, 2), (0.8, 4), (0.95, 8)):
        want = reference_expected_tokens(alpha, gamma)
        got = expected_tokens(alpha, gamma)
        if not isinstance(got, float | int) or abs(got - want) > 1e-9:
            fail(f"expected_tokens({alpha}, {gamma})", f"{want:.6f}", repr(got),
                 "a round emits the accepted run plus one token: 1 + alpha + ... + alpha^gamma")
    passed("check_expected_tokens", "(1 - alpha^(gamma + 1)) / (1 - alpha) at 5 points")


def _speedup(alpha: float, gamma: int, c: float) -> float:
    return reference_expected_tokens(alpha, gamma) / (gamma * c + 1)


@answers(best_gamma=(library_speculative.expected_tokens, library_speculative))
def check_best_gamma(best_gamma) -> None:
    hint = "try every gamma in 1..gamma_max, S = expected_tokens(alpha, gamma) / (gamma * c + 1), keep the largest"
    cases = ((0.75, 0.01, 16), (0.75, 0.25, 16), (0.9, 0.05, 16), (0.5, 0.5, 16), (0.95, 0.0, 8), (0.3, 0.2, 16),
             (0.99, 0.01, 4), (0.0, 0.0, 4))
    shown = []
    for alpha, c, gamma_max in cases:
        speeds = {gm: _speedup(alpha, gm, c) for gm in range(1, gamma_max + 1)}
        top = max(speeds.values())
        want = min(gm for gm, s in speeds.items() if s >= top - 1e-12)
        what = f"best_gamma(alpha={alpha}, c={c}, gamma_max={gamma_max})"
        out = call_student(what, best_gamma, alpha, c, gamma_max, hint=hint)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            fail(what, "a tuple (gamma, speedup)", repr(out)[:200], hint)
        got_gamma, got_speed = out
        if not isinstance(got_gamma, int) or got_gamma != want:
            fail(what + ": gamma", f"{want} (speedup {speeds[want]:.4f}; gamma - 1: "
                 f"{speeds.get(want - 1, float('nan')):.4f}, gamma + 1: {speeds.get(want + 1, float('nan')):.4f})",
                 repr(got_gamma), hint + "; the smallest gamma on a tie, gamma_max at most")
        if not isinstance(got_speed, float | int) or abs(got_speed - top) > 1e-9:
            fail(what + ": speedup", f"{top:.6f}", repr(got_speed), "S = E[tokens per call] / (gamma c + 1)")
        shown.append(f"c={c}: gamma {want}")
    passed("check_best_gamma", f"the fastest draft length at {len(cases)} (alpha, c): at alpha = 0.75, "
           + ", ".join(shown[:2]))


def _multi_acceptance(p: torch.Tensor, q: torch.Tensor, k: int) -> float:
    """The exact probability that one of k i.i.d. candidates from q is accepted (the residual recursion)."""
    r, none = p.double(), 1.0
    for _ in range(k):
        accept = float(torch.minimum(r, q.double()).sum())
        none *= 1 - accept
        residual = (r - q.double()).clamp(min=0)
        if residual.sum() == 0:
            break
        r = residual / residual.sum()
    return 1 - none


@answers(accept_multi=(library_speculative.accept_reject, library_speculative))
@single_thread
def check_accept_multi(accept_multi) -> None:
    V = 6
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(2 * torch.randn(V, generator=g), -1)  # (V,)
    q = 0.85 * p.roll(2) + 0.15 / V  # a draft far from the target
    hint = ("start with r = p; candidate i is accepted with probability min(1, r(x_i) / q(x_i)); after a rejection "
            "r becomes max(0, r - q), normalised; if all k are rejected draw from the last r")
    rates = {}
    for k in (1, 2, 4):
        x = torch.multinomial(q, ROUNDS * k, replacement=True, generator=g).view(ROUNDS, k)  # (ROUNDS, k)
        counts, accepted = torch.zeros(V), 0
        what = f"accept_multi(p, q, x, generator) with k = {k} candidates"
        for j in range(ROUNDS):
            out = call_student(what, accept_multi, p, q, x[j], g, hint=hint)
            if not (isinstance(out, tuple | list) and len(out) == 2):
                fail(what, "a tuple (index, token)", f"{type(out).__name__}")
            i, t = out
            if not isinstance(i, int) or not 0 <= i <= k:
                fail(what + ": index", f"an int in [0, k = {k}]", repr(i))
            if not isinstance(t, torch.Tensor) or t.numel() != 1:
                fail(what + ": token", "a tensor holding one id, like torch.multinomial(dist, 1)", repr(t))
            if i < k and int(t) != int(x[j, i]):
                fail(what + f": the token when candidate {i} is accepted", f"x[{i}] = {int(x[j, i])}", int(t))
            counts[int(t)] += 1
            accepted += i < k
        freq = counts / ROUNDS
        tv = _tv(freq, p)
        if tv > TV_TOL:
            fail(what + f": emitted tokens over {ROUNDS} rounds", f"the target's distribution p, total variation <= "
                 f"{TV_TOL}", f"total variation {tv:.3f}: frequencies {[round(float(f), 3) for f in freq]}, "
                 f"p = {[round(float(v), 3) for v in p]}", hint)
        want = _multi_acceptance(p, q, k)
        rate = accepted / ROUNDS
        if abs(rate - want) > 0.02:
            fail(what + ": how often some candidate is accepted", f"{want:.3f}", f"{rate:.3f}", hint)
        rates[k] = rate
    # the second candidate is judged against the normalised residual: p = (0, .5, .5), q = (.4, .3, .3); x_1 = 0
    # (p(0) = 0) is always rejected, r becomes (0, .5, .5), and x_2 = 1 has r / q = 5/3: always accepted
    p3, q3, x3 = torch.tensor([0.0, 0.5, 0.5]), torch.tensor([0.4, 0.3, 0.3]), torch.tensor([0, 1])
    what = "accept_multi(p=(0, .5, .5), q=(.4, .3, .3), x=(0, 1)) over 200 seeds"
    got = [call_student(what, accept_multi, p3, q3, x3, torch.Generator().manual_seed(s))[0] for s in range(200)]
    if got != [1] * 200:
        fail(what + ": the index of the accepted candidate", "1 in every round (x_1 = 0 has p = 0; then "
             "r = norm(max(0, p - q)) = (0, .5, .5) and r(1) / q(1) = 5/3 > 1)",
             f"{[got.count(i) for i in range(3)]} rounds with index 0, 1, 2",
             "after a rejection, r is max(0, r - q) divided by its sum before the next candidate is judged")
    passed("check_accept_multi", "the output follows the target with 1, 2 and 4 candidates; some candidate is "
           "accepted in " + ", ".join(f"{100 * r:.0f}% (k = {k})" for k, r in rates.items()) + " of the rounds")
