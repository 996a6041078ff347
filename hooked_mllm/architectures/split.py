"""Typed rules saying how one HF input tensor splits by batch row.

A batch of several prompts carries HF tensors of different shapes: ``input_ids`` is
``[batch, pos]``, LLaVA's ``pixel_values`` has one entry per image, Qwen2-VL's packs every
image's patches along dim 0, InternVL's every image's tiles. :meth:`MultimodalBatch.row
<hooked_mllm.inputs.MultimodalBatch.row>` (and ``repeat``) cut a batch into rows with the rule
an adapter names for each key in :attr:`~.base.InputLayout.split`; keys it does not name
follow :func:`rule_for`'s defaults.

The rules: :class:`Tokens` (``[batch, pos]``), :class:`PerImage` (one entry per image span),
:class:`PerVideo` (one entry per video span),
:class:`PerRow` (one entry per row), :class:`Patches` (each image's patches, counted by
another key), :class:`Tiles` (each image's tiles, in proportion to its tokens),
:class:`Shared` (the same for every row) and :class:`Computed` (a family's own function, for
tensors that index into others). Each has ``take(batch, key, rows)``: the key's tensor for
the listed rows, in order. Used by :mod:`hooked_mllm.inputs`; declared by the family files.

Examples:
    >>> from hooked_mllm.architectures.split import Patches, Tiles
    >>> Patches("image_grid_thw")
    Patches(sizes_key='image_grid_thw', per='image')
    >>> Patches("")
    Traceback (most recent call last):
    ...
    ValueError: Patches needs the key of the tensor holding each image's patch grid (as 'image_grid_thw'), ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_IMAGE_KEYS = ("pixel_values", "image_sizes")


def _cat(pieces: list[Tensor], value: Tensor) -> Tensor:
    """The pieces concatenated on dim 0 (one piece as it is; none: an empty slice of ``value``)."""
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat(pieces) if pieces else value[:0]


def _image_ranges(batch: Any, rows: list[int]) -> list[tuple[int, int]]:
    """``[first, end)`` image-span indices of each listed row."""
    per_row = batch.images_per_row
    return [(sum(per_row[:r]), sum(per_row[:r]) + (per_row[r] if per_row else 0)) for r in rows]


def _video_ranges(batch: Any, rows: list[int]) -> list[tuple[int, int]]:
    """``[first, end)`` video-span indices of each listed row."""
    per_row = getattr(batch, "videos_per_row", ())
    return [(sum(per_row[:r]), sum(per_row[:r]) + (per_row[r] if per_row else 0)) for r in rows]


class SplitRule:
    """How one HF input tensor splits by batch row (subclasses say how)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        """``batch.inputs[key]`` for ``rows`` of ``batch``, in order."""
        raise NotImplementedError


@dataclass(frozen=True)
class Tokens(SplitRule):
    """``[batch, pos]``: the row's tokens, its padding removed (``input_ids``, masks, Mllama's
    ``cross_attention_mask``)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        value = batch.inputs[key]
        return _cat([value[r : r + 1][:, ~batch.pad_mask[r]] for r in rows], value)


@dataclass(frozen=True)
class PerImage(SplitRule):
    """Dim 0 holds one entry per image span, in order (LLaVA's ``pixel_values``, ``image_sizes``)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        value = batch.inputs[key]
        return _cat([value[first:end] for first, end in _image_ranges(batch, rows)], value)


@dataclass(frozen=True)
class PerVideo(SplitRule):
    """Dim 0 holds one entry per video span, in order (Qwen2-VL's ``video_grid_thw``)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        value = batch.inputs[key]
        return _cat([value[first:end] for first, end in _video_ranges(batch, rows)], value)


@dataclass(frozen=True)
class PerRow(SplitRule):
    """Dim 0 is the batch row (Idefics' ``pixel_values`` ``[batch, crops, ...]``)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        value = batch.inputs[key]
        return _cat([value[r : r + 1] for r in rows], value)


@dataclass(frozen=True)
class Patches(SplitRule):
    """Dim 0 concatenates each image's patches, ``prod(batch.inputs[sizes_key][i])`` of them
    (Qwen2-VL's ``pixel_values`` with ``sizes_key="image_grid_thw"``), or each video's with
    ``per="video"`` (``pixel_values_videos`` with ``"video_grid_thw"``)."""

    sizes_key: str
    per: str = "image"

    def __post_init__(self) -> None:
        if not isinstance(self.sizes_key, str) or not self.sizes_key:
            raise ValueError(
                "Patches needs the key of the tensor holding each image's patch grid (as "
                f"'image_grid_thw'), not {self.sizes_key!r}."
            )
        if self.per not in ("image", "video"):
            raise ValueError(f"Patches(per=...) is 'image' or 'video', not {self.per!r}.")

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        value = batch.inputs[key]
        sizes = batch.inputs[self.sizes_key].prod(-1).tolist()
        ranges = _image_ranges(batch, rows) if self.per == "image" else _video_ranges(batch, rows)
        return _cat(
            [value[int(sum(sizes[:first])) : int(sum(sizes[:end]))] for first, end in ranges],
            value,
        )


@dataclass(frozen=True)
class Tiles(SplitRule):
    """Dim 0 concatenates each image's tiles, every tile giving the same number of image tokens,
    so image ``i`` has a share proportional to its tokens (InternVL's ``pixel_values``)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        value = batch.inputs[key]
        sizes = [span.n_tokens for span in batch.images]
        per_token = value.shape[0] / max(1, sum(sizes))
        return _cat(
            [
                value[round(sum(sizes[:first]) * per_token) : round(sum(sizes[:end]) * per_token)]
                for first, end in _image_ranges(batch, rows)
            ],
            value,
        )


@dataclass(frozen=True)
class Shared(SplitRule):
    """The same tensor for every row (kept whole)."""

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        return batch.inputs[key]


@dataclass(frozen=True)
class Computed(SplitRule):
    """A family's own function ``(batch, rows) -> tensor`` giving the key's tensor for the listed
    rows, in order, repeats allowed: for tensors that index into others (Molmo2's pooling
    indices). The one callable rule: :meth:`MultimodalBatch.repeat
    <hooked_mllm.inputs.MultimodalBatch.repeat>` calls it, where it concatenates other keys."""

    function: Callable[[Any, list[int]], Tensor] | Any  # `| Any`: anything else is refused below, saying so

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(f"Computed needs a function (batch, rows) -> tensor, not {self.function!r}.")

    def __call__(self, batch: Any, rows: list[int]) -> Tensor:
        return self.function(batch, rows)

    def take(self, batch: Any, key: str, rows: list[int]) -> Tensor:
        return self.function(batch, rows)


_BY_STRING = {
    "token": "Tokens()",
    "image": "PerImage()",
    "row": "PerRow()",
    "tiles": "Tiles()",
    "shared": "Shared()",
}
_NAMES = "Tokens(), PerImage(), PerRow(), Patches(key), Tiles(), Shared()"


def check_rules(split: Any) -> tuple[tuple[str, SplitRule], ...]:
    """``split`` (a mapping or ``(key, rule)`` pairs) as checked pairs; a clear error otherwise.

    Examples:
        >>> check_rules({"pixel_values": "tiles"})
        Traceback (most recent call last):
        ...
        ValueError: Input split rule for 'pixel_values' is the string 'tiles'; rules are typed: ...
    """
    pairs = tuple(split.items()) if isinstance(split, Mapping) else tuple(split)
    seen: set[str] = set()
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(
                f"Input split rules are (key, rule) pairs or a {{key: rule}} mapping; got {pair!r}."
            )
        key, rule = pair
        if key in seen:
            raise ValueError(f"Input split names {key!r} twice; give one rule per key.")
        seen.add(key)
        if isinstance(rule, str):
            typed = _BY_STRING.get(rule) or (
                f"Patches({rule.split(':', 1)[1]!r})" if rule.startswith("patches:") else None
            )
            hint = f"use {typed}" if typed else f"use one of {_NAMES}"
            raise ValueError(
                f"Input split rule for {key!r} is the string {rule!r}; rules are typed: {hint} "
                "(from hooked_mllm.architectures.split)."
            )
        if not isinstance(rule, SplitRule):
            hint = (
                "wrap a function (batch, rows) -> tensor in Computed(...)"
                if callable(rule)
                else f"give a SplitRule ({_NAMES}, Computed(fn))"
            )
            raise TypeError(f"Input split rule for {key!r} is {rule!r}; {hint}.")
    return pairs


def rule_for(key: str, rules: Mapping[str, SplitRule]) -> SplitRule:
    """The rule for ``key``: the adapter's, else :class:`Tokens` for token tensors (``input_ids``,
    ``attention_mask``, ``token_type_ids``, ``position_ids``), :class:`PerImage` for
    ``pixel_values`` / ``image_sizes`` and :class:`Shared` for the rest.

    Examples:
        >>> rule_for("pixel_values", {}), rule_for("pixel_values", {"pixel_values": Tiles()})
        (PerImage(), Tiles())
    """
    rule = rules.get(key)
    if rule is not None:
        return rule
    return Tokens() if key in _TOKEN_KEYS else PerImage() if key in _IMAGE_KEYS else Shared()
