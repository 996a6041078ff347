"""Feature-extraction throughput of ``concepts.extract`` against plain Hugging Face, side by side.

On a random LLaVA (default: LM d_model 512 x 6 layers, 144 image tokens) over N samples, prints
samples/s and the ratio to the plain baseline, from one run with interleaved repeats:

* no generation: ``extract`` of the last prompt token at 1 and at 3 hook points in one pass vs a
  plain batched HF forward with one ``torch`` forward hook (target >= 0.9x);
* the rule needs the answer (``answer_mean``): ``extract`` caching during generation vs plain HF
  ``generate`` followed by a second full forward with a hook (what a two-pass extractor does) and
  vs plain ``generate`` alone;
* batching: ``extract`` with batch 16 vs the per-sample loop of the reference code (batch 1).

Usage: ``python benchmarks/concepts_extract.py [--n 48] [--repeats 3] [--small]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.concepts import Sample, extract
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

PROMPTS = ["what color is the circle ?", "how many objects", "is there a red square ?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    size, patch = (64, 8) if args.small else (192, 16)
    sizes = (
        dict(d_model=128, n_layers=4)
        if args.small
        else dict(d_model=512, n_layers=6, vision_d_model=128, vision_layers=2)
    )
    hf = tiny_llava("llama", image_size=size, patch_size=patch, **sizes)
    model = HookedMLLM.from_hf(hf, tiny_processor(image_size=size, patch_size=patch))
    data = [Sample(str(i), random_image(i, size), PROMPTS[i % 3]) for i in range(args.n)]
    layer = model.cfg.n_layers - 2
    hook = f"blocks.{layer}.hook_resid_post"
    three = [f"blocks.{l}.hook_resid_post" for l in (0, layer - 1, layer)]
    module = hf.model.language_model.layers[layer]
    bs = args.batch_size
    chunks = [data[i : i + bs] for i in range(0, len(data), bs)]

    def batches():  # the processor runs inside every case, as in any extraction loop
        for chunk in chunks:
            yield model.prepare(images=[s.image for s in chunk], prompts=[s.prompt for s in chunk])

    def plain_forward() -> None:
        kept = []
        handle = module.register_forward_hook(
            lambda m, i, o: kept.append((o[0] if isinstance(o, tuple) else o)[:, -1])
        )
        try:
            with torch.no_grad():
                for b in batches():
                    hf(**b.inputs)
        finally:
            handle.remove()

    def plain_generate(second_pass: bool) -> None:
        kept = []
        with torch.no_grad():
            for b in batches():
                seq = hf.generate(**b.inputs, max_new_tokens=args.new_tokens + 1, do_sample=False)
                if second_pass:
                    handle = module.register_forward_hook(
                        lambda m, i, o: kept.append(o[0] if isinstance(o, tuple) else o)
                    )
                    try:
                        mask = torch.ones_like(seq)
                        mask[:, : b.shape[1]] = b.attention_mask
                        hf(input_ids=seq, attention_mask=mask, pixel_values=b.inputs["pixel_values"])
                    finally:
                        handle.remove()

    cases = {
        "plain HF forward + 1 torch hook": plain_forward,
        "extract last, 1 hook": lambda: extract(model, data, hook, "last", batch_size=bs, progress=False),
        "extract last, 3 hooks in one pass": lambda: extract(
            model, data, three, "last", batch_size=bs, progress=False
        ),
        "plain HF generate + second forward": lambda: plain_generate(True),
        "plain HF generate only": lambda: plain_generate(False),
        "extract answer_mean (cached while generating)": lambda: extract(
            model, data, hook, "answer_mean", batch_size=bs, max_new_tokens=args.new_tokens, progress=False
        ),
        "extract last, batch 1 (per-sample loop)": lambda: extract(
            model, data, hook, "last", batch_size=1, progress=False
        ),
    }
    for fn in cases.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits every case alike
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: statistics.median(t) for name, t in times.items()}
    n_image = int(next(batches()).image_mask[0].sum())
    print(
        f"model: LM d_model={model.cfg.d_model} x {model.cfg.n_layers} layers, {n_image} image tokens; "
        f"{args.n} samples, batch {bs}, {args.new_tokens} new tokens, threads {torch.get_num_threads()}"
    )
    rows = [
        ("plain HF forward + 1 torch hook", "plain HF forward + 1 torch hook"),
        ("extract last, 1 hook", "plain HF forward + 1 torch hook"),
        ("extract last, 3 hooks in one pass", "plain HF forward + 1 torch hook"),
        ("plain HF generate + second forward", "plain HF generate + second forward"),
        ("plain HF generate only", "plain HF generate + second forward"),
        ("extract answer_mean (cached while generating)", "plain HF generate + second forward"),
        ("extract last, batch 1 (per-sample loop)", "extract last, 1 hook"),
    ]
    print(f"{'case':48s} {'samples/s':>10s} {'throughput ratio':>17s}  vs")
    for name, base in rows:
        print(f"{name:48s} {args.n / best[name]:10.1f} {best[base] / best[name]:16.2f}x  {base}")


if __name__ == "__main__":
    main()
