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

BENCHMARKS = {
    "kv-cache": "minimal.kv_cache:bench",
    "sinks": "minimal.sinks:bench",
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minimal.bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args(argv)
    module, fn = BENCHMARKS[args.name].split(":")
    table, figures = getattr(importlib.import_module(module), fn)(device=args.device, quick=args.quick)
    print(table)
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
