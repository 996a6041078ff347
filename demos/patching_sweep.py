"""Demo: which layers and which image cells carry the answer? A layer x grid-cell patching sweep.

On the toy model (``toy-llava``): a scene, the question "what color is the <shape> ?", and a
second scene identical except that this object has another colour. Patch ``resid_pre`` of
each 2x2 block of image tokens (one world cell) from the clean scene into the recoloured one,
at every layer, and record the logit difference clean colour - new colour. The sweep peaks at
the object's cell. Saves the heatmap (one row per layer, one tile per cell) as a PNG.
Without a toy checkpoint it runs the same sweep on a tiny random LLaVA and says so.

Usage: ``python demos/patching_sweep.py [--out DIR]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from hooked_mllm import HookedMLLM
from hooked_mllm.patching import activation_patching, attribution_patching, correlation, logit_diff


def toy_pair(model: HookedMLLM):
    from hooked_mllm.toy.world import COLORS, World

    scene = next(s for s in World(seed=4242) if len(s.objects) >= 2 and s.questions_of("color"))
    qa = scene.questions_of("color")[0]
    target = next(o for o in scene.objects if o.shape in qa.question.split() and o.color == qa.answer)
    new_color = next(c for c in COLORS if c not in {o.color for o in scene.objects})
    pixels = np.array(scene.image)
    pixels[target.mask] = COLORS[new_color]
    tok = model.processor.tokenizer
    clean = model.prepare(images=[scene.image], prompts=[qa.question])
    corrupted = model.prepare(images=[Image.fromarray(pixels)], prompts=[qa.question])
    ids = [tok.convert_tokens_to_ids(w) for w in (target.color, new_color)]
    return clean, corrupted, ids, target.cell, f"{qa.question} ({target.color} -> {new_color})"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/patching")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from hooked_mllm import toy

        model = toy.load("toy-llava")
        clean, corrupted, (good, bad), cell, what = toy_pair(model)
        block = (2, 2)
    except (ImportError, FileNotFoundError):
        from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

        print("No toy checkpoint installed: running on a tiny RANDOM LLaVA (the numbers mean nothing).")
        model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
        clean = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
        corrupted = model.prepare(images=[random_image(1)], prompts=["what color is the circle ?"])
        good, bad, cell, what, block = 5, 6, None, "random", (1, 1)
    metric = logit_diff(good, bad)
    result = activation_patching(model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=block)
    approx = attribution_patching(model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=block)
    plot = result.save_plot(str(out / "patching_resid_pre_cells.png"))
    layer, unit = result.peak()
    summary = {
        "question": what,
        "clean_metric": result.clean_metric,
        "corrupted_metric": result.corrupted_metric,
        "peak_layer": layer,
        "peak_cell": result.labels[unit],
        "object_cell": None if cell is None else f"r{cell[0]}c{cell[1]}",
        "attribution_correlation": correlation(approx.values, result.values),
        "plot": plot,
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    return summary


if __name__ == "__main__":
    main()
