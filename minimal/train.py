"""`python -m minimal.train NAME`: reproduce a shipped checkpoint.

A thin dispatcher: each training recipe lives beside the model it trains; this file only maps names to
them. Each recipe saves minimal/pretrained/NAME.pt (or --out) and returns its measured figures.
"""

from __future__ import annotations

import argparse
import importlib
import json

RECIPES = {
    "text-gpt": "minimal.text_gpt:train_recipe",
    "text-gpt-sink": "minimal.sinks:train_sink_recipe",
    "bb-gpt": "minimal.sink_emergence:train_recipe",
    "text-draft": "minimal.speculative:train_draft_recipe",
    "image-gpt": "minimal.image_tokens:train_recipe",
    "flow-2d": "minimal.flow_bench:train_flow_2d",
    "mean-flow-2d": "minimal.flow_bench:train_mean_flow_2d",
    "flow-frames": "minimal.flow_bench:train_flow_frames",
    "mean-flow-frames": "minimal.flow_bench:train_mean_flow_frames",
    "frame-ae": "minimal.autoencoder:train_autoencoder",
    "video-tf": "minimal.video_recipes:train_teacher_forcing",
    "video-df": "minimal.video_recipes:train_diffusion_forcing",
    "video-tfn": "minimal.video_recipes:train_noisy_teacher_forcing",
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minimal.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--out", default=None, help="where to save (default minimal/pretrained/NAME.pt)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's training steps")
    args = parser.parse_args(argv)
    module, fn = RECIPES[args.name].split(":")
    result = getattr(importlib.import_module(module), fn)(out=args.out, device=args.device, steps=args.steps)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
