"""Speculative decoding: a cheap draft proposes, the target verifies, and the output is unchanged.

Leviathan, Kalman & Matias 2023 (*Fast Inference from Transformers via Speculative Decoding*) and Chen
et al. 2023 (*Accelerating LLM Decoding with Speculative Sampling*). With p the target's next-token
distribution and q the draft's, one round is:

    1. the draft samples gamma tokens d_1..d_gamma, d_i ~ q_i = q(. | x, d_<i)
    2. the target scores all gamma + 1 positions in ONE forward pass over [x_last, d_1..d_gamma] with its
       KV cache: p_1..p_{gamma+1}
    3. for i = 1..gamma: accept d_i with probability min(1, p_i(d_i) / q_i(d_i));
       at the first rejection draw the token from the residual  norm(max(0, p_i - q_i))  and stop
    4. if all gamma are accepted, draw a bonus token from p_{gamma+1}
    5. both KV caches roll back (`crop`) to the accepted prefix.

Why it is exact: P(emit y) = q(y) min(1, p(y)/q(y)) + P(reject) norm(max(0, p - q))(y)
= min(p(y), q(y)) + max(0, p(y) - q(y)) = p(y), since P(reject) = sum_y max(0, p(y) - q(y)).
Greedy decoding (temperature 0) is the special case of one-hot p and q: accept iff d_i = argmax p_i,
and the residual is the one-hot argmax of p, so the output equals greedy target decoding.

Statistics (Leviathan et al. section 3): the acceptance rate of one position is
beta = sum_y min(p(y), q(y)) = 1 - TV(p, q), and alpha = E[beta]. With i.i.d. acceptances a round emits

    E[tokens per target call] = (1 - alpha^(gamma + 1)) / (1 - alpha)

and with c = (draft step time) / (target step time) the expected wall-clock speedup is
(1 - alpha^(gamma + 1)) / ((1 - alpha)(gamma c + 1)), which assumes scoring gamma + 1 tokens costs one step.

The draft interface the loop needs (a `GPT` is wrapped in `GPTDraft`; `NGramDraft` is a count table):
    vocab_size              must equal the target's
    block_size              the longest context it reads (None = no limit)
    propose(seq, gamma, temperature, generator) -> (d (gamma,) int64, q (gamma, V) float)
                            draft gamma tokens after the accepted tokens seq (N,), with the distributions
                            they were drawn from; a draft keeps whatever cache it likes between calls.

The shipped draft GPT, `text-draft`, is text_gpt.py's recipe shrunk to one layer.

Simplified vs the papers: batch size 1; long outputs use a sliding window (`window_start`): when the
context would pass block_size, the cache is refilled with the last block_size / 2 tokens. The window of
every position is a fixed function of its index, so the plain and speculative samplers use the same
conditional distributions and speculative decoding stays exact past the context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kv_cache import KVCache, check_sampling_args
from .transformer import GPT, check_tokens


def window_start(j: int, block_size: int) -> int:
    """First context index used to predict token j: 0 while j <= block_size, then jumps of block_size // 2."""
    h = max(1, block_size // 2)
    return 0 if j <= block_size else h * -(-(j - block_size) // h)


def probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., V) logits -> (..., V) probabilities softmax(logits / T); one-hot argmax at T = 0."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return (logits.float() / temperature).softmax(-1)


def _draw(dist: torch.Tensor, generator) -> torch.Tensor:
    """One token id (1,) from unnormalised weights dist (V,)."""
    return torch.multinomial(dist, 1, generator=generator)


# ---------------------------------------------------------------------------------------------------
# The accept / resample step
# ---------------------------------------------------------------------------------------------------

def accept_reject(p: torch.Tensor, q: torch.Tensor, d: torch.Tensor, generator=None) -> tuple[int, torch.Tensor]:
    """p (gamma + 1, V) target, q (gamma, V) draft, d (gamma,) drafted ids -> (n accepted, next token (1,)).

    Vectorised: all gamma uniforms at once, n = length of the leading run of acceptances.
    """
    gamma = d.shape[0]
    u = torch.rand(gamma, generator=generator, device=p.device)  # (gamma,)
    i = torch.arange(gamma, device=p.device)
    accepted = u * q[i, d] < p[i, d]  # (gamma,): u < p/q, i.e. accept with probability min(1, p/q)
    n = int(accepted.long().cumprod(0).sum())
    if n == gamma:
        return n, _draw(p[gamma], generator)  # all accepted: bonus token from p_{gamma+1}
    residual = (p[n] - q[n]).clamp(min=0)  # (V,): max(0, p - q), normalised by multinomial
    return n, _draw(residual if residual.sum() > 0 else p[n], generator)


def accept_reject_reference(p, q, d, generator=None) -> tuple[int, torch.Tensor]:
    """The same step token by token, as the papers write it (the slow, obviously correct path)."""
    gamma = d.shape[0]
    u = torch.rand(gamma, generator=generator, device=p.device)
    for i in range(gamma):
        x = int(d[i])
        if u[i] < min(1.0, float(p[i, x] / q[i, x])):
            continue  # accepted: look at the next drafted token
        residual = torch.clamp(p[i] - q[i], min=0)
        if residual.sum() == 0:  # p == q: a rejection had probability 0, keep p
            residual = p[i]
        return i, _draw(residual / residual.sum(), generator)
    return gamma, _draw(p[gamma], generator)


# ---------------------------------------------------------------------------------------------------
# Drafts
# ---------------------------------------------------------------------------------------------------

class GPTDraft:
    """A small GPT as the draft, with its own KV cache kept in sync with the accepted tokens."""

    def __init__(self, model: GPT):
        self.model, self.vocab_size, self.block_size = model, model.config.vocab_size, model.config.block_size
        self.cache, self.start, self.held = KVCache.for_model(model), -1, None  # held: ids in the cache

    @torch.no_grad()
    def propose(self, seq: torch.Tensor, gamma: int, temperature: float = 1.0, generator=None):
        n = seq.shape[0]
        s = window_start(n + gamma - 1, self.block_size)
        if s != self.start:  # first call or the window slid: refill from scratch
            self.cache.reset()
            self.start, self.held = s, seq.new_empty(0)
        k = min(self.held.shape[0], n - 1 - s)
        m = int((self.held[:k] == seq[s:s + k]).long().cumprod(0).sum())  # common prefix with the cache
        self.cache.crop(m)
        logits = self.model(seq[None, s + m:], self.cache)[0, -1]  # (V,)
        d, q = [], []
        for i in range(gamma):
            q.append(probs(logits, temperature))  # (V,)
            d.append(_draw(q[-1], generator))  # (1,)
            if i + 1 < gamma:
                logits = self.model(d[-1][None], self.cache)[0, -1]
        self.held = torch.cat([seq[s:], *d[:-1]])
        return torch.cat(d), torch.stack(q)  # (gamma,), (gamma, V)


class NGramDraft:
    """q(x | last `order` tokens) from counts, interpolated down to a uniform distribution:

        q_k(x | c) = (count(c, x) + beta q_{k-1}(x | c')) / (count(c) + beta),   c' = c without its oldest token

    All contexts seen in training are tabulated once (one row of `table` each), so drafting a token is a
    dict lookup of the longest seen context and one multinomial draw: near-zero cost next to a GPT.
    """

    def __init__(self, tokens: torch.Tensor, vocab_size: int, order: int = 6, beta: float = 0.5):
        check_tokens(tokens, vocab_size, "tokens")
        if not isinstance(order, int) or not 0 <= order <= int(math.log(2 ** 62) / math.log(vocab_size)):
            raise ValueError(f"order must be an int in [0, log(2^62) / log(vocab_size)], got {order!r}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.vocab_size, self.block_size, self.order, self.beta = vocab_size, None, order, beta
        V, tokens = vocab_size, tokens.cpu()
        q_prev, prev_keys = torch.full((1, V), 1.0 / V, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
        tables, self.rows, offset = [], [], 0
        for k in range(order + 1):
            h = torch.zeros(len(tokens) - k, dtype=torch.long)  # hash of each context of length k
            for j in range(k):
                h = h * V + tokens[j:len(tokens) - k + j]
            keys, inv = torch.unique(h, return_inverse=True)  # (n_ctx,), sorted
            counts = torch.zeros(len(keys), V, dtype=torch.float64)
            counts.index_put_((inv, tokens[k:]), torch.ones(len(inv), dtype=torch.float64), accumulate=True)
            parent = torch.searchsorted(prev_keys, keys % V ** max(k - 1, 0)) if k else torch.zeros_like(keys)
            q_k = (counts + beta * q_prev[parent]) / (counts.sum(1, keepdim=True) + beta)  # (n_ctx, V)
            tables.append(q_k.float())
            self.rows.append(dict(zip(keys.tolist(), range(offset, offset + len(keys)), strict=True)))
            q_prev, prev_keys, offset = q_k, keys, offset + len(keys)
        self.table = torch.cat(tables)  # (total contexts, V)

    def to(self, device) -> NGramDraft:
        self.table = self.table.to(device)
        return self

    def q_row(self, context: list[int]) -> torch.Tensor:
        """q(. | context) (V,): the longest suffix of the context seen in training decides."""
        hashes, h, scale = [0], 0, 1
        for t in reversed(context[-self.order:] if self.order else []):
            h, scale = h + t * scale, scale * self.vocab_size
            hashes.append(h)
        for k in range(len(hashes) - 1, -1, -1):
            row = self.rows[k].get(hashes[k])
            if row is not None:
                return self.table[row]
        raise AssertionError("the empty context is always present")

    def propose(self, seq: torch.Tensor, gamma: int, temperature: float = 1.0, generator=None):
        context, d, q = seq[-self.order:].tolist() if self.order else [], [], []
        for _ in range(gamma):
            row = self.q_row(context)  # (V,)
            q.append(probs(row.log(), temperature) if temperature != 1 else row)
            d.append(_draw(q[-1], generator))
            context.append(int(d[-1]))
        return torch.cat(d), torch.stack(q)  # (gamma,), (gamma, V)


# ---------------------------------------------------------------------------------------------------
# The samplers: target alone, and speculative
# ---------------------------------------------------------------------------------------------------

class _TargetWindow:
    """The target's KV cache over the sliding window: logits for the positions after seq (N,)."""

    def __init__(self, model: GPT):
        self.model, self.cache, self.start = model, KVCache.for_model(model), -1

    def logits(self, seq: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
        """Feed [seq[-1], drafted...]; returns (len(drafted) + 1, V): p for positions N .. N + gamma."""
        n = seq.shape[0]
        s = window_start(n, self.model.config.block_size)
        if s != self.start:  # refill the window seq[s : n - 1]
            self.cache.reset()
            self.start = s
            if n - 1 > s:
                self.model(seq[None, s:n - 1], self.cache)
        self.cache.crop(n - 1 - s)  # forget rejected drafts: the cache now holds seq[s : n - 1]
        return self.model(torch.cat([seq[n - 1:], drafted])[None], self.cache)[0]  # (gamma + 1, V)


@dataclass
class SpeculativeStats:
    gamma: int
    target_calls: int = 0  # verification passes (window refills not counted)
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    beta_sum: float = 0.0  # sum over scored positions of sum_y min(p, q)
    beta_count: int = 0
    predicted_sum: float = 0.0  # sum over rounds of (1 - alpha^(g + 1)) / (1 - alpha), filled at the end

    @property
    def alpha(self) -> float:
        """Mean acceptance probability E[sum_y min(p, q)] = 1 - E[TV(p, q)] over the positions the target
        judged: the exact rule's, whatever `accept` rule ran."""
        return self.beta_sum / max(1, self.beta_count)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / judged drafts: what the rule that ran accepted (about alpha for the exact rule)."""
        return self.accepted / max(1, self.beta_count)

    @property
    def tokens_per_call(self) -> float:
        return self.emitted / max(1, self.target_calls)

    @property
    def tokens_per_call_predicted(self) -> float:
        return self.predicted_sum / max(1, self.target_calls)


def expected_tokens(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma + 1)) / (1 - alpha): expected tokens per target call."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def check_args(target: GPT, prompt, max_new_tokens, gamma, temperature, draft_block: int | None = None) -> None:
    """The argument checks every sampler of this family shares (gamma None: no drafts)."""
    if not isinstance(target, GPT):
        raise TypeError(f"target must be a GPT, got {type(target).__name__}")
    if gamma is not None and (not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1):
        raise ValueError(f"gamma (draft length) must be an int >= 1, got {gamma!r}")
    check_sampling_args(temperature, None, target.config.vocab_size)
    check_tokens(prompt, target.config.vocab_size, "prompt")
    if prompt.ndim != 1 or prompt.shape[0] == 0:
        raise ValueError(f"prompt must be a non-empty (T,) tensor (batch size 1), got shape {tuple(prompt.shape)}")
    for who, block in (("target", target.config.block_size), ("draft", draft_block)):
        if block is not None and prompt.shape[0] > block:
            raise ValueError(f"prompt length {prompt.shape[0]} exceeds the {who}'s context (block_size = {block})")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


def draft_length(n: int, gamma: int, end: int, block: int) -> int:
    """Drafts to verify after n accepted tokens: <= gamma, none past the end, all in position n's window."""
    g = min(gamma, end - n - 1)  # end - 1: the target adds one token itself
    while g > 0 and window_start(n + g, block) != window_start(n, block):
        g -= 1
    return g


def verify(p, q, d, accept, generator, stats: SpeculativeStats) -> tuple[int, torch.Tensor]:
    """p (g + 1, V) from one target call judges drafts d (g,) ~ q (g, V) -> (n accepted, next token (1,)),
    recorded in stats; g = 0 is a plain target step."""
    g = d.shape[0]
    if g:
        q = q.to(p.device)
        n_acc, t = accept(p, q, d, generator)
        judged = min(n_acc + 1, g)  # positions whose draft token the target actually judged
        stats.beta_sum += float(torch.minimum(p[:judged], q[:judged]).sum())
        stats.beta_count += judged
    else:
        n_acc, t = 0, _draw(p[0], generator)
    stats.target_calls += 1
    stats.drafted += g
    stats.accepted += n_acc
    stats.emitted += n_acc + 1
    return n_acc, t


@torch.no_grad()
def autoregressive_generate(target: GPT, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                            generator=None) -> torch.Tensor:
    """Target alone, one token per call, with the same sliding window: the baseline. Returns (N,) ids."""
    check_args(target, prompt, max_new_tokens, None, temperature)
    seq = torch.cat([prompt, prompt.new_empty(max_new_tokens)])
    window, n, empty = _TargetWindow(target), prompt.shape[0], prompt.new_empty(0)
    for _ in range(max_new_tokens):
        seq[n] = _draw(probs(window.logits(seq[:n], empty)[0], temperature), generator)[0]
        n += 1
    return seq[prompt.shape[0]:]


@torch.no_grad()
def speculative_generate(target: GPT, draft, prompt: torch.Tensor, max_new_tokens: int, gamma: int = 4,
                         temperature: float = 1.0, generator=None,
                         accept=accept_reject) -> tuple[torch.Tensor, SpeculativeStats]:
    """Sample max_new_tokens after prompt (T,) from the target, drafting with `draft` -> (ids (N,), stats).

    draft: a GPT (wrapped in GPTDraft) or any object with the draft interface of the module docstring.
    temperature 0 is greedy (output == greedy target decoding); otherwise p and q are both softmax(. / T).
    accept: the accept/resample step, (p, q, d, generator) -> (n accepted, next token); the default is
        the exact rule; `image_tokens.gsd_accept_reject` (GSD) and `static_cluster_accept_reject` are
        the inexact grouped ones. `speculative_jacobi.py` drafts with the target itself instead.
    """
    draft = GPTDraft(draft) if isinstance(draft, GPT) else draft
    if not callable(getattr(draft, "propose", None)):
        raise TypeError(f"draft must be a GPT or have propose(seq, gamma, temperature, generator), "
                        f"got {type(draft).__name__}")
    check_args(target, prompt, max_new_tokens, gamma, temperature, draft.block_size)
    if draft.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft and target must share a vocabulary: draft vocab_size {draft.vocab_size}, "
                         f"target vocab_size {target.config.vocab_size}")

    seq = torch.cat([prompt, prompt.new_empty(max_new_tokens)])  # accepted tokens live in seq[:n]
    window, n, end = _TargetWindow(target), prompt.shape[0], prompt.shape[0] + max_new_tokens
    stats, rounds = SpeculativeStats(gamma), []
    while n < end:
        g = draft_length(n, gamma, end, target.config.block_size)
        d, q = draft.propose(seq[:n], g, temperature, generator) if g else (seq.new_empty(0), None)
        p = probs(window.logits(seq[:n], d), temperature)  # (g + 1, V): ONE target call scores every draft
        n_acc, t = verify(p, q, d, accept, generator, stats)
        seq[n:n + n_acc] = d[:n_acc]
        seq[n + n_acc] = t[0]
        n += n_acc + 1
        rounds.append(g)
    stats.predicted_sum = sum(expected_tokens(stats.alpha, g) for g in rounds)
    return seq[prompt.shape[0]:], stats
