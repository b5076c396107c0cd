"""A tiny convolutional autoencoder for SpriteWorld frames: the latent space the video models work in.

    encode:  x (3, H, W) in [0, 1]  ->  z = (tanh(E(2x - 1)) - mu) / sigma   (c, H / 4, W / 4)
    decode:  z  ->  x_hat = (D(sigma z + mu) + 1) / 2                        (3, H, W)

E is a 3 x 3 convolution, two stride-2 convolutions (a 4 x 4 cell of pixels per latent position) and a
1 x 1 projection to c channels; D mirrors it with two transposed convolutions.
tanh bounds the raw latent in (-1, 1); mu and sigma (per channel, measured on training frames after
training) standardise it, so flow matching's unit Gaussian noise is on the latents' own scale.

Trained on noisy reconstruction, with n ~ N(0, I) and e = (D(tanh(E(x)) + s n) - x)^2 per pixel,

    L = mean(e) + mean over frames of max over pixels(e)

The noise teaches the decoder that every latent near a frame's code means that frame, so a generated
latent that lands a little off the codes still decodes to flat palette colours and whole squares, not
to a blur (Stable Diffusion's decoders get the same robustness from their KL term). The worst-pixel
term is for the sprites: a 4 x 4 sprite is 6% of a frame, so the plain mean can leave a wrong sprite pixel
in many frames at a small cost (docs/results.md has the measured difference). A generator working here
only has to find the right neighbourhood; the decoder draws the pixels.

The video models (diffusion_forcing.py, video_sampling.py) see clips through encode_video / decode_video, which fold the
frame axis (B, F, ...) into the batch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoints import load_pretrained
from .data import VIDEO_WORLD, SpriteWorld
from .timing import resolve_device
from .training import set_lr, warmup_cosine


@dataclass
class AutoencoderConfig:
    size: int = VIDEO_WORLD.size  # frame height = width, pixels
    channels: int = 8  # latent channels c
    width: int = 64  # convolution width

    def __post_init__(self):
        for name in ("size", "channels", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.size % 4:
            raise ValueError(f"size must be a multiple of 4 (two stride-2 convolutions), got {self.size}")

    @property
    def latent_size(self) -> int:
        return self.size // 4


class FrameAutoencoder(nn.Module):
    """encode(x (N, 3, H, W)) -> z (N, c, H/4, W/4); decode(z) -> x_hat (N, 3, H, W) in [0, 1]."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else AutoencoderConfig()
        w, c = cfg.width, cfg.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.SiLU(),  # H/2
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.SiLU(),  # H/4
            nn.Conv2d(w, c, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.SiLU(),  # H/2
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.SiLU(),  # H
            nn.Conv2d(w, 3, 3, padding=1))
        self.register_buffer("mu", torch.zeros(c, 1, 1))  # latent statistics, set by `standardise`
        self.register_buffer("sigma", torch.ones(c, 1, 1))

    def _check(self, x: torch.Tensor, channels: int, size: int, name: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1:] != (channels, size, size):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be (N, {channels}, {size}, {size}), got {shape}")

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [0, 1] -> unstandardised latents tanh(E(2x - 1)) (N, c, H/4, W/4)."""
        self._check(x, 3, self.config.size, "frames")
        return torch.tanh(self.encoder(2 * x - 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.mu) / self.sigma

    def decode(self, z: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Latents (N, c, H/4, W/4), standardised (or raw) -> frames (N, 3, H, W), clamped to [0, 1]."""
        cfg = self.config
        self._check(z, cfg.channels, cfg.latent_size, "latents")
        h = z if raw else z * self.sigma + self.mu
        return ((self.decoder(h) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, F, 3, H, W) -> latents (B, F, c, H/4, W/4), without gradients (the video models use
        the autoencoder frozen)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            raise ValueError(f"clips must be (B, F, 3, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        return self.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    @torch.no_grad()
    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        """Latent clips (B, F, c, H/4, W/4) -> frames (B, F, 3, H, W) in [0, 1], without gradients."""
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            raise ValueError(f"latent clips must be (B, F, c, h, w), got {getattr(z, 'shape', type(z).__name__)}")
        return self.decode(z.flatten(0, 1)).unflatten(0, z.shape[:2])

    @torch.no_grad()
    def standardise(self, x: torch.Tensor) -> None:
        """Set mu, sigma to the per-channel mean and standard deviation of the raw latents of frames x."""
        h = self.raw(x)
        self.mu.copy_(h.mean((0, 2, 3))[:, None, None])
        self.sigma.copy_(h.std((0, 2, 3))[:, None, None])


def world_frames(n: int, generator=None) -> torch.Tensor:
    """n SpriteWorld frames (n, 3, H, W) of VIDEO_WORLD, from 16-frame rollouts of random actions."""
    x, _, _ = SpriteWorld(VIDEO_WORLD).sample_batch(-(-n // 16), 16, generator=generator)
    return x.flatten(0, 1)[:n]


@dataclass
class AutoencoderRecipe:
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-3
    latent_noise: float = 0.1  # s: the standard deviation of the noise added to raw latents in training
    seed: int = 0


def train(model: FrameAutoencoder, recipe: AutoencoderRecipe, device=None, progress: bool = True):
    """AdamW with cosine decay on the noisy reconstruction loss; standardises at the end.
    Returns (model, losses, seconds)."""
    device = resolve_device(device)
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for step in tqdm(range(recipe.steps), desc="autoencoder", disable=not progress):
        set_lr(opt, warmup_cosine(step, recipe.steps, recipe.lr))
        x = world_frames(recipe.batch_size, g).to(device)
        h = model.raw(x)
        h = h + recipe.latent_noise * torch.randn(h.shape, generator=g).to(h)
        err = (model.decode(h, raw=True) - x) ** 2  # (N, 3, H, W)
        loss = err.mean() + err.amax((1, 2, 3)).mean()  # the mean, plus every frame's worst pixel
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval().standardise(world_frames(4096, g).to(device))
    return model, losses, time.perf_counter() - t0


def train_autoencoder(device=None, steps: int | None = None) -> tuple[FrameAutoencoder, dict]:
    """`python -m minimal.train frame-ae`: AutoencoderRecipe() -> (model, meta with its reconstruction error)."""
    recipe = AutoencoderRecipe(**{**asdict(AutoencoderRecipe()), **({} if steps is None else {"steps": steps})})
    torch.manual_seed(recipe.seed)  # the initial weights too (train seeds only its own draws)
    model, losses, seconds = train(FrameAutoencoder(), recipe, device)
    x = world_frames(1024, torch.Generator().manual_seed(recipe.seed + 1)).to(next(model.parameters()).device)
    with torch.no_grad():
        x_hat = model.decode(model.encode(x)).cpu()
    return model, {"recipe": asdict(recipe), "train_seconds": round(seconds, 1),
                   "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 5),
                   "max_abs_error": round(float((x_hat - x.cpu()).abs().max()), 4)}


def load_autoencoder(device=None) -> tuple[FrameAutoencoder, dict]:
    """The shipped `frame-ae` and its meta."""
    return load_pretrained("frame-ae", device=device)
