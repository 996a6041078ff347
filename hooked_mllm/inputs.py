"""Encoding images and prompts into a :class:`MultimodalBatch` through a model's processor.

:func:`prepare` applies the processor's chat template, checks placeholders against
images, encodes with the processor and wraps the result with
:meth:`MultimodalBatch.from_hf` (:mod:`hooked_mllm.batch`), which finds the images with
:func:`hooked_mllm.spans.find_image_spans`. :func:`processor_token_counts` asks a processor
how many tokens an image of a given size becomes.

The batch and span types live in :mod:`hooked_mllm.batch` and :mod:`hooked_mllm.spans`;
``ImageSpan`` and ``MultimodalBatch`` are importable from here too.

Used by :mod:`hooked_mllm.model` (``model.prepare``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .batch import MultimodalBatch as MultimodalBatch
from .spans import ImageSpan as ImageSpan

if TYPE_CHECKING:
    from .architectures.base import Adapter

__all__ = ["ImageSpan", "MultimodalBatch", "prepare", "processor_token_counts"]


def prepare(
    processor: Any,
    *,
    images: Any = None,
    prompts: str | Sequence[str],
    videos: Any = None,
    chat_template: bool = True,
    padding_side: str = "left",
    image_token_id: int | None,
    adapter: Adapter | None = None,
    config: Any = None,
    **processor_kwargs: Any,
) -> MultimodalBatch:
    """Encode images and prompts into one padded :class:`MultimodalBatch`.

    Args:
        processor: The model's HF processor.
        images: One image per prompt, a list of lists (several per prompt), or None.
        prompts: A prompt or a list of prompts (one row each).
        videos: One video per prompt (a list of PIL frames, or an array / tensor ``[T, H, W, C]``),
            a list of videos per prompt, or None per row; only for families whose video is
            covered (``adapter.tokens.videos``), others are refused naming those that are.
            With the chat template each row's images come first, then its videos, then the text.
        chat_template: Wrap each prompt in the processor's chat template as a user turn
            with its images first, adding the generation prompt. Without it, each prompt
            must hold one image placeholder per image itself. A processor that has no chat
            template (PaliGemma) gets the prompt with one placeholder per image before it.
        padding_side: ``"left"`` (default, right for generation) or ``"right"``.

    Examples:
        >>> batch = prepare(processor, images=[img1, img2], prompts=["q1", "a longer q2"],
        ...                 image_token_id=model.cfg.image_token_id)       # doctest: +SKIP
    """
    if processor is None:
        raise ValueError("This model has no processor; pass HF tensors (input_ids=..., pixel_values=...).")
    if isinstance(prompts, str):
        prompts = [prompts]
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt (a string, or a list with one per row).")
    per_row = _images_per_row(images, len(prompts))
    videos_per_row = _videos_per_row(videos, len(prompts), adapter)
    placeholder = getattr(processor, "image_token", "<image>")
    texts = []
    for prompt, row_images, row_videos in zip(prompts, per_row, videos_per_row):
        if chat_template and getattr(processor, "chat_template", None) is None:
            texts.append(placeholder * len(row_images) + prompt)
        elif chat_template:
            content = [{"type": "image"} for _ in row_images] + [{"type": "video"} for _ in row_videos]
            content.append({"type": "text", "text": prompt})
            messages = [{"role": "user", "content": content}]
            texts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
        else:
            texts.append(prompt)
    for row, (text, row_images) in enumerate(zip(texts, per_row)):
        found = text.count(placeholder)
        if found != len(row_images):
            raise ValueError(
                f"Prompt {row} has {found} image placeholder(s) {placeholder!r} but {len(row_images)} "
                f"image(s); give one image per placeholder (or use chat_template=True)."
            )
    video_placeholder = getattr(processor, "video_token", None)
    for row, (text, row_videos) in enumerate(zip(texts, videos_per_row)):
        found = text.count(video_placeholder) if video_placeholder else 0
        if found != len(row_videos):
            raise ValueError(
                f"Prompt {row} has {found} video placeholder(s) {video_placeholder!r} but {len(row_videos)} "
                f"video(s); give one video per placeholder (or use chat_template=True)."
            )
    flat_videos = [video for row_videos in videos_per_row for video in row_videos]
    flat = [image for row_images in per_row for image in row_images]
    tokenizer = getattr(processor, "tokenizer", processor)
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        given = per_row if adapter is not None and adapter.inputs.nested_images and flat else flat
        if flat_videos:
            processor_kwargs = dict(processor_kwargs, videos=flat_videos)
        encoded = processor(
            images=given or None, text=texts, padding=True, return_tensors="pt", **processor_kwargs
        )
    finally:
        tokenizer.padding_side = saved_side
    encoded = dict(encoded)
    if "suffix" not in processor_kwargs:  # PaliGemma adds training labels (all ignored without a suffix)
        encoded.pop("labels", None)
    counts = processor_token_counts(
        processor, [(image.height, image.width) for image in flat if hasattr(image, "height")]
    )
    return MultimodalBatch.from_hf(
        encoded,
        image_token_id=image_token_id,
        adapter=adapter,
        config=config,
        tokenizer=tokenizer,
        prompts=prompts,
        image_token_counts=counts if counts is not None and len(counts) == len(flat) else None,
    )


def processor_token_counts(processor: Any, image_sizes: Sequence[Sequence[int]]) -> list[int] | None:
    """Each image's number of image tokens as ``processor`` computes it from ``(height, width)``.

    None where the processor cannot say (it has no ``_get_num_multimodal_tokens``). Used
    only to cut a run of touching image placeholders, and only where the counts add up
    exactly, so a processor whose counts include separators never cuts anything.

    Examples:
        >>> processor_token_counts(processor, [(336, 336), (336, 672)])   # doctest: +SKIP
        [576, 576]
    """
    method = getattr(processor, "_get_num_multimodal_tokens", None)
    if method is None or not image_sizes:
        return None
    try:
        data = method(image_sizes=[[int(v) for v in size] for size in image_sizes])
    except (TypeError, ValueError, KeyError, AttributeError):  # a processor whose rule needs more than sizes
        return None
    counts = (
        data.get("num_image_tokens") if isinstance(data, dict) else getattr(data, "num_image_tokens", None)
    )
    return [int(c) for c in counts] if counts is not None else None


def _images_per_row(images: Any, n_rows: int) -> list[list[Any]]:
    if images is None:
        return [[] for _ in range(n_rows)]
    if not isinstance(images, (list, tuple)):
        raise ValueError("images must be a list (one image per prompt, or a list of images per prompt)")
    if len(images) != n_rows:
        raise ValueError(
            f"Got {len(images)} image entries for {n_rows} prompts; give one entry per prompt "
            "(an image, a list of images, or None)."
        )
    rows: list[list[Any]] = []
    for entry in images:
        if entry is None:
            rows.append([])
        elif isinstance(entry, (list, tuple)):
            rows.append(list(entry))
        else:
            rows.append([entry])
    return rows


def _videos_per_row(videos: Any, n_rows: int, adapter: Adapter | None) -> list[list[Any]]:
    """Per row, its videos (each a list of frames or a ``[T, H, W, C]`` array / tensor)."""
    if videos is None:
        return [[] for _ in range(n_rows)]
    if adapter is None or adapter.tokens.videos is None:
        from .batch import refuse_video

        refuse_video(adapter, "videos= was given")
    if not isinstance(videos, (list, tuple)):
        raise ValueError(
            "videos must be a list with one entry per prompt: a video (a list of PIL frames or an array "
            "[T, H, W, C]), a list of videos, or None."
        )
    if len(videos) != n_rows:
        raise ValueError(
            f"Got {len(videos)} video entries for {n_rows} prompts; give one entry per prompt (a video, a "
            "list of videos, or None)."
        )
    rows: list[list[Any]] = []
    for row, entry in enumerate(videos):
        if entry is None:
            rows.append([])
        elif _is_video(entry):
            rows.append([entry])
        elif isinstance(entry, (list, tuple)) and entry and all(_is_video(v) for v in entry):
            rows.append(list(entry))
        else:
            raise ValueError(
                f"Video entry {row} is neither a video (a non-empty list of PIL frames, or an array / tensor "
                f"[T, H, W, C]) nor a list of videos; got {type(entry).__name__}."
            )
    return rows


def _is_video(value: Any) -> bool:
    """Whether ``value`` is one video: a non-empty list of PIL images, or a 4-d array / tensor."""
    if getattr(value, "ndim", None) == 4:
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(hasattr(frame, "size") and hasattr(frame, "mode") for frame in value)
    )
