"""Checks for exercise 06, causal video diffusion (exercises/solutions/06_causal_video.ipynb).

Every check compares the student's code with an independent reference: `minimal.video_model.block_causal_mask`
and `minimal.diffusion_forcing.teacher_forcing_mask` themselves, and a recomputation with a small
`VideoTransformer` whose weights are all random (a fresh one, adaLN-Zero, predicts the same clean
frames x_hat = 0 whatever its context, so no change to the context could show). A wrong mask is reported
by its first wrong entry, in words: which query token (frame, chunk) may or may not see which key token,
and the rule that decides it. The checks also recognise the classic mistakes (a strict <, frame-level or
token-level causality, a transposed or an inverted mask, clean queries that see the noisy half, a noisy
chunk that sees its own clean frames) and name the one a wrong mask reproduces.
Diffusion forcing's chunk times are checked by what they must be (one uniform time per chunk, shared by
its frames, independent across chunks); the rolling mask against the rule computed entry by entry.
"""

from __future__ import annotations

import math

import torch

from minimal import diffusion_forcing as library_diffusion_forcing
from minimal import video_model as library_video_model
from minimal.data import ACTIONS, SCENES
from minimal.diffusion_forcing import teacher_forcing_mask as reference_teacher_forcing_mask
from minimal.video_model import VideoConfig, VideoTransformer
from minimal.video_model import block_causal_mask as reference_block_causal_mask

from .common import (
    answers,
    call_student,
    expect_equal,
    expect_raises,
    expect_shape,
    expect_tensor,
    fail,
    passed,
    single_thread,
)

MASK_SIZES = ((4, 2, 3), (1, 1, 1), (4, 1, 2), (6, 3, 2), (8, 4, 5), (3, 3, 4), (4, 2, 16))
TF_SIZES = ((4, 2, 3), (6, 3, 2), (3, 1, 2), (2, 2, 4), (8, 4, 1))
ATOL_CHANGE = 1e-6  # "unchanged": float32 outputs of a 1-layer model


def tiny_video_model(seed: int = 0) -> VideoTransformer:
    """A 1-layer VideoTransformer for 16 x 16 frames (16 tokens per frame), chunks of 2 frames and at most
    4 frames, with every weight random: adaLN-Zero would otherwise make it ignore its context."""
    cfg = VideoConfig(n_layer=1, n_embd=32, n_head=2, max_frames=4, chunk=2)
    model = VideoTransformer(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 1 / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def _token(i: int, chunk: int, P: int, half: str = "") -> str:
    return f"{half}token {i} (frame {i // P}, chunk {i // (chunk * P)})"


def _matches(got: torch.Tensor, variants: dict[str, torch.Tensor]) -> str | None:
    """The name of the classic mistake whose mask `got` reproduces, if any."""
    for name, value in variants.items():
        if got.shape == value.shape and torch.equal(got, value):
            return name
    return None


def _expect_bool_mask(what: str, got, shape: tuple[int, int], hint: str) -> torch.Tensor:
    expect_shape(what, got, shape, hint)
    if got.dtype != torch.bool:
        fail(what + ": dtype", "torch.bool (True = may attend)", str(got.dtype),
             "a comparison such as a <= b already gives a bool tensor; attention reads a float mask as "
             "numbers added to the scores, not as allowed/forbidden")
    return got.cpu()


# ---------------------------------------------------------------------------------------------------
# Part 1: the block-causal mask
# ---------------------------------------------------------------------------------------------------

def _relation(qk: int, kk: int) -> str:
    if kk == qk:
        return "its own chunk"
    return "a later chunk" if kk > qk else "an earlier chunk"


BLOCK_HINTS = {
    "its own chunk": "a token sees every token of its own chunk, later frames included: the c frames of a chunk "
                     "are denoised together (chunk(j) <= chunk(i) with <=, and the chunk of token i is "
                     "i // (chunk * tokens_per_frame), not its frame i // tokens_per_frame)",
    "a later chunk": "a token never sees a later chunk: M[i, j] = chunk(j) <= chunk(i), the row i is the query, "
                     "the column j the key",
    "an earlier chunk": "a token sees every token of every earlier chunk (its context): M[i, j] = "
                        "chunk(j) <= chunk(i), True = may attend",
}


def _block_variants(n_frames: int, chunk: int, P: int) -> dict[str, torch.Tensor]:
    L = n_frames * P
    q, k = (torch.arange(L) // (chunk * P))[:, None], (torch.arange(L) // (chunk * P))[None, :]
    fq, fk = (torch.arange(L) // P)[:, None], (torch.arange(L) // P)[None, :]
    tq, tk = torch.arange(L)[:, None], torch.arange(L)[None, :]
    return {"a strict chunk(j) < chunk(i), so that a token does not see its own chunk": k < q,
            "frame-level causality, frame(j) <= frame(i) (chunks of one frame)": fk <= fq,
            "token-level causality, j <= i (a language model's causal mask)": tk <= tq,
            "the transposed mask, chunk(i) <= chunk(j) (rows must be queries, columns keys)": q <= k,
            "the inverted mask, True = masked out (here True = may attend)": k > q}


def _diagnose_block(what: str, got: torch.Tensor, want: torch.Tensor, n_frames: int, chunk: int, P: int) -> None:
    """Fail on the first wrong entry, looking first inside the chunks, then at later, then at earlier chunks."""
    if torch.equal(got, want):
        return
    L = n_frames * P
    chunk_of = torch.arange(L) // (chunk * P)
    q, k = chunk_of[:, None], chunk_of[None, :]
    wrong = got != want
    for region in (k == q, k > q, k < q):
        idx = torch.nonzero(wrong & region)
        if len(idx):
            i, j = (int(a) for a in idx[0])
            break
    relation = _relation(int(chunk_of[i]), int(chunk_of[j]))
    relation_words = relation
    if relation == "its own chunk":
        fi, fj = i // P, j // P
        relation_words = ("its own frame" if fi == fj else "a later frame of its own chunk" if fj > fi
                          else "an earlier frame of its own chunk")
    hint = BLOCK_HINTS[relation]
    mistake = _matches(got, _block_variants(n_frames, chunk, P))
    if mistake:
        hint = f"your mask equals {mistake}; {hint}"
    fail(f"{what}: entry [{i}, {j}]: may query {_token(i, chunk, P)} attend to key {_token(j, chunk, P)}, "
         f"in {relation_words}?", bool(want[i, j]),
         f"{bool(got[i, j])} ({int(wrong.sum())} of {L * L} entries wrong)", hint)


@answers(block_causal_mask=(library_video_model.block_causal_mask, library_video_model.token_chunks,
                            library_video_model.chunk_mask))
@single_thread
def check_block_causal_mask(block_causal_mask) -> None:
    """M[i, j] = chunk(j) <= chunk(i), chunk(i) = i // (chunk * tokens_per_frame); ValueError if chunk does
    not divide n_frames."""
    hint = ("M[i, j] = chunk(j) <= chunk(i) with chunk(i) = i // (chunk * tokens_per_frame): a (L, L) bool tensor, "
            "L = n_frames * tokens_per_frame, rows = queries, columns = keys")
    for n_frames, chunk, P in MASK_SIZES:
        what = f"block_causal_mask(n_frames={n_frames}, chunk={chunk}, tokens_per_frame={P})"
        got = call_student(what, block_causal_mask, n_frames, chunk, P, hint=hint)
        L = n_frames * P
        got = _expect_bool_mask(what, got, (L, L), hint)
        _diagnose_block(what, got, reference_block_causal_mask(n_frames, chunk, P), n_frames, chunk, P)
    for n_frames, chunk, P in ((5, 2, 4), (4, 3, 1), (2, 4, 3)):
        expect_raises(f"block_causal_mask(n_frames={n_frames}, chunk={chunk}, tokens_per_frame={P}): the chunk "
                      "size does not divide the number of frames", ValueError,
                      lambda n=n_frames, c=chunk, p=P: block_causal_mask(n, c, p),
                      "raise ValueError when n_frames % chunk != 0: a last, partial chunk is never generated")
    passed("check_block_causal_mask", f"M[i, j] = chunk(j) <= chunk(i) for {len(MASK_SIZES)} sizes (each token "
                                      "sees its whole chunk and every earlier one, never a later one); "
                                      "ValueError when chunk does not divide n_frames")


# ---------------------------------------------------------------------------------------------------
# Part 2: teacher forcing's mask for [clean | noisy]
# ---------------------------------------------------------------------------------------------------

QUADRANTS = (  # (name, query half, key half, hint)
    ("clean -> clean", 0, 0, "clean queries see the clean chunks <= their own: the block-causal mask"),
    ("clean -> noisy", 0, 1, "this quadrant must be all False: the clean half stands for the context that "
                             "inference keeps in the KV cache, and the context pass never sees a noisy frame"),
    ("noisy -> clean", 1, 0, "noisy chunk k sees the clean chunks strictly before k, chunk(j) < k: clean chunk k "
                             "itself would hand it the answer, the frames it must denoise"),
    ("noisy -> noisy", 1, 1, "noisy chunk k sees its own noisy chunk only, chunk(j) == k: its past comes from "
                             "the clean half, and other noisy chunks are not what inference shows it"),
)


def _tf_variants(n_frames: int, chunk: int, P: int) -> dict[str, torch.Tensor]:
    L = n_frames * P
    chunk_of = torch.arange(L) // (chunk * P)
    q, k = chunk_of[:, None], chunk_of[None, :]
    none = torch.zeros(L, L, dtype=torch.bool)

    def grid(cc, cn, nc, nn):
        return torch.cat([torch.cat([cc, cn], 1), torch.cat([nc, nn], 1)], 0)

    return {"noisy chunk k also seeing clean chunk k (<= instead of <)": grid(k <= q, none, k <= q, k == q),
            "clean queries also seeing the noisy chunks <= their own": grid(k <= q, k <= q, k < q, k == q),
            "noisy chunks also seeing the earlier noisy chunks": grid(k <= q, none, k < q, k <= q),
            "noisy chunks seeing no clean context": grid(k <= q, none, none, k == q),
            "the query halves stacked in the order [noisy | clean]": grid(k < q, k == q, k <= q, none),
            "the doubled sequence under one block-causal mask of 2 n_frames frames":
                reference_block_causal_mask(2 * n_frames, chunk, P)}


def _diagnose_tf(what: str, got: torch.Tensor, want: torch.Tensor, n_frames: int, chunk: int, P: int) -> None:
    if torch.equal(got, want):
        return
    L = n_frames * P
    halves = ("clean ", "noisy ")
    for name, qh, kh, hint in QUADRANTS:
        rows, cols = slice(qh * L, (qh + 1) * L), slice(kh * L, (kh + 1) * L)
        wrong = got[rows, cols] != want[rows, cols]
        if not wrong.any():
            continue
        i, j = (int(a) for a in torch.nonzero(wrong)[0])
        mistake = _matches(got, _tf_variants(n_frames, chunk, P))
        if mistake:
            hint = f"your mask equals {mistake}; {hint}"
        quadrant = (f"the {name} quadrant, rows [{qh * L}, {(qh + 1) * L}) and columns "
                    f"[{kh * L}, {(kh + 1) * L}) with L = {L}")
        fail(f"{what}: entry [{qh * L + i}, {kh * L + j}] in {quadrant}: may query "
             f"{_token(i, chunk, P, halves[qh])} attend to key {_token(j, chunk, P, halves[kh])}?",
             bool(want[qh * L + i, kh * L + j]),
             f"{bool(got[qh * L + i, kh * L + j])} ({int(wrong.sum())} of {L * L} entries of this quadrant wrong)",
             hint)


@answers(teacher_forcing_mask=(library_diffusion_forcing.teacher_forcing_mask,
                               library_video_model.block_causal_mask, library_video_model.token_chunks))
@single_thread
def check_teacher_forcing_mask(teacher_forcing_mask) -> None:
    """(2L, 2L) for [clean | noisy]: clean -> clean chunks <= own, clean -> noisy nothing, noisy -> clean chunks
    < own, noisy -> noisy its own chunk only."""
    hint = ("a (2L, 2L) bool tensor in four (L, L) quadrants, rows = queries [clean | noisy], columns = keys "
            "[clean | noisy]: torch.cat the quadrants along dim=1, then the two rows of quadrants along dim=0")
    for n_frames, chunk, P in TF_SIZES:
        what = f"teacher_forcing_mask(n_frames={n_frames}, chunk={chunk}, tokens_per_frame={P})"
        got = call_student(what, teacher_forcing_mask, n_frames, chunk, P, hint=hint)
        L = n_frames * P
        got = _expect_bool_mask(what, got, (2 * L, 2 * L), hint)
        _diagnose_tf(what, got, reference_teacher_forcing_mask(n_frames, chunk, P), n_frames, chunk, P)
    passed("check_teacher_forcing_mask", f"the four quadrants of the [clean | noisy] mask for {len(TF_SIZES)} "
                                         "sizes: clean sees clean chunks <= its own and no noisy token; noisy "
                                         "chunk k sees clean chunks < k and itself")


# ---------------------------------------------------------------------------------------------------
# Part 3: why the frame KV cache is exact
# ---------------------------------------------------------------------------------------------------

def _as_float(what: str, value, hint: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    fail(what, "a number (a float, or a tensor with one element)", f"{type(value).__name__} {value!r}"[:200], hint)


@answers(prefix_change=(), block_causal_mask=(library_video_model.block_causal_mask, library_video_model.token_chunks))
@single_thread
def check_prefix_change(prefix_change, block_causal_mask) -> None:
    """prefix_change(model, z, z_other, ...) = max |v(z) - v(z_other)| over the first n_frames frames, under
    `mask`; with the block-causal mask, replacing chunk 2 leaves chunk 1's outputs unchanged."""
    model = tiny_video_model(seed=0)
    cfg = model.config
    c, P, F, B = cfg.chunk, cfg.tokens_per_frame, cfg.max_frames, 2
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, F, 3, cfg.size, cfg.size, generator=g)
    t = torch.rand(B, F, generator=g)
    actions = torch.randint(0, len(ACTIONS), (B, F), generator=g)
    scene = torch.randint(0, len(SCENES), (B,), generator=g)
    z_late, z_early = z.clone(), z.clone()
    z_late[:, c:] = torch.randn(B, F - c, 3, cfg.size, cfg.size, generator=g)  # chunk 2 replaced
    z_early[:, :c] = torch.randn(B, c, 3, cfg.size, cfg.size, generator=g)  # chunk 1 replaced
    block = reference_block_causal_mask(F, c, P)
    hint = ("v = model(z, t, actions, scene, mask=mask) and v_other = model(z_other, t, actions, scene, mask=mask); "
            "return the largest |v - v_other| over the frames v[:, :n_frames] (dimension 1 of (B, F, 3, H, W)), "
            "as a float")

    def reference(z_other, mask, n_frames):
        v, v_other = model(z, t, actions, scene, mask=mask), model(z_other, t, actions, scene, mask=mask)
        return float((v[:, :n_frames] - v_other[:, :n_frames]).abs().max())

    cases = (  # (description, z_other, mask, n_frames)
        ("chunk 2 (frames 2, 3) replaced, the block-causal mask, n_frames=2 (chunk 1)", z_late, block, c),
        ("chunk 2 replaced, full attention (mask=None), n_frames=2", z_late, None, c),
        ("chunk 2 replaced, the block-causal mask, n_frames=4 (every frame)", z_late, block, F),
        ("chunk 1 (frames 0, 1) replaced, the block-causal mask, n_frames=2", z_early, block, c),
    )
    found = {}
    with torch.no_grad():
        for label, z_other, mask, n_frames in cases:
            what = f"prefix_change(model, z, z_other, t, actions, scene, mask, n_frames) with {label}"
            want = reference(z_other, mask, n_frames)
            got = call_student(what, prefix_change, model, z, z_other, t, actions, scene, mask, n_frames, hint=hint)
            got = _as_float(what, got, hint)
            if not abs(got - want) <= 1e-5 + 1e-4 * want:  # also catches NaN
                fail(what, f"{want:.6g} (recomputed: the model run on both inputs)", f"{got:.6g}", hint)
            found[label] = got
        what = "block_causal_mask(4, 2, 16)"
        mask = call_student(what, block_causal_mask, F, c, P)
        mask = _expect_bool_mask(what, mask, (F * P, F * P), "your block_causal_mask of Part 1")
        what = ("prefix_change(model, z, z_other, ..., mask=your block_causal_mask(4, 2, 16), n_frames=2), "
                "z_other = z with chunk 2 replaced")
        yours = _as_float(what, call_student(what, prefix_change, model, z, z_late, t, actions, scene, mask, c), hint)
    if not yours <= ATOL_CHANGE:
        fail(what + ": the outputs of chunk 1 must not depend on chunk 2", f"<= {ATOL_CHANGE:g}", f"{yours:.3g}",
             "under your mask a token of chunk 1 attends to a token of chunk 2: fix Part 1 (M[i, j] = "
             "chunk(j) <= chunk(i), rows = queries)")
    full = found[cases[1][0]]
    passed("check_prefix_change", f"replacing chunk 2 moves chunk 1's velocity by {yours:.1g} under your "
                                  f"block-causal mask and by {full:.2f} under full attention; all four cases "
                                  "match the recomputation")


# ---------------------------------------------------------------------------------------------------
# Part 4: diffusion forcing's noise levels, one per chunk
# ---------------------------------------------------------------------------------------------------

@answers(chunk_times=library_diffusion_forcing.chunk_times)
@single_thread
def check_chunk_times(chunk_times) -> None:
    """(B, F): one t ~ U(0, 1) per clip and chunk, repeated over the chunk's frames; ValueError otherwise."""
    hint = ("t = torch.rand(batch_size, n_frames // chunk, generator=generator), then "
            "t.repeat_interleave(chunk, dim=1): frames 0..c-1 share chunk 0's time, and so on")
    B, F, c = 4000, 6, 2
    what = f"chunk_times(batch_size={B}, n_frames={F}, chunk={c}, generator)"
    t = expect_tensor(what, call_student(what, chunk_times, B, F, c, torch.Generator().manual_seed(0), hint=hint))
    expect_shape(what, t, (B, F), "one time per clip (rows) and frame (columns)")
    if not t.is_floating_point():
        fail(what + ": dtype", "a floating-point tensor", str(t.dtype))
    if not bool(((t >= 0) & (t <= 1)).all()):
        fail(what + ": range", "every time in [0, 1]", f"from {float(t.min()):.3g} to {float(t.max()):.3g}")
    chunks = t.view(B, F // c, c)
    if not bool((chunks == chunks[..., :1]).all()):
        b, k = (int(i) for i in torch.nonzero((chunks != chunks[..., :1]).any(-1))[0])
        fail(what + f": the frames of chunk {k} of clip {b}", "the same time (the chunk is denoised as one block)",
             [round(float(x), 3) for x in chunks[b, k]], hint)
    per_chunk = chunks[..., 0]  # (B, K)
    if bool((per_chunk == per_chunk[:, :1]).all()):
        fail(what + ": the chunks of a clip", "each chunk its own time", "one time for the whole clip",
             "draw (B, n_frames // chunk) times, not (B, 1): every chunk has its own noise level")
    corr = torch.corrcoef(per_chunk.T.double())  # (K, K)
    off = float((corr - torch.eye(len(corr), dtype=torch.float64)).abs().max())
    sorted_t = per_chunk.flatten().sort().values
    ks = float((sorted_t.double() - torch.linspace(0, 1, len(sorted_t), dtype=torch.float64)).abs().max())
    if ks > 0.03 or off > 0.06:
        fail(what + f": {per_chunk.numel()} chunk times", "uniform on [0, 1] (largest gap of the empirical CDF "
             "<= 0.03) and independent across chunks (|correlation| <= 0.06)",
             f"CDF gap {ks:.3f}, largest |correlation| between two chunks {off:.3f}", hint)
    again = call_student(what, chunk_times, B, F, c, torch.Generator().manual_seed(0))
    expect_equal(what + ": run twice with generators of the same seed", bool(torch.equal(again, t)), True,
                 "draw the times with the generator you are given: torch.rand(..., generator=generator)")
    small = call_student("chunk_times(2, 3, 3)", chunk_times, 2, 3, 3, torch.Generator().manual_seed(1))
    expect_shape("chunk_times(2, 3, 3): one chunk of 3 frames", small, (2, 3))
    for n_frames, chunk in ((5, 2), (4, 3)):
        expect_raises(f"chunk_times(2, n_frames={n_frames}, chunk={chunk})", ValueError,
                      lambda n=n_frames, k=chunk: chunk_times(2, n, k), "chunk must divide n_frames")
    passed("check_chunk_times", f"{B} x {F // c} chunk times, each shared by its {c} frames, uniform (CDF gap "
                                f"{ks:.3f}) and independent (|correlation| <= {off:.3f}); ValueError for partial "
                                "chunks")


# ---------------------------------------------------------------------------------------------------
# Part 5: the mask of a rolling frame cache with sink frames
# ---------------------------------------------------------------------------------------------------

ROLLING_SIZES = ((6, 2, 1, 4, 0), (6, 2, 2, 2, 0), (8, 2, 3, 4, 2), (9, 3, 2, 3, 1), (8, 2, 1, 4, 3),
                 (6, 1, 2, 2, 1), (4, 2, 2, 8, 0), (6, 2, 1, 3, 0), (6, 2, 1, 2, 5))


def _rolling_reference(n_frames: int, chunk: int, P: int, window: int, n_sink: int) -> torch.Tensor:
    """The rule entry by entry: the slow, obviously correct mask."""
    L = n_frames * P
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        k = i // (chunk * P)
        for j in range(L):
            f = j // P
            out[i, j] = f // chunk <= k and (f >= (k + 1) * chunk - window or f < n_sink)
    return out


@answers(rolling_mask=(library_video_model.block_causal_mask, library_video_model.token_chunks))
@single_thread
def check_rolling_mask(rolling_mask) -> None:
    """chunk(j) <= chunk(i) and (frame(j) in the window ending with chunk(i), or frame(j) < n_sink)."""
    hint = ("M[i, j] = chunk(j) <= k and (frame(j) >= (k + 1) * chunk - window or frame(j) < n_sink), k = chunk(i), "
            "frame(j) = j // tokens_per_frame; rows = queries, columns = keys")
    for n_frames, chunk, P, window, n_sink in ROLLING_SIZES:
        what = (f"rolling_mask(n_frames={n_frames}, chunk={chunk}, tokens_per_frame={P}, window={window}, "
                f"n_sink={n_sink})")
        got = call_student(what, rolling_mask, n_frames, chunk, P, window, n_sink, hint=hint)
        L = n_frames * P
        got = _expect_bool_mask(what, got, (L, L), hint)
        want = _rolling_reference(n_frames, chunk, P, window, n_sink)
        if torch.equal(got, want):
            continue
        i, j = (int(a) for a in torch.nonzero(got != want)[0])
        k, f = i // (chunk * P), j // P
        where = ("a later chunk" if f // chunk > k else f"frame {f}, inside the window of frames "
                 f"[{max(0, (k + 1) * chunk - window)}, {(k + 1) * chunk})" if f >= (k + 1) * chunk - window
                 else f"frame {f}, before the window [{max(0, (k + 1) * chunk - window)}, {(k + 1) * chunk})")
        sink = f" and a sink frame (< {n_sink})" if f < n_sink else ""
        fail(f"{what}: entry [{i}, {j}]: may query {_token(i, chunk, P)} attend to key {_token(j, chunk, P)}, "
             f"in {where}{sink}?", bool(want[i, j]), f"{bool(got[i, j])} ({int((got != want).sum())} of {L * L} "
             "entries wrong)", hint)
    full = call_student("rolling_mask(6, 2, 3, window=6, n_sink=0)", rolling_mask, 6, 2, 3, 6, 0)
    expect_equal("rolling_mask(6, 2, 3, window=6, n_sink=0): a window as long as the video",
                 bool(torch.equal(_expect_bool_mask("rolling_mask(6, 2, 3, 6, 0)", full, (18, 18), hint),
                                  reference_block_causal_mask(6, 2, 3))), True, "it is the block-causal mask")
    for args, why in (((5, 2, 1, 4, 0), "chunk 2 does not divide 5 frames"), ((6, 2, 1, 1, 0), "window 1 < chunk 2"),
                      ((6, 2, 1, 4, -1), "n_sink -1 < 0")):
        expect_raises(f"rolling_mask{args}: {why}", ValueError, lambda a=args: rolling_mask(*a),
                      "chunk divides n_frames, window >= chunk, n_sink >= 0")
    passed("check_rolling_mask", f"the rolling mask entry by entry at {len(ROLLING_SIZES)} sizes (windows, sinks, "
                                 "sinks in a later chunk), the block-causal mask for a long window, ValueError for "
                                 "bad arguments")
