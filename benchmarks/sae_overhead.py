"""Cost of SAEs spliced into hooked_mllm (needs the sae extra; run it in .venv-sae).

Prints, from one run with interleaved repeats (median seconds; every measurement of a repeat in turn):

* a forward with an SAE spliced at ``blocks.{l}.hook_resid_post`` (``run_with_saes``) vs the plain
  forward, as a ratio, and the extra time against the SAE's own forward on the same activations (the
  SAE's matmuls alone): ``(spliced - plain) / sae_alone`` near 1 means the splice adds nothing but the SAE;
* the same with the points inside the SAE cached (``run_with_cache_with_saes``);
* training throughput of :func:`hooked_mllm.sae.train_sae` (activation streaming plus SAELens'
  trainer) in tokens per second.

Usage: ``python benchmarks/sae_overhead.py [--model toy-llava] [--d-sae 4096] [--device cuda] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from hooked_mllm import toy
from hooked_mllm.concepts import toy_dataset


def timed(fns, repeats):
    """Median seconds of each function, the functions interleaved in every repeat (shared load hits all)."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    from sae_lens import SAE, StandardSAEConfig

    from hooked_mllm.sae import train_sae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-llava")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-tokens", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = toy.load(args.model)
    model.hf_model.to(args.device)
    hook = f"blocks.{args.layer}.hook_resid_post"
    cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=args.d_sae, device=args.device)
    cfg.metadata.hook_name = hook
    sae = SAE.from_dict(cfg.to_dict()).eval()
    scenes = toy_dataset(args.batch, seed=1)
    batch = model.prepare(images=[s.image for s in scenes], prompts=[s.prompt for s in scenes])
    _, cache = model.run_with_cache(batch, names_filter=hook, device=None)
    x = cache[hook]

    with torch.no_grad():
        medians = timed(
            {
                "plain": lambda: model(batch),
                "spliced": lambda: model.run_with_saes(batch, saes=[sae]),
                "cached": lambda: model.run_with_cache_with_saes(
                    batch, saes=[sae], names_filter=lambda n: "hook_sae" in n
                ),
                "alone": lambda: sae(x),
            },
            args.repeats,
        )
    plain, spliced, cached, alone = (medians[k] for k in ("plain", "spliced", "cached", "alone"))
    size = f"batch {args.batch} x {batch.shape[1]} tokens, SAE {model.cfg.d_model}->{args.d_sae}"
    print(f"{args.model} on {args.device}, {size}")
    print(f"plain forward            {plain * 1e3:8.1f} ms")
    print(f"SAE alone (its matmuls)  {alone * 1e3:8.1f} ms")
    for name, value in (("run_with_saes", spliced), ("run_with_cache_with_saes", cached)):
        ratio = f"ratio {value / plain:.2f}, extra / SAE alone {(value - plain) / alone:.2f}"
        print(f"{name:<25}{value * 1e3:8.1f} ms  {ratio}")

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_sae(
            model,
            toy_dataset(64),
            hook,
            positions="image",
            architecture="topk",
            k=16,
            d_sae=args.d_sae,
            total_tokens=args.train_tokens,
            train_batch_size=512,
            batch_size=args.batch,
            device=args.device,
            out=out,
        )
        seconds = time.perf_counter() - start
    print(f"train_sae (topk, image tokens) {args.train_tokens / seconds:8.0f} tokens/s ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
