"""The pretrained character-level GPT: training recipe and bits-per-character evaluation.

Trained on the reference-manual text (`data.text_corpus`, train split) with next-character
cross-entropy, and scored on the held-out topics in bits per character,

    bpc = -(1 / N) sum_i log2 p(x_i | x_<i),

beside two baselines fitted on the same train split: a unigram model p(x_i) and a bigram model
p(x_i | x_{i-1}), both add-one smoothed. `python -m minimal.train text-gpt` reproduces the shipped
checkpoint `minimal/pretrained/text-gpt.pt`, and `python -m minimal.train text-draft` the one-layer
draft model of speculative decoding (speculative.py), the same recipe shrunk.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import CharTokenizer, text_corpus
from .timing import resolve_device
from .training import set_lr, warmup_cosine
from .transformer import GPT, GPTConfig


@dataclass
class TextGPTRecipe:
    seed: int = 1337
    steps: int = 1700
    batch_size: int = 48
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 6
    n_embd: int = 192
    dropout: float = 0.2  # 1.8M parameters memorise 427 k characters in ~10 epochs without it
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.1
    eval_every: int = 100
    sink_token: bool = False  # start every window with a dedicated extra token (StreamingLLM section 3.3)


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator=None):
    """Random windows: inputs x (B, T) and next-character targets y (B, T)."""
    i = torch.randint(0, len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[j:j + block_size] for j in i.tolist()])
    y = torch.stack([data[j + 1:j + 1 + block_size] for j in i.tolist()])
    return x, y


def with_sink(x: torch.Tensor, y: torch.Tensor, sink_id: int):
    """Windows x, y (B, T - 1) -> (B, T) with the sink token first; it predicts the first character."""
    sink = torch.full_like(x[:, :1], sink_id)
    return torch.cat([sink, x], 1), torch.cat([x[:, :1], y], 1)


@torch.no_grad()
def bits_per_char(model: GPT, data: torch.Tensor, block_size: int | None = None, batch_size: int = 32,
                  sink_id: int | None = None) -> float:
    """Mean next-character loss in bits over non-overlapping windows covering `data`.

    With sink_id, each window of block_size - 1 characters is preceded by the sink token."""
    model.eval()
    t = (block_size or model.config.block_size) - (sink_id is not None)
    device = next(model.parameters()).device
    n = (len(data) - 1) // t
    x = data[: n * t].view(n, t)
    y = data[1: n * t + 1].view(n, t)
    if sink_id is not None:
        x, y = with_sink(x, y, sink_id)
    total = 0.0
    for b in range(0, n, batch_size):
        logits = model(x[b:b + batch_size].to(device))
        total += F.cross_entropy(logits.flatten(0, 1), y[b:b + batch_size].flatten().to(device),
                                 reduction="sum").item()
    return total / y.numel() / math.log(2)


def ngram_baselines(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> dict:
    """Unigram and bigram bits per character of `val`, add-one smoothed counts from `train`."""
    uni = torch.bincount(train, minlength=vocab_size).double() + 1
    p_uni = uni / uni.sum()
    pairs = torch.bincount(train[:-1] * vocab_size + train[1:], minlength=vocab_size ** 2).double() + 1
    p_bi = (pairs.view(vocab_size, vocab_size) / pairs.view(vocab_size, vocab_size).sum(1, keepdim=True))
    bits_uni = -p_uni[val].log2().mean().item()
    bits_bi = -p_bi[val[:-1], val[1:]].log2().mean().item()
    return {"unigram_bpc": bits_uni, "bigram_bpc": bits_bi}


def train_text_gpt(recipe: TextGPTRecipe | None = None, device=None, progress: bool = True, probe=None):
    """Train the char GPT; returns (model, meta) with the measured quality figures in meta.

    probe(model) -> float, if given, is recorded every eval_every steps in meta["probe_curve"]."""
    r = recipe or TextGPTRecipe()
    device = resolve_device(device)
    tok = CharTokenizer.from_text(text_corpus("all"))
    train, val = tok.encode(text_corpus("train")), tok.encode(text_corpus("val"))
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    sink_id = tok.vocab_size if r.sink_token else None  # one extra id past the characters
    cfg = GPTConfig(vocab_size=tok.vocab_size + r.sink_token, block_size=r.block_size, n_layer=r.n_layer,
                    n_head=r.n_head, n_embd=r.n_embd, dropout=r.dropout)
    model = GPT(cfg).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.95))
    t0, losses, val_curve, probe_curve = time.perf_counter(), [], [], []
    bar = tqdm(range(r.steps), desc="text-gpt", disable=not progress)
    for step in bar:
        set_lr(opt, warmup_cosine(step, r.steps, r.lr, r.warmup, r.min_lr))
        if sink_id is None:
            x, y = get_batch(train, r.block_size, r.batch_size, g)
        else:
            x, y = with_sink(*get_batch(train, r.block_size - 1, r.batch_size, g), sink_id)
        model.train()
        loss = F.cross_entropy(model(x.to(device)).flatten(0, 1), y.flatten().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % r.eval_every == 0:
            val_curve.append((step + 1, bits_per_char(model, val, sink_id=sink_id)))
            if probe is not None:
                probe_curve.append((step + 1, probe(model)))
            bar.set_postfix(loss=f"{loss.item():.3f}", val_bpc=f"{val_curve[-1][1]:.3f}")
    wall = time.perf_counter() - t0
    meta = {"chars": tok.chars, "recipe": dataclasses.asdict(r), "train_seconds": wall,
            "val_bpc": bits_per_char(model, val, sink_id=sink_id), "val_curve": val_curve,
            **({"probe_curve": probe_curve} if probe is not None else {}),
            **({"sink_token_id": sink_id} if sink_id is not None else {}),
            **ngram_baselines(train, val, tok.vocab_size),
            "final_train_loss": sum(losses[-50:]) / len(losses[-50:])}
    return model.eval(), meta


RECIPES = {
    "text-gpt": TextGPTRecipe(),
    # the draft of speculative decoding: one layer of width 96 (0.12M parameters), no dropout
    "text-draft": TextGPTRecipe(seed=1338, steps=1500, batch_size=32, n_layer=1, n_head=2, n_embd=96, dropout=0.0),
}


def _recipe(name: str, steps: int | None) -> TextGPTRecipe:
    return RECIPES[name] if steps is None else dataclasses.replace(RECIPES[name], steps=steps)


def train_text_gpt_recipe(device=None, steps: int | None = None):
    """`python -m minimal.train text-gpt` -> (model, meta)."""
    return train_text_gpt(_recipe("text-gpt", steps), device)


def train_text_draft_recipe(device=None, steps: int | None = None):
    """`python -m minimal.train text-draft` -> (model, meta)."""
    return train_text_gpt(_recipe("text-draft", steps), device)
