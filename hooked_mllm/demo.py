"""The main job, end to end, on the embedded toy model: what ``make demo`` runs.

On ``toy-llava-deep`` (:mod:`hooked_mllm.toy`; ``--model`` picks another toy checkpoint) and scenes
of a world it never saw (world seeds below 10000; training uses 10000 and above), the report tells the
model's story section by section, each opened by one sentence that says what it shows: the answers; the
logit-lens grid (text positions and the asked object's image tokens, then every image cell) and how often
image tokens name their object's colour and shape under the logit and embedding lenses; where the model looks
(the mechanism paper's head-contribution map and its baselines over the image, beside the object's true
place); a
circuitsvis attention view; the activation-patching sweep over the image's cells; a concept
dictionary of image-token residuals with its top words and top image patches; the shift from
the model to its fine-tuned twin (``toy-llava-deep-ft``) on caption prompts; the dose
response of a steering vector; and, when sae_lens is importable, a small sparse autoencoder of the
image-token residuals with one feature's top patches (:mod:`hooked_mllm.sae.demo`; otherwise a note on how
to install it). Without a shipped toy checkpoint it runs a few of the same
steps on a tiny random LLaVA and says so.

Examples:
    >>> from hooked_mllm.demo import run_demo
    >>> path = run_demo(out="reports/demo")      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from itertools import islice
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from .mechanism import attention_map, capture, image_locations, occlusion_map, relevancy_map
from .mechanism.maps import LocationMap
from .model import HookedMLLM
from .viz import display
from .viz.attention import attention_heads
from .viz.heatmap import heatmaps
from .viz.lens_grid import image_lens_grid, logit_lens_grid
from .viz.report import Report

logger = logging.getLogger(__name__)

TRAINING_SEEDS = 10_000  # the toy checkpoints train on worlds of seed 10000 and above
DEFAULT_MODEL = "toy-llava-deep"  # the LLaVA recipe's VLM: image tokens read as words (docs/toy.md)
STEER_LAYER = 3
CONCEPT_LAYER = 2


def run_demo(
    out: str | Path = "reports/demo", seed: int = 0, model_name: str | None = None, n_scenes: int = 3
) -> Path:
    """Run the demo on ``n_scenes`` scenes of ``World(seed)`` and return the path of its HTML report.

    Raises:
        ValueError: ``seed`` is a training world (>= 10000): the demo shows unseen scenes.
    """
    if not 0 <= seed < TRAINING_SEEDS:
        raise ValueError(
            f"seed {seed} is not an unseen world: the toy models train on world seeds 10000 and "
            f"above; pick a seed in [0, {TRAINING_SEEDS})."
        )
    model = _load_toy(model_name or DEFAULT_MODEL)
    if model is None:
        from .testing import tiny_llava, tiny_processor

        report = Report("hooked_mllm demo (tiny RANDOM LLaVA: no toy checkpoint is installed)")
        report.text(
            "The toy checkpoint is not installed, so this ran on a tiny random-weight LLaVA: its answers "
            "and lens readings are noise; the steps are the real ones."
        )
        _random_demo(HookedMLLM.from_hf(tiny_llava(), tiny_processor()), seed, report)
    else:
        name = model_name or DEFAULT_MODEL
        report = Report(f"hooked_mllm demo on {name}")
        report.text(
            f"Scenes from World(seed={seed}), which the model never saw (it trained on worlds of seed 10000 "
            "and above). The toy model answers every question type correctly on at least 97 % of unseen "
            "scenes (docs/toy.md; `hooked-mllm toy eval` reproduces the numbers)."
        )
        _toy_demo(model, name, seed, n_scenes, report)
    return report.save(out)


def _load_toy(name: str) -> HookedMLLM | None:
    try:
        from . import toy

        return toy.load(name)
    except (FileNotFoundError, ImportError) as error:
        logger.warning("Toy checkpoint %s unavailable (%s); using a tiny random LLaVA.", name, error)
        return None


def _answer(
    model: HookedMLLM, images: list[Image.Image], prompts: list[str], fwd_hooks: Any = ()
) -> list[str]:
    batch = model.prepare(images=images, prompts=prompts)
    return [t.strip() for t in model.generate(batch, max_new_tokens=3, fwd_hooks=fwd_hooks).text]


def _first_words(model: HookedMLLM, images: list[Image.Image], prompts: list[str]) -> list[str]:
    """The greedy next token after each prompt (one forward, no generation)."""
    batch = model.prepare(images=images, prompts=prompts)
    logits = model(batch)
    last = logits[torch.arange(len(prompts)), batch.last_positions()]
    return model.processor.tokenizer.convert_ids_to_tokens(last.argmax(-1).tolist())


def _scenes(seed: int, n: int) -> list[Any]:
    from .toy.world import World

    return list(islice((s for s in World(seed=seed) if len(s.objects) >= 2 and s.questions_of("color")), n))


def _toy_demo(model: HookedMLLM, name: str, seed: int, n_scenes: int, report: Report) -> None:
    from .toy.world import PATCH_GRID

    start = time.perf_counter()
    scenes = _scenes(seed, max(1, n_scenes))
    _answers_section(model, scenes, report)
    logger.info("answers: %.1f s", time.perf_counter() - start)
    scene = scenes[0]
    qa = scene.questions_of("color")[0]
    target = next(o for o in scene.objects if o.shape in qa.question.split() and o.color == qa.answer)
    batch = model.prepare(images=[scene.image], prompts=[qa.question])
    _, cache = model.run_with_cache(
        batch, names_filter=lambda n: n.startswith("blocks.") and ("resid" in n or n.endswith("hook_pattern"))
    )
    span = batch.images_of(0)[0]
    object_positions = [span.token_positions[i] for i in target.patch_indices]

    text_positions = (~batch.image_mask[0] & ~batch.pad_mask[0]).nonzero().flatten().tolist()
    grid = logit_lens_grid(
        model, cache, positions=sorted(object_positions + text_positions[:2]) + text_positions[2:]
    )
    last_row = [grid.tokens[i][-1] for i in range(len(grid.layers))]
    first = next((grid.layers[i] for i, t in enumerate(last_row) if t == qa.answer), None)
    report.section(
        "2. Logit lens: what each layer says at each position",
        f"For '{qa.question}' on the first scene, each cell is the top token (and its probability) of the "
        "residual stream read through the final norm and unembedding, at the text positions and at the "
        f"{target.name}'s image tokens.",
    )
    report.image(scene.image, caption=scene.caption_colored, scale=3)
    report.html(grid.to_html())
    report.text(
        f"The answer '{qa.answer}' is the top token at the last position from "
        f"{first if first else 'no layer'} on (final layer: '{last_row[-1]}')."
    )
    image_grid = image_lens_grid(model, cache)
    report.text(
        "The same lens over every image cell, one panel per layer (the image on the left for reference):"
    )
    report.figure(image_grid.figure(scene.image))
    _words_table(model, seed, report)

    run = capture(model, batch)  # one forward: patterns at the last position, values, residuals
    maps: dict[str, Any] = {"object (truth)": _object_map(target.mask, PATCH_GRID)}
    maps["top head (paper's rule)"] = image_locations(model, run, heads="top")
    maps["all heads summed"] = image_locations(model, run, heads="all")
    maps["mean attention"] = attention_map(model, run)
    maps["relevancy"] = relevancy_map(model, batch)
    maps["occlusion"] = occlusion_map(model, batch)
    logger.info("lens and maps: %.1f s", time.perf_counter() - start)
    report.section(
        "3. Where the model looks",
        f"Which image locations carry the answer, beside the pixels of the asked {target.name}: the head "
        "contributions' map of the mechanism paper (its single top head, and all heads summed; one forward, "
        "no gradient) and its baselines (mean attention from the last token, attention x gradient "
        "relevancy, occlusion of each cell).",
    )
    report.figure(
        heatmaps(
            {name: (m.normalized() if hasattr(m, "normalized") else m) for name, m in maps.items()},
            scene.image,
            ncols=len(maps),
            shared_scale=True,
            suptitle=f"'{qa.question}' -> '{qa.answer}' (each map min-max normalised)",
        )
    )
    hits = [
        name
        for name, m in maps.items()
        if hasattr(m, "peak_index") and m.peak_index() in target.patch_indices
    ]
    report.text(
        f"Maps whose peak falls on the {target.name}: {', '.join(hits) if hits else 'none'} "
        "(the pointing game in docs/mechanism.md scores every method over hundreds of questions)."
    )
    layers = range(model.cfg.n_layers)
    # row 0's map
    maps_of = {layer: cast(LocationMap, attention_map(model, run, layers=[layer])) for layer in layers}
    per_layer = {layer: m.values.reshape(-1) for layer, m in maps_of.items()}
    best = max(layers, key=lambda layer: float(per_layer[layer][list(target.patch_indices)].sum()))
    share = float(per_layer[best][list(target.patch_indices)].sum() / per_layer[best].sum())
    report.text(
        f"Layer {best} puts {share:.0%} of its image attention on the object's {len(target.patch_indices)} "
        f"of {PATCH_GRID * PATCH_GRID} patches."
    )

    report.section(
        f"4. Attention view, layer {best}",
        f"circuitsvis's attention heads of layer {best} over every token (image tokens named img0[r.c.] by "
        "their patch, shown in the strip above the view): click a head to enlarge it, hover a cell for its "
        "value.",
    )
    report.attention(attention_heads(cache, best, image=scene.image))

    for section, args in (
        (_patching_section, (model, scene, qa, target, report)),
        (_concept_section, (model, seed, report)),
        (_shift_section, (model, name, seed, scene, report)),
        (_steering_section, (model, seed, report)),
        (_sae_section, (model, seed, report)),
    ):
        start = time.perf_counter()
        section(*args)
        logger.info("%s: %.1f s", section.__name__.strip("_"), time.perf_counter() - start)


def _words_table(model: HookedMLLM, seed: int, report: Report, n_scenes: int = 40) -> None:
    """Both lenses restricted to the colour words and to the shape words, on every object's image tokens."""
    from .toy.science import image_token_readout

    rows = image_token_readout(model.hf_model, model.processor, seed=seed + 3, n_scenes=n_scenes)
    by_layer: dict[int, list[str]] = {}
    for r in rows:
        by_layer.setdefault(r.layer, []).extend([f"{r.color_mean:.2f}", f"{r.shape_mean:.2f}"])
    report.text(
        f"Do image tokens read as words? For the {rows[0].n_objects} objects of {n_scenes} more unseen "
        "scenes: how often the top colour word (of the five) and the top shape word (of the three) is the "
        "object's own, reading the mean of its image tokens through the logit lens and through the "
        "embedding lens (cosine to the input embeddings); chance 0.20 and 0.33 (docs/toy.md, "
        "`hooked-mllm toy science`)."
    )
    report.table(
        ["layer", "logit lens colour", "logit lens shape", "embedding lens colour", "embedding lens shape"],
        [["LM input" if layer < 0 else f"after L{layer}", *cells] for layer, cells in by_layer.items()],
    )


def _object_map(mask: np.ndarray, grid: int) -> Float[np.ndarray, "rows cols"]:
    """The fraction of each patch's pixels that belong to the object."""
    h = mask.shape[0] // grid
    return mask.reshape(grid, h, grid, h).mean(axis=(1, 3)).astype(np.float64)


def _answers_section(model: HookedMLLM, scenes: list[Any], report: Report) -> None:
    report.section(
        "1. Answers on unseen scenes",
        f"The model's greedy answers to every question about {len(scenes)} scenes it never saw, "
        "against the truth.",
    )
    asked = [(k, scene, qa) for k, scene in enumerate(scenes) for qa in scene.questions]
    answers = _answer(model, [scene.image for _, scene, _ in asked], [qa.question for _, _, qa in asked])
    for k, scene in enumerate(scenes):
        report.image(scene.image, caption=f"scene {k}: {scene.caption_colored}", scale=3)
    rows = [
        [k, qa.qtype, qa.question, qa.answer, answer, "yes" if answer == qa.answer else "NO"]
        for (k, _, qa), answer in zip(asked, answers)
    ]
    right = sum(row[-1] == "yes" for row in rows)
    report.table(["scene", "type", "question", "truth", "model", "right"], rows)
    report.text(f"{right} of {len(rows)} answers are right.")


def _recolored(scene: Any, target: Any) -> tuple[Image.Image, str]:
    from .toy.world import COLORS

    new_color = next(c for c in COLORS if c not in {o.color for o in scene.objects})
    pixels = np.array(scene.image)
    pixels[target.mask] = COLORS[new_color]
    return Image.fromarray(pixels), new_color


def _patching_section(model: HookedMLLM, scene: Any, qa: Any, target: Any, report: Report) -> None:
    from .patching import activation_patching, logit_diff

    start = time.perf_counter()
    other, new_color = _recolored(scene, target)
    tok = model.processor.tokenizer
    clean = model.prepare(images=[scene.image], prompts=[qa.question])
    corrupted = model.prepare(images=[other], prompts=[qa.question])
    metric = logit_diff(tok.convert_tokens_to_ids(qa.answer), tok.convert_tokens_to_ids(new_color))
    result = activation_patching(model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=(2, 2))
    layer, unit = result.peak()
    logger.info("patching sweep: %.1f s", time.perf_counter() - start)
    report.section(
        "5. Patching sweep over the image",
        "Each panel patches one layer's residual stream (resid_pre) of one world cell (2 x 2 image tokens) "
        f"from the clean scene into a copy where the {target.shape} is {new_color}, and colours the cell by "
        f"how much of the logit difference '{qa.answer}' - '{new_color}' comes back (1 = all of it).",
    )
    report.image(scene.image, caption="clean", scale=3).image(
        other, caption=f"corrupted ({new_color} {target.shape})", scale=3
    )
    report.html(display.patching_html(result, scene.image, normalized=True))
    report.text(
        f"Clean {result.clean_metric:.2f}, corrupted {result.corrupted_metric:.2f}; the peak is at layer "
        f"{layer}, cell {result.labels[unit]}, and the {target.shape} sits in world cell "
        f"r{target.cell[0]}c{target.cell[1]}."
    )


def _concept_section(model: HookedMLLM, seed: int, report: Report, n: int = 40, k: int = 8) -> None:
    from .concepts import make_decomposer, text_grounding
    from .toy.world import World

    scenes = list(islice(World(seed=seed + 1), n))
    batch = model.prepare(images=[s.image for s in scenes], prompts=["describe the image ."] * n)
    name = f"blocks.{CONCEPT_LAYER}.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=name)
    where = [
        (i, j, p)
        for i in range(n)
        for j, p in enumerate(batch.images_of(i)[0].token_positions)
        if np.asarray(_patch(scenes[i].image, j)).any()
    ]  # patches that show part of an object
    feats = torch.stack([cache[name][i, p] for i, _, p in where]).float().numpy()
    decomposer = make_decomposer("kmeans", n_components=k, random_state=0).fit(feats)
    activations = np.asarray(decomposer.transform(feats))
    words = text_grounding(model, decomposer, top_k=12, n_words=5, apply_norm=True)
    patches, counts = [], []
    for concept in range(k):
        top = np.argsort(-activations[:, concept], kind="stable")[:8]
        patches.append([_patch(scenes[where[t][0]].image, where[t][1]) for t in top])
        counts.append(int((activations.argmax(1) == concept).sum()))
    names = [f"concept {c} ({counts[c]} tokens)" for c in range(k)]
    report.section(
        "6. Concept dictionary of image tokens",
        f"k-means with {k} concepts on the layer-{CONCEPT_LAYER} residuals of the {len(where)} image tokens "
        f"that show part of an object in {n} unseen scenes: each concept's top words through the final norm "
        "and unembedding, and the image patches that activate it most.",
    )
    report.html(display.concept_dictionary_html(words, patches, names))


def _patch(image: Image.Image, index: int, grid: int = 6) -> Image.Image:
    size = image.width // grid
    r, c = divmod(index, grid)
    return image.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))


def _last_features(
    model: HookedMLLM, images: list[Image.Image], prompts: list[str], layer: int
) -> torch.Tensor:
    batch = model.prepare(images=images, prompts=prompts)
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=name)
    return cache[name][torch.arange(len(prompts)), batch.last_positions()].float()


def _shift_section(model: HookedMLLM, name: str, seed: int, scene: Any, report: Report, n: int = 48) -> None:
    from .concepts import analyze_shift, make_decomposer, text_grounding
    from .toy import CAPTION_PROMPT
    from .toy.world import World

    twin = _load_toy(name.removesuffix("-ft") if name.endswith("-ft") else f"{name}-ft")  # known difference
    if twin is None:
        return
    scenes = list(islice(World(seed=seed + 2), n))
    images, prompts = [s.image for s in scenes], [CAPTION_PROMPT] * n
    a = _last_features(model, images, prompts, STEER_LAYER).numpy()
    b = _last_features(twin, images, prompts, STEER_LAYER).numpy()
    k = 6
    result = analyze_shift(
        a,
        b,
        make_decomposer("kmeans", n_components=k, random_state=0),
        make_decomposer("kmeans", n_components=k, random_state=0),
    )
    words_a = text_grounding(model, result.concepts_a, top_k=8, n_words=4, apply_norm=True)
    words_s = text_grounding(twin, result.shifted, top_k=8, n_words=4, apply_norm=True)
    captions = [
        m.generate(m.prepare(images=[scene.image], prompts=[CAPTION_PROMPT]), max_new_tokens=12)
        .text[0]
        .replace("</s>", "")
        .strip()
        for m in (model, twin)
    ]
    report.section(
        f"7. Shift from {name} to its fine-tuned twin",
        f"Concepts of {name}'s last-prompt-token residual (layer {STEER_LAYER}) on {n} caption prompts, each "
        "moved by the mean shift of its samples in the fine-tuned model, with the words each decodes to "
        "before and after.",
    )
    report.table(["model", "caption of the first scene"], [[name, captions[0]], ["twin", captions[1]]])
    report.html(display.shift_html(result))
    report.table(
        ["concept", "samples", f"words ({name})", "words after the shift (twin's unembedding)"],
        [[c, int(result.counts[c]), ", ".join(words_a[c]), ", ".join(words_s[c])] for c in range(k)],
    )


def _steering_section(model: HookedMLLM, seed: int, report: Report) -> None:
    from .concepts import split_by, steering_hooks
    from .toy.world import World

    scenes = list(islice(World(seed=seed + 3), 100))
    exist = [(s.image, qa.question, qa.answer) for s in scenes for qa in s.questions_of("exist")]
    fit, held = exist[:64], exist[64:]
    labels = _first_words(model, [x[0] for x in fit], [x[1] for x in fit])
    vector = split_by(
        _last_features(model, [x[0] for x in fit], [x[1] for x in fit], STEER_LAYER),
        labels,
        target="no",
        source="yes",
    )
    targeted = [x for x in held if x[2] == "yes"][:20]
    others = [(s.image, qa.question, qa.answer) for s in scenes[-20:] for qa in s.questions_of("count")]
    rows = targeted + others
    batch = model.prepare(images=[x[0] for x in rows], prompts=[x[1] for x in rows])
    last = batch.last_positions()
    tokenizer = model.processor.tokenizer
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    target_rate, other_accuracy = [], []
    for alpha in alphas:  # the first answer token is the argmax at the last prompt position
        logits = model.run_with_hooks(
            batch, fwd_hooks=steering_hooks(vector, STEER_LAYER, alpha) if alpha else []
        )
        words = tokenizer.convert_ids_to_tokens(logits[torch.arange(len(rows)), last].argmax(-1).tolist())
        target_rate.append(float(np.mean([w == "no" for w in words[: len(targeted)]])))
        other_accuracy.append(float(np.mean([w == x[2] for w, x in zip(words[len(targeted) :], others)])))
    report.section(
        "8. Steering dose response",
        f"A 'no' minus 'yes' vector (mean layer-{STEER_LAYER} residual at the last prompt token of existence "
        f"questions the model answers no / yes) added at every position with growing strength: how often "
        f"{len(targeted)} questions whose answer is 'yes' flip to 'no', and how counting accuracy "
        f"({len(others)} questions) holds up.",
    )
    report.figure(
        display.steering_dose_figure(
            alphas, target_rate, other_accuracy, target="no", other="counting accuracy"
        )
    )
    report.table(
        ["alpha", "answers 'no'", "counting accuracy"],
        [[a, t, o] for a, t, o in zip(alphas, target_rate, other_accuracy)],
    )


SAE_NOTE = (
    "sae_lens is not installed, so this section is empty: `pip install 'hooked-mllm[sae]'` (or the .venv-sae "
    "environment that `make test-sae` builds) adds a small SAE trained on these residuals, its L0, explained "
    "variance and LM loss recovered, and one feature's top image patches."
)


def _sae_section(model: HookedMLLM, seed: int, report: Report) -> None:
    """The sparse-autoencoder section (:mod:`hooked_mllm.sae.demo`) with sae_lens; without it, a note."""
    import importlib.util

    if importlib.util.find_spec("sae_lens") is None:
        from .sae.demo import TITLE

        report.section(TITLE, "Sparse-autoencoder features of the image-token residuals need SAELens.")
        report.text(SAE_NOTE)
        return
    from .sae.demo import sae_section

    sae_section(model, seed, report, layer=CONCEPT_LAYER)


def _random_demo(model: HookedMLLM, seed: int, report: Report) -> None:
    from .patching import activation_patching, logit_diff
    from .testing import random_image

    images = [random_image(seed), random_image(seed + 1)]
    prompts = ["what color is the circle ?", "how many objects"]
    answers = _answer(model, images, prompts)
    report.section("1. Answers (random weights)", "What the random model generates for two random images.")
    for image in images:
        report.image(image, caption="random image")
    report.table(["prompt", "model"], list(zip(prompts, answers)))
    batch = model.prepare(images=images[:1], prompts=prompts[:1])
    _, cache = model.run_with_cache(
        batch, names_filter=lambda n: n.startswith("blocks.") and ("resid" in n or n.endswith("hook_pattern"))
    )
    report.section("2. Logit lens", "Top token per layer and position (noise on random weights).")
    report.html(logit_lens_grid(model, cache, part="text").to_html())
    report.section("3. Attention view", "circuitsvis's attention heads of layer 0 over every token.")
    report.attention(attention_heads(cache, 0, image=images[0]))
    corrupted = model.prepare(images=images[1:], prompts=prompts[:1])
    result = activation_patching(model, batch, corrupted, logit_diff(5, 6), over="cell")
    report.section(
        "4. Patching sweep over the image", "Each cell patched from the first image into the second."
    )
    report.html(display.patching_html(result, images[0]))
