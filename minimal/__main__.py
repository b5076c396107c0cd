"""`python -m minimal`: the main job. For now, a short headless demo: the pretrained char GPT writes
reference-manual prose with its KV cache and reports tokens/s. (The real-time video pipeline of the
curriculum's last chapters will replace it.)"""

from __future__ import annotations

import argparse

import torch

from .checkpoints import load_pretrained
from .data import CharTokenizer
from .kv_cache import generate
from .timing import Timer, resolve_device


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minimal", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The for statement")
    parser.add_argument("--tokens", type=int, default=100, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    model, meta = load_pretrained("text-gpt", device=device)
    tok = CharTokenizer(meta["chars"])
    prompt = tok.encode(args.prompt).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    with Timer(device) as t:
        out = generate(model, prompt, args.tokens, temperature=args.temperature, generator=g)
    print(args.prompt + tok.decode(out))
    print(f"\n{len(out)} tokens in {t.seconds:.2f} s = {len(out) / t.seconds:.0f} tokens/s "
          f"({model.n_params() / 1e6:.2f}M-param char GPT, KV cache, {device})")


if __name__ == "__main__":
    main()
