"""Data-parallel extraction throughput: 2 processes against 1, side by side in one run.

Builds the same random LLaVA in every process (default: LM d_model 512 x 6 layers, 144 image
tokens; compute dominates), extracts the last prompt token at one hook point for N samples
into a fresh store with 1 process and then with 2 (gloo process group, ``torch.multiprocessing``
spawn, each process with ``--threads`` threads: a process per device is what data parallelism
gives), and prints samples/s of both and the ratio (target >= 1.6x). Only extraction is timed,
from a barrier before it to the end of the merge; model building and imports are not. The two
stores are checked to hold the same samples in the same order, with equal features.

Usage: ``python benchmarks/distributed_extract.py [--n 64] [--threads 1] [--small]``. Run it on
a quiet machine with at least two free cores per process count measured.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROMPTS = ["what color is the circle ?", "how many objects", "is there a red square ?"]


def build(small: bool):
    from hooked_mllm import HookedMLLM
    from hooked_mllm.testing import tiny_llava, tiny_processor

    size, patch = (64, 8) if small else (192, 16)
    sizes = (
        dict(d_model=128, n_layers=4)
        if small
        else dict(d_model=512, n_layers=6, vision_d_model=128, vision_layers=2)
    )
    hf = tiny_llava("llama", seed=0, image_size=size, patch_size=patch, **sizes)
    return HookedMLLM.from_hf(hf, tiny_processor(image_size=size, patch_size=patch)), size


def worker(rank: int, world: int, args: argparse.Namespace, port: int, out: str, result: dict) -> None:
    from hooked_mllm.concepts import Sample, extract
    from hooked_mllm.testing import random_image

    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, size = build(args.small)
    data = [Sample(str(i), random_image(i, size), PROMPTS[i % 3]) for i in range(args.n)]
    hook = f"blocks.{model.cfg.n_layers - 2}.hook_resid_post"
    dist.barrier()
    start = time.perf_counter()
    extract(
        model,
        data,
        hook,
        "last",
        batch_size=args.batch_size,
        shard_size=args.batch_size,
        out=out,
        progress=False,
    )
    dist.barrier()
    if rank == 0:
        result["seconds"] = time.perf_counter() - start
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(world: int, args: argparse.Namespace, out: str) -> float:
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(worker, args=(world, args, free_port(), out, result), nprocs=world, join=True)
        return float(result["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--small", action="store_true", help="a tiny model (a smoke run; overhead dominates)")
    args = parser.parse_args()
    from hooked_mllm.concepts import Features

    root = Path(tempfile.mkdtemp(prefix="distributed_extract_"))
    one = measure(1, args, str(root / "one"))
    two = measure(2, args, str(root / "two"))
    a, b = Features.load(root / "one"), Features.load(root / "two")
    same = a.ids == b.ids and torch.equal(a.features, b.features)
    print(
        f"{args.n} samples, batch {args.batch_size}, {args.threads} thread(s) per process, "
        f"{'small' if args.small else 'd_model 512 x 6 layers, 144 image tokens'}; {os.cpu_count()} CPUs"
    )
    print(f"{'processes':>10} {'seconds':>9} {'samples/s':>10}")
    print(f"{1:>10} {one:>9.2f} {args.n / one:>10.2f}")
    print(f"{2:>10} {two:>9.2f} {args.n / two:>10.2f}")
    print(
        f"throughput ratio 2 vs 1 process: {one / two:.2f}x (target >= 1.6x); stores equal sample for "
        f"sample: {same}"
    )


if __name__ == "__main__":
    main()
