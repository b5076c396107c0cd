"""A small decoder-only transformer: RoPE, attention with an explicit mask and cache, pre-norm blocks.

Attention (Vaswani et al. 2017), for one head with queries Q (T_q, d), keys K and values V (T_k, d):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,   M[i, j] = 0 if query i may see key j else -inf

The mask is passed explicitly, so the same layer serves the causal text model, the block-causal video
model and the rolling caches of later chapters: None (every query sees every key), "causal" (the T_q
queries are the last T_q of the T_k keys and query i sees the keys up to its own; resolved once the
cache has returned the keys, since a cache may keep fewer keys than it was given), a boolean tensor
(True = may attend) or a FlexAttention BlockMask. The manual path computes the formula above line by
line; the fast path calls `F.scaled_dot_product_attention`; a test checks that they agree.

Rotary position embedding (RoPE, Su et al. 2021) rotates each pair of channels (x_i, x_{i + d/2}) of
queries and keys by the angle p * theta_i, theta_i = base^(-2i/d), where p is the token's position:

    RoPE(x, p)_i       = x_i cos(p theta_i) - x_{i+d/2} sin(p theta_i)
    RoPE(x, p)_{i+d/2} = x_i sin(p theta_i) + x_{i+d/2} cos(p theta_i)

so q . k depends only on the difference of the positions. Positions are always explicit arguments:
a streaming cache can re-number its keys.

Time conditioning: a `Block` built with `cond_dim` modulates its norms with adaLN-Zero (DiT, Peebles &
Xie 2023): shift, scale and gate for each sublayer come from a zero-initialised linear map of a
conditioning vector c (per sequence or per token), so a fresh block is the identity map.

Simplifications vs GPT-2: no biases, RoPE instead of learned positions, tied input/output embeddings.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention


@dataclass
class GPTConfig:
    vocab_size: int = 96
    block_size: int = 128  # training context length (the KV cache capacity by default)
    n_layer: int = 4
    n_head: int = 6
    n_embd: int = 192
    dropout: float = 0.0
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd / n_head must be an even integer (RoPE rotates pairs), "
                             f"got n_embd={self.n_embd}, n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# ---------------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------------

def apply_rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate x (B, H, T, D) by positions pos (T,) or (B, T); any real-valued positions."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) * 2 / d)  # (D/2,)
    angles = pos.to(device=x.device, dtype=torch.float32)[..., None] * theta  # (T, D/2) or (B, T, D/2)
    if angles.ndim == 3:
        angles = angles[:, None]  # (B, 1, T, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# ---------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------

def causal_mask(t_q: int, t_k: int, device=None) -> torch.Tensor:
    """(t_q, t_k) bool: the queries are the last t_q of the t_k positions; query i sees keys j <= i."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + M): (B, H, T_q, T_k), the manual (obviously correct) path."""
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T_q, T_k)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    return att.softmax(dim=-1)


@functools.cache
def compiled_flex_attention():
    return torch.compile(flex_attention)


def attention(q, k, v, mask: torch.Tensor | BlockMask | str | None = None, manual: bool = False,
              dropout_p: float = 0.0):
    """Scaled dot-product attention; `manual=True` spells it out, otherwise PyTorch's fused kernel.

    mask: None, "causal", a bool tensor or a BlockMask (module docstring). A FlexAttention BlockMask
    (video_model.py's block-causal mask) runs flex_attention, which skips the masked tiles; compiled on
    CUDA, eager (materialising the scores, a reference) elsewhere.
    """
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask must be None, 'causal', a bool tensor or a BlockMask, got {mask!r}")
        mask = causal_mask(q.shape[2], k.shape[2], q.device) if q.shape[2] > 1 else None
    if isinstance(mask, BlockMask):
        return (compiled_flex_attention() if q.is_cuda else flex_attention)(q, k, v, block_mask=mask)
    if manual:
        return F.dropout(attention_weights(q, k, mask), dropout_p) @ v  # (B, H, T_q, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q, k, v, each (B, H, T, D), before RoPE."""
        B, T, C = x.shape
        return self.qkv(x).view(B, T, 3, self.config.n_head, C // self.config.n_head).permute(2, 0, 3, 1, 4)

    def forward(self, x, pos, mask=None, cache=None, manual=False):
        B, T, C = x.shape
        q, k, v = self.project(x)  # 3 x (B, H, T, D)
        if getattr(cache, "stores_raw_keys", False):  # kv_cache.py's protocol: a cache that places keys itself
            k, v = cache.update(self.layer_idx, k, v, q)  # (B, H, T_k, D), raw keys (and raw queries to rank them)
            k = apply_rope(k, cache.key_positions(), self.config.rope_base)
        else:
            k = apply_rope(k, pos, self.config.rope_base)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, H, T_k, D): cached keys then the new ones
        q = apply_rope(q, pos, self.config.rope_base)
        p = self.config.dropout if self.training else 0.0
        y = attention(q, k, v, mask, manual, p)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


# ---------------------------------------------------------------------------------------------------
# Blocks and the GPT
# ---------------------------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


class Block(nn.Module):
    """Pre-norm block x + attn(norm(x)), then x + mlp(norm(x)); adaLN-Zero when cond_dim is given."""

    def __init__(self, config: GPTConfig, layer_idx: int, cond_dim: int | None = None):
        super().__init__()
        affine = cond_dim is None  # adaLN supplies the scale and shift instead
        self.ln1 = nn.LayerNorm(config.n_embd, elementwise_affine=affine)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln2 = nn.LayerNorm(config.n_embd, elementwise_affine=affine)
        self.mlp = MLP(config)
        self.resid_drop = nn.Dropout(config.dropout)
        self.ada = None
        if cond_dim is not None:
            self.ada = nn.Linear(cond_dim, 6 * config.n_embd)
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)

    def forward(self, x, pos, mask=None, cache=None, manual=False, c=None):
        if self.ada is None:
            x = x + self.resid_drop(self.attn(self.ln1(x), pos, mask, cache, manual))
            return x + self.mlp(self.ln2(x))
        if c is None:
            raise ValueError("this block is conditioned: pass c of shape (B, cond_dim) or (B, T, cond_dim)")
        if c.ndim == 2:
            c = c[:, None]  # (B, 1, cond_dim): one condition for the whole sequence
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)  # (B, T|1, C)
        x = x + gate1 * self.resid_drop(self.attn(modulate(self.ln1(x), shift1, scale1), pos, mask, cache, manual))
        return x + gate2 * self.mlp(modulate(self.ln2(x), shift2, scale2))


def check_tokens(idx, vocab_size: int, name: str = "idx") -> torch.Tensor:
    """Validate token ids: an int64 tensor with values in [0, vocab_size)."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(idx).__name__}")
    if idx.dtype != torch.long:
        raise TypeError(f"{name} must have dtype torch.long, got {idx.dtype}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"{name} holds token ids outside the vocabulary [0, {vocab_size}): "
                         f"min {int(idx.min())}, max {int(idx.max())}")
    return idx


class GPT(nn.Module):
    """Decoder-only transformer: forward(idx (B, T), cache=None) -> logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by 1/sqrt(2L)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, cache=None, pos=None, mask=None, manual=False):
        """idx (B, T) int64. With a cache, the T new tokens sit after the cache.length cached ones.

        pos: positions (T,) or (B, T); default cache.next_positions(T) (cache.length + arange(T) for
            a plain cache), or arange(T) without a cache.
        mask: bool (T, T_k) or broadcastable to (B, H, T, T_k), True = may attend; default "causal".
        """
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or idx.ndim != 2:
            raise TypeError("idx must be an int64 tensor of shape (B, T)")
        B, T = idx.shape
        if pos is None:
            pos = cache.next_positions(T) if cache is not None else torch.arange(T, device=idx.device)
        if mask is None:
            mask = "causal"  # built per layer once the cache has returned the keys (see attention)
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, pos, mask, cache, manual)
        if cache is not None:
            cache.advance(T)
        return self.head(self.ln_f(x))  # (B, T, vocab_size)
