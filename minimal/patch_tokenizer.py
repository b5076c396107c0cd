"""A tiny patch tokenizer for SpriteWorld frames: a k-means codebook over non-overlapping patches.

A frame (3, H, W) is cut into (H / P) x (W / P) patches of P x P pixels, each flattened to a vector of
3 P^2 values and replaced by the index of its nearest codebook vector; decoding pastes the codebook
vectors back. The codebook is fitted with k-means (Lloyd 1982): alternate

    assign   z_n = argmin_k ||x_n - c_k||^2
    update   c_k = mean of the x_n with z_n = k        (an empty cluster takes a random patch)

and finally snap every c_k to the training patch nearest to it, so that decoded patches are real
patches with the palette's flat colours rather than blurred averages.

Simplified vs VQ-VAE / VQGAN tokenizers: no encoder network and no learned decoder, just the codebook,
which is enough for frames built of flat colours. Image-token AR models (image_tokens.py) read the
token grid in raster order.
"""

from __future__ import annotations

import torch


class PatchTokenizer:
    """frames (N, 3, H, W) <-> tokens (N, (H / patch) (W / patch)) through a (K, 3 patch^2) codebook."""

    def __init__(self, codebook: torch.Tensor, patch: int):
        if codebook.ndim != 2 or codebook.shape[1] != 3 * patch * patch:
            raise ValueError(f"codebook must be (K, 3 * patch^2 = {3 * patch * patch}), got {tuple(codebook.shape)}")
        self.codebook, self.patch = codebook, patch

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    @classmethod
    def fit(cls, frames: torch.Tensor, vocab_size: int = 64, patch: int = 4, iters: int = 20,
            seed: int = 0) -> PatchTokenizer:
        """k-means on all patches of frames (N, 3, H, W)."""
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        x = _patches(frames, patch).flatten(0, 1)  # (N L, 3 P^2)
        g = torch.Generator().manual_seed(seed)
        c = x[torch.randperm(len(x), generator=g)[:vocab_size]].clone()  # (K, 3 P^2)
        for _ in range(iters):
            z = torch.cdist(x, c).argmin(1)  # (N L,) assign
            sums = torch.zeros_like(c).index_add_(0, z, x)
            counts = torch.bincount(z, minlength=vocab_size)
            empty = counts == 0
            c = torch.where(empty[:, None], x[torch.randint(0, len(x), (vocab_size,), generator=g)],
                            sums / counts.clamp(min=1)[:, None])  # update
        return cls(x[torch.cdist(c, x).argmin(1)].clone(), patch)  # snap to real patches

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = _patches(frames, self.patch)  # (N, L, 3 P^2)
        return torch.cdist(x, self.codebook.expand(len(x), -1, -1)).argmin(-1)  # (N, L)

    def decode(self, tokens: torch.Tensor, size: int = 32) -> torch.Tensor:
        P, n = self.patch, size // self.patch
        x = self.codebook[tokens].view(-1, n, n, 3, P, P)  # (N, rows, cols, 3, P, P)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, size, size)  # (N, 3, H, W)


def _patches(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, L, 3 patch^2), patches in raster order."""
    N, C, H, W = frames.shape
    if H % patch or W % patch:
        raise ValueError(f"frame size {H}x{W} is not a multiple of patch = {patch}")
    x = frames.reshape(N, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(N, (H // patch) * (W // patch), C * patch * patch)
