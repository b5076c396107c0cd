"""`python -m minimal.train NAME`: reproduce a shipped checkpoint.

A thin dispatcher: the registry (`checkpoints.SHIPPED`) names each checkpoint's recipe, which lives
beside the model it trains; `checkpoints.train_shipped` runs it and writes minimal/pretrained/NAME.pt (or
--out). The measured figures it stores in the checkpoint's meta are printed as one JSON line (lists,
such as training curves and tokenizer tables, are left out of the print).
"""

from __future__ import annotations

import argparse
import json

from .checkpoints import SHIPPED, train_shipped


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minimal.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SHIPPED))
    parser.add_argument("--out", default=None, help="where to save (default minimal/pretrained/NAME.pt)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's training steps (>= 1)")
    args = parser.parse_args(argv)
    result = train_shipped(args.name, args.out, args.device, args.steps)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))
    return result


if __name__ == "__main__":
    main()
