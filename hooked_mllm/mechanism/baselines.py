"""Baseline location maps: mean attention, attention-gradient relevancy, input x gradient, occlusion.

Each returns the same :class:`~hooked_mllm.mechanism.LocationMap` as
:func:`~hooked_mllm.mechanism.image_locations`, for one image of one row (or a list over rows
with ``row=None``), explaining the token ``y`` at each row's last position ``T`` (the
prediction by default):

* :func:`attention_map`: the attention from ``T`` to each image position, averaged over
  layers and heads (the paper's baseline); one forward, shared with the head map through a
  :class:`~hooked_mllm.mechanism.MechanismRun`.
* :func:`relevancy_map`: Chefer et al.'s (2021) rule for self-attention: ``R = I``, then per
  layer ``R += mean_h(relu(grad(A) * A)) @ R``; the map is ``R[T, image]``. Gradients of
  ``y``'s logit at ``T``; one forward and one backward.
* :func:`gradient_map`: input x gradient on the image-token embeddings (the layer-0
  residual): ``sum_d x[j] * d logit_y / d x[j]``.
* :func:`occlusion_map`: each grid cell's pixels set to ``fill`` (0: the processor's mean
  colour after normalisation), one forward per cell (batched); the score is the drop in
  ``log p(y)``. Needs ``pixel_values`` laid out ``[image, channel, height, width]`` with the
  grid spanning the image (LLaVA, PaliGemma, Gemma 3...).

Examples:
    >>> from hooked_mllm.mechanism import attention_map, occlusion_map
    >>> attention_map(model, batch).peak(), occlusion_map(model, batch).peak()   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..model import HookedMLLM
from .capture import capture, resolve_target
from .maps import LocationMap, grid_span, to_map
from .scores import layer_list


def _maps(
    batch: Any,
    row: int | None,
    image: int,
    method: str,
    label: str,
    tokens: list[str],
    scores: Callable[[int, list[int]], Any],
) -> LocationMap | list[LocationMap]:
    rows = range(len(batch)) if row is None else [row]
    out = []
    for b in rows:
        span = grid_span(batch, b, image)
        values = scores(b, list(span.token_positions))
        out.append(to_map(values, span, image, method, label, tokens[b]))
    return out if row is None else out[0]


def _tokens(model: HookedMLLM, ids: Tensor) -> list[str]:
    tokenizer = getattr(model.processor, "tokenizer", None)
    if tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def attention_map(
    model: HookedMLLM,
    inputs: Any,
    *,
    layers: Any = None,
    row: int | None = 0,
    image: int = 0,
    target: Any = None,
) -> LocationMap | list[LocationMap]:
    """Mean attention from ``T`` to each image position over ``layers`` (all) and every head.

    Examples:
        >>> attention_map(model, batch, layers=[2, 3]).peak()   # doctest: +SKIP
    """
    run = capture(model, inputs, target)
    chosen = layer_list(layers, run.n_layers, unique=True)
    mean = run.pattern[chosen].mean(dim=(0, 2))  # [batch, pos]
    label = "mean over heads" + ("" if layers is None else f", layers {chosen}")
    return _maps(
        run.batch,
        row,
        image,
        "attention",
        label,
        run.target_tokens(),
        lambda b, pos: mean[b, pos].cpu().numpy(),
    )


def _target_logits(model: HookedMLLM, logits: Tensor, batch: Any, target: Any) -> tuple[Tensor, Tensor]:
    last = batch.last_positions().to(logits.device)
    at_t = logits[torch.arange(len(batch), device=logits.device), last]
    ids = resolve_target(model, target, at_t.detach())
    return at_t.gather(1, ids.to(logits.device)[:, None]).sum(), ids


def relevancy_map(
    model: HookedMLLM, inputs: Any, *, row: int | None = 0, image: int = 0, target: Any = None
) -> LocationMap | list[LocationMap]:
    """Attention x gradient relevancy (Chefer et al. 2021) from ``T`` to each image position.

    Examples:
        >>> relevancy_map(model, batch).normalized().values    # doctest: +SKIP
    """
    batch = model.to_batch(inputs)
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    logits, cache = model.run_with_cache(batch, names_filter=names, device=None, grad=True)
    objective, ids = _target_logits(model, logits, batch, target)
    patterns = [cache[n] for n in names]
    grads = torch.autograd.grad(objective, patterns)
    seq = patterns[0].shape[-1]
    relevance = torch.eye(seq, device=logits.device).expand(len(batch), seq, seq).clone()
    with torch.no_grad():
        for attn, grad in zip(patterns, grads):
            mixed = (grad * attn).clamp(min=0).mean(1).float()  # [batch, query, key]
            relevance = relevance + mixed @ relevance
    last = batch.last_positions()
    return _maps(
        batch,
        row,
        image,
        "relevancy",
        "attention x gradient relevancy",
        _tokens(model, ids),
        lambda b, pos: relevance[b, int(last[b]), pos].cpu().numpy(),
    )


def gradient_map(
    model: HookedMLLM, inputs: Any, *, row: int | None = 0, image: int = 0, target: Any = None
) -> LocationMap | list[LocationMap]:
    """Input x gradient of ``y``'s logit on the image-token embeddings (``blocks.0.hook_resid_pre``).

    Examples:
        >>> gradient_map(model, batch).peak()     # doctest: +SKIP
    """
    batch = model.to_batch(inputs)
    logits, cache = model.run_with_cache(
        batch, names_filter="blocks.0.hook_resid_pre", device=None, grad=True
    )
    objective, ids = _target_logits(model, logits, batch, target)
    embed = cache["resid_pre", 0]
    (grad,) = torch.autograd.grad(objective, [embed])
    scores = (grad.float() * embed.detach().float()).sum(-1)
    return _maps(
        batch,
        row,
        image,
        "input_x_gradient",
        "input x gradient on image embeddings",
        _tokens(model, ids),
        lambda b, pos: scores[b, pos].cpu().numpy(),
    )


def occlusion_map(
    model: HookedMLLM,
    inputs: Any,
    *,
    row: int | None = 0,
    image: int = 0,
    target: Any = None,
    fill: float = 0.0,
    batch_size: int = 64,
) -> LocationMap | list[LocationMap]:
    """Drop in ``log p(y)`` at ``T`` when each grid cell's pixels are set to ``fill``.

    One forward per cell, ``batch_size`` occluded copies at a time. On a video batch standing its frames
    as images (``batch.frames_as_images()``, ``image=t``) of a family that takes whole frames
    (``pixel_values_videos`` ``[videos, frames, channel, height, width]``: LLaVA-OneVision,
    LLaVA-NeXT-Video), the cells of frame ``t`` are occluded in that frame only.

    Examples:
        >>> occlusion_map(model, batch, fill=0.0).peak()     # doctest: +SKIP
        >>> occlusion_map(model, clip_batch.frames_as_images(), image=2).peak()  # doctest: +SKIP
    """
    batch = model.to_batch(inputs)
    pixels = batch.inputs.get("pixel_values")
    key = "pixel_values"
    videos = batch.inputs.get("pixel_values_videos")
    if pixels is None and videos is not None and videos.dim() == 5 and batch.images and batch.videos:
        pixels, key = videos, "pixel_values_videos"  # frames standing as images
    elif pixels is None or pixels.dim() != 4:
        given = pixels if pixels is not None else videos
        shape = None if given is None else tuple(given.shape)
        raise ValueError(
            f"occlusion_map needs pixel_values shaped [image, channel, height, width] (or, for the frames "
            "of batch.frames_as_images(), pixel_values_videos shaped [video, frame, channel, height, width]) "
            f"with the grid spanning each image; the {model.adapter.name!r} inputs have {shape}. Use "
            "image_locations, attention_map, relevancy_map or gradient_map instead."
        )
    with torch.no_grad():
        logits = model(batch)
    last = batch.last_positions().to(logits.device)
    at_t = logits[torch.arange(len(batch), device=logits.device), last].float()
    ids = resolve_target(model, target, at_t)
    clean = at_t.log_softmax(-1).gather(1, ids.to(at_t.device)[:, None])[:, 0]

    def scores(b: int, pos: list[int]) -> Any:
        span = grid_span(batch, b, image)
        rows_, cols = span.grid  # type: ignore[misc]
        single = batch.row(b)
        n_images = len(single.images)
        at: tuple[int, ...] = (image,)
        if key == "pixel_values_videos":  # the frame's video among the row's, and its frame index
            n_images = len(single.videos)
            first = grid_span(single, 0, image).token_positions[0]
            (video,) = [v for v in single.videos if first in v.token_positions]
            time = video.frame_geometry()[0]
            (step,) = [t for t in range(time) if video.frame_positions(t)[0] == first]
            at = (single.videos.index(video), step * (video.frames_per_step or 1))
        height, width = pixels.shape[-2:]
        drops = []
        for start in range(0, rows_ * cols, batch_size):
            cells = list(range(start, min(start + batch_size, rows_ * cols)))
            occluded = single.repeat(len(cells))
            values = occluded.inputs[key].clone()
            for i, cell in enumerate(cells):
                r, c = divmod(cell, cols)
                top, bottom = r * height // rows_, (r + 1) * height // rows_
                left, right = c * width // cols, (c + 1) * width // cols
                values[(i * n_images + at[0], *at[1:])][..., top:bottom, left:right] = fill
            occluded.inputs[key] = values
            with torch.no_grad():
                out = model(occluded)
            t = occluded.last_positions().to(out.device)
            lp = out[torch.arange(len(cells), device=out.device), t].float().log_softmax(-1)[:, int(ids[b])]
            drops.append(clean[b] - lp)
        return torch.cat(drops).cpu().numpy()

    return _maps(
        batch, row, image, "occlusion", f"pixels set to {fill} per cell", _tokens(model, ids), scores
    )
