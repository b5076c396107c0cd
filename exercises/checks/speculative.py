"""Checks for exercise 03, speculative decoding (exercises/solutions/03_speculative.ipynb).

The accept/resample step is checked by what it must guarantee, not by how it draws its random numbers:
the emitted tokens follow the target's distribution at every position (20 000 rounds, total variation),
the first drafted token is accepted with probability sum_y min(p, q), greedy (one-hot) inputs give the
target's argmax, and the bonus token comes from the last target distribution.
"""

from __future__ import annotations

import torch

from minimal import speculative as library_speculative
from minimal.speculative import expected_tokens as reference_expected_tokens

from .common import answers, expect_equal, fail, passed, single_thread

ROUNDS = 20_000
TV_TOL = 0.02  # 20 000 draws over 5 tokens: sampling noise alone is about 0.005


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a.double() - b.double()).abs().sum())


def _result(what: str, out, gamma: int) -> tuple[int, int]:
    if not (isinstance(out, tuple | list) and len(out) == 2):
        fail(what, "a tuple (n_accepted, next_token)", f"{type(out).__name__}")
    n, t = out
    if not isinstance(n, int) or not 0 <= n <= gamma:
        fail(what, f"n_accepted an int in [0, gamma = {gamma}]", repr(n))
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        fail(what, "next_token a tensor holding one id, like torch.multinomial(dist, 1)", repr(t))
    return n, int(t)


def _emitted(accept_reject, p, q, seed: int):
    """Run ROUNDS rounds; return per-position counts of emitted tokens and of first-token acceptances."""
    gamma, V = q.shape
    g = torch.Generator().manual_seed(seed)
    counts, first_accepted = torch.zeros(gamma + 1, V), 0
    for _ in range(ROUNDS):
        d = torch.multinomial(q, 1, generator=g)[:, 0]  # (gamma,) drafted from q
        n, t = _result("accept_reject(p, q, d, generator) returns", accept_reject(p, q, d, g), gamma)
        for i, x in enumerate([*d[:n].tolist(), t]):
            counts[i, x] += 1
        first_accepted += n > 0
    return counts, first_accepted / ROUNDS


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


@answers(accept_reject=(library_speculative.accept_reject, library_speculative))
@single_thread
def check_accept_reject(accept_reject) -> None:
    V, gamma = 5, 3
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(gamma + 1, V, generator=g), -1)  # (gamma + 1, V)

    # 1. a draft far from the target: the output must still be the target's
    far = 0.8 * p[:gamma].roll(2, dims=-1) + 0.2 / V
    counts, accept_rate = _emitted(accept_reject, p, far, seed=1)
    _expect_target("draft far from the target", counts, p,
                   "accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw from "
                   "max(0, p_i - q_i), normalised, and stop")
    alpha = float(torch.minimum(p[0], far[0]).sum())
    if abs(accept_rate - alpha) > 0.02:
        fail("how often the first drafted token is accepted", f"sum_y min(p_1, q_1) = {alpha:.3f}",
             f"{accept_rate:.3f}", "the acceptance probability is min(1, p(d) / q(d)), not q / p")

    # 2. a draft close to the target: most rounds reach the bonus token, which must come from p_{gamma+1}
    close = 0.9 * p[:gamma] + 0.1 / V
    counts, _ = _emitted(accept_reject, p, close, seed=2)
    _expect_target("draft close to the target", counts, p,
                   "when all gamma drafts are accepted, the bonus token is drawn from p[gamma], the last row")

    # 3. greedy: one-hot p and q, accept iff the draft is the target's argmax
    eye = torch.eye(V)
    p1, q1 = eye[[1, 2, 3, 4]], eye[[1, 2, 0]]  # agrees on two tokens, then disagrees
    n, t = _result("greedy inputs", accept_reject(p1, q1, torch.tensor([1, 2, 0]), torch.Generator()), 3)
    expect_equal("greedy inputs (one-hot p and q): accepted drafts, then the token", (n, t), (2, 3),
                 "with one-hot rows, p/q is 1 for the argmax and 0 otherwise, and max(0, p - q) is p's argmax")
    passed("check_accept_reject", f"the output follows the target at every position over {ROUNDS} rounds "
           f"(drafts far and close), the acceptance rate is sum min(p, q) = {alpha:.3f}, greedy is exact")


@answers(expected_tokens=(library_speculative.expected_tokens, library_speculative))
def check_expected_tokens(expected_tokens) -> None:
    for alpha, gamma in ((0.0, 4), (0.5, 1), (0.5, 2), (0.8, 4), (0.95, 8)):
        want = reference_expected_tokens(alpha, gamma)
        got = expected_tokens(alpha, gamma)
        if not isinstance(got, float | int) or abs(got - want) > 1e-9:
            fail(f"expected_tokens({alpha}, {gamma})", f"{want:.6f}", repr(got),
                 "a round emits the accepted run plus one token: 1 + alpha + ... + alpha^gamma")
    passed("check_expected_tokens", "(1 - alpha^(gamma + 1)) / (1 - alpha) at 5 points")
