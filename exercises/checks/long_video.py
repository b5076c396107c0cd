"""Checks for exercise 08, participative compression over video frames (exercises/solutions/08_long_horizons.ipynb).

Every check compares the student's code with the library as it runs:
- `minimal.deep_sink.importance` (the attention each key token receives from the recent queries), summed over
  every frame's P tokens, for the per-frame importance phi_j;
- `minimal.long_video.FrameCompressingCache`, filled with random raw queries, keys and values and made to
  compress once: the frames it keeps (read back from its compacted buffers) and the buffers themselves, for
  the selection and the compaction;
- the same cache inside the pipeline's engine on the shipped `video-sf` model for the stretch part: the frames
  each layer kept at each compression of a long stream.
Shapes vary in streams B, heads H, tokens per frame P, head size D, chunk, sinks, recent frames and budget.
"""

from __future__ import annotations

import functools

import torch

from minimal import deep_sink as library_deep_sink
from minimal import long_video as library_long_video
from minimal.deep_sink import importance
from minimal.long_video import COMPRESS, FrameCompressingCache, policy_stream
from minimal.stream_batch import call_frames, sample_stream

from .common import (
    answers,
    call_student,
    expect_close,
    expect_raises,
    expect_shape,
    expect_tensor,
    fail,
    passed,
    single_thread,
)

ROPE_BASE = 10000.0
ATOL = 1e-9  # float64 inputs: the same sums in another order
# (B, H, P, D, n frames kept, chunk, n_sink, recent, budget): recent >= chunk and every size in whole chunks,
# as the cache requires
CASES = (
    (1, 1, 1, 4, 10, 1, 1, 2, 5),
    (2, 2, 4, 8, 16, 2, 2, 4, 8),
    (3, 4, 2, 6, 12, 2, 0, 2, 6),
    (2, 3, 3, 4, 15, 3, 3, 3, 9),
    (1, 2, 5, 8, 18, 2, 4, 2, 10),
    (2, 2, 4, 16, 24, 4, 4, 4, 12),
)
IMPORTANCE_HINT = ("token t sits at position (= frame) t // P, queries and keys alike; rotate both with apply_rope at "
                   "those positions; a query sees the keys whose chunk (frame // chunk) is not after its own; "
                   "softmax over the keys, then sum over heads, query tokens and each frame's P key tokens")
SELECT_HINT = ("keep frames 0..n_sink-1, then the budget - n_sink - recent frames of the middle (n_sink .. n - recent "
               "- 1) with the largest phi, in stream order (sorted), then the recent frames n - recent .. n - 1")
COMPACT_HINT = ("frame j is tokens j P .. j P + P - 1; gather, for each stream its own frames, all P tokens of every "
                "kept frame in the order of `frames`, every head and channel")


def _inputs(B, H, P, D, n, seed):
    """Random raw queries, keys and values (B, H, n P, D) in float64."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n * P, D, generator=g, dtype=torch.float64) for _ in range(3))


def library_phi(q, k, recent, P, chunk) -> torch.Tensor:
    """(B, n) the library's per-token importance summed over each frame's P tokens."""
    B, n = k.shape[0], k.shape[2] // P
    return importance(q[:, :, (n - recent) * P:], k, ROPE_BASE, P, chunk).view(B, n, P).sum(-1)


def library_compress(q, k, v, P, chunk, n_sink, recent, budget):
    """FrameCompressingCache holding the n frames of (q, k, v), made to compress once (one layer):
    (keys, values) (B, H, budget P, D) it keeps, and the frames (B, budget) they came from."""
    B, H, nP, D = k.shape
    n = nP // P
    cache = FrameCompressingCache(1, B, H, D, n_sink, recent, budget, capacity=n - chunk, tail=chunk,
                                  tokens_per_frame=P, chunk=chunk, max_frames=n, rope_base=ROPE_BASE, dtype=k.dtype)
    cache.update(0, k, v, q)
    cache.length = (n - chunk) * P  # the last chunk just written: its commit overfills the cache
    cache.advance(chunk * P)
    kept_k = cache.k[0, :, :, :budget * P].clone()
    kept_v = cache.v[0, :, :, :budget * P].clone()
    return kept_k, kept_v, _frames_of(kept_k, k, P)


def _frames_of(kept: torch.Tensor, k: torch.Tensor, P: int) -> torch.Tensor:
    """(B, budget) the frame of k (B, H, n P, D) that each frame of `kept` (B, H, budget P, D) is a copy of."""
    B, H, _, D = k.shape
    old = k.view(B, H, -1, P, D).transpose(1, 2).flatten(2)  # (B, n, H P D)
    new = kept.view(B, H, -1, P, D).transpose(1, 2).flatten(2)  # (B, budget, H P D)
    same = (new[:, :, None] == old[:, None]).all(-1)  # (B, budget, n)
    if not bool(same.any(-1).all()):
        raise RuntimeError("the library's kept frames are not copies of the original frames")
    return same.float().argmax(-1)


def _compare_frames(what: str, got: torch.Tensor, want: torch.Tensor, hint: str) -> None:
    """Row by row, with a hint for the usual mistakes: the right frames out of order, a frame kept twice."""
    for b in range(want.shape[0]):
        g, w = got[b].tolist(), want[b].tolist()
        if g == w:
            continue
        if sorted(g) == w:
            hint = "the right frames, in the wrong order: sort the chosen middle frames by frame number (stream order)"
        elif len(set(g)) < len(g):
            twice = sorted({j for j in g if g.count(j) > 1})
            hint = (f"frame(s) {twice} kept twice: choose the top frames among the middle ones only (n_sink .. "
                    "n - recent - 1), since the sinks and the recent frames are kept anyway")
        fail(f"{what}, stream {b}", w, g, hint)


def _as_frames(what: str, got, shape) -> torch.Tensor:
    got = expect_tensor(what, got, SELECT_HINT)
    if got.dtype.is_floating_point or got.dtype == torch.bool:
        fail(what, "an integer tensor of frame indices (torch.long)", f"dtype {got.dtype}", SELECT_HINT)
    expect_shape(what, got, shape, "one row per stream, budget frame indices: n_sink + (budget - n_sink - recent) + "
                                   "recent of them")
    return got


@answers(frame_importance=(library_deep_sink.importance, library_deep_sink, library_long_video))
@single_thread
def check_frame_importance(frame_importance) -> None:
    """frame_importance(q_recent, k, P, chunk) == deep_sink.importance summed over each frame's P tokens."""
    for i, (B, H, P, D, n, chunk, _, recent, _) in enumerate(CASES):
        for R in sorted({1, recent, chunk + 1}):
            q, k, _ = _inputs(B, H, P, D, n, seed=10 * i + R)
            q_recent = q[:, :, (n - R) * P:]
            what = (f"frame_importance(q_recent of the {R} recent frame(s), k of {n} frames, P={P}, chunk={chunk}) "
                    f"with B={B}, H={H}, D={D}")
            got = call_student(what, frame_importance, q_recent, k, P, chunk, ROPE_BASE, hint=IMPORTANCE_HINT)
            want = library_phi(q, k, R, P, chunk)
            expect_shape(what, got, tuple(want.shape), "one value per stream and per frame: (B, n_frames), each "
                                                       "frame's P tokens summed")
            hint = IMPORTANCE_HINT
            if chunk > 1 and got.shape == want.shape and torch.allclose(got.double(), library_phi(q, k, R, P, 1)):
                hint = (f"this is causal attention frame by frame; with chunk={chunk} a query also sees the later "
                        "frames of its own chunk (block-causal: key chunk = frame // chunk <= the query's chunk)")
            expect_close(what + " against deep_sink.importance summed per frame", got, want, ATOL, hint)
    total = float(got.sum())
    expect_close("the importances of every stream sum to heads x recent query tokens (each softmax row sums to 1)",
                 got.sum(-1), torch.full((got.shape[0],), float(H * R * P), dtype=torch.float64), 1e-6,
                 "a softmax over the visible keys of every query, summed over heads and query tokens")
    passed("check_frame_importance", f"{len(CASES)} shapes, 1 to {max(c[7] for c in CASES) + 1} recent frames: equal "
                                     f"to deep_sink.importance summed over each frame (last case: {total:.0f} = "
                                     f"H x R x P = {H} x {R} x {P} in all)")


@answers(select_frames=(library_long_video.FrameCompressingCache, library_long_video, library_deep_sink))
@single_thread
def check_select_frames(select_frames) -> None:
    """select_frames(phi, n_sink, recent, budget) == the frames FrameCompressingCache keeps, on its own phi and on
    importances where the sinks and the recent frames weigh the most; ValueError for a budget out of range."""
    for i, (B, H, P, D, n, chunk, n_sink, recent, budget) in enumerate(CASES):
        q, k, v = _inputs(B, H, P, D, n, seed=100 + i)
        phi = library_phi(q, k, recent, P, chunk)
        _, _, want = library_compress(q, k, v, P, chunk, n_sink, recent, budget)
        what = f"select_frames(phi of {n} frames, n_sink={n_sink}, recent={recent}, budget={budget}) with B={B}"
        got = _as_frames(what, call_student(what, select_frames, phi.clone(), n_sink, recent, budget,
                                            hint=SELECT_HINT), (B, budget))
        _compare_frames(what + ": the frames FrameCompressingCache keeps", got, want, SELECT_HINT)
    # what attention looks like in a trained model: the sinks and the newest frames draw the most
    g = torch.Generator().manual_seed(7)
    for B, n, n_sink, recent, budget in ((2, 16, 2, 4, 8), (3, 12, 1, 2, 6), (1, 20, 4, 4, 14)):
        phi = torch.rand(B, n, generator=g, dtype=torch.float64)
        phi[:, :n_sink] += 10
        phi[:, n - recent:] += 5
        middle = phi[:, n_sink:n - recent].argsort(-1, descending=True)[:, :budget - n_sink - recent] + n_sink
        want = torch.cat([torch.arange(n_sink).expand(B, -1), middle.sort(-1).values,
                          torch.arange(n - recent, n).expand(B, -1)], 1)
        what = (f"select_frames(phi of {n} frames whose sinks and recent frames draw the most attention, "
                f"n_sink={n_sink}, recent={recent}, budget={budget})")
        got = _as_frames(what, call_student(what, select_frames, phi.clone(), n_sink, recent, budget,
                                            hint=SELECT_HINT), (B, budget))
        _compare_frames(what, got, want, SELECT_HINT + ": the sinks and the recent frames are kept anyway, so only "
                                                       "the middle frames compete for the other places")
    phi = torch.rand(2, 10, generator=g, dtype=torch.float64)
    for n_sink, recent, budget in ((2, 4, 5), (4, 4, 7), (2, 2, 11)):
        expect_raises(f"select_frames(phi of 10 frames, n_sink={n_sink}, recent={recent}, budget={budget})", ValueError,
                      lambda s=n_sink, r=recent, m=budget: select_frames(phi, s, r, m),
                      "raise ValueError unless n_sink + recent <= budget <= n_frames: the sinks and the recent "
                      "frames must fit in the budget, and there must be budget frames to keep")
    passed("check_select_frames", f"{len(CASES)} shapes equal the frames FrameCompressingCache keeps, 3 more with "
                                  f"heavy sinks and recent frames; for example {got[0].tolist()}")


@answers(compact=(library_long_video.FrameCompressingCache, library_long_video))
@single_thread
def check_compact(compact) -> None:
    """compact(k, v, frames, P) == FrameCompressingCache's buffers after it compressed to those frames."""
    for i, (B, H, P, D, n, chunk, n_sink, recent, budget) in enumerate(CASES):
        q, k, v = _inputs(B, H, P, D, n, seed=200 + i)
        want_k, want_v, frames = library_compress(q, k, v, P, chunk, n_sink, recent, budget)
        what = f"compact(k, v (B={B}, H={H}, {n} frames x P={P}, D={D}), frames {tuple(frames.shape)}, P={P})"
        out = call_student(what, compact, k.clone(), v.clone(), frames.clone(), P, hint=COMPACT_HINT)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            fail(what, "a tuple (keys, values)", f"{type(out).__name__}", COMPACT_HINT)
        expect_close(what + ": keys, against FrameCompressingCache's buffer", out[0], want_k, 0.0, COMPACT_HINT)
        expect_close(what + ": values, against FrameCompressingCache's buffer", out[1], want_v, 0.0, COMPACT_HINT)
    passed("check_compact", f"{len(CASES)} shapes: the same keys and values as FrameCompressingCache's buffers, "
                            f"every stream with its own frames (last case: {budget} of {n} frames, {budget * P} of "
                            f"{n * P} tokens)")


# --- the stretch part: what the layers of video-sf keep ----------------------------------------------


class _TracedCache(FrameCompressingCache):
    """The library's cache, recording after each compression the stream frame of every frame each layer keeps."""

    def reset(self) -> None:
        super().reset()
        self.ids, self.kept = None, []  # ids: per layer (B, frames kept) stream frame numbers

    def advance(self, n: int) -> None:
        if n:
            B = self.k.shape[1]
            start = 0 if self.ids is None else int(self.ids[0].max()) + 1
            new = torch.arange(start, start + n // self.P).expand(B, -1)
            self.ids = [new] * self.k.shape[0] if self.ids is None else [torch.cat([i, new], 1) for i in self.ids]
        before = self.compressions
        super().advance(n)
        if self.compressions > before:
            self.kept.append(torch.stack(self.ids))  # (n_layer, B, budget)

    def _compress(self, layer: int) -> None:
        keys = self.k[layer, :, :, :self.length].clone()
        super()._compress(layer)
        frames = _frames_of(self.k[layer, :, :, :self.budget * self.P], keys, self.P)  # (B, budget)
        self.ids[layer] = self.ids[layer].gather(1, frames)


@functools.cache
def video_sf_kept(n_frames: int = 192, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(C, n_layer, B, budget): the stream frames each layer of video-sf kept at each of the C compressions of
    `batch` streams of n_frames random actions (COMPRESS sizes, 4 steps, chunk by chunk); and the number of
    middle frames each compression chose among."""
    from minimal.checkpoints import load_pretrained

    model = load_pretrained("video-sf")[0].eval()
    cfg, steps = model.config, 4
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, cfg.n_actions, (batch, n_frames), generator=g)
    noise = torch.randn(batch, n_frames, *cfg.frame_shape, generator=g)
    s = policy_stream(model, "compress", steps, batch)
    cache = _TracedCache(cfg.n_layer, batch, cfg.n_head, cfg.head_dim, **COMPRESS,
                         tail=call_frames(steps, s["lag"], s["fuse"], cfg.chunk), tokens_per_frame=cfg.tokens_per_frame,
                         chunk=cfg.chunk, max_frames=cfg.max_frames, rope_base=cfg.rope_base)
    scenes = torch.arange(batch) % cfg.n_scenes
    with torch.no_grad():
        sample_stream(model, actions, scenes, steps, s["lag"], noise, s["n_sink"], s["fuse"], cache=cache)
    # the cache grows from `budget` frames a chunk at a time and compresses when it passes `capacity`
    frames = COMPRESS["budget"] + cfg.chunk * (-(-(COMPRESS["capacity"] + 1 - COMPRESS["budget"]) // cfg.chunk))
    return torch.stack(cache.kept), frames - COMPRESS["n_sink"] - COMPRESS["recent"]


def reference_agreement(kept: torch.Tensor, n_sink: int, recent: int) -> float:
    """Mean over compressions, streams and ordered pairs of distinct layers (a, b) of the fraction of layer a's
    middle frames that layer b keeps too."""
    C, L, B, budget = kept.shape
    total, count = 0.0, 0
    for c in range(C):
        for b in range(B):
            middle = [set(kept[c, layer, b, n_sink:budget - recent].tolist()) for layer in range(L)]
            for x in range(L):
                for y in range(L):
                    if x != y:
                        total += len(middle[x] & middle[y]) / len(middle[x])
                        count += 1
    return total / count


def rolling_share(kept: torch.Tensor, n_sink: int, recent: int) -> float:
    """The share of the kept middle frames that a plain rolling window (the sinks and the budget - n_sink newest
    frames) would also have kept."""
    budget = kept.shape[-1]
    newest = kept[..., -1:]  # the newest frame at each compression
    middle = kept[..., n_sink:budget - recent]
    return float((middle > newest - (budget - n_sink)).double().mean())


@answers(layer_agreement=())
@single_thread
def check_layer_agreement(layer_agreement) -> None:
    """layer_agreement(kept, n_sink, recent) == the reference on made-up selections and on video-sf's."""
    hint = ("for every compression and stream, take each layer's middle frames (slots n_sink .. budget - recent - 1); "
            "for every ordered pair of distinct layers (a, b), the fraction of a's middle frames that b keeps too; "
            "average over pairs, streams and compressions")
    g = torch.Generator().manual_seed(3)
    made_up = []
    for C, L, B, n_sink, recent, budget in ((1, 2, 1, 1, 1, 4), (3, 4, 2, 2, 4, 8), (2, 3, 3, 0, 2, 7)):
        kept = torch.stack([torch.stack([torch.stack([
            torch.cat([torch.arange(n_sink), torch.randperm(8, generator=g)[:budget - n_sink - recent].sort().values
                       + n_sink, torch.arange(n_sink + 8, n_sink + 8 + recent)]) for _ in range(B)])
            for _ in range(L)]) for _ in range(C)])
        made_up.append((kept, n_sink, recent))
    kept, candidates = video_sf_kept()
    s, r = COMPRESS["n_sink"], COMPRESS["recent"]
    for i, (x, n_sink, recent) in enumerate([*made_up, (kept, s, r)]):
        C, L, B, budget = x.shape
        what = (f"layer_agreement(kept {tuple(x.shape)}, n_sink={n_sink}, recent={recent})"
                + (" on video-sf's stream" if i == len(made_up) else ""))
        got = call_student(what, layer_agreement, x.clone(), n_sink, recent, hint=hint)
        want = reference_agreement(x, n_sink, recent)
        if isinstance(got, torch.Tensor):
            got = got.item() if got.numel() == 1 else got
        if not isinstance(got, int | float) or abs(got - want) > 1e-9:
            fail(what, f"{want:.6f}", repr(got)[:200], hint)
    middle = budget - s - r
    passed("check_layer_agreement",
           f"video-sf, {kept.shape[2]} streams of 192 frames, {kept.shape[0]} compressions each: two layers keep "
           f"{want:.0%} of the same middle frames (a random choice of {middle} of the {candidates} candidates: "
           f"{middle / candidates:.0%}); a rolling window would have kept {rolling_share(kept, s, r):.0%} of them")
