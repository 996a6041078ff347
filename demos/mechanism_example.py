"""Worked example of the mechanism toolkit on the toy model: which image locations carry the answer.

Loads ``toy-llava``, asks about one object of an unseen three-object scene, and computes the
head scores, the location map of the paper's top head, of the top head of the later layers
and of every head summed, and the attention and occlusion baselines; explains the peak
position with the logit lens; saves the overlays side by side (``mechanism_example.png``).

Usage: ``python demos/mechanism_example.py [--out DIR] [--seed 7] [--scene N]``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from hooked_mllm import toy
    from hooked_mllm.mechanism import (
        attention_map,
        explain_positions,
        head_scores,
        image_locations,
        occlusion_map,
    )
    from hooked_mllm.toy.pointing import asked_object

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--scene", type=int, default=None, help="scene index (default: the first with 3 objects)"
    )
    args = parser.parse_args(argv)

    model = toy.load("toy-llava")
    world = toy.World(seed=args.seed)
    index = args.scene
    if index is None:
        index = next(i for i in range(1000) if len(world.scene(i).objects) == 3)
    scene = world.scene(index)
    qa = next(q for q in scene.questions if q.qtype == "color")
    target_object = asked_object(scene, qa)
    batch = model.prepare(images=[scene.image], prompts=[qa.question])

    scores = head_scores(model, batch)
    late = slice(model.cfg.n_layers // 2, None)
    maps = {
        "top head (paper)": image_locations(model, batch, heads="top"),
        "top head, later layers": image_locations(model, batch, heads="top", layers=late),
        "all heads summed": image_locations(model, batch, heads="all"),
        "mean attention": attention_map(model, batch),
        "occlusion": occlusion_map(model, batch),
    }
    peak_layer, _ = maps["top head, later layers"].extra["heads"][0]
    explanation = explain_positions(model, batch, [maps["all heads summed"].peak()], layer=peak_layer)

    big = scene.image.resize((192, 192), Image.Resampling.NEAREST)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.4 * (len(maps) + 1), 2.9))
    axes[0].imshow(big)
    axes[0].set_title(f"{qa.question}\nanswer: {scores.tokens[0]}", fontsize=8)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(m.overlay(big, alpha=0.6))
        ax.set_title(f"{name}\n{m.label}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mechanism_example.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    path.chmod(0o644)

    object_cells = set(target_object.patch_indices) if target_object is not None else set()
    summary = {
        "plot": str(path),
        "question": qa.question,
        "answer": scores.tokens[0],
        "object_patches": sorted(object_cells),
        "peaks": {name: m.peak_index() for name, m in maps.items()},
        "hits": {name: m.peak_index() in object_cells for name, m in maps.items()},
        "top_heads": scores.top(3),
        "explanation": explanation.table(),
    }
    logger.info("%s", summary)
    return summary


if __name__ == "__main__":
    import json
    import sys

    result = main()
    sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "explanation"}, indent=1) + "\n")
    sys.stdout.write(result["explanation"] + "\n")
