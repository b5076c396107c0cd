"""`torchrun --nproc-per-node N -m minimal.serve [options]`: serve many streams on N processes, print the load.

Every process loads the shipped model, joins the process group torchrun set up (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT in the environment: gloo on CPU, NCCL with --device cuda, each process on the
GPU of its LOCAL_RANK) and runs one scheme:

    serve    (default) a scripted load: --streams streams arriving one per tick, each with its own
             actions, a scene switch and a length around --chunks chunks, every fourth leaving early;
             rank 0 admits and balances them, each rank batches up to --capacity (distributed.py)
    blocks   the same streams, all at once, through the blocks split into N stages (pipeline_parallel.py)
    steps    the staggered schedule with one denoising step per process (N must equal --steps)

Rank 0 prints throughput (frames per second, decoding included with --decode) and the per-chunk
latency of the streams. Examples:

    torchrun --nproc-per-node 2 -m minimal.serve --streams 16 --chunks 32
    torchrun --nproc-per-node 2 -m minimal.serve --scheme blocks --micro-batches 4
    torchrun --nproc-per-node 2 -m minimal.serve --scheme steps --steps 2
    python -m minimal.serve                        # one process, no torchrun

Several machines: start the same command on every node, pointing at one rendezvous endpoint,

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
             --rdzv-id serve1 -m minimal.serve --device cuda --streams 512

or with a static rendezvous, `--nnodes 2 --node-rank 0` (then 1) `--master-addr HOST0 --master-port 29500`.
If a process dies, the others stop with an error naming the collective that failed (and torchrun ends
the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch
import torch.distributed as dist

from .autoencoder import load_autoencoder
from .checkpoints import load_pretrained
from .distributed import scripted_workload, serve_rank
from .pipeline_parallel import blocks_rank, steps_rank
from .timing import percentile


def _init(device: str) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (or make a group of one); returns rank, world size and this rank's device."""
    backend = "nccl" if device == "cuda" else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)  # env://: torchrun's rendezvous
    else:
        path = os.path.join(tempfile.mkdtemp(), "rendezvous")
        dist.init_process_group(backend, init_method=f"file://{path}", rank=0, world_size=1)
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def report(scheme: str, world: int, out: dict, n_streams: int) -> tuple[str, dict]:
    """Rank 0's result as a line of text and a dict of figures."""
    times = [ms for per in out["chunk_ms"].values() for ms in per]
    fig = {"scheme": scheme, "processes": world, "streams": n_streams, "seconds": out["seconds"], "fps": out["fps"],
           "chunk_p50_ms": percentile(times, 50) if times else None,
           "chunk_p99_ms": percentile(times, 99) if times else None}
    text = (f"{scheme} on {world} process(es): {n_streams} streams, {out['fps']:.0f} frames/s over "
            f"{out['seconds']:.1f} s")
    if times:
        text += f"; chunk time p50 {fig['chunk_p50_ms']:.1f} ms, p99 {fig['chunk_p99_ms']:.1f} ms"
    if "placement" in out:
        per_rank = [sum(1 for r in out["placement"].values() if r == k) for k in range(world)]
        fig.update(ticks=out["ticks"], streams_per_rank=per_rank,
                   stream_p50_ms={str(k): statistics.median(v) for k, v in out["chunk_ms"].items()})
        text += f"; streams per rank {per_rank}, {out['ticks']} ticks"
    return text, fig


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m minimal.serve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=("serve", "blocks", "steps"), default="serve")
    parser.add_argument("--model", default="video-df", help="a shipped video model (default video-df)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per chunk")
    parser.add_argument("--n-sink", type=int, default=2, help="sink frames of the rolling cache")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=32, help="mean stream length in chunks")
    parser.add_argument("--capacity", type=int, default=8, help="serve: streams batched per process")
    parser.add_argument("--micro-batches", type=int, default=2, help="blocks: micro-batches of streams")
    parser.add_argument("--decode", action="store_true", help="serve: decode the frames on the ranks")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="rank 0 ends with one JSON line of the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, world, device = _init(args.device)
    try:
        model, _ = load_pretrained(args.model, device=device, kind="video")
        model.eval()
        workload = scripted_workload(args.streams, args.chunks, args.seed, churn=args.scheme == "serve")
        if args.scheme == "serve":
            decoder = load_autoencoder(device)[0] if args.decode else None
            out = serve_rank(rank, world, model, workload, args.steps, args.n_sink, args.capacity, decoder)
        else:  # the pipelines run their streams in step: every script cut to the shortest
            n = min(len(r.script) for r in workload.requests)
            for r in workload.requests:
                r.script = r.script[:n]
            if args.scheme == "blocks":
                out = blocks_rank(rank, world, model, workload.requests, args.steps, args.n_sink, args.micro_batches)
            else:
                out = steps_rank(rank, world, model, workload.requests, args.steps, args.n_sink)
                box = [{k: v for k, v in out.items() if k != "frames"}]
                dist.broadcast_object_list(box, world - 1)  # the last rank holds the frames: tell rank 0
                out = box[0] if rank == 0 else None
        if rank != 0:
            return None
        out.setdefault("chunk_ms", {})
        text, fig = report(args.scheme, world, out, args.streams)
        print(text)
        if args.json:
            print(json.dumps(fig))
        return fig
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
