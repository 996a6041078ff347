"""Reading an SAE feature: its top-activating image patches and text tokens, the words its decoder
direction writes, its activation histogram, as one self-contained HTML page.

The features are the SAE's own ``encode`` of the hook point's activations at every prompt token (padding
left out) of a dataset; an image token is shown as its patch highlighted on the sample's image (the
image's token grid from the batch), a text token in its context. The decoder direction ``W_dec[f]`` is read
through the logit lens (the unembedding, without the final norm: the words the direction pushes up) and
the embedding lens (its nearest input embeddings), for language-model points of width ``d_model``.

Examples:
    >>> top = top_examples(model, sae, toy_dataset(50), features=[3, 17])      # doctest: +SKIP
    >>> write_feature_page(model, sae, toy_dataset(50), 3, "reports/feature3.html")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from ..concepts.data import iter_samples, load_image
from ..viz._html import escape, img_tag, page, write_atomic
from .train import model_batches


@dataclass(frozen=True)
class FeatureExample:
    """One token where a feature is active.

    Attributes:
        sample: The sample's index in the dataset.
        position: The sequence position in the sample's prompt (padding not counted).
        activation: The feature's activation there.
        token: The token's text (``<image r,c>`` for an image token).
        cell: The image token's ``(row, col)`` in its image's token grid, or None.
        grid: That grid's ``(rows, cols)``, or None.
    """

    sample: int
    position: int
    activation: float
    token: str
    cell: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None


def _labels(model: Any, batch: Any, row: int) -> tuple[list[str], dict[int, tuple[tuple[int, int], Any]]]:
    ids = batch.inputs["input_ids"][row].tolist()
    tokenizer = getattr(model.processor, "tokenizer", model.processor)
    labels = list(batch.tokens[row]) if batch.tokens is not None else tokenizer.convert_ids_to_tokens(ids)
    cells: dict[int, tuple[tuple[int, int], Any]] = {}
    for span in batch.images_of(row):
        for i, pos in enumerate(span.token_positions):
            if span.grid is not None:
                cell = divmod(i, span.grid[1])
                cells[pos] = (cell, span.grid)
                labels[pos] = f"<image {cell[0]},{cell[1]}>"
    return labels, cells


def top_examples(
    model: Any,
    sae: Any,
    dataset: Iterable[Any],
    features: Sequence[int],
    *,
    k: int = 8,
    hook_name: str | None = None,
    batch_size: int = 8,
) -> tuple[dict[int, list[FeatureExample]], dict[int, torch.Tensor]]:
    """The ``k`` tokens where each feature is most active, and all of its non-zero activations.

    Args:
        model: The :class:`~hooked_mllm.HookedMLLM`.
        sae: A SAELens SAE on a language-model hook point.
        dataset: Samples (``Sample``, ``(image, prompt)``...).
        features: Feature indices.
        k: Examples per feature (highest activation first; ties in dataset order).
        hook_name: The hook point (default ``sae.cfg.metadata.hook_name``).
        batch_size: Samples per forward.

    Returns:
        ``(examples, activations)``: per feature its :class:`FeatureExample` list, and a 1-D tensor of
        its non-zero activations over every prompt token (for a histogram).

    Examples:
        >>> examples, acts = top_examples(model, sae, data, [5])   # doctest: +SKIP
        >>> examples[5][0].token, examples[5][0].activation        # doctest: +SKIP
        ('<image 1,0>', 4.2)
    """
    name = model.hook_points.resolve(hook_name or sae.cfg.metadata.hook_name).name
    point = model.hook_points.resolve(name)
    if not point.sequence:
        raise ValueError(
            f"{name} has no language-model sequence axis; top_examples reads SAEs on language-model points."
        )
    chosen = [int(f) for f in features]
    bad = [f for f in chosen if not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise ValueError(f"Features {bad} are out of range: this SAE has d_sae={sae.cfg.d_sae}.")
    found: dict[int, list[FeatureExample]] = {f: [] for f in chosen}
    values: dict[int, list[torch.Tensor]] = {f: [] for f in chosen}
    start = 0
    for batch in model_batches(model, list(dataset), batch_size):
        _, cache = model.run_with_cache(batch, names_filter=name)
        x = cache[name]
        x = x.flatten(-2) if point.heads is not None else x
        with torch.no_grad():
            acts = sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype))[..., chosen].float().cpu()
        acts[batch.pad_mask] = 0
        for row in range(acts.shape[0]):
            labels, cells = _labels(model, batch, row)
            for j, f in enumerate(chosen):
                column = acts[row, :, j]
                values[f].append(column[column != 0])
                top = column.topk(min(k, column.shape[0]))
                for value, pos in zip(top.values.tolist(), top.indices.tolist()):
                    if value > 0:
                        cell, grid = cells.get(pos, (None, None))
                        at = int((~batch.pad_mask[row, :pos]).sum())  # the position in the unpadded prompt
                        found[f].append(FeatureExample(start + row, at, value, labels[pos], cell, grid))
        start += acts.shape[0]
    examples = {f: sorted(found[f], key=lambda e: -e.activation)[:k] for f in chosen}
    return examples, {f: torch.cat(values[f]) if values[f] else torch.zeros(0) for f in chosen}


def decoder_words(model: Any, sae: Any, feature: int, k: int = 8) -> dict[str, list[tuple[str, float]]]:
    """The words feature ``feature``'s decoder direction writes: ``{"logit lens": [(token, logit)],
    "embedding lens": [(token, cosine)]}`` (empty where the SAE's width is not ``d_model``).

    Examples:
        >>> decoder_words(model, sae, 3)["logit lens"][:2]   # doctest: +SKIP
        [('red', 2.1), ('Ġred', 1.7)]
    """
    from ..lens import embedding_lens, logit_lens

    direction = sae.W_dec[feature].detach().float()
    if direction.shape[-1] != model.cfg.d_model:
        return {"logit lens": [], "embedding lens": []}
    tokenizer = getattr(model.processor, "tokenizer", model.processor)

    def named(scores: torch.Tensor) -> list[tuple[str, float]]:
        top = scores.float().topk(min(k, scores.shape[-1]))
        names = tokenizer.convert_ids_to_tokens(top.indices.tolist())
        return [(str(n), float(v)) for n, v in zip(names, top.values.tolist())]

    return {
        "logit lens": named(logit_lens(model, direction, apply_norm=False)),
        "embedding lens": named(embedding_lens(model, direction)),
    }


def _patch_image(image: Image.Image, cell: tuple[int, int], grid: tuple[int, int]) -> Image.Image:
    shown = image.convert("RGB").copy()
    w, h = shown.size
    r, c = cell
    box = (c * w / grid[1], r * h / grid[0], (c + 1) * w / grid[1] - 1, (r + 1) * h / grid[0] - 1)
    ImageDraw.Draw(shown).rectangle(box, outline=(255, 0, 255), width=max(1, w // 64))
    return shown


def _histogram(values: torch.Tensor, bins: int = 20) -> str:
    if values.numel() == 0:
        return "<p>Never active on these tokens.</p>"
    counts = torch.histc(values, bins=bins, min=0.0, max=float(values.max()))
    top = float(counts.max())
    left, width = 40, bins * 12  # room for the y-axis labels; the bars; then the x-axis labels below
    bars = "".join(
        f'<rect x="{left + i * 12}" y="{100 - height:.1f}" width="10" height="{height:.1f}" fill="#4a7">'
        f"<title>{int(c)}</title></rect>"
        for i, (c, height) in enumerate(zip(counts, (100 * counts / top).tolist()))
    )
    axes = (
        f'<line x1="{left - 2}" y1="100" x2="{left + width}" y2="100" stroke="#333"/>'
        f'<line x1="{left - 2}" y1="0" x2="{left - 2}" y2="100" stroke="#333"/>'
        f'<text x="{left - 4}" y="10" font-size="10" text-anchor="end">{int(top)}</text>'
        f'<text x="{left - 4}" y="100" font-size="10" text-anchor="end">0</text>'
        f'<text x="{left}" y="112" font-size="10">0</text>'
        f'<text x="{left + width}" y="112" font-size="10" text-anchor="end">{float(values.max()):.3g}</text>'
        f'<text x="{left + width / 2}" y="126" font-size="11" text-anchor="middle">activation</text>'
        f'<text x="10" y="50" font-size="11" text-anchor="middle" transform="rotate(-90 10 50)">tokens</text>'
    )
    return (
        f'<svg width="{left + width + 10}" height="130" role="img" aria-label="activation histogram">'
        f"{bars}{axes}</svg>"
        f"<p>{values.numel()} active tokens; activations 0 to {float(values.max()):.3g}.</p>"
    )


def feature_html(
    model: Any, sae: Any, dataset: Iterable[Any], feature: int, *, k: int = 8, batch_size: int = 8
) -> str:
    """One feature's page: top image patches and text tokens, decoder words, activation histogram
    (self-contained HTML; every string from the data escaped).

    Examples:
        >>> html = feature_html(model, sae, toy_dataset(40), 3)   # doctest: +SKIP
    """
    samples = list(iter_samples(dataset))
    examples, values = top_examples(model, sae, samples, [feature], k=k, batch_size=batch_size)
    hook = sae.cfg.metadata.hook_name
    parts = [f"<h1>Feature {int(feature)} of the SAE at {escape(hook)}</h1>", "<h2>Top activations</h2>"]
    for example in examples[feature]:
        sample = samples[example.sample]
        caption = f"{example.activation:.3g} at {example.token} in: {sample.prompt}"
        image = load_image(sample.image) if sample.image is not None else None
        if example.cell is not None and example.grid is not None and isinstance(image, Image.Image):
            shown = _patch_image(image, example.cell, example.grid)
            parts.append(
                f"<figure>{img_tag(shown, alt=example.token, width=160)}"
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        else:
            parts.append(f"<p>{escape(caption)}</p>")
    parts.append("<h2>Decoder direction</h2>")
    for lens, words in decoder_words(model, sae, feature, k).items():
        listed = (
            ", ".join(f"{escape(word)} ({score:.3g})" for word, score in words) or "(not a d_model direction)"
        )
        parts.append(f"<p><b>{escape(lens)}</b>: {listed}</p>")
    parts.append("<h2>Activation histogram</h2>" + _histogram(values[feature]))
    return page(f"Feature {int(feature)}", "".join(parts))


def write_feature_page(
    model: Any,
    sae: Any,
    dataset: Iterable[Any],
    feature: int,
    path: str | os.PathLike[str],
    **options: Any,
) -> Path:
    """Write :func:`feature_html` to ``path`` (atomically) and return the path.

    Examples:
        >>> write_feature_page(model, sae, data, 3, "reports/feature3.html")   # doctest: +SKIP
    """
    return write_atomic(path, feature_html(model, sae, dataset, feature, **options))
