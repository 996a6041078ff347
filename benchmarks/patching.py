"""Activation patching vs attribution patching on the same layer x image-cell sweep.

Prints, side by side in one run, the wall time of each method and the forward / backward
passes (and rows) each used, plus the correlation of their tables. Runs on the toy model
when installed, else on a tiny random LLaVA with a larger image grid.

Usage: ``python benchmarks/patching.py [--batch-size N]``
"""

from __future__ import annotations

import argparse
import time

from hooked_mllm import HookedMLLM
from hooked_mllm.patching import activation_patching, attribution_patching, correlation, logit_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    try:
        from hooked_mllm import toy

        model = toy.load("toy-llava")
        world = toy.World(seed=7)
        scene = next(s for s in world if s.questions_of("color"))
        question = scene.questions_of("color")[0].question
        other = next(s for s in world if s.questions_of("color"))
        clean = model.prepare(images=[scene.image], prompts=[question])
        corrupted = model.prepare(images=[other.image], prompts=[question])
        name = "toy-llava"
    except (ImportError, FileNotFoundError):
        from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

        model = HookedMLLM.from_hf(
            tiny_llava(image_size=64, d_model=128, n_layers=4), tiny_processor(image_size=64)
        )
        clean = model.prepare(images=[random_image(0, 64)], prompts=["what color is the circle ?"])
        corrupted = model.prepare(images=[random_image(1, 64)], prompts=["what color is the circle ?"])
        name = "tiny random LLaVA"
    metric = logit_diff(5, 6)
    start = time.perf_counter()
    act = activation_patching(
        model, clean, corrupted, metric, hook="resid_pre", over="cell", batch_size=args.batch_size
    )
    t_act = time.perf_counter() - start
    start = time.perf_counter()
    attr = attribution_patching(model, clean, corrupted, metric, hook="resid_pre", over="cell")
    t_attr = time.perf_counter() - start
    print(f"model: {name}; sweep {tuple(act.values.shape)} (layers x grid rows x grid cols)")
    print(
        f"activation patching : {t_act:8.3f} s, {act.forward_passes} forward passes ({act.rows} rows, "
        f"batch size {args.batch_size})"
    )
    print(
        f"attribution patching: {t_attr:8.3f} s, {attr.forward_passes} forward + {attr.backward_passes} "
        "backward"
    )
    print(
        f"speed-up of attribution: {t_act / t_attr:.1f}x; correlation of the tables: "
        f"{correlation(attr.values, act.values):.3f}"
    )


if __name__ == "__main__":
    main()
