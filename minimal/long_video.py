"""Long horizons: streaming thousands of frames from a model trained on 16, and switching scenes mid-stream.

A model trained on 16-frame clips meets, in a long stream, contexts it never saw in training: its own
slightly wrong frames, fed back for minutes. Four answers from the literature, each a setting of the
pipeline's engine (stream_batch.StreamBatch) or of the student's training, and each training-free at
inference:

    Self-Forcing++ (Cui et al. 2025)  train on your own long rollouts: roll the student out far past 16
        frames on the rolling cache and apply Self Forcing's DMD loss to a 16-frame window of it
        (self_forcing.train_student with `horizon`; the checkpoint `video-sfpp`), so it learns to repair
        the drift it makes.
    Rolling Forcing (Liu et al. 2025)  denoise a window of `steps` chunks at rising noise levels in one
        call, the oldest nearly clean, the newest pure noise; only the chunk that leaves clean goes into
        the cache, so an error can still be corrected while its chunk is in the window. That is exactly the
        pipeline's staggered schedule (lag = 1, the refill fused): POLICIES["rolling_forcing"].
    Deep Forcing (Yi et al. 2025)  a deep sink, 40-60% of the cache kept as the stream's first frames and
        re-rotated to sit just before the recent ones (StreamCache with many sink frames, since its keys
        are placed by their position inside the cache), and participative compression: when the cache is
        full, keep the sinks, the newest frames and the middle frames the newest queries attend to most
        (`FrameCompressingCache`, on deep_sink.importance summed over each frame's tokens).
    LongLive (Yang et al. 2025)  KV re-cache on a prompt switch: the cached keys and values of the past
        were computed under the old scene label and keep pulling toward it; re-encoding the kept frames
        under the new label (StreamBatch.recache) lets the switch take.

In SpriteWorld a scene is a palette, so the past's *pixels* carry the old scene too: re-encoding them under
the new label alone ("relabel", LongLive as published) leaves the sprites in the old colours. Two ways on:
re-encode them noised ("noised", t = RECACHE_T: diffusion forcing learnt to trust a noisy past less), or
repaint them into the new scene first ("repaint": decode, swap each scene colour for the new scene's,
encode; what the kept frames would have been in the new scene), the pipeline's default.

`long_rollout(policy=...)` samples any number of frames under each. Simplifications: Deep Forcing
compresses at the first denoising step of a chunk; here the commit that overfills the cache compresses it
(the same rule, one call earlier). Rolling Forcing also trains on rolling windows; here the samplers are
used as they are.
"""

from __future__ import annotations

import math

import torch

from .autoencoder import FrameAutoencoder
from .data import SCENES
from .deep_sink import _check_budget, importance
from .flow_matching import check_nfe
from .stream_batch import call_frames, in_flight, sample_stream
from .stream_cache import call_mask
from .transformer import apply_rope
from .video_model import VideoTransformer

DEEP_SINK = 6  # sink frames of the deep sink: 6 of the 14 a chunk-by-chunk stream keeps (43%)
COMPRESS = {"n_sink": 2, "recent": 4, "budget": 8, "capacity": 14}  # frames (Deep Forcing: 16 kept, 4 recent)
POLICIES = {  # name -> (lag: "steps" for one chunk at a time or 1 for the rolling window, fuse, sink frames)
    "rolling": ("steps", False, 0),  # the plain rolling cache (video_sampling.sample_chunks(cache="rolling"))
    "deep_sink": ("steps", False, DEEP_SINK),
    "compress": ("steps", False, COMPRESS["n_sink"]),
    "rolling_forcing": (1, True, 0),
}


RECACHE = ("relabel", "noised", "repaint")  # LongLive's re-cache, and two ways to drop the old scene's pixels
RECACHE_T = 0.85  # the noise level of "noised"
COLOUR_TOL = 0.3  # a decoded pixel within this of a scene colour (L-inf) is that colour


def scene_colours() -> torch.Tensor:
    """(n_scenes, 5, 3): each scene's background, sprite palette and player colour."""
    return torch.tensor([[sc.background, *sc.palette, sc.player] for sc in SCENES])


def repaint(ae: FrameAutoencoder, z: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Latent frames z (B, F, C, h, w) of scenes old (B,) as they would look in scenes new (B,): decoded,
    every pixel near one of the old scene's colours set to the new scene's same colour, encoded again.
    Streams whose scene does not change are returned as they are."""
    x = ae.decode_video(z.float())  # (B, F, 3, H, W)
    table = scene_colours().to(x)  # (S, 5, 3)
    c_old, c_new = table[old.cpu()], table[new.cpu()]  # (B, 5, 3)
    d = (x[:, :, None] - c_old[:, None, :, :, None, None]).abs().amax(3)  # (B, F, 5, H, W)
    near = d.argmin(2)  # (B, F, H, W) the nearest old colour
    b = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    painted = c_new[b, near].permute(0, 1, 4, 2, 3)  # (B, F, 3, H, W)
    x = torch.where(d.amin(2, keepdim=True) < COLOUR_TOL, painted, x)
    changed = (old != new).to(z.device)[:, None, None, None, None]
    return torch.where(changed, ae.encode_video(x).to(z), z)


def recache_settings(mode: str, ae: FrameAutoencoder | None = None, generator=None) -> dict:
    """StreamBatch.recache's keyword arguments for a re-cache mode (RECACHE)."""
    if mode not in RECACHE:
        raise ValueError(f"recache must be one of {RECACHE} or None, got {mode!r}")
    if mode == "noised":
        return {"t": RECACHE_T, "generator": generator}
    if mode == "repaint":
        if ae is None:
            raise ValueError("recache 'repaint' needs the frame autoencoder to repaint the kept frames: give "
                             "recache=recache_settings('repaint', ae)")
        return {"repaint": lambda z, old, new: repaint(ae, z, old, new)}
    return {}


class FrameCompressingCache:
    """Participative Compression over frames, for StreamBatch. Committed frames (raw keys, values and
    queries) accumulate up to `capacity`; the commit that passes it compresses them, per layer, to `budget`
    frames: the n_sink first, the `recent` newest, and the budget - n_sink - recent middle frames with the
    largest importance phi_j (the attention the recent frames' queries pay to frame j's P tokens), compacted
    in stream order and renumbered 0..budget-1. Room for `tail` frames per call after the kept ones."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, n_sink: int, recent: int,
                 budget: int, capacity: int, tail: int, tokens_per_frame: int, chunk: int, max_frames: int,
                 rope_base: float = 10000.0, device=None, dtype=torch.float32):
        check_compression(n_sink, recent, budget, capacity, tail, chunk, max_frames)
        self.n_sink, self.recent, self.budget, self.capacity = n_sink, recent, budget, capacity
        self.P, self.step, self.rope_base, self.chunk = tokens_per_frame, chunk * tokens_per_frame, rope_base, chunk
        shape = (n_layer, batch_size, n_head, (capacity + tail) * self.P, head_dim)
        self.k, self.v, self.q = (torch.zeros(shape, device=device, dtype=dtype) for _ in range(3))
        self.reset()

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.q.nbytes

    def next_positions(self, n: int) -> torch.Tensor:
        self.n_new = n
        return torch.arange(self.length, self.length + n, device=self.k.device) // self.P

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor):
        """Write raw k, v, q (B, H, n, D) after the kept tokens; return every key and value."""
        end = self.length + k.shape[2]
        for buf, x in ((self.k, k), (self.v, v), (self.q, q)):
            buf[layer, :, :, self.length:end] = x
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self.length + self.n_new, device=self.k.device) // self.P

    def mask(self, n: int) -> torch.Tensor:
        return call_mask(n, self.length, self.step, self.k.device)

    def advance(self, n: int) -> None:
        """Commit the first n tokens (0 or one chunk) of the last call; compress if they overfill the cache."""
        if n not in (0, self.step):
            raise ValueError(f"advance commits one chunk ({self.step} tokens) of the last call, or none; got {n}")
        self.length += n
        if self.length > self.capacity * self.P:
            for layer in range(self.k.shape[0]):
                self._compress(layer)
            self.length = self.budget * self.P
            self.compressions += 1

    def _compress(self, layer: int) -> None:
        P, n = self.P, self.length // self.P  # n frames kept
        s, r = self.n_sink, self.recent
        k, v, q = (buf[layer, :, :, :n * P] for buf in (self.k, self.v, self.q))  # (B, H, n P, D)
        phi = importance(q[:, :, (n - r) * P:], k, self.rope_base, P, self.chunk)  # (B, n P)
        phi = phi.view(-1, n, P).sum(-1)[:, s:n - r]  # (B, n - s - r): per middle frame
        top = phi.topk(self.budget - s - r, dim=-1).indices.sort(dim=-1).values + s  # (B, kept middle)
        B = k.shape[0]
        frames = torch.cat([torch.arange(s, device=k.device).expand(B, s), top,
                            torch.arange(n - r, n, device=k.device).expand(B, r)], 1)  # (B, budget)
        idx = (frames[:, :, None] * P + torch.arange(P, device=k.device)).flatten(1)  # (B, budget P) tokens
        idx = idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        for buf, src in ((self.k, k), (self.v, v), (self.q, q)):
            buf[layer, :, :, :self.budget * P] = src.gather(2, idx)

    def reset(self) -> None:
        self.length = self.n_new = self.compressions = 0


def check_compression(n_sink, recent, budget, capacity, tail, chunk, max_frames) -> None:
    """Sizes in frames: the deep_sink rules, recent holding at least the committed chunk, room for a call."""
    _check_budget(n_sink, recent, budget, capacity, None)
    if recent < chunk:
        raise ValueError(f"recent must hold at least the chunk just committed ({chunk} frames), got {recent}")
    for name, value in (("n_sink", n_sink), ("recent", recent), ("budget", budget), ("capacity", capacity)):
        if value % chunk:  # kept frames are renumbered: whole chunks keep the block-causal grouping true
            raise ValueError(f"{name} must be a multiple of the chunk ({chunk} frames), got {value}")
    if capacity + tail > max_frames:
        raise ValueError(f"capacity ({capacity}) + the {tail} frames of a call exceed max_frames = {max_frames}: "
                         f"capacity must be at most {max_frames - tail}")


class NaiveFrameCompressingCache:
    """Reference for FrameCompressingCache: per layer a list of committed frames, each (q, k, v) of
    (B, H, P, D); the importance of each middle frame summed query by query, stream by stream, in loops."""

    stores_raw_keys = True

    def __init__(self, n_layer: int, n_sink: int, recent: int, budget: int, capacity: int, tokens_per_frame: int,
                 chunk: int, rope_base: float = 10000.0):
        self.n_sink, self.recent, self.budget, self.capacity = n_sink, recent, budget, capacity
        self.P, self.chunk, self.rope_base = tokens_per_frame, chunk, rope_base
        self.frames = [[] for _ in range(n_layer)]
        self.new = [[] for _ in range(n_layer)]

    @property
    def length(self) -> int:
        return len(self.frames[0]) * self.P

    def next_positions(self, n: int) -> torch.Tensor:
        self.n_new = n
        return torch.arange(self.length, self.length + n) // self.P

    def update(self, layer, k, v, q):
        self.new[layer] = list(zip(q.split(self.P, 2), k.split(self.P, 2), v.split(self.P, 2), strict=True))
        kept = self.frames[layer] + self.new[layer]
        return torch.cat([f[1] for f in kept], 2), torch.cat([f[2] for f in kept], 2)

    def key_positions(self) -> torch.Tensor:
        return torch.arange(self.length + self.n_new) // self.P

    def mask(self, n: int) -> torch.Tensor:
        chunk = torch.arange(n) // (self.chunk * self.P)
        return torch.cat([torch.ones(n, self.length, dtype=torch.bool), chunk[None, :] <= chunk[:, None]], 1)

    def _phi(self, frames, b: int) -> list[float]:
        """Importance of every frame for stream b: softmax weights from each recent query token, summed."""
        n, scale = len(frames), 1 / math.sqrt(frames[0][1].shape[-1])
        phi = [0.0] * n
        for i in range(n - self.recent, n):  # the recent frames' queries
            for qi in frames[i][0][b].unbind(1):  # (H, D), one query token of frame i
                seen = [j for j in range(n) if j // self.chunk <= i // self.chunk]
                keys = torch.cat([apply_rope(frames[j][1][b][None], torch.full((self.P,), j), self.rope_base)[0]
                                  for j in seen], 1)  # (H, len(seen) P, D)
                qr = apply_rope(qi[None, :, None], torch.tensor([i]), self.rope_base)[0]  # (H, 1, D)
                w = ((qr @ keys.transpose(-2, -1)) * scale).softmax(-1)[:, 0]  # (H, len(seen) P)
                for slot, j in enumerate(seen):
                    phi[j] += w[:, slot * self.P:(slot + 1) * self.P].sum().item()
        return phi

    def advance(self, n: int) -> None:
        for layer, frames in enumerate(self.frames):
            frames += self.new[layer][:n // self.P]
            if len(frames) <= self.capacity:
                continue
            s, r, total = self.n_sink, self.recent, len(frames)
            rows = []
            for b in range(frames[0][0].shape[0]):  # each stream keeps its own frames
                phi = self._phi(frames, b)
                middle = sorted(range(s, total - r), key=lambda j: -phi[j])[:self.budget - s - r]
                keep = list(range(s)) + sorted(middle) + list(range(total - r, total))
                rows.append([tuple(x[b:b + 1] for x in frames[j]) for j in keep])
            frames[:] = [tuple(torch.cat([row[slot][i] for row in rows]) for i in range(3))
                         for slot in range(self.budget)]

    def reset(self) -> None:
        self.frames = [[] for _ in self.frames]


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    return policy


def policy_stream(model: VideoTransformer, policy: str, steps: int, batch_size: int = 1,
                  window: int | None = None, reference: bool = False) -> dict:
    """The StreamBatch settings of a policy: {"lag", "fuse", "n_sink", "cache"} (sample_stream's keywords).
    window (rolling_forcing): the chunks denoised together, one per denoising step (default steps)."""
    check_policy(policy)
    check_nfe(steps)
    lag, fuse, n_sink = POLICIES[policy]
    lag = steps if lag == "steps" else lag
    if policy == "rolling_forcing":
        window = steps if window is None else window
        if not isinstance(window, int) or isinstance(window, bool) or window != in_flight(steps, lag):
            raise ValueError(f"window must hold one chunk per denoising step: window = steps = {steps}, got {window!r}")
    elif window is not None:
        raise ValueError(f"window is the rolling_forcing policy's; policy {policy!r} denoises one chunk at a time")
    cfg, p = model.config, next(model.parameters())
    cache = None
    if policy == "compress":
        tail = call_frames(steps, lag, fuse, cfg.chunk)
        cache = NaiveFrameCompressingCache(cfg.n_layer, **COMPRESS, tokens_per_frame=cfg.tokens_per_frame,
                                           chunk=cfg.chunk, rope_base=cfg.rope_base) if reference else \
            FrameCompressingCache(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, **COMPRESS, tail=tail,
                                  tokens_per_frame=cfg.tokens_per_frame, chunk=cfg.chunk, max_frames=cfg.max_frames,
                                  rope_base=cfg.rope_base, device=p.device, dtype=p.dtype)
    return {"lag": lag, "fuse": fuse, "n_sink": n_sink, "cache": cache, "reference": reference and cache is None}


@torch.no_grad()
def long_rollout(model: VideoTransformer, actions: torch.Tensor, scene, steps: int, noise: torch.Tensor,
                 policy: str = "rolling", ts: torch.Tensor | None = None, recache: str | dict | None = None,
                 window: int | None = None, reference: bool = False) -> torch.Tensor:
    """Any number of frames (B, F, C, H, W) under a long-horizon policy (POLICIES), through the pipeline's
    engine. actions (B, F); scene: int, (B,) or (B, F) (a chunk takes its first frame's scene); noise
    (B, F, C, H, W); ts: the schedule (a student's); recache: what a scene switch does: None, a mode of
    RECACHE that needs nothing ("relabel", "noised"), or recache_settings(mode, ae, generator); window:
    the rolling_forcing policy's chunks in flight (= steps); reference: the list caches instead of the
    buffers (slow, obviously correct)."""
    s = policy_stream(model, policy, steps, actions.shape[0], window, reference)
    recache = recache_settings(recache) if isinstance(recache, str) else recache
    if recache is not None and s["cache"] is not None:
        raise ValueError(f"recache re-encodes the ring cache's frames; policy {policy!r} keeps its own selection")
    return sample_stream(model, actions, scene, steps, s["lag"], noise, s["n_sink"], s["fuse"],
                         False if recache is None else recache, ts=ts, reference=s["reference"], cache=s["cache"])
