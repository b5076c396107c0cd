"""Where attention sinks come from: a task on which a one-layer transformer grows one in a minute.

Our char GPTs put about 0.001 of their attention on the first position (tutorial 02), with or without a
dedicated sink token. Guo et al. 2024 ("Active-Dormant Attention Heads") explain sinks by heads that are
needed only sometimes; their Bigram-Backcopy task isolates that. Tokens 0..V-1 plus BOS = V:

    x_0 = BOS,   x_1 ~ uniform,
    x_{i+1} = x_{i-1}          if x_i is a trigger (x_i < n_triggers, i >= 2): copy the token before it
    x_{i+1} ~ P(. | x_i)       otherwise, a fixed random bigram table with rows ~ Dirichlet(alpha)

The MLP can learn the bigram table alone; the attention head is needed only at triggers (attend to the
previous token). Everywhere else it must add nothing, and the way training finds is to park the query's
attention on BOS, a key every query sees, whose value it drives to about zero. The head is *active* at
triggers and *dormant* (a sink on BOS) elsewhere.

`head_sink_mass` measures it: the mean attention on position 0 from dormant queries (non-triggers) and from
active ones (triggers), per layer and head, for queries at positions >= 16, beside the 1 / (i + 1) of
uniform attention. `train_recipe` (`python -m minimal.train bb-gpt`) trains the shipped model and two
controls, recording the mass every `eval_every` steps: no BOS (the sequence starts with a content
token) and no triggers (a pure bigram stream: the head is never needed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .sinks_bench import attention_maps, streaming_nll
from .timing import resolve_device
from .transformer import GPT, GPTConfig


@functools.cache
def _bigram_table(vocab: int, alpha: float, seed: int) -> torch.Tensor:
    """Drawn once per (vocab, alpha, seed), not at every training batch."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.distributions.Dirichlet(torch.full((vocab,), alpha)).sample((vocab,))


@dataclass(frozen=True)
class BigramBackcopy:
    """The task: V content tokens, the first n_triggers of them triggers, BOS = V; a seeded bigram table."""

    vocab: int = 32
    n_triggers: int = 3
    alpha: float = 0.1  # Dirichlet concentration of each bigram row: small = peaked rows
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.vocab, int) or self.vocab < 2:
            raise ValueError(f"vocab must be an int >= 2, got {self.vocab!r}")
        if not isinstance(self.n_triggers, int) or not 0 <= self.n_triggers < self.vocab:
            raise ValueError(f"n_triggers must be an int in [0, vocab = {self.vocab}), got {self.n_triggers!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")

    @property
    def bos(self) -> int:
        return self.vocab

    def transitions(self) -> torch.Tensor:
        """(V, V) row-stochastic bigram table P[a, b] = p(b | a), the same for a given seed (shared: read only)."""
        return _bigram_table(self.vocab, self.alpha, self.seed)

    def sample(self, n: int, length: int, bos: bool = True, generator=None) -> torch.Tensor:
        """(n, length) int64 sequences; with bos, BOS then length - 1 content tokens."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if not isinstance(length, int) or length < 2:
            raise ValueError(f"length must be an int >= 2, got {length!r}")
        P = self.transitions()
        m = length - bos  # content tokens
        x = torch.empty(n, m, dtype=torch.long)
        x[:, 0] = torch.randint(0, self.vocab, (n,), generator=generator)
        for i in range(1, m):
            nxt = torch.multinomial(P[x[:, i - 1]], 1, generator=generator)[:, 0]  # (n,)
            if i >= 2:
                nxt = torch.where(x[:, i - 1] < self.n_triggers, x[:, i - 2], nxt)  # backcopy after a trigger
            x[:, i] = nxt
        return torch.cat([torch.full((n, 1), self.bos), x], 1) if bos else x

    def triggers(self, ids: torch.Tensor) -> torch.Tensor:
        """(…, T) bool: the token is a trigger, so the next one is a copy."""
        return ids < self.n_triggers


@torch.no_grad()
def head_sink_mass(model: GPT, ids: torch.Tensor, task: BigramBackcopy, first_query: int = 16) -> dict:
    """Attention on position 0 from queries at positions >= first_query, per layer and head.

    dormant: from non-trigger queries; active: from trigger queries (nan without triggers);
    uniform: what uniform causal attention would give, mean of 1 / (i + 1) over the same queries."""
    if ids.ndim != 2 or ids.shape[1] <= first_query:
        raise ValueError(f"ids must be (B, T) with T > first_query = {first_query}, got {tuple(ids.shape)}")
    model.eval()
    to_first = attention_maps(model, ids)[..., first_query:, 0]  # (L, B, H, T - first_query)
    trig = task.triggers(ids[:, first_query:])[None, :, None].expand_as(to_first)  # (L, B, H, T')
    per_head = lambda keep: (to_first * keep).sum((1, 3)) / keep.sum((1, 3))  # noqa: E731 (L, H)
    i = torch.arange(first_query, ids.shape[1], dtype=torch.float)
    return {"dormant": per_head(~trig), "active": per_head(trig), "uniform": (1 / (i + 1)).mean().item()}


@dataclass
class BBRecipe:
    steps: int = 3000
    batch_size: int = 64
    length: int = 65  # BOS + 64 tokens: the context (block_size)
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    eval_every: int = 250
    bos: bool = True
    seed: int = 0


def train_bb(task: BigramBackcopy, recipe: BBRecipe, device=None, progress: bool = True) -> tuple[GPT, dict]:
    """Next-token training with AdamW at a constant lr; meta["curve"] holds (step, dormant, active) mass
    of the most sink-like head (the largest dormant mass) on a fixed probe batch every eval_every steps."""
    device = resolve_device(device)
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    cfg = GPTConfig(vocab_size=task.vocab + 1, block_size=recipe.length, n_layer=recipe.n_layer,
                    n_head=recipe.n_head, n_embd=recipe.n_embd)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95))
    probe = task.sample(64, recipe.length, recipe.bos, torch.Generator().manual_seed(recipe.seed + 1)).to(device)
    curve, t0 = [], time.perf_counter()
    for step in tqdm(range(recipe.steps + 1), desc="bb-gpt", disable=not progress):
        if step % recipe.eval_every == 0 or step == recipe.steps:
            m = head_sink_mass(model, probe, task)
            head = m["dormant"].argmax()  # the most sink-like head, flat index over (L, H)
            curve.append((step, m["dormant"].flatten()[head].item(), m["active"].flatten()[head].item()))
        if step == recipe.steps:
            break
        x = task.sample(recipe.batch_size, recipe.length + 1, recipe.bos, g).to(device)
        model.train()
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    meta = {"task": dataclasses.asdict(task), "recipe": dataclasses.asdict(recipe), "curve": curve,
            "uniform": m["uniform"], "train_seconds": time.perf_counter() - t0}  # m: the last evaluation
    return model.eval(), meta


@torch.no_grad()
def streaming_perplexity(model: GPT, task: BigramBackcopy, multiple: int = 16, seed: int = 7) -> dict:
    """Perplexity of one BOS-started stream `multiple` x the context long, per cache policy (sinks.py)."""
    ids = task.sample(1, multiple * model.config.block_size, True, torch.Generator().manual_seed(seed))[0]
    policies = {"dense": ("dense", 4), "window": ("window", 4), "recompute": ("recompute", 4),
                "sinks1": ("sinks", 1), "sinks4": ("sinks", 4)}
    return {name: math.exp(streaming_nll(model, ids, p, n_sink=s).mean().item()) for name, (p, s) in policies.items()}


def train_recipe(device=None, steps: int | None = None) -> tuple[GPT, dict]:
    """`python -m minimal.train bb-gpt`: the shipped model (BOS + triggers), the two controls' curves in
    meta["controls"] -> (model, meta)."""
    base = BBRecipe() if steps is None else BBRecipe(steps=steps)
    variants = {"bos": (BigramBackcopy(), base),
                "no_bos": (BigramBackcopy(), dataclasses.replace(base, bos=False, length=base.length - 1)),
                "no_triggers": (BigramBackcopy(n_triggers=0), base)}
    runs = {name: train_bb(task, recipe, device) for name, (task, recipe) in variants.items()}
    model, meta = runs["bos"]
    return model, {**meta, "controls": {name: m for name, (_, m) in runs.items() if name != "bos"},
                   "streaming_ppl": streaming_perplexity(model, BigramBackcopy())}
