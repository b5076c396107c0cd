"""`python -m minimal`: the real-time pipeline, streamed.

    python -m minimal              stream a scripted session headless: every action, one scene change;
                                   write stream.gif; print time to first frame, frames per second, chunk
                                   latency and the toybench scores of what was streamed
    python -m minimal play         the same stream as a game in the terminal: arrow keys steer
    python -m minimal text         the char GPT writes reference-manual prose with its KV cache
"""

from __future__ import annotations

import argparse

import torch

from .checkpoints import SHIPPED


def stream(args) -> dict:
    from .pipeline import load_pipeline
    from .pipeline_session import demo_script, play_script, save_gif
    from .toybench import score_video

    with load_pipeline(args.model, args.steps, args.n_sink, args.stagger, device=args.device) as pipe:
        frames, _, scenes = play_script(pipe, demo_script(args.frames), args.frames, args.seed)
        stats, session = pipe.stats(), pipe.session()
    c = pipe.model.config.chunk
    chunk_actions = torch.tensor([a[0] for a, _ in session["chunks"]]).repeat_interleave(c)[:args.frames]
    pixels = frames.permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    scores = score_video(pixels, scenes, chunk_actions)  # the actions each chunk was generated with
    path = save_gif(frames, args.out)
    mode = f"stagger, {stats['in_flight']} chunks in flight" if args.stagger else "interactive"
    print(f"{args.model}, {stats['steps']} steps per chunk, {mode}, n_sink {args.n_sink}: {args.frames} frames")
    print(f"time to first frame {stats['ttff_ms']:.1f} ms, {stats['fps']:.0f} frames/s generated, "
          f"chunk latency p50 {stats['chunk_p50_ms']:.1f} ms / p99 {stats['chunk_p99_ms']:.1f} ms")
    print("toybench: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    print(f"wrote {path}")
    return {**stats, "toybench": scores}


def text(args) -> None:
    from .checkpoints import load_pretrained
    from .data import CharTokenizer
    from .kv_cache import generate
    from .timing import Timer, resolve_device

    device = resolve_device(args.device)
    model, meta = load_pretrained("text-gpt", device=device)
    tok = CharTokenizer(meta["chars"])
    g = torch.Generator(device=device).manual_seed(args.seed)
    with Timer(device) as t:
        out = generate(model, tok.encode(args.prompt).to(device), args.tokens, temperature=0.8, generator=g)
    print(args.prompt + tok.decode(out))
    print(f"\n{len(out)} tokens in {t.seconds:.2f} s = {len(out) / t.seconds:.0f} tokens/s "
          f"({model.n_params() / 1e6:.2f}M-param char GPT, KV cache, {device})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minimal", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", nargs="?", default="stream", choices=("stream", "play", "text"))
    video_models = sorted(n for n, e in SHIPPED.items() if e.kind == "video")
    parser.add_argument("--model", default="video-df", choices=video_models)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    parser.add_argument("--n-sink", type=int, default=0, help="sink frames kept at the start of the cache")
    parser.add_argument("--stagger", action="store_true", help="throughput mode: chunks in flight at staggered noise")
    parser.add_argument("--frames", type=int, default=96, help="frames to stream (play: 0 = until q)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="stream.gif", help="where the stream's GIF goes")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--prompt", default="The for statement", help="text: the prompt")
    parser.add_argument("--tokens", type=int, default=100, help="text: characters to generate")
    args = parser.parse_args(argv)
    if args.command == "text":
        return text(args)
    if args.command == "play":
        from .terminal_game import play

        return play(args)
    if args.frames < 2:
        parser.error(f"--frames must be >= 2, got {args.frames}")
    return stream(args)


if __name__ == "__main__":
    main()
