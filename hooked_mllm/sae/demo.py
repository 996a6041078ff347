"""The demo report's sparse-autoencoder section (``make demo`` with SAELens installed).

A small SAELens SAE is trained for a few seconds on a toy model's image-token residuals
(:func:`~hooked_mllm.sae.train.train_sae`), measured on scenes it did not train on
(:func:`~hooked_mllm.sae.evaluate.evaluate_sae`: L0, explained variance, LM loss recovered) and one
feature's dashboard summary is shown: the feature chosen by the toy world's ground truth (the one that
marks one colour's objects and no other colour best, :func:`colour_feature`), its top image patches
(:func:`~hooked_mllm.sae.features.top_examples`) and the words its decoder direction writes.
:func:`hooked_mllm.demo.run_demo` calls :func:`sae_section` only when ``sae_lens`` is importable, and
otherwise says in the report how to get it.

Examples:
    >>> from hooked_mllm.sae.demo import sae_section                     # doctest: +SKIP
    >>> result = sae_section(toy.load("toy-llava-deep"), 0, report)     # doctest: +SKIP
    >>> result.metrics.l0                                               # doctest: +SKIP
    4.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..concepts.data import Sample, load_image, toy_dataset
from ..viz._html import escape, img_tag
from .evaluate import SAEMetrics, evaluate_sae
from .features import FeatureExample, _patch_image, decoder_words, top_examples
from .train import train_sae

TITLE = "9. Sparse-autoencoder features"


@dataclass(frozen=True)
class SAEDemo:
    """What :func:`sae_section` trained, measured and showed.

    Attributes:
        sae: The trained SAELens SAE (``cfg.metadata.hook_name`` = ``hook_name``).
        hook_name: The hook point trained on.
        train: The training samples.
        held_out: The samples the metrics and the feature's examples are measured on.
        metrics: :func:`~hooked_mllm.sae.evaluate.evaluate_sae` on ``held_out``'s image tokens.
        feature: The feature shown (:func:`colour_feature`, chosen on ``train``).
        colour: The colour it marks.
        auroc: Its AUROC for ``colour``'s object tokens among ``held_out``'s image tokens.
        other_auroc: Its highest AUROC for another colour there.
        examples: Its top image tokens on ``held_out``, highest activation first.
    """

    sae: Any
    hook_name: str
    train: list[Sample]
    held_out: list[Sample]
    metrics: SAEMetrics
    feature: int
    colour: str
    auroc: float
    other_auroc: float
    examples: list[FeatureExample]


def sae_section(
    model: Any,
    seed: int,
    report: Any,
    *,
    layer: int = 2,
    n_train: int = 128,
    n_eval: int = 12,
    d_sae: int = 256,
    k: int = 4,
    total_tokens: int = 32768,
    n_examples: int = 6,
) -> SAEDemo:
    """Train a small top-k SAE on ``model``'s layer-``layer`` image-token residuals and add its section
    (metrics table, the colour feature's held-out AUROC, top image patches and decoder words) to ``report``.

    Args:
        model: A toy :class:`~hooked_mllm.HookedMLLM` (the toy world's ground truth picks the feature).
        seed: The demo's world seed: training scenes are drawn from ``World(seed + 4)``, the held-out scenes
            from ``World(seed + 5)`` (both unseen by the toy model).
        report: The :class:`~hooked_mllm.viz.report.Report` the section is added to.
        layer: The residual stream read (``blocks.{layer}.hook_resid_post``).
        n_train: Training scenes (cycled until ``total_tokens`` image tokens were used).
        n_eval: Held-out scenes.
        d_sae: Features.
        k: Active features per token (top-k SAE).
        total_tokens: Training rows in all.
        n_examples: Top image patches shown.

    Returns:
        The :class:`SAEDemo` (the SAE, the data, the metrics and the feature shown).

    Examples:
        >>> sae_section(model, 0, report, total_tokens=4096).metrics.explained_variance  # doctest: +SKIP
        0.8
    """
    hook_name = f"blocks.{layer}.hook_resid_post"
    train = toy_dataset(n_train, seed=seed + 4)
    held_out = toy_dataset(n_eval, seed=seed + 5)
    sae = train_sae(
        model,
        train,
        hook_name,
        positions="image",
        architecture="topk",
        k=k,
        d_sae=d_sae,
        total_tokens=total_tokens,
        train_batch_size=128,
        lr=3e-3,
        batch_size=32,
        seed=seed,
    )
    metrics = evaluate_sae(model, sae, held_out, positions="image", batch_size=16)
    from ..toy import World

    feature, colour, auroc, other = colour_feature(
        sae, model, World(seed=seed + 4).sample(n_train), World(seed=seed + 5).sample(n_eval), hook_name
    )
    examples, values = top_examples(model, sae, held_out, [feature], k=n_examples, batch_size=16)
    shown = [e for e in examples[feature] if e.cell is not None]
    report.section(
        TITLE,
        f"A top-{k} SAE with {d_sae} features (SAELens), trained for a few seconds on the layer-{layer} "
        f"residuals of the image tokens of {n_train} unseen scenes, measured on {n_eval} more; then the "
        "feature that marks one colour best, by the scenes' ground truth, and the image patches where it "
        "fires most.",
    )
    report.table(
        [
            "image tokens",
            "L0",
            "explained variance",
            "LM loss recovered",
            "LM loss clean / SAE spliced / zeroed",
            "dead features",
        ],
        [
            [
                metrics.n_tokens,
                metrics.l0,
                metrics.explained_variance,
                metrics.loss_recovered,
                f"{metrics.loss_clean:.3f} / {metrics.loss_spliced:.3f} / {metrics.loss_zero:.3f}",
                f"{metrics.dead_features} of {d_sae}",
            ]
        ],
    )
    if (
        metrics.loss_zero is not None
        and metrics.loss_clean is not None
        and metrics.loss_zero <= metrics.loss_clean
    ):
        report.text(
            "Zeroing the image tokens does not raise this LM loss (it is the mean over the prompt's own "
            "words, which the image barely predicts), so the loss recovered says little about the SAE here; "
            "the explained variance does."
        )
    report.text(
        f"Feature {feature} marks {colour} objects: chosen on the training scenes as the feature whose AUROC "
        f"for {colour} objects' tokens most exceeds its AUROC for any other colour, it scores AUROC "
        f"{auroc:.3f} for {colour} on the held-out image tokens and at most {other:.3f} for another colour. "
        f"It is active on {int(values[feature].numel())} of the {metrics.n_tokens} held-out image tokens; "
        f"its top {len(shown)} patches (outlined) and the words its decoder direction writes:"
    )
    figures = []
    for example in shown:
        image = load_image(held_out[example.sample].image)
        assert example.cell is not None and example.grid is not None  # (image tokens only)
        patch = _patch_image(image, example.cell, example.grid).resize((96, 96))
        figures.append(
            f"<figure>{img_tag(patch, example.token)}"
            f"<figcaption>{escape(f'{example.activation:.3g} at {example.token}')}</figcaption></figure>"
        )
    report.html(f"<div class='sae-feature'>{''.join(figures)}</div>")
    words = decoder_words(model, sae, feature, k=6)
    report.table(
        ["lens", "words"],
        [[lens, ", ".join(f"{w} ({s:.2f})" for w, s in listed) or "-"] for lens, listed in words.items()],
    )
    return SAEDemo(sae, hook_name, train, held_out, metrics, feature, colour, auroc, other, examples[feature])


def colour_feature(
    sae: Any, model: Any, train: Sequence[Any], held_out: Sequence[Any], hook_name: str
) -> tuple[int, str, float, float]:
    """The SAE feature that marks one colour's objects best, by the toy world's ground truth.

    For every feature and colour, the AUROC of the feature's activation for that colour's object tokens
    among all image tokens of the ``train`` scenes (:func:`~hooked_mllm.sae.study.auroc`); the feature and
    colour chosen are those where this AUROC most exceeds the same feature's best AUROC for another colour
    (a feature firing on every object scores near 0 there). They are then graded on ``held_out``.

    Args:
        sae: A SAELens SAE trained on ``hook_name``.
        model: The toy :class:`~hooked_mllm.HookedMLLM`.
        train: :class:`hooked_mllm.toy.Scene` records the choice is made on.
        held_out: Scenes it is graded on.
        hook_name: The hook point the SAE reads.

    Returns:
        ``(feature, colour, held-out AUROC for colour, held-out highest AUROC for another colour)``.

    Examples:
        >>> hook = "blocks.2.hook_resid_post"
        >>> feature, colour, auroc, _ = colour_feature(sae, model, train, held_out, hook)  # doctest: +SKIP
    """
    from .study import attribute_values, auroc, image_token_activations, image_token_labels

    truths = {
        name: image_token_labels(scenes)["color"]
        for name, scenes in (("train", train), ("held_out", held_out))
    }
    colours = [
        c for c in attribute_values("color") if all(0 < (t == c).sum() < len(t) for t in truths.values())
    ]
    if len(colours) < 2:
        raise ValueError("Both scene sets need objects of at least two colours to choose a colour feature.")
    areas = {}
    for name, scenes in (("train", train), ("held_out", held_out)):
        with torch.no_grad():
            x = image_token_activations(model, scenes, hook_name).to(sae.W_enc.dtype)
            features = sae.encode(x).float().numpy()
        areas[name] = np.stack([auroc(features, truths[name] == c) for c in colours])  # [colours, features]
    chosen = areas["train"]
    margin = np.stack([chosen[i] - np.delete(chosen, i, 0).max(0) for i in range(len(colours))])
    c, feature = np.unravel_index(int(margin.argmax()), margin.shape)
    graded = areas["held_out"][:, feature]
    return int(feature), colours[c], float(graded[c]), float(np.delete(graded, c).max())
