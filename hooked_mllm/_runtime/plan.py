"""What a run may do: the hook points a batch reaches, the attention configs switched to eager, the pad id.

Purpose:
    The decisions a run makes before anything runs, in one place: on a text-only batch the vision
    tower and projector do not run, so their points are left out of a filter and refused when named
    (:func:`runnable`, :func:`runnable_hooks`); attention patterns exist only in eager attention, so
    the streams whose patterns a run reads switch to eager for that run (:func:`eager_configs`,
    :func:`attention_configs`); rows are padded with the tokenizer's pad id, else its EOS id, else 0
    (:func:`pad_id`: ``model.text_batch``, ``model.to_tokens`` and batched invokes all use it).

Connections:
    Called by :class:`~hooked_mllm.model.HookedMLLM` (runs, ``run_with_cache``, ``trace``), by
    :mod:`hooked_mllm.estimate` through ``model._runnable`` and by the inputs mixin.

Examples:
    >>> pad_id(None)
    0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..architectures.base import Adapter
from ..hook_points import HookPoint


def pad_id(tokenizer: Any) -> int:
    """The id rows are padded with: the tokenizer's pad id, else its EOS id, else 0 (also without one)."""
    if tokenizer is None:
        return 0
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def attention_configs(adapter: Adapter, config: Any) -> list[Any]:
    """The LM's and the vision tower's attention configs (switched to eager where patterns are read)."""
    vision = adapter.vision_cfg(config)
    return [adapter.text_cfg(config)] + ([vision] if vision is not None else [])


def eager_configs(adapter: Adapter, config: Any, hooks: Sequence[Any]) -> list[Any]:
    """The attention configs of the streams where ``hooks`` (bound hooks, with ``.point``) read patterns."""
    streams = {hook.point.stream for hook in hooks if hook.point.needs_eager}
    configs = []
    if "lm" in streams:
        configs.append(adapter.text_cfg(config))
    if "vision" in streams and adapter.vision_cfg(config) is not None:
        configs.append(adapter.vision_cfg(config))
    return configs


def has_images(batch: Any) -> bool:
    """Whether ``batch`` (a :class:`~hooked_mllm.inputs.MultimodalBatch`) carries images (pixels or image
    inputs), so the vision tower and projector run."""
    return any("pixel" in key or "image" in key for key in batch.inputs)


def runnable(batch: Any, points: Sequence[HookPoint], names_filter: Any = "explicit") -> list[HookPoint]:
    """``points`` that a run of ``batch`` reaches: on a text-only batch the vision tower and the projector
    do not run, so their points are left out of a filter (``None`` or a predicate) and refused when named.

    Raises:
        ValueError: A point named explicitly does not run on this text-only batch.
    """
    if has_images(batch):
        return list(points)
    off = [p for p in points if p.stream != "lm"]
    if off and (names_filter is not None and not callable(names_filter)):
        raise ValueError(
            f"{off[0].name} does not run on a text-only input (the vision tower and projector run only "
            "with images); give images with model.prepare(images=..., prompts=...), or hook "
            "language-model points."
        )
    return [p for p in points if p.stream == "lm"]


def runnable_hooks(batch: Any, hooks: Sequence[Any]) -> list[Any]:
    """The bound ``hooks`` a run of ``batch`` reaches (:func:`runnable`): on a point that does not run, a
    hook a predicate chose is left out and one chosen by name refused."""
    runnable(batch, [hook.point for hook in hooks if not hook.by_filter])
    reached = {point.name for point in runnable(batch, [hook.point for hook in hooks], None)}
    return [hook for hook in hooks if hook.point.name in reached]
