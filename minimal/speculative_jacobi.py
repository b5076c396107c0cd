"""Speculative Jacobi decoding (SJD): the target drafts for itself, from its previous iteration.

Teng et al. 2024, *Accelerating Auto-regressive Text-to-Image Generation with Training-free Speculative
Jacobi Decoding*. No draft model: the target keeps a window of gamma guesses d_1..d_gamma for the
positions after the accepted tokens x_1..x_n (the paper's Jacobi window; the official default is 16),
each with the distribution q_i it was drawn from. One iteration:

    1. ONE target call over [x_n, d_1..d_gamma] with the KV cache of x_<n: p_1..p_{gamma+1},
       p_i = p(. | x, d_<i)
    2. verify left to right with the speculative rule (`speculative.accept_reject`): accept d_i with
       probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection, i = k + 1, emit a token from
       norm(max(0, p_i - q_i)); if all are accepted, a bonus token from p_{gamma+1}
    3. the next window: at the positions after the emitted token that this call scored, the target's
       own guesses d'_j ~ p_j with q'_j = p_j (conditioned on this iteration's drafts, which may be
       stale); the window is topped up to gamma with fresh initial tokens, drawn uniformly with a one-hot
       q (as the official code does: such a token is accepted with probability p(d), and the residual
       max(0, p - onehot(d)) is p without d).

Why it is exact: the speculative argument (speculative.py) only needs d_i ~ q_i, drawn independently of
the uniforms that judge it; it does not care where q_i came from. Here q_i was fixed by the previous
iteration and d_i drawn from it then, so P(emit y at a judged position) = min(p(y), q(y)) +
max(0, p(y) - q(y)) = p(y), exactly as with a draft model. For a fresh token with one-hot q,
P(y) = p(d) [y = d] + (1 - p(d)) p(y) [y != d] / (1 - p(d)) = p(y) for every d.
At temperature 0 (one-hot p) the guesses are the argmaxes: plain Jacobi decoding, whose output equals
greedy target decoding.

Any accept rule with `accept_reject`'s signature plugs in: `image_tokens.gsd_accept_reject` gives GSD
(So et al. 2025), which builds on SJD. Simplified vs the paper: batch size 1, no classifier-free
guidance or top-k; the sliding window of `speculative.window_start` past the context length (drafts that
would cross a window boundary are dropped and redrawn).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .speculative import (
    SpeculativeStats,
    _TargetWindow,
    accept_reject,
    check_args,
    draft_length,
    expected_tokens,
    probs,
    verify,
)
from .transformer import GPT


def fresh_tokens(k: int, vocab_size: int, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """k initial window tokens (k,), uniform over the vocabulary, with one-hot q (k, V)."""
    d = torch.randint(vocab_size, (k,), generator=generator, device=device)  # (k,)
    return d, F.one_hot(d, vocab_size).float()


@torch.no_grad()
def jacobi_generate(target: GPT, prompt: torch.Tensor, max_new_tokens: int, gamma: int = 16,
                    temperature: float = 1.0, generator=None,
                    accept=accept_reject) -> tuple[torch.Tensor, SpeculativeStats]:
    """Sample max_new_tokens after prompt (T,) from the target by SJD -> (ids (N,), stats).

    gamma: the Jacobi window (drafts verified per call). temperature 0 is greedy (output == greedy
    target decoding). accept: the accept/resample step, (p, q, d, generator) -> (n accepted, next token);
    the default is the exact rule.
    """
    check_args(target, prompt, max_new_tokens, gamma, temperature)
    if not callable(accept):
        raise TypeError(f"accept must be callable as accept(p, q, d, generator), got {type(accept).__name__}")
    V, block = target.config.vocab_size, target.config.block_size
    seq = torch.cat([prompt, prompt.new_empty(max_new_tokens)])  # accepted tokens live in seq[:n]
    window, n, end = _TargetWindow(target), prompt.shape[0], prompt.shape[0] + max_new_tokens
    stats, rounds = SpeculativeStats(gamma), []
    d, q = fresh_tokens(gamma, V, generator, prompt.device)  # (gamma,), (gamma, V): the Jacobi window
    while n < end:
        g = draft_length(n, gamma, end, block)
        p = probs(window.logits(seq[:n], d[:g]), temperature)  # (g + 1, V): ONE target call
        n_acc, t = verify(p, q[:g], d[:g], accept, generator, stats)
        seq[n:n + n_acc] = d[:n_acc]
        seq[n + n_acc] = t[0]
        n += n_acc + 1
        rounds.append(g)
        guess_q = p[n_acc + 1:]  # (g - n_acc, V): this call's p at the positions after the emitted token
        guess = torch.multinomial(guess_q, 1, generator=generator)[:, 0] if len(guess_q) else d[:0]
        new_d, new_q = fresh_tokens(gamma - len(guess), V, generator, prompt.device)
        d, q = torch.cat([guess, new_d]), torch.cat([guess_q.to(new_q.device), new_q])  # (gamma,), (gamma, V)
    stats.predicted_sum = sum(expected_tokens(stats.alpha, g) for g in rounds)
    return seq[prompt.shape[0]:], stats
