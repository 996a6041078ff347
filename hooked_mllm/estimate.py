"""How many bytes a ``run_with_cache`` will hold, worked out from shapes before running anything.

:func:`estimate_cache` gives the shape of every cached value
and their bytes for a selection of hook names and positions, from the model's sizes
(``model.cfg`` and the HF config) and the input's shapes only: no forward pass runs, so it
works on a model built on the ``meta`` device (:mod:`hooked_mllm.geometry`) as well as on a
loaded one. The language-model stream is worked out for every family; the vision tower and
projector for the families whose tower layout is known here (``llava``, ``llava_onevision``,
``qwen2_vl``). Selecting a vision or projector point of another family, or a point whose shape
is not the sequence's (Mllama's cross-attention pattern), raises a ``ValueError`` naming it,
rather than guessing. Tests compare every estimate with the bytes a
real ``run_with_cache`` holds on tiny models (equal).

Examples:
    >>> est = estimate_cache(model, batch, names_filter="blocks.0.hook_resid_post")  # doctest: +SKIP
    >>> est.shapes["blocks.0.hook_resid_post"], est.nbytes                    # doctest: +SKIP
    ((1, 39, 4096), 319488)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import budget as _budget
from . import positions as _positions
from .batch import MultimodalBatch

__all__ = ["CacheEstimate", "estimate_cache", "estimate_tool"]

_TOWERS = ("llava", "llava_onevision", "qwen2_vl")


@dataclass(frozen=True)
class CacheEstimate:
    """The shapes and bytes of a cache, before it is computed.

    Attributes:
        shapes: Hook name to the shape its cached tensor will have (in ``model.hook_names()`` order).
        dtype: The element type the cache will hold.
    """

    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype

    @property
    def bytes_by_name(self) -> dict[str, int]:
        """Hook name to the bytes of its cached tensor."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return {name: math.prod(shape) * size for name, shape in self.shapes.items()}

    @property
    def nbytes(self) -> int:
        """Total bytes of every cached tensor."""
        return sum(self.bytes_by_name.values())

    def __str__(self) -> str:
        return f"{len(self.shapes)} tensors, {self.nbytes / 2**30:.3f} GiB ({str(self.dtype)[6:]})"


def estimate_cache(
    model: Any,
    inputs: MultimodalBatch | Mapping[str, torch.Tensor],
    *,
    names_filter: Any = None,
    positions: Any = None,
    dtype: torch.dtype | None = None,
) -> CacheEstimate:
    """The shapes and bytes ``model.run_with_cache`` will cache, without running the model.

    Args:
        model: A :class:`~hooked_mllm.model.HookedMLLM` (its weights may be on the ``meta`` device).
        inputs: A prepared batch, or the HF input tensors (``input_ids`` ``[batch, pos]``,
            ``pixel_values``, ``image_grid_thw``, ``image_sizes``...), which may be ``meta``
            tensors: only their shapes are read (and ``image_grid_thw`` / ``image_sizes`` values).
        names_filter: As in ``run_with_cache``: a name, a list of names, a predicate or None.
        positions: As in ``run_with_cache`` (needs a prepared batch), or an int ``k``: this many
            positions per row (for HF tensors, whose image positions are not known here).
        dtype: The cache's dtype (``run_with_cache(dtype=...)``); default the model's.

    Returns:
        A :class:`CacheEstimate` (``.shapes``, ``.nbytes``, ``.bytes_by_name``).

    Raises:
        ValueError: For a vision or projector point of a family whose tower layout is not known
            here, or a selection ``run_with_cache`` would refuse.

    Examples:
        >>> est = estimate_cache(model, batch, names_filter="blocks.0.attn.hook_pattern")  # doctest: +SKIP
        >>> est.shapes["blocks.0.attn.hook_pattern"]                                       # doctest: +SKIP
        (1, 32, 39, 39)
    """
    batch = inputs if isinstance(inputs, MultimodalBatch) else None
    tensors: dict[str, torch.Tensor] = dict(inputs.inputs if isinstance(inputs, MultimodalBatch) else inputs)
    if "input_ids" not in tensors:
        raise ValueError(f"estimate_cache needs input_ids among the inputs; got {sorted(tensors)}.")
    n_rows, seq = (int(n) for n in tensors["input_ids"].shape)
    kept = seq
    if isinstance(positions, int) and not isinstance(positions, bool):
        if not 0 < positions <= seq:
            raise ValueError(f"positions={positions} must be a count of positions in 1..{seq}.")
        kept = positions
    elif positions is not None:
        if batch is None:
            raise ValueError(
                "A position selector needs a prepared batch (model.prepare(...)); with HF tensors pass "
                "positions as a count of positions per row (an int)."
            )
        kept = int(_positions.gather_index(_positions.resolve(positions, batch)).shape[1])
    points = model.hook_points.select(names_filter)
    if batch is not None:
        points = model._runnable(batch, points, names_filter)
    elif not {"pixel_values", "pixel_values_videos"} & set(tensors):
        off = [p.name for p in points if p.stream != "lm"]
        if off and names_filter is not None and not callable(names_filter):
            raise ValueError(
                f"{off[0]} does not run on a text-only input (no pixel_values or pixel_values_videos among "
                "the inputs)."
            )
        points = [p for p in points if p.stream == "lm"]
    shapes: dict[str, tuple[int, ...]] = {}
    tower = None
    for point in points:
        if point.stream == "lm":
            shapes[point.name] = _lm_shape(model, point, n_rows, seq, kept)
        else:
            tower = tower or _tower(model, tensors)
            shapes[point.name] = _tower_shape(model, point, tower)
    return CacheEstimate(shapes, dtype or model.cfg.dtype)


def _width(name: str, d_model: int, heads: int, kv_heads: int, d_head: int, d_mlp: int) -> tuple[int, ...]:
    """The trailing dims of a block point (``heads`` split when it is a per-head point)."""
    last = name.rsplit(".", 1)[-1]
    if last == "hook_q" or last == "hook_z":
        return (heads, d_head)
    if last in ("hook_k", "hook_v"):
        return (kv_heads, d_head)
    if name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return (d_mlp,)
    return (d_model,)


_LM_POINTS = re.compile(
    r"(hook_embed|hook_logits|ln_final\.hook_normalized|blocks\.\d+\.(hook_resid_(pre|mid|post)|hook_attn_out|"
    r"hook_mlp_out|hook_cross_attn_out|ln[12]\.hook_normalized|attn\.hook_[qkvz]|attn\.hook_pattern|"
    r"cross_attn\.hook_[qz]|mlp\.hook_(pre|post)))"
)


def _lm_shape(model: Any, point: Any, n_rows: int, seq: int, kept: int) -> tuple[int, ...]:
    cfg = model.cfg
    if not point.sequence or not _LM_POINTS.fullmatch(point.name):
        raise ValueError(
            f"estimate_cache does not know the shape of {point.name} (cross-attention over the vision "
            "states, or a point of this family only); leave it out of names_filter."
        )
    if point.name.endswith("mlp.hook_pre") or point.name.endswith("mlp.hook_post"):
        if not cfg.d_mlp:
            raise ValueError(f"{point.name}: the model's MLP width is not known (model.cfg.d_mlp is None).")
    if point.name.endswith("hook_pattern"):
        return (n_rows, cfg.n_heads, kept, seq)
    if point.name == "hook_logits":
        return (n_rows, kept, cfg.d_vocab)
    if point.name.endswith("hook_z") and point.heads is None:
        return (n_rows, kept, cfg.n_heads * cfg.d_head)
    width = _width(point.name, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, int(cfg.d_mlp or 0))
    return (n_rows, kept, *width)


@dataclass(frozen=True)
class _Tower:
    lead: tuple[int, ...]  # leading dims of a vision block value: (images, tokens) or (patches,)
    d: int
    heads: int
    d_mlp: int
    proj_in: tuple[int, ...]
    proj_out: tuple[int, ...]
    pattern: tuple[int, ...] | None


def _tower(model: Any, tensors: dict[str, torch.Tensor]) -> _Tower:
    name = model.cfg.architecture
    if name not in _TOWERS:
        raise ValueError(
            f"estimate_cache does not know the vision tower's shapes of {name!r} models (known: "
            f"{', '.join(_TOWERS)}); select language-model points only, e.g. names_filter=lambda n: "
            "n.startswith(('blocks.', 'hook_', 'ln_final'))."
        )
    config = model.hf_model.config
    vision = model.adapter.vision_cfg(config)
    pixels = tensors.get("pixel_values")
    videos = tensors.get("pixel_values_videos")  # the tower runs on these too (after the images)
    d_model = model.cfg.d_model
    if name == "qwen2_vl":
        n_patches = sum(int(x.shape[0]) for x in (pixels, videos) if x is not None)
        d, merge = int(vision.embed_dim), int(vision.spatial_merge_size)
        return _Tower(
            (n_patches,),
            d,
            int(vision.num_heads),
            int(d * vision.mlp_ratio),
            (n_patches, d),
            (n_patches // merge**2, d_model),
            None,
        )
    side = int(vision.image_size) // int(vision.patch_size)
    cls_token = 1 if vision.model_type == "clip_vision_model" else 0
    tokens = side * side + cls_token
    if pixels is None:
        n_images = 0
    elif pixels.dim() == 4:
        n_images = int(pixels.shape[0])
    else:  # [rows, tiles, 3, H, W]: LLaVA-OneVision keeps each image's own number of tiles
        n_images = _onevision_tiles(config, tensors)
    if videos is not None:  # LLaVA-OneVision: [videos, frames, 3, H, W], each frame through the tower
        n_images += int(videos.shape[0]) * int(videos.shape[1])
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    selected = tokens - 1 if strategy == "default" else tokens
    heads = int(vision.num_attention_heads)
    return _Tower(
        (n_images, tokens),
        int(vision.hidden_size),
        heads,
        int(vision.intermediate_size),
        (n_images, selected, int(vision.hidden_size)),
        (n_images, selected, d_model),
        (n_images, heads, tokens, tokens),
    )


def _onevision_tiles(config: Any, tensors: dict[str, torch.Tensor]) -> int:
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    sizes = tensors["image_sizes"].tolist()
    per_row = tensors.get("batch_num_images")
    counts = per_row.tolist() if per_row is not None else [1] * len(sizes)
    patching = [n == 1 for n in counts for _ in range(n)]
    return sum(
        image_size_to_num_patches(
            image_size=size,
            grid_pinpoints=config.image_grid_pinpoints,
            patch_size=config.vision_config.image_size,
        )
        if patch
        else 1
        for size, patch in zip(sizes, patching, strict=True)
    )


def _tower_shape(model: Any, point: Any, tower: _Tower) -> tuple[int, ...]:
    if point.name == "projector.hook_in":
        return tower.proj_in
    if point.name == "projector.hook_out":
        return tower.proj_out
    if point.name.endswith("hook_pattern"):
        if tower.pattern is None:
            raise ValueError(f"{point.name}: the tower's attention pattern shape is not known here.")
        return tower.pattern
    if point.stream == "vision" and (point.name == "vision.hook_embed" or point.layer is not None):
        d_head = tower.d // tower.heads
        return (*tower.lead, *_width(point.name, tower.d, tower.heads, tower.heads, d_head, tower.d_mlp))
    raise ValueError(f"estimate_cache does not know the shape of {point.name}; leave it out of names_filter.")


def estimate_tool(
    model: Any, inputs: Any, tool: str, *, max_memory: int | str | None = None, **kwargs: Any
) -> Any:
    """How many bytes ``tool(model, inputs, **kwargs)`` will hold, from shapes only (no forward runs).

    Args:
        model: A :class:`~hooked_mllm.HookedMLLM`; its weights may be on the ``meta`` device
            (:func:`hooked_mllm.geometry.build`).
        inputs: A prepared :class:`~hooked_mllm.MultimodalBatch` (``geometry.prepare`` for a preset).
        tool: ``"head_contributions"`` (``layers=``, ``positions=``), ``"image_locations"``
            (``heads=``, ``layers=``, ``row=``, ``image=``), ``"logit_lens_map"`` (``layers=``,
            ``tokens=``, ``row=``, ``image=``, ``frozen=``), or ``"run_with_cache"`` (the keywords of
            :func:`~hooked_mllm.estimate_cache`, which it returns).
        max_memory: The budget the chunks are sized for (as in the tools).

    Returns:
        A :class:`~hooked_mllm.budget.ToolEstimate` (``.peak``, ``.result``, ``.working``,
        ``.chunk``...), or a :class:`~hooked_mllm.estimate.CacheEstimate` for ``"run_with_cache"``.

    Raises:
        hooked_mllm.budget.MemoryBudgetError: When the call cannot fit ``max_memory`` at the smallest chunk.
        ValueError: For an unknown tool or keyword.

    Examples:
        >>> model = geometry.build("llava-1.5-7b")                               # doctest: +SKIP
        >>> batch = geometry.prepare(model, "llava-1.5-7b", (640, 480))           # doctest: +SKIP
        >>> print(estimate_tool(model, batch, "image_locations", heads="all"))    # doctest: +SKIP
    """
    from .mechanism.maps import grid_span
    from .mechanism.scores import layer_list

    if tool == "run_with_cache":
        return estimate_cache(model, inputs, **kwargs)
    known = {
        "head_contributions": {"layers", "positions"},
        "image_locations": {"heads", "layers", "row", "image"},
        "logit_lens_map": {"layers", "tokens", "row", "image", "frozen"},
    }
    if tool not in known:
        raise ValueError(f"estimate_tool knows {sorted([*known, 'run_with_cache'])}, not {tool!r}.")
    unknown = sorted(set(kwargs) - known[tool])
    if unknown:
        raise ValueError(f"{tool} takes no {unknown} here; it takes {sorted(known[tool])}.")
    batch = model.to_batch(inputs)
    n_rows, seq = (int(n) for n in batch.input_ids.shape)
    budget = _budget.resolve_budget(max_memory)
    n_layers = model.cfg.n_layers
    if tool == "head_contributions":
        positions = kwargs.get("positions")
        n_pos = seq if positions is None else int(torch.as_tensor(positions).numel())
        chosen = layer_list(kwargs.get("layers"), n_layers)
        return _budget.plan_contributions(model, len(chosen), n_rows, n_pos, seq, budget)
    row = kwargs.get("row", 0)
    span = grid_span(batch, 0 if row is None else row, kwargs.get("image", 0))
    if tool == "image_locations":
        heads, layers = kwargs.get("heads", "top"), kwargs.get("layers")
        if isinstance(heads, str) and heads == "all":
            pairs = len(layer_list(layers, n_layers, unique=True)) * model.cfg.n_heads
        elif isinstance(heads, str) and heads == "top":
            pairs = 1
        elif isinstance(heads, int) and not isinstance(heads, bool):
            pairs = heads
        else:
            pairs = len(list(heads))
        return _budget.plan_locations(model, pairs, span.n_tokens, n_rows, seq, budget)
    chosen = layer_list(kwargs.get("layers"), n_layers)
    tokens = kwargs.get("tokens")
    n_tokens = 1 if tokens is None else len(tokens)
    frozen = bool(kwargs.get("frozen", False))
    return _budget.plan_lens(model, len(chosen), span.n_tokens, n_tokens, frozen, budget)
