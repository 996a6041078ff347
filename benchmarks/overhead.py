"""Overhead of hooked_mllm against plain Hugging Face (and TransformerLens' bridge), side by side.

Runs on a mid-size random LLaVA on the CPU (default: LM d_model 1024, 8 layers; CLIP-style
tower 336 px / patch 14 -> 576 image tokens) and prints, from one run with interleaved
repeats:

* ``run_with_cache`` of every ``blocks.{l}.hook_resid_post`` vs an HF forward with
  ``output_hidden_states=True`` (target <= 1.10);
* ``run_with_hooks`` with one identity hook vs a plain forward (target <= 1.05);
* TransformerLens' ``TransformerBridge.run_with_cache`` of the same names vs ours;
* the bytes held by a cache of one layer's image tokens vs one of every hook at every position.

Usage: ``python benchmarks/overhead.py [--small] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def timed(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small model, for a quick check")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-tl", action="store_true", help="skip TransformerLens")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.small:
        size, patch, sizes = 64, 8, dict(d_model=128, n_layers=4, vision_d_model=64, vision_layers=2)
    else:
        size, patch, sizes = (
            336,
            14,
            dict(d_model=1024, n_layers=8, vision_d_model=256, vision_layers=4, n_heads=16),
        )
    hf = tiny_llava("llama", image_size=size, patch_size=patch, **sizes)
    model = HookedMLLM.from_hf(hf, tiny_processor(image_size=size, patch_size=patch))
    batch = model.prepare(images=[random_image(0, size)], prompts=["what color is the circle ?"])
    inputs = batch.inputs
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    print(
        f"model: LM d_model={model.cfg.d_model} x {model.cfg.n_layers} layers, "
        f"{int(batch.image_mask.sum())} image tokens, sequence {batch.shape[1]}, threads "
        f"{torch.get_num_threads()}"
    )

    def hf_hidden():
        with torch.no_grad():
            hf(**inputs, output_hidden_states=True)

    def hf_plain():
        with torch.no_grad():
            hf(**inputs)

    def ours_cache():
        model.run_with_cache(batch, names_filter=names)

    def ours_identity():
        model.run_with_hooks(batch, fwd_hooks=[("blocks.3.hook_resid_post", lambda a, h: a)])

    rows = {
        "hf hidden_states": hf_hidden,
        "hf plain": hf_plain,
        "ours run_with_cache": ours_cache,
        "ours identity hook": ours_identity,
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeats):  # interleave so drift hits every row alike
        for key, fn in rows.items():
            times[key] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    for key, value in med.items():
        print(f"{key:28s} {value * 1e3:9.1f} ms (median of {args.repeats})")
    print(
        "ratio run_with_cache / hf output_hidden_states: "
        f"{med['ours run_with_cache'] / med['hf hidden_states']:.3f}"
        " (target <= 1.10)"
    )
    print(
        f"ratio run_with_hooks(identity) / hf forward:    {med['ours identity hook'] / med['hf plain']:.3f}"
        " (target <= 1.05)"
    )

    _, image_only = model.run_with_cache(batch, names_filter=names[3], positions="image")
    b_img = sum(t.nbytes for t in image_only.values())
    del image_only
    _, every = model.run_with_cache(batch)
    b_all = sum(t.nbytes for t in every.values())
    del every
    print(
        f"cache bytes, image tokens of one layer's resid_post: {b_img:,} vs every hook point at every "
        f"position: {b_all:,} ({b_img / b_all:.4f}x)"
    )

    if not args.no_tl:
        try:
            import sys
            from pathlib import Path

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            import tl_bridge
        except ImportError as error:
            print(f"TransformerLens comparison skipped ({error})")
            return
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            model.processor.save_pretrained(tmp)
            bridge = tl_bridge.load_bridge(tmp)

            def tl_cache():
                tl_bridge.bridge_run_with_cache(
                    bridge,
                    names,
                    input_ids=inputs["input_ids"],
                    pixel_values=inputs["pixel_values"],
                    attention_mask=inputs["attention_mask"],
                )

            tl_times, our_times = [], []
            for _ in range(args.repeats):
                tl_times += timed(tl_cache, 1)
                our_times += timed(ours_cache, 1)
            tl_med, our_med = statistics.median(tl_times), statistics.median(our_times)
            print(
                f"TransformerLens bridge run_with_cache: {tl_med * 1e3:.1f} ms, ours {our_med * 1e3:.1f} ms; "
                f"ratio bridge / ours: {tl_med / our_med:.3f}"
            )


if __name__ == "__main__":
    main()
