"""Do the toy's image tokens read as words? Lens read-outs of every object's image tokens at every layer.

Purpose:
    The measurements behind ``hooked-mllm toy science``: for each object of unseen scenes, read its image
    tokens at the LM input and after every block through the **logit lens** (final norm + LM head) and the
    **embedding lens** (cosine to the input embeddings, :func:`hooked_mllm.lens.embedding_lens`), restricted
    to the colour words and to the shape words, and count how often the top word is the object's own colour /
    shape: for the mean vector of the object's image tokens ("mean") and for each of its patches ("patch").
    Chance is 1/5 for colour and 1/3 for shape.

Connections:
    Scenes from :class:`hooked_mllm.toy.world.World` (``patch_indices`` = image-token indices), prompts from
    :func:`hooked_mllm.toy.data.encode`, the embedding lens of :mod:`hooked_mllm.lens`; the logit lens here
    is the model's own ``norm`` and ``lm_head`` on a plain Hugging Face model (what
    ``hooked_mllm.lens.logit_lens`` does through a ``HookedMLLM``), read from forward hooks on the decoder
    layers. :mod:`hooked_mllm.toy.cli` prints :func:`science_report`.

Contents:
    :class:`ReadoutRow`, :func:`image_token_readout`, :func:`format_readout`, :data:`SECTIONS`,
    :func:`science_report`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hooked_mllm.lens import embedding_lens
from hooked_mllm.toy.data import encode
from hooked_mllm.toy.model import checkpoint_kind
from hooked_mllm.toy.processor import CAPTION_PROMPT
from hooked_mllm.toy.world import COLORS, SHAPES, World

__all__ = [
    "LENSES",
    "SECTIONS",
    "ReadoutRow",
    "checkpoint_kind",
    "format_readout",
    "image_token_readout",
    "science_report",
]

LENSES: tuple[str, ...] = ("logit", "embedding")


@dataclass(frozen=True, kw_only=True)
class ReadoutRow:
    """How often one lens at one layer names an object's own colour / shape word (fractions in [0, 1]).

    Attributes:
        lens: ``"logit"`` or ``"embedding"``.
        layer: ``-1`` for the LM input (``blocks.0.hook_resid_pre``: the projector's output at image tokens),
            else ``l`` for ``blocks.{l}.hook_resid_post``.
        color_mean: top colour word of the object's mean image-token vector is right.
        shape_mean: top shape word of the object's mean image-token vector is right.
        color_patch: ``color_mean`` per image token, over all (object, patch) pairs.
        shape_patch: ``shape_mean`` per image token, over all (object, patch) pairs.
        n_objects: how many objects were read.
        n_patches: how many (object, patch) pairs were read.
    """

    lens: str
    layer: int
    color_mean: float
    shape_mean: float
    color_patch: float
    shape_patch: float
    n_objects: int
    n_patches: int


def _lens_scores(model, lens: str, h: torch.Tensor) -> torch.Tensor:
    lm = model.model.language_model
    if lens == "logit":
        return model.lm_head(lm.norm(h))
    if lens == "embedding":
        return embedding_lens(model, h)
    raise ValueError(f"lens must be one of {LENSES}, got {lens!r}.")


@torch.no_grad()
def image_token_readout(
    model,
    processor,
    seed: int = 7,
    n_scenes: int = 150,
    *,
    batch_size: int = 64,
) -> tuple[ReadoutRow, ...]:
    """Both lenses at the LM input and after every block, on the image tokens of ``n_scenes`` scenes of
    ``World(seed)`` (the caption prompt; image tokens come before the text, so the prompt cannot affect them).

    Args:
        model: a toy ``LlavaForConditionalGeneration``; processor: its ``LlavaProcessor``.
        seed: world seed (< 10000: unseen in training). ``n_scenes=150`` gives about 300 objects.

    Returns:
        One :class:`ReadoutRow` per lens and layer, logit lens first, layers in order.

    Examples:
        >>> rows = image_token_readout(model, processor, seed=7, n_scenes=100)  # doctest: +SKIP
        >>> max(r.color_mean for r in rows if r.lens == "embedding")  # doctest: +SKIP
        0.99
    """
    tok = processor.tokenizer
    color_ids = torch.tensor(tok.convert_tokens_to_ids(list(COLORS)))
    shape_ids = torch.tensor(tok.convert_tokens_to_ids(list(SHAPES)))
    layers = model.model.language_model.layers
    n_read = len(layers) + 1
    # per lens and layer: [color_mean, shape_mean, color_patch, shape_patch] counts
    hits = torch.zeros(len(LENSES), n_read, 4)
    n_obj = n_patch = 0
    scenes = World(seed=seed).sample(n_scenes)
    was_training = model.training
    model.eval()
    for start in range(0, n_scenes, batch_size):
        chunk = scenes[start : start + batch_size]
        batch = encode(processor, [s.image for s in chunk], [CAPTION_PROMPT] * len(chunk))
        states: list[torch.Tensor] = []

        def grab_input(_m, args, kwargs):
            states.append(args[0] if args else kwargs["hidden_states"])  # noqa: B023 (removed below)

        def grab_output(_m, _args, out):
            states.append(out[0] if isinstance(out, tuple) else out)  # noqa: B023 (removed below)

        handles = [layers[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(grab_output) for layer in layers]
        try:
            model(**batch)
        finally:
            for h in handles:
                h.remove()
        image_pos = [torch.nonzero(row == processor.image_token_id).flatten() for row in batch["input_ids"]]
        for b, scene in enumerate(chunk):
            for obj in scene.objects:
                pos = image_pos[b][list(obj.patch_indices)]
                c = list(COLORS).index(obj.color)
                s_ = SHAPES.index(obj.shape)
                n_obj += 1
                n_patch += len(pos)
                for li, lens in enumerate(LENSES):
                    for layer, h in enumerate(states):
                        vecs = h[b, pos]  # (patches, d_model)
                        both = torch.cat([vecs.mean(0, keepdim=True), vecs])
                        scores = _lens_scores(model, lens, both)
                        col = scores[:, color_ids].argmax(-1) == c
                        shp = scores[:, shape_ids].argmax(-1) == s_
                        hits[li, layer] += torch.tensor(
                            [float(col[0]), float(shp[0]), float(col[1:].sum()), float(shp[1:].sum())]
                        )
    model.train(was_training)
    rows = []
    for li, lens in enumerate(LENSES):
        for layer in range(n_read):
            cm, sm, cp, sp = hits[li, layer].tolist()
            rows.append(
                ReadoutRow(
                    lens=lens,
                    layer=layer - 1,
                    color_mean=cm / n_obj,
                    shape_mean=sm / n_obj,
                    color_patch=cp / n_patch,
                    shape_patch=sp / n_patch,
                    n_objects=n_obj,
                    n_patches=n_patch,
                )
            )
    return tuple(rows)


def format_readout(rows: tuple[ReadoutRow, ...], title: str = "") -> str:
    """A text table: one line per layer, colour / shape hit rates (mean vector, per patch) for each lens."""
    head = f"{'layer':<6}" + "".join(f" | {lens + ' lens':^31}" for lens in LENSES)
    sub = f"{'':<6}" + " | colour mean/patch  shape mean/patch" * len(LENSES)
    by = {(r.lens, r.layer): r for r in rows}
    layers = sorted({r.layer for r in rows})
    lines = [title] if title else []
    n = rows[0]
    lines.append(
        f"image tokens read as words ({n.n_objects} objects, {n.n_patches} patches; chance 0.20 / 0.33)"
    )
    lines += [head, sub]
    for layer in layers:
        cells = []
        for lens in LENSES:
            r = by[(lens, layer)]
            colour = f"{r.color_mean:4.2f} / {r.color_patch:4.2f}"
            cells.append(f"   {colour}     {r.shape_mean:4.2f} / {r.shape_patch:4.2f}  ")
        lines.append(f"{'input' if layer < 0 else layer:<6}" + "".join(f" |{c}" for c in cells))
    return "\n".join(lines)


def _quality(name: str, path: Path, seed: int, n: int) -> str:
    from hooked_mllm.toy.evaluation import evaluate, evaluate_text

    if checkpoint_kind(path) == "text":
        report = evaluate_text(path, seed=seed, n=n, progress=False)
        return "textual QA (scene given in words)\n" + report.format()
    return evaluate(path, seed=seed, n=n, progress=False).format()


def _readout(name: str, path: Path, seed: int, n: int) -> str:
    if checkpoint_kind(path) == "text":
        return ""
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=False
    ).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    return format_readout(image_token_readout(model, processor, seed=seed + 1, n_scenes=n))


@functools.lru_cache(maxsize=8)
def _heads_of(path: str, seed: int, n: int) -> tuple:
    from hooked_mllm.toy.heads import heads_table

    return tuple(heads_table(path, seed=seed, n=min(n, 100)))


def _heads(name: str, path: Path, seed: int, n: int) -> str:
    from hooked_mllm.toy.heads import format_heads

    return format_heads(list(_heads_of(str(path), seed, n)))


SECTIONS: dict[str, Callable[[str, Path, int, int], str]] = {
    "quality": _quality,
    "readout": _readout,
    "heads": _heads,
}
"""What ``hooked-mllm toy science`` prints for each checkpoint, in order: ``name -> fn(checkpoint_name, path,
seed, n_scenes) -> text`` (an empty string prints nothing). Add a section to extend the report."""


def science_report(
    checkpoints: dict[str, str | os.PathLike[str]],
    *,
    seed: int = 123,
    n: int = 200,
    sections: tuple[str, ...] | None = None,
) -> str:
    """The science report of ``checkpoints`` (``{name: directory}``): every section of :data:`SECTIONS` (or
    the named ones) for each checkpoint, on ``n`` scenes of world ``seed`` (the read-out uses
    ``seed + 1``)."""
    chosen = sections or tuple(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise ValueError(f"Unknown science sections {sorted(unknown)}; available: {list(SECTIONS)}.")
    out = []
    for name, path in checkpoints.items():
        out.append(f"== {name} ({path})")
        for section in chosen:
            text = SECTIONS[section](name, Path(path), seed, n)
            if text:
                out.append(text)
    texts = [p for p in checkpoints.values() if checkpoint_kind(p) == "text"]
    images = [(k, p) for k, p in checkpoints.items() if checkpoint_kind(p) != "text"]
    if "heads" in chosen and texts and images:
        from hooked_mllm.toy.heads import format_comparison

        tqa = _heads_of(str(texts[0]), seed, n)
        for name, path in images:
            vqa = _heads_of(str(path), seed, n)
            if vqa[0].values.shape == tqa[0].values.shape:
                out.append(f"== VQA ({name}) vs textual QA ({Path(texts[0]).name})")
                out.append(format_comparison(list(zip(vqa, tqa))))
    return "\n".join(out)
