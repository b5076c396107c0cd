"""A causal video transformer: SpriteWorld frames generated chunk by chunk, with a frame-level KV cache.

Tokens. A frame (C, H, W) is cut into P = (H / p)^2 patches of p x p positions; each patch is one token.
A frame is RGB pixels (C = 3) or, as the shipped models use it, a frame autoencoder's latent
(autoencoder.py: C = 8, H = W = 4, so P = 4 tokens of patch 2 per frame instead of 16 pixel patches).
Frames are grouped into chunks of c frames, the unit the model generates at once. With F frames the
sequence has L = F P tokens, frame-major: token i belongs to frame i // P and chunk i // (c P).

Block-causal attention (CausVid, Self Forcing): a token sees every token of its own chunk and of all
earlier chunks, never a later chunk:

    M[i, j] = chunk(j) <= chunk(i)

so a finished chunk's keys and values never change again and can be cached.

Positions. RoPE over time (the frame index, shared by the P tokens of a frame) in every attention
layer, plus a learned embedding of the patch's spatial position added to the token. It starts at the
scale of the patch embeddings (std 1), not at 0.02: a noisy token must find its own place in the
previous frame from the first step, and a tiny position vector drowned in the noise's embedding.

Conditioning (DiT's adaLN-Zero), per frame: the flow time t_f in [0, 1] of that frame (0 = clean data,
1 = noise; flow_matching.py's convention), the action that moved the player into the frame and the scene
label (the "prompt"): c_f = MLP(features(t_f)) + E_action[a_f] + E_scene[s_f], applied to the frame's P
tokens. Per-frame times are what let one sequence mix clean context (t = 0) and a noisy chunk.

Output: the head predicts the clean frames x_hat (x-prediction, as JiT, Li & He 2025, advises for
pixel patches) and the model returns the flow velocity of flow_matching.py computed from it,

    v = (z_t - x_hat) / max(t, T_MIN),        since z_t = (1 - t) x + t e  gives  e - x = (z_t - x) / t,

so losses and samplers see an ordinary velocity model. Predicting v directly asks the network to copy
the noise e through every layer, which at this size it could not (docs/results.md has the comparison).

The frame KV cache (Self Forcing's inference; Ca2-VDM's cache sharing): after a chunk is sampled, its
clean frames are run once through the model at t = 0 (the context pass) and their keys/values are kept;
every denoising step of the next chunk attends to that cache and writes its own keys/values into the
slots after it without advancing, so the next step overwrites them. It is `kv_cache.KVCache` unchanged:
its `update` writes at [length, length + T) and returns [0, length + T); `advance` moves on.

The rolling frame cache (StreamingLLM's sinks over frames, as Self Forcing and LongLive stream): a
`sinks.SinkCache` of n_sink sink frames + a ring of the `window` newest frames, in slots of P tokens,
turning one chunk at a time. Keys are cached before RoPE and rotated at every step by their frame's
position inside the cache, so the new chunk always sits at frames n_sink + window - c .. n_sink + window - 1
and no position passes max_frames: fixed memory and a fixed cost per chunk, however long the video.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .data import ACTIONS, SCENES, VIDEO_WORLD
from .flow_matching import check_times, time_features
from .kv_cache import KVCache
from .sinks import SinkCache
from .transformer import Block

T_MIN = 0.05  # v = (z - x_hat) / max(t, T_MIN): JiT's clip near the data end


@dataclass
class VideoConfig:
    size: int = VIDEO_WORLD.size  # frame height = width: pixels, or latent positions
    channels: int = 3  # 3 for RGB pixels, the autoencoder's c for latents
    patch: int = 4  # patch side p, positions
    chunk: int = 2  # frames per chunk c
    max_frames: int = 16  # frames attended at once: the training length and the cache's capacity
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_actions: int = len(ACTIONS)
    n_scenes: int = len(SCENES)
    rope_base: float = 10000.0
    dropout: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{f.name} must be an int >= 1, got {value!r}")
        if self.size % self.patch:
            raise ValueError(f"patch ({self.patch}) must divide size ({self.size})")
        if self.max_frames % self.chunk:
            raise ValueError(f"chunk ({self.chunk}) must divide max_frames ({self.max_frames})")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) / n_head ({self.n_head}) must be an even integer")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def tokens_per_frame(self) -> int:
        return (self.size // self.patch) ** 2

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def check_chunked(n_frames: int, chunk: int) -> None:
    if n_frames % chunk:
        raise ValueError(f"the chunk size ({chunk} frames) must divide the number of frames, got {n_frames}")


def token_chunks(n_frames: int, chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """(L,) the chunk of every token of a frame-major sequence: chunk(i) = i // (c P)."""
    check_chunked(n_frames, chunk)
    return torch.arange(n_frames * tokens_per_frame, device=device) // (chunk * tokens_per_frame)


def block_causal_mask(n_frames: int, chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """(L, L) bool, L = n_frames * tokens_per_frame: token i may attend to j iff chunk(j) <= chunk(i)."""
    chunk_of = token_chunks(n_frames, chunk, tokens_per_frame, device)  # (L,)
    return chunk_of[None, :] <= chunk_of[:, None]


def flex_block_causal_mask(n_frames: int, chunk: int, tokens_per_frame: int, device=None):
    """The same mask as a FlexAttention BlockMask: whole (c P) x (c P) tiles are skipped or kept."""
    from torch.nn.attention.flex_attention import create_block_mask

    check_chunked(n_frames, chunk)
    n = chunk * tokens_per_frame
    L = n_frames * tokens_per_frame

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx // n <= q_idx // n

    return create_block_mask(mask_mod, None, None, L, L, device=device or "cpu")


def chunk_mask(n_frames: int, chunk: int, tokens_per_frame: int, device=None):
    """The block-causal mask to train with: a FlexAttention BlockMask on CUDA (compiled, masked tiles
    skipped), the boolean mask elsewhere (eager flex_attention would materialise the scores anyway)."""
    if torch.device(device or "cpu").type == "cuda":
        return flex_block_causal_mask(n_frames, chunk, tokens_per_frame, device)
    return block_causal_mask(n_frames, chunk, tokens_per_frame, device)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, F, C, H, W) -> (B, F * P, C p p), frame-major, patches in raster order."""
    return rearrange(x, "b f c (h p1) (w p2) -> b (f h w) (c p1 p2)", p1=p, p2=p)


def unpatchify(tokens: torch.Tensor, n_frames: int, size: int, p: int) -> torch.Tensor:
    """(B, F * P, C p p) -> (B, F, C, H, W); the inverse of patchify."""
    g = size // p  # patches per side
    return rearrange(tokens, "b (f h w) (c p1 p2) -> b f c (h p1) (w p2)", f=n_frames, h=g, w=g, p1=p, p2=p)


class VideoTransformer(nn.Module):
    """forward(z (B, F, C, H, W), t (B, F), actions (B, F), scene (B,), ...) -> velocity (B, F, C, H, W)."""

    def __init__(self, config: VideoConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else VideoConfig()
        C = cfg.n_embd
        self.patch_in = nn.Linear(cfg.channels * cfg.patch ** 2, C)
        self.spatial = nn.Parameter(torch.randn(cfg.tokens_per_frame, C))  # (P, C), std 1: see the docstring
        self.time_mlp = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        self.action_emb = nn.Embedding(cfg.n_actions, C)
        self.scene_emb = nn.Embedding(cfg.n_scenes, C)
        self.blocks = nn.ModuleList(Block(cfg, i, cond_dim=C) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(C, elementwise_affine=False)
        self.ada_f = nn.Linear(C, 2 * C)  # final adaLN: shift, scale
        self.patch_out = nn.Linear(C, cfg.channels * cfg.patch ** 2)
        for layer in (self.ada_f, self.patch_out):  # adaLN-Zero: the untrained network predicts v = 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_inputs(self, z, t, actions, scene) -> None:
        cfg = self.config
        if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[2:] != cfg.frame_shape:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"frames must be (B, F, {', '.join(map(str, cfg.frame_shape))}), got {shape}")
        B, Fr = z.shape[:2]
        if t.shape != (B, Fr):
            raise ValueError(f"t must be (B, F) = ({B}, {Fr}), one time per frame, got {tuple(t.shape)}")
        check_times("t", t)
        for name, labels, n, shapes in (("actions", actions, cfg.n_actions, [(B, Fr)]),
                                        ("scene", scene, cfg.n_scenes, [(B,), (B, Fr)])):
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long:
                raise TypeError(f"{name} must be an int64 tensor")
            if tuple(labels.shape) not in shapes:
                raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
                raise ValueError(f"{name} must be in [0, {n}), got values {labels.unique().tolist()}")

    def forward(self, z, t, actions, scene, frame_pos=None, cache: KVCache | None = None, mask=None,
                manual: bool = False):
        """Velocity of every given frame.

        frame_pos: (F,) time positions of the frames (RoPE); default the cache's next positions (after
            the cached frames, or for a rolling cache the frames' positions inside it), else arange(F).
        cache: with a cache, the F frames come after the cached ones; their keys/values are written at
            the cache's length (a full rolling cache: over its oldest recent chunk), which is *not*
            advanced (call cache.advance after a context pass).
        mask: bool (L_q, L_k) or a FlexAttention BlockMask; None lets every token see every key
            (right for one chunk after a cache).
        """
        self.check_inputs(z, t, actions, scene)
        return self.velocity(z, t, actions, scene, frame_pos, cache, mask, manual)

    def velocity(self, z, t, actions, scene, frame_pos=None, cache=None, mask=None, manual: bool = False):
        """`forward` without the input checks (which read values back from the device): for a caller that
        checked its inputs once, such as a streaming loop, a captured CUDA graph."""
        cfg = self.config
        B, Fr = z.shape[:2]
        P = cfg.tokens_per_frame
        if frame_pos is not None:
            pos = frame_pos.repeat_interleave(P)  # (F P,)
        elif cache is not None:
            pos = cache.next_positions(Fr * P).to(z.device)  # (F P,) the frames' positions in the cache
        else:
            pos = torch.arange(Fr, device=z.device).repeat_interleave(P)  # (F P,)
        if scene.ndim == 1:
            scene = scene[:, None].expand(B, Fr)
        x = self.patch_in(patchify(z, cfg.patch))  # (B, F P, C)
        x = x + self.spatial.repeat(Fr, 1)  # each frame's P tokens get the P spatial embeddings
        c = self.time_mlp(time_features(t.reshape(-1).to(x.dtype), cfg.n_embd)).view(B, Fr, -1)
        c = c + self.action_emb(actions) + self.scene_emb(scene)  # (B, F, C)
        c = c.repeat_interleave(P, dim=1)  # (B, F P, C): per token, its frame's condition
        for block in self.blocks:
            x = block(x, pos, mask, cache, manual, c)
        shift, scale = self.ada_f(F.silu(c)).chunk(2, dim=-1)
        x = self.patch_out(self.ln_f(x) * (1 + scale) + shift)  # (B, F P, 3 p p)
        x_hat = unpatchify(x, Fr, cfg.size, cfg.patch)  # the network predicts the clean frames (JiT)
        return (z - x_hat) / t.clamp(min=T_MIN).to(z.dtype)[..., None, None, None]  # v = (z_t - x) / t

    def new_cache(self, batch_size: int, n_frames: int | None = None) -> KVCache:
        """A static cache for `n_frames` frames (default max_frames), on the model's device and dtype."""
        cfg, p = self.config, next(self.parameters())
        n_frames = cfg.max_frames if n_frames is None else n_frames
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, n_frames * cfg.tokens_per_frame,
                       device=p.device, dtype=p.dtype, tokens_per_position=cfg.tokens_per_frame)

    def new_rolling_cache(self, batch_size: int, n_sink: int = 0, window: int | None = None) -> SinkCache:
        """A rolling frame cache: n_sink sink frames + the `window` newest (default max_frames - n_sink),
        both multiples of the chunk, n_sink + window <= max_frames."""
        cfg, p = self.config, next(self.parameters())
        if window is None:
            if not isinstance(n_sink, int) or not 0 <= n_sink < cfg.max_frames:
                raise ValueError(f"n_sink must be an int in [0, max_frames = {cfg.max_frames}), got {n_sink!r}")
            window = cfg.max_frames - n_sink
        return SinkCache(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, n_sink, window, cfg.max_frames,
                         p.device, p.dtype, tokens_per_position=cfg.tokens_per_frame, chunk=cfg.chunk)
