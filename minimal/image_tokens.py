"""Image tokens and grouped speculative decoding (GSD), as published, with the static-cluster ablation.

So et al. 2025, *Grouped Speculative Decoding for Autoregressive Image Generation*. Image tokens are
redundant: many tokens decode to nearly the same patch, so the target spreads its probability over
clusters of interchangeable tokens and exact speculative decoding rejects drafts the eye could not tell
apart. GSD accepts a drafted token d with probability

    min(1, sum_{y in G(d)} p(y) / sum_{y in G(d)} q(y))

where the group G(d) is built per position from the target's own distribution p (the official code's
SpeculativeSampler, with its constants):

    G(d) = {d} + {y : rank_p(y) in [rank_p(d) - window, rank_p(d) + window)       (window = 7)
                      and |p(y) - p(d)| < p_threshold                             (0.15)
                      and ||e_y - e_d||^2 < d_threshold}                          (0.5)

rank_p is the position in the ascending sort of p (the official code sorts the logits: the same order),
and e is the target's input token embedding (`tok_emb`). On rejection the token is drawn from the exact
residual norm(max(0, p - q)). With window, p_threshold or d_threshold 0, G(d) = {d}: the exact rule.
THIS IS NOT DISTRIBUTION-EXACT: inside a group the output follows the draft's split, not the target's.
GSD builds on speculative Jacobi decoding (`speculative_jacobi.py`): the drafts are the target's guesses.

The ablation: static clusters fixed in advance (here: tokens whose codebook patches lie within a
radius, `codebook_clusters`), the variant the GSD paper reports as ineffective: a static cluster ignores
where the target puts its mass, so it can accept a token the target gives no mass.

Here: SpriteWorld frames (one scene, 2 sprites) are tokenized by `PatchTokenizer` (k-means codebook of
4 x 4 patches: 64 tokens per 32 x 32 frame, raster order), the target is a small GPT over one frame's
tokens, the n-gram draft a count table over the same token streams. Simplified vs GSD: no classifier-free
guidance or top-k; where the official slice of the sorted logits would start below rank 0 (its 7 least
likely tokens, whose group comes out empty and is always rejected) ours starts at rank 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoints import load_pretrained
from .data import SpriteWorld, SpriteWorldConfig
from .patch_tokenizer import PatchTokenizer
from .speculative import NGramDraft, _draw
from .transformer import GPT, GPTConfig

FRAMES = SpriteWorldConfig(n_sprites=2)  # the world of the frames (scene 0, "night"): score with toybench


def group_accept_reject(p, q, d, groups: torch.Tensor, generator=None) -> tuple[int, torch.Tensor]:
    """The grouped step: `speculative.accept_reject` with p(d) / q(d) replaced by sum_G p / sum_G q.

    p (gamma + 1, V), q (gamma, V), d (gamma,), groups (gamma, V) bool (row i: G(d_i), holding d_i)."""
    gamma = d.shape[0]
    u = torch.rand(gamma, generator=generator, device=p.device)
    g = groups.to(p.dtype)  # (gamma, V)
    ratio = (p[:gamma] * g).sum(-1) / (q * g).sum(-1)  # (gamma,): sum_G p / sum_G q
    n = int((u < ratio).long().cumprod(0).sum())
    if n == gamma:
        return n, _draw(p[gamma], generator)
    residual = (p[n] - q[n]).clamp(min=0)
    return n, _draw(residual if residual.sum() > 0 else p[n], generator)


def embedding_sq_distances(target: GPT) -> torch.Tensor:
    """(V, V) squared L2 distances ||e_y - e_d||^2 between the target's token embeddings (GSD's filter)."""
    e = target.tok_emb.weight.detach().float()  # (V, C)
    return (e.pow(2).sum(-1)[:, None] + e.pow(2).sum(-1)[None] - 2 * e @ e.T).clamp(min=0)  # a^2 + b^2 - 2ab


def gsd_groups(p, d, sq_dist, window: int = 7, p_threshold: float = 0.15, d_threshold: float = 0.5):
    """GSD's group of each drafted token, from the target's p (>= gamma, V) -> (gamma, V) bool."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window must be an int >= 0, got {window!r}")
    for name, value in (("p_threshold", p_threshold), ("d_threshold", d_threshold)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(sq_dist, torch.Tensor) or sq_dist.shape != (p.shape[-1], p.shape[-1]):
        got = tuple(sq_dist.shape) if isinstance(sq_dist, torch.Tensor) else type(sq_dist).__name__
        raise ValueError(f"sq_dist must be a (V, V) = {(p.shape[-1],) * 2} tensor, got {got}")
    (gamma,), V = d.shape, p.shape[-1]
    i, d_ = torch.arange(gamma, device=p.device)[:, None], d[:, None]  # (gamma, 1)
    order = p[:gamma].sort(dim=-1, stable=True).indices  # (gamma, V): tokens by ascending p (rank = index)
    rank = (order == d_).long().argmax(-1, keepdim=True)  # (gamma, 1): rank of d
    pos = rank + torch.arange(-window, window, device=p.device)  # (gamma, 2 window): the slice [r - 7, r + 7)
    y = torch.where((pos >= 0) & (pos < V), order.gather(-1, pos.clamp(0, V - 1)), d_)  # candidates
    keep = (p[i, y] - p[i, d_]).abs() < p_threshold  # similar probability
    keep &= sq_dist.to(p.device)[d_, y] < d_threshold  # similar embedding
    groups = torch.zeros(gamma, V, dtype=torch.bool, device=p.device)
    return groups.scatter_(-1, torch.where(keep, y, d_), True).scatter_(-1, d_, True)  # d is always in G(d)


def gsd_accept_reject(p, q, d, generator=None, sq_dist=None, window: int = 7, p_threshold: float = 0.15,
                      d_threshold: float = 0.5) -> tuple[int, torch.Tensor]:
    """GSD's step with its per-position groups (sq_dist: `embedding_sq_distances(target)`). Not exact."""
    return group_accept_reject(p, q, d, gsd_groups(p, d, sq_dist, window, p_threshold, d_threshold), generator)


def codebook_clusters(tokenizer: PatchTokenizer, radius: float) -> torch.Tensor:
    """(K, K) bool static clusters: clusters[d, y] = the codebook patches of d and y are within radius (L2)."""
    if isinstance(radius, bool) or not isinstance(radius, int | float) or radius < 0:
        raise ValueError(f"radius must be a number >= 0, got {radius!r}")
    return torch.cdist(tokenizer.codebook, tokenizer.codebook) <= radius


def static_cluster_accept_reject(p, q, d, generator=None, clusters: torch.Tensor | None = None):
    """The ablation: groups = static clusters (`codebook_clusters`), blind to the target's p; the variant
    the GSD paper reports as ineffective. Not exact."""
    if not isinstance(clusters, torch.Tensor) or clusters.shape != (p.shape[-1], p.shape[-1]):
        raise ValueError(f"clusters must be a (V, V) = {(p.shape[-1],) * 2} bool tensor (`codebook_clusters`)")
    return group_accept_reject(p, q, d, clusters.to(p.device)[d], generator)


@dataclass
class ImageTokenSetup:
    tokenizer: PatchTokenizer
    target: GPT
    draft: NGramDraft
    frames: torch.Tensor  # (N, 3, H, W) held-out real frames
    tokens: torch.Tensor  # (N, L) their tokens


def _frames(n_frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded SpriteWorld frames (scene 0, 2 sprites), split 90% train / 10% held out."""
    world, g = SpriteWorld(FRAMES), torch.Generator().manual_seed(seed)
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


def train_recipe(device=None, steps: int | None = None) -> tuple[GPT, dict]:
    """`python -m minimal.train image-gpt`: tokenizer + target GPT -> (model, meta with the codebook)."""
    t0 = time.perf_counter()
    s = make_setup() if steps is None else make_setup(steps=steps)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        held = s.tokens
        val_loss = F.cross_entropy(s.target(held[:, :-1]).flatten(0, 1), held[:, 1:].flatten()).item()
    return s.target, {"codebook": s.tokenizer.codebook.tolist(), "patch": s.tokenizer.patch, "seed": 0,
                      "steps": 1500 if steps is None else steps, "train_seconds": seconds, "val_loss": val_loss}
