"""The demo report's sparse-autoencoder section (``make demo`` with SAELens installed).

A small SAELens SAE is trained for a few seconds on a toy model's image-token residuals
(:func:`~hooked_mllm.sae.train.train_sae`), measured on scenes it did not train on
(:func:`~hooked_mllm.sae.evaluate.evaluate_sae`: L0, explained variance, LM loss recovered) and one
feature's dashboard summary is shown: its top image patches (:func:`~hooked_mllm.sae.features.top_examples`)
and the words its decoder direction writes. :func:`hooked_mllm.demo.run_demo` calls :func:`sae_section`
only when ``sae_lens`` is importable, and otherwise says in the report how to get it.

Examples:
    >>> from hooked_mllm.sae.demo import sae_section                     # doctest: +SKIP
    >>> result = sae_section(toy.load("toy-llava-deep"), 0, report)     # doctest: +SKIP
    >>> result.metrics.l0                                               # doctest: +SKIP
    7.9
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        feature: The feature shown (the most often active on ``held_out``'s image tokens).
        examples: Its top image tokens on ``held_out``, highest activation first.
    """

    sae: Any
    hook_name: str
    train: list[Sample]
    held_out: list[Sample]
    metrics: SAEMetrics
    feature: int
    examples: list[FeatureExample]


def sae_section(
    model: Any,
    seed: int,
    report: Any,
    *,
    layer: int = 2,
    n_train: int = 32,
    n_eval: int = 12,
    d_sae: int = 128,
    k: int = 8,
    total_tokens: int = 2048,
    n_examples: int = 6,
) -> SAEDemo:
    """Train a small top-k SAE on ``model``'s layer-``layer`` image-token residuals and add its section
    (metrics table, one feature's top image patches and decoder words) to ``report``.

    Args:
        model: A toy :class:`~hooked_mllm.HookedMLLM` (any model with image tokens works).
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
    feature = _most_active_feature(model, sae, held_out, hook_name)
    examples, values = top_examples(model, sae, held_out, [feature], k=n_examples, batch_size=16)
    shown = [e for e in examples[feature] if e.cell is not None]
    report.section(
        TITLE,
        f"A top-{k} SAE with {d_sae} features (SAELens), trained for a few seconds on the layer-{layer} "
        f"residuals of the image tokens of {n_train} unseen scenes, measured on {n_eval} more; then the "
        "image patches where its most often active feature fires most.",
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
        f"Feature {feature} is active on {int(values[feature].numel())} of the {metrics.n_tokens} held-out "
        f"image tokens; its top {len(shown)} patches (outlined) and the words its decoder direction writes:"
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
    return SAEDemo(sae, hook_name, train, held_out, metrics, feature, examples[feature])


def _most_active_feature(model: Any, sae: Any, samples: list[Sample], hook_name: str) -> int:
    """The feature active on the most image tokens of ``samples`` (lowest index on ties)."""
    from .train import model_batches, token_activations

    counts = torch.zeros(sae.cfg.d_sae)
    with torch.no_grad():
        for batch in model_batches(model, samples, 16):
            x = token_activations(model, batch, hook_name, "image").to(sae.W_enc.dtype)
            counts += (sae.encode(x) > 0).sum(0).float()
    return int(counts.argmax())
