"""Cost of the important-image-locations map against a plain forward and the baselines, side by side.

On a mid-size random LLaVA on the CPU (default: LM d_model 512 x 8 layers x 8 heads, a
LLaVA-sized vocabulary of 32,064; a CLIP-style tower at 336 px / patch 14, so 576 image
tokens on a 24 x 24 grid) this prints, from one run with interleaved repeats, the median
time of

* a plain forward (``model(batch)``, HF's own attention implementation);
* :func:`image_locations` with the paper's top-head rule, from scratch (one forward with
  the cache it needs, head scores, the map), and its ratio to the plain forward
  (target <= 1.5);
* :func:`attention_map` (the same forward, the mean of the patterns);
* :func:`relevancy_map` (a forward and a backward) and :func:`gradient_map`;
* :func:`occlusion_map` (one forward per grid cell, batched): timed once with ``--small``; on the
  mid-size model estimated from one measured forward of a chunk of occluded rows (576 cells would
  take many minutes on a shared CPU);

with the ratio of each baseline to the location map.

Usage: ``python benchmarks/mechanism.py [--small] [--repeats N] [--threads N] [--no-occlusion]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.mechanism import attention_map, gradient_map, image_locations, occlusion_map, relevancy_map
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small model, for a quick check")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-occlusion", action="store_true")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.small:
        size, patch, vocab = 64, 8, 4096
        sizes = dict(d_model=128, n_layers=4, vision_d_model=64, vision_layers=2, n_heads=4)
    else:
        size, patch, vocab = 336, 14, 32064
        sizes = dict(d_model=512, n_layers=8, vision_d_model=256, vision_layers=4, n_heads=8)
    hf = tiny_llava("llama", image_size=size, patch_size=patch, **sizes)
    hf.resize_token_embeddings(
        vocab, mean_resizing=False
    )  # a real vocabulary size: the readout scales with it
    model = HookedMLLM.from_hf(hf, tiny_processor(image_size=size, patch_size=patch))
    batch = model.prepare(images=[random_image(0, size)], prompts=["what color is the circle ?"])
    grid = batch.images[0].grid
    print(
        f"model: LM d_model={model.cfg.d_model} x {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, "
        f"vocab {model.cfg.d_vocab}, {int(batch.image_mask.sum())} image tokens ({grid[0]}x{grid[1]}), "
        f"sequence {batch.shape[1]}, threads {torch.get_num_threads()}",
        flush=True,
    )

    def plain():
        with torch.no_grad():
            model(batch)

    rows = {
        "plain forward": plain,
        "image_locations (top head)": lambda: image_locations(model, batch),
        "attention_map": lambda: attention_map(model, batch),
        "relevancy_map": lambda: relevancy_map(model, batch),
        "gradient_map": lambda: gradient_map(model, batch),
    }
    for fn in rows.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeats):  # interleaved so drift hits every row alike
        for key, fn in rows.items():
            times[key].append(once(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    cells = grid[0] * grid[1]
    note = ""
    if not args.no_occlusion and args.small:
        med["occlusion_map"] = once(lambda: occlusion_map(model, batch, batch_size=32))
        note = f" (measured once: {cells} occluded rows in chunks of 32)"
    elif not args.no_occlusion:  # hundreds of mid-size forwards: time one chunk of occluded rows, scale up
        chunk = 8
        rows = batch.repeat(chunk)

        def chunk_forward():
            with torch.no_grad():
                model(rows)

        med["occlusion_map"] = once(chunk_forward) * cells / chunk + med["plain forward"]
        note = (
            f" (estimated: one measured forward of {chunk} occluded rows x {cells // chunk}"
            " + the clean forward)"
        )
    for key, value in med.items():
        print(f"{key:28s} {value * 1e3:10.1f} ms{note if key == 'occlusion_map' else ''}")
    loc = med["image_locations (top head)"]
    print(f"\nimage_locations / plain forward: {loc / med['plain forward']:.2f}x (target <= 1.5)")
    for key in ("attention_map", "relevancy_map", "gradient_map", "occlusion_map"):
        if key in med:
            print(f"{key} / image_locations: {med[key] / loc:.2f}x")


if __name__ == "__main__":
    main()
