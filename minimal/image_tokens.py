"""Image tokens and grouped speculative decoding (GSD).

So et al. 2025, *Grouped Speculative Decoding for Autoregressive Image Generation*. Image tokens are
redundant: many codebook entries decode to nearly the same patch, so the target spreads its
probability over a cluster of interchangeable tokens and exact speculative decoding rejects drafts that
the eye could not tell apart. GSD accepts a drafted token d with probability

    min(1, sum_{y in G(d)} p(y) / sum_{y in G(d)} q(y)),   G(d) = {y : ||c_y - c_d|| <= radius}

where c_y is token y's codebook vector. With radius 0, G(d) = {d} and this is the exact rule.
THIS IS NOT DISTRIBUTION-EXACT: the emitted tokens no longer follow the target's distribution, only
(roughly) its distribution over groups. Rejections still resample from norm(max(0, p - q)).
We measure what it gains in speed and what it costs in quality (sprite validity of decoded frames).

Here: SpriteWorld frames (one scene, 2 sprites) are tokenized by `PatchTokenizer` (k-means codebook of
4 x 4 patches: 64 tokens per 32 x 32 frame, raster order), the target is a small GPT over one frame's
tokens, the draft an n-gram table over the same token streams. Simplified vs GSD: its groups also use
the target's probability ranks; ours use codebook distance only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoints import PRETRAINED_DIR, load_pretrained, save_checkpoint
from .data import SpriteWorld
from .patch_tokenizer import PatchTokenizer
from .speculative import NGramDraft, _draw
from .transformer import GPT, GPTConfig


def codebook_groups(tokenizer: PatchTokenizer, radius: float) -> torch.Tensor:
    """(K, K) bool: groups[d, y] = the codebook vectors of d and y are within `radius` (L2)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return torch.cdist(tokenizer.codebook, tokenizer.codebook) <= radius


def grouped_accept_reject(p, q, d, generator=None, groups: torch.Tensor | None = None):
    """GSD's step: like `speculative.accept_reject` with p(d)/q(d) replaced by group sums. Not exact."""
    gamma = d.shape[0]
    u = torch.rand(gamma, generator=generator, device=p.device)
    g = groups[d].to(p.dtype)  # (gamma, V): the group of each drafted token
    ratio = (p[:gamma] * g).sum(-1) / (q * g).sum(-1)  # (gamma,)
    n = int((u < ratio).long().cumprod(0).sum())
    if n == gamma:
        return n, _draw(p[gamma], generator)
    residual = (p[n] - q[n]).clamp(min=0)
    return n, _draw(residual if residual.sum() > 0 else p[n], generator)


@dataclass
class ImageTokenSetup:
    tokenizer: PatchTokenizer
    target: GPT
    draft: NGramDraft
    frames: torch.Tensor  # (N, 3, H, W) held-out real frames
    tokens: torch.Tensor  # (N, L) their tokens


def _frames(n_frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded SpriteWorld frames (scene 0, 2 sprites), split 90% train / 10% held out."""
    world, g = SpriteWorld(n_sprites=2), torch.Generator().manual_seed(seed)
    frames = torch.cat([world.rollout(8, generator=g)[0] for _ in range(n_frames // 8)])  # (N, 3, 32, 32)
    return frames[: len(frames) * 9 // 10], frames[len(frames) * 9 // 10:]


def make_setup(n_frames: int = 2000, vocab_size: int = 256, steps: int = 1500, seed: int = 0,
               quick: bool = False) -> ImageTokenSetup:
    """Fit the tokenizer, train the target GPT on frame tokens and count the n-gram draft (seeded)."""
    if quick:
        n_frames, vocab_size, steps = 200, 32, 5
    train, held = _frames(n_frames, seed)
    tok = PatchTokenizer.fit(train[:1000], vocab_size, patch=4, seed=seed)
    x = tok.encode(train)  # (N, 64)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    target = GPT(GPTConfig(vocab_size=vocab_size, block_size=x.shape[1], n_layer=2, n_head=2, n_embd=96))
    opt = torch.optim.AdamW(target.parameters(), lr=3e-3, weight_decay=0.01)
    with torch.enable_grad():
        for _ in range(steps):
            b = x[torch.randint(0, len(x), (32,), generator=g)]  # (32, 64)
            loss = F.cross_entropy(target(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ImageTokenSetup(tok, target.eval(), NGramDraft(x.flatten(), vocab_size, order=3), held, tok.encode(held))


def load_setup(n_frames: int = 2000, seed: int = 0) -> ImageTokenSetup:
    """The shipped `image-gpt` target and its codebook; the frames and the draft are rebuilt (seeded)."""
    target, meta = load_pretrained("image-gpt")
    tok = PatchTokenizer(torch.tensor(meta["codebook"]), meta["patch"])
    train, held = _frames(n_frames, seed)
    x = tok.encode(train)
    return ImageTokenSetup(tok, target, NGramDraft(x.flatten(), tok.vocab_size, order=3), held, tok.encode(held))


def train_recipe(out=None, device=None, steps: int | None = None) -> dict:
    """`python -m minimal.train image-gpt`: tokenizer + target GPT, saved to minimal/pretrained/image-gpt.pt."""
    t0 = time.perf_counter()
    s = make_setup() if steps is None else make_setup(steps=steps)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        held = s.tokens
        val_loss = F.cross_entropy(s.target(held[:, :-1]).flatten(0, 1), held[:, 1:].flatten()).item()
    meta = {"codebook": s.tokenizer.codebook.tolist(), "patch": s.tokenizer.patch, "seed": 0,
            "steps": 1500 if steps is None else steps, "train_seconds": seconds, "val_loss": val_loss}
    path = save_checkpoint(out or PRETRAINED_DIR / "image-gpt.pt", s.target, meta)
    return {"path": str(path), "train_seconds": seconds, "val_loss": val_loss}
