"""Cost of the weights fingerprint that ``extract`` records (every byte hashed) against the old sampling.

Builds a module holding ``--params`` parameters (default 1e9, a 1B-parameter model's worth) as
transformer-shaped matrices in ``--dtype`` (default bfloat16: 2 GB) and times
:func:`hooked_mllm.concepts._store.weights_fingerprint` (SHA-256 of every byte, tensors hashed in
parallel threads) against the fingerprint used before, which read 4096 strided values per tensor
(and so missed an edit of a single weight). Prints both times and the hashing rate.

Usage: ``python benchmarks/fingerprint.py [--params 1e9] [--dtype bfloat16] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import torch

from hooked_mllm.concepts._store import weights_fingerprint


def sampled_fingerprint(module: torch.nn.Module, per_tensor: int = 4096) -> str:
    """The fingerprint used before: name, shape, dtype and 4096 strided values of each tensor."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // per_tensor)
            sample = flat[::step][:per_tensor].to("cpu", torch.float64)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def model_of(params: float, dtype: torch.dtype, d_model: int = 2048) -> torch.nn.Module:
    """A stack of ``d_model x 4 d_model`` matrices (an MLP's shape) holding about ``params`` values."""
    per = d_model * 4 * d_model
    module = torch.nn.Module()
    for i in range(max(1, round(params / per))):
        weight = torch.empty(4 * d_model, d_model, dtype=dtype)
        weight.view(torch.int16 if dtype.itemsize == 2 else torch.int32).random_()
        module.register_parameter(f"w{i}", torch.nn.Parameter(weight, requires_grad=False))
    return module


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e9, help="number of parameters")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    module = model_of(args.params, getattr(torch, args.dtype))
    n = sum(p.numel() for p in module.parameters())
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    full = timed(lambda: weights_fingerprint(module), args.repeats)
    sampled = timed(lambda: sampled_fingerprint(module), args.repeats)
    print(f"{n / 1e9:.2f} B parameters, {args.dtype}, {size / 1e9:.2f} GB, {os.cpu_count()} CPUs")
    print(f"every byte (SHA-256, threads): {full:.2f} s ({size / full / 1e9:.2f} GB/s)")
    print(f"old sampling (4096 values per tensor): {sampled:.3f} s")


if __name__ == "__main__":
    main()
