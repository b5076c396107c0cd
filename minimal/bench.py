"""`python -m minimal.bench NAME [--json] [--device cuda]`: run one benchmark, print a readable table.

A thin dispatcher: each benchmark lives beside what it measures, as a function
`bench(device=None, quick=False) -> (table: str, figures: dict)`; this file only maps names to them.
With --json the last line printed is one JSON object holding the figures. --quick runs a tiny version
(used by the tests to check the plumbing, never for the reported numbers).
"""

from __future__ import annotations

import argparse
import importlib
import json

import torch

BENCHMARKS = {
    "kv-cache": "minimal.kv_cache:bench",
    "speculative": "minimal.speculative_bench:bench",
    "speculative-image": "minimal.image_tokens_bench:bench",
    "sinks": "minimal.sinks_bench:bench",
    "flows": "minimal.flow_bench:bench",
    "flows-weight": "minimal.flow_bench:bench_weight",
    "flows-imf": "minimal.flow_bench:bench_imf",
    "video": "minimal.video_bench:bench",
    "toybench": "minimal.toybench_bench:bench",
    "self-forcing": "minimal.self_forcing_bench:bench",
    "pipeline": "minimal.pipeline_bench:bench",
    "soak": "minimal.pipeline_bench:soak",
    "long": "minimal.long_video_bench:bench",
    "distributed": "minimal.distributed_bench:bench",
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minimal.bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); use 1 on a machine shared with "
                             "other jobs, where competing threads can slow small steps down 100x")
    parser.add_argument("--frames", type=int, default=None, help="soak: frames to stream (default 100,000)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    module, fn = BENCHMARKS[args.name].split(":")
    extra = {} if args.frames is None else {"frames": args.frames}
    table, figures = getattr(importlib.import_module(module), fn)(device=args.device, quick=args.quick, **extra)
    print(table)
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
