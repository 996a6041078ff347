"""Model inputs with their geometry: which positions are image, text, special or padding.

:class:`MultimodalBatch` carries the Hugging Face tensors for one forward of several
rows (we batch ourselves: nnsight 0.8 cannot batch multimodal invokes) together with
per-row masks, the span and patch grid of every image, and the token strings.
:func:`prepare` builds one through the model's processor and chat template;
:meth:`MultimodalBatch.from_hf` wraps tensors a user made themselves.

Used by :mod:`hooked_mllm.model` (every run), :mod:`hooked_mllm.positions` (selectors)
and :mod:`hooked_mllm.cache` (image / text views).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .architectures.split import SplitRule, rule_for

if TYPE_CHECKING:
    from .architectures.base import Adapter


@dataclass(frozen=True)
class ImageSpan:
    """Where one image's tokens sit: row, sequence positions ``[start, end)``, grid.

    ``grid`` is ``(rows, cols)`` with ``rows * cols == n_tokens`` (row-major), or
    None where the tokens form no grid (resampled latents).

    ``positions`` is None where the image's tokens are the contiguous run
    ``[start, end)``. Where other tokens sit between them (Pixtral's ``[IMG_BREAK]``
    after every row of patches), it lists the image tokens' sequence positions in
    order, separators excluded; ``start`` / ``end`` then bound the first and last of
    them, and grid cell ``(r, c)`` is at ``positions[r * cols + c]``. Use
    :attr:`token_positions` to cover both cases.

    Examples:
        >>> span = ImageSpan(0, 0, 2, 9, (2, 3), positions=(2, 3, 4, 6, 7, 8))
        >>> span.n_tokens, list(span.token_positions)[3]
        (6, 6)
    """

    row: int
    index: int
    start: int
    end: int
    grid: tuple[int, int] | None
    positions: tuple[int, ...] | None = None

    @property
    def n_tokens(self) -> int:
        return self.end - self.start if self.positions is None else len(self.positions)

    @property
    def token_positions(self) -> range | tuple[int, ...]:
        """The sequence positions of this image's tokens, in order (row-major where gridded)."""
        return range(self.start, self.end) if self.positions is None else self.positions

    def shifted(self, offset: int, **changes: Any) -> ImageSpan:
        """This span moved ``offset`` positions to the left (padding removed), with ``changes``."""
        positions = None if self.positions is None else tuple(p - offset for p in self.positions)
        return replace(self, start=self.start - offset, end=self.end - offset, positions=positions, **changes)


@dataclass(frozen=True, eq=False)
class MultimodalBatch:
    """One batch of rows ready for the model, with its geometry.

    Attributes:
        inputs: HF keyword tensors (``input_ids``, ``attention_mask``, ``pixel_values``...).
        image_mask: ``[batch, pos]`` True at image tokens.
        text_mask: ``[batch, pos]`` True at ordinary text tokens.
        special_mask: ``[batch, pos]`` True at special tokens (BOS, EOS...), not padding.
        pad_mask: ``[batch, pos]`` True at padding.
        images: Every image's :class:`ImageSpan`, in order.
        tokens: Per row, the token strings (padding included), if a tokenizer is known.
        prompts: The prompts as given to :func:`prepare`, if any.
        images_per_row: How many images each row holds (for row selection).
        input_split: How :meth:`row` and :meth:`repeat` split each HF input key (the
            adapter's ``inputs.split``; keys not listed follow :func:`~.architectures.split.rule_for`).
        no_image_tokens: Why the model's sequence holds no image tokens (cross-attention
            models such as Mllama, whose image placeholder is marked special), or None.
            Image selectors and ``cache.image`` raise with this reason instead of
            selecting wrong positions.

    Examples:
        >>> batch = model.prepare(images=[img], prompts=["what color is the circle?"])  # doctest: +SKIP
        >>> batch.image_mask.sum().item()                                               # doctest: +SKIP
        36
    """

    inputs: dict[str, Tensor]
    image_mask: Bool[Tensor, "batch pos"]
    text_mask: Bool[Tensor, "batch pos"]
    special_mask: Bool[Tensor, "batch pos"]
    pad_mask: Bool[Tensor, "batch pos"]
    images: tuple[ImageSpan, ...] = ()
    tokens: tuple[tuple[str, ...], ...] | None = None
    prompts: tuple[str, ...] | None = None
    images_per_row: tuple[int, ...] = field(default=())
    input_split: tuple[tuple[str, SplitRule], ...] = ()
    no_image_tokens: str | None = None

    @property
    def input_ids(self) -> Int[Tensor, "batch pos"]:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> Int[Tensor, "batch pos"]:
        mask = self.inputs.get("attention_mask")
        return torch.ones_like(self.input_ids) if mask is None else mask

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def images_of(self, row: int) -> list[ImageSpan]:
        """The image spans of one row, in order."""
        return [span for span in self.images if span.row == row]

    def last_positions(self) -> Int[Tensor, " batch"]:
        """The index of each row's last non-padding token."""
        valid = ~self.pad_mask
        positions = torch.arange(valid.shape[1]).expand_as(valid)
        return torch.where(valid, positions, -1).max(dim=1).values

    def row(self, index: int) -> MultimodalBatch:
        """Row ``index`` alone, its padding removed, as a batch of one.

        Works for models whose ``pixel_values`` hold one entry per image along dim 0,
        and for others through the adapter's ``inputs.split`` rules
        (:mod:`hooked_mllm.architectures.split`).
        """
        keep = ~self.pad_mask[index]
        n_images = self.images_per_row[index] if self.images_per_row else 0
        rules = dict(self.input_split)
        inputs = {key: rule_for(key, rules).take(self, key, [index]) for key in self.inputs}
        spans = []
        for i, span in enumerate(self.images_of(index)):
            offset = int((~keep[: span.start]).sum())
            spans.append(span.shifted(offset, row=0, index=i))
        return MultimodalBatch(
            inputs=inputs,
            image_mask=self.image_mask[index : index + 1][:, keep],
            text_mask=self.text_mask[index : index + 1][:, keep],
            special_mask=self.special_mask[index : index + 1][:, keep],
            pad_mask=self.pad_mask[index : index + 1][:, keep],
            images=tuple(spans),
            tokens=None if self.tokens is None else (tuple(t for t, k in zip(self.tokens[index], keep) if k),),
            prompts=None if self.prompts is None else (self.prompts[index],),
            images_per_row=(n_images,),
            input_split=self.input_split,
            no_image_tokens=self.no_image_tokens,
        )

    def repeat(self, times: int) -> MultimodalBatch:
        """A one-row batch repeated ``times`` times (every HF tensor concatenated on dim 0).

        Concatenating on dim 0 is right for per-image ``pixel_values`` and for flattened
        patch tensors with per-image grids alike; a key with a ``Computed`` split rule
        (tensors that index into others, as Molmo2's pooling indices) gets the rule's tensor
        for ``[0] * times``.
        """
        if len(self) != 1:
            raise ValueError(f"repeat() takes a batch of one row, not {len(self)}; use batch.row(i) first")
        rules = dict(self.input_split)
        inputs = {k: rules[k](self, [0] * times) if callable(rules.get(k))
                  else torch.cat([v] * times) if isinstance(v, Tensor) else v for k, v in self.inputs.items()}
        spans = tuple(replace(span, row=r, index=r * len(self.images) + span.index)
                      for r in range(times) for span in self.images)
        return MultimodalBatch(
            inputs=inputs,
            image_mask=self.image_mask.repeat(times, 1),
            text_mask=self.text_mask.repeat(times, 1),
            special_mask=self.special_mask.repeat(times, 1),
            pad_mask=self.pad_mask.repeat(times, 1),
            images=spans,
            tokens=None if self.tokens is None else self.tokens * times,
            prompts=None if self.prompts is None else self.prompts * times,
            images_per_row=self.images_per_row * times,
            input_split=self.input_split,
            no_image_tokens=self.no_image_tokens,
        )

    def to(self, device: torch.device | str) -> MultimodalBatch:
        """The batch with its HF tensors on ``device`` (masks stay on the CPU)."""
        return replace(self, inputs={k: v.to(device) if isinstance(v, Tensor) else v
                                     for k, v in self.inputs.items()})

    @classmethod
    def from_hf(
        cls,
        inputs: dict[str, Any],
        *,
        image_token_id: int | None,
        adapter: Adapter | None = None,
        config: Any = None,
        tokenizer: Any = None,
        prompts: Sequence[str] | None = None,
        image_token_counts: Sequence[int] | None = None,
    ) -> MultimodalBatch:
        """Wrap HF keyword tensors, deriving masks, image spans and grids from the ids.

        ``image_token_counts`` (each image's number of image tokens, as the processor
        computes them) lets images whose placeholders touch be told apart.

        Examples:
            >>> batch = MultimodalBatch.from_hf({"input_ids": ids, "pixel_values": pv},
            ...                                 image_token_id=32000)      # doctest: +SKIP
        """
        if "input_ids" not in inputs:
            raise ValueError("Inputs need 'input_ids' (got keys: " + ", ".join(sorted(inputs)) + ")")
        tensors = {k: v for k, v in inputs.items() if v is not None}
        ids = tensors["input_ids"]
        if ids.dim() == 1:
            ids = tensors["input_ids"] = ids.unsqueeze(0)
        if ids.shape[0] == 0:
            raise ValueError("input_ids hold no rows; give at least one prompt.")
        attention = tensors.get("attention_mask")
        pad = torch.zeros_like(ids, dtype=torch.bool) if attention is None else attention.eq(0)
        empty = [row for row in range(ids.shape[0]) if bool(pad[row].all())]
        if ids.shape[1] == 0 or empty:
            raise ValueError(
                f"Row(s) {empty or list(range(ids.shape[0]))} of input_ids hold no tokens (an empty prompt with no "
                "image and no chat template encodes to nothing); give each row at least one token.")
        in_sequence = adapter is None or adapter.tokens.in_sequence
        if image_token_id is not None and in_sequence:
            image = ids.eq(image_token_id) & ~pad
        else:  # cross-attention models: the placeholder is a special token, not an image position
            image = torch.zeros_like(pad)
        special = torch.zeros_like(pad)
        if tokenizer is not None:
            special_ids = [i for i in tokenizer.all_special_ids if i != image_token_id or not in_sequence]
            special = torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype)) & ~pad & ~image
        text = ~pad & ~image & ~special
        grids = adapter.tokens.grids(tensors, config) if adapter is not None and adapter.tokens.grids else None
        if grids == [] and bool(image.any()):
            raise ValueError(
                f"input_ids hold image tokens (id {image_token_id}), but the inputs carry no image geometry for "
                f"the {adapter.name!r} architecture (got keys: {', '.join(sorted(tensors))}). Pass every key the "  # type: ignore[union-attr]
                "processor returned with the images (model(**processor(images=..., text=...))).")
        row_break = _row_break_id(adapter, tokenizer)
        views = adapter.tokens.views(tensors, config) if adapter is not None and adapter.tokens.views else None
        found = _view_spans(image, views) if views else None
        if found is not None:
            spans, per_row = found
        else:
            spans, per_row = _image_spans(image, adapter, config, grids, ids if row_break is not None else None,
                                          row_break, image_token_counts)
        if not in_sequence and image_token_id is not None:
            per_row = tuple(int(n) for n in (ids.eq(image_token_id) & ~pad).sum(1).tolist())
        no_image_tokens = None if in_sequence else (
            f"The {adapter.name!r} architecture has no image tokens in the language model's sequence: "  # type: ignore[union-attr]
            "images enter through cross-attention to the vision states, and the image placeholder is one "
            "special token. Image position selectors and cache.image() do not apply; select the placeholder "
            "with positions.token(...) or read the cross-attention hooks (blocks.{l}.hook_cross_attn_out).")
        n_pixel = tensors["pixel_values"].shape[0] if "pixel_values" in tensors else None
        one_per_span = adapter is not None and adapter.inputs.pixel_values_per_span
        if n_pixel is not None and one_per_span and n_pixel != len(spans):
            raise ValueError(
                f"The inputs hold {n_pixel} images (pixel_values) but {len(spans)} runs of image "
                f"tokens (id {image_token_id}) in input_ids; each image needs exactly one placeholder."
            )
        tokens = None
        if tokenizer is not None:
            tokens = tuple(tuple(tokenizer.convert_ids_to_tokens(row.tolist())) for row in ids)
        return cls(tensors, image, text, special, pad, spans, tokens,
                   None if prompts is None else tuple(prompts), per_row,
                   adapter.inputs.split if adapter is not None else (), no_image_tokens)


def _row_break_id(adapter: Adapter | None, tokenizer: Any) -> int | None:
    """The id of the adapter's ``tokens.row_break`` token (None where it has none)."""
    if adapter is None or adapter.tokens.row_break is None:
        return None
    if tokenizer is None:
        raise ValueError(
            f"The {adapter.name!r} architecture separates the rows of an image's tokens with "
            f"{adapter.tokens.row_break!r}; finding its images needs the tokenizer. Wrap the model with its "
            "processor (HookedMLLM.from_hf(hf_model, processor)) or use model.prepare(...)."
        )
    return int(tokenizer.convert_tokens_to_ids(adapter.tokens.row_break))


def _runs(image_mask: Tensor, ids: Tensor | None, row_break: int | None) -> list[tuple[int, list[tuple[int, int]]]]:
    """Per row, the runs of image tokens ``(row, [(start, end), ...])``; with ``row_break``,
    runs separated by exactly one such token are merged (the rows of one image)."""
    out = []
    for row, mask in enumerate(image_mask):
        padded = torch.cat([torch.tensor([False]), mask, torch.tensor([False])]).int()
        edges = padded.diff()
        starts = (edges == 1).nonzero().flatten().tolist()
        ends = (edges == -1).nonzero().flatten().tolist()
        runs = [[(start, end)] for start, end in zip(starts, ends)]
        if row_break is not None and ids is not None:
            merged: list[list[tuple[int, int]]] = []
            for run in runs:
                last = merged[-1][-1] if merged else None
                if last is not None and run[0][0] == last[1] + 1 and int(ids[row, last[1]]) == row_break:
                    merged[-1].append(run[0])
                else:
                    merged.append(run)
            runs = merged
        out += [(row, parts) for parts in runs]
    return out


def _split_touching(runs: list[tuple[int, list[tuple[int, int]]]],
                    counts: list[int]) -> list[tuple[int, list[tuple[int, int]]]] | None:
    """``runs`` cut where images touch, using each image's token count in order (None if they do not fit).

    Placeholders the chat template writes side by side (``<image><image>``) leave one run of
    image tokens for two images; a run whose length is the sum of the next few counts is cut
    into those images. Only a run of one contiguous piece is cut.
    """
    out, i = [], 0
    for row, parts in runs:
        length = sum(b - a for a, b in parts)
        taken, total = [], 0
        while i < len(counts) and total < length:
            taken.append(counts[i])
            total += counts[i]
            i += 1
        if total != length or (len(taken) > 1 and len(parts) > 1):
            return None
        start = parts[0][0]
        for n in taken:
            out.append((row, [(start, start + n)]) if len(taken) > 1 else (row, parts))
            start += n
    return out if i == len(counts) else None


def _view_spans(image_mask: Tensor, views: list[tuple[int, list[tuple[tuple[int, ...], tuple[int, int]]]]]
                ) -> tuple[tuple[ImageSpan, ...], tuple[int, ...]] | None:
    """One span per view of each image (the adapter's ``tokens.views``), or None with a warning
    where the runs of image tokens do not hold exactly the images' token counts.

    Image ``i``'s run must be ``views[i][0]`` tokens long; each of its views becomes a span
    listing ``run start + offsets`` with the view's grid.
    """
    totals = [n for n, _ in views]
    runs = _runs(image_mask, None, None)
    if len(totals) > len(runs):
        runs = _split_touching(runs, totals) or runs
    sizes = [sum(b - a for a, b in parts) for _, parts in runs]
    if sizes != totals or any(len(parts) != 1 for _, parts in runs):
        warnings.warn(
            f"Image geometry unknown: the image inputs describe {len(totals)} image(s) with {totals} tokens, but "
            f"input_ids hold {len(runs)} run(s) of image tokens with {sizes} tokens. Each run is kept as one image "
            "span without a grid, so grid selectors (rows/cols/box) and location maps are unavailable. Re-run the "
            "processor on the same images and text to get both.", stacklevel=4)
        return None
    spans: list[ImageSpan] = []
    per_row = [0] * image_mask.shape[0]
    for (row, parts), (_, image_views) in zip(runs, views):
        start = parts[0][0]
        for offsets, grid in image_views:
            if offsets != tuple(range(offsets[0], offsets[-1] + 1)):
                positions: tuple[int, ...] | None = tuple(start + o for o in offsets)
            else:
                positions = None
            spans.append(ImageSpan(row, len(spans), start + offsets[0], start + offsets[-1] + 1, grid, positions))
            per_row[row] += 1
    return tuple(spans), tuple(per_row)


def _image_spans(image_mask: Tensor, adapter: Adapter | None, config: Any,
                 grids: list[tuple[int, int] | None] | None = None, ids: Tensor | None = None,
                 row_break: int | None = None,
                 image_token_counts: Sequence[int] | None = None) -> tuple[tuple[ImageSpan, ...], tuple[int, ...]]:
    """Runs of image tokens per row, each one image, with its grid.

    Each contiguous run is one image, except that with ``row_break`` (a token id, with
    the ``ids``) runs separated by exactly one ``row_break`` token are the rows of one
    image: its span lists their positions and its grid is ``(n_runs, run length)``; and
    a run holding several touching images is cut by their token counts (from ``grids``, else
    ``image_token_counts``, the processor's count per image).
    ``grids`` (from the adapter's ``tokens.grids`` rule) gives each image's grid in order,
    checked against the rows where a span has separators (a span that is one run, such as
    Molmo2's low-resolution view, takes the grid as given; its token count is checked);
    otherwise the adapter's ``tokens.grid`` derives it from the run's length. Geometry that
    contradicts the tokens degrades to "positions known, grid unknown" (grids None) with a
    warning: it never blocks a forward.
    """
    runs = _runs(image_mask, ids, row_break)
    expected = None if grids is None else [None if g is None else g[0] * g[1] for g in grids]
    counts = expected if expected is not None and None not in expected else image_token_counts
    if counts and len(counts) > len(runs):
        runs = _split_touching(runs, list(counts)) or runs
    problem = None
    if grids is not None:
        sizes = [sum(b - a for a, b in parts) for _, parts in runs]
        if len(grids) != len(runs) or any(e is not None and e != n for e, n in zip(expected, sizes)):
            problem = (f"the image inputs describe {len(grids)} image(s) with {expected} tokens, but input_ids "
                       f"hold {len(runs)} run(s) of image tokens with {sizes} tokens")
    spans: list[ImageSpan] = []
    per_row = [0] * image_mask.shape[0]
    for row, parts in runs:
        start, end = parts[0][0], parts[-1][1]
        positions = None
        if len(parts) > 1:
            positions = tuple(p for a, b in parts for p in range(a, b))
        n_tokens = end - start if positions is None else len(positions)
        widths = {b - a for a, b in parts}
        rows_grid = (len(parts), widths.pop()) if len(widths) == 1 else None
        if grids is not None:
            grid = grids[len(spans)] if problem is None else None
            if row_break is not None and grid is not None and len(parts) > 1 and grid != rows_grid:
                problem = (f"image {len(spans)} is {grid[0]}x{grid[1]} tokens by its image inputs, but its "
                           f"tokens in input_ids form {rows_grid} rows x cols")
                grid = None
        elif row_break is not None:
            grid = rows_grid
        else:
            grid = adapter.tokens.grid(n_tokens, config) if adapter is not None else None
        spans.append(ImageSpan(row, len(spans), start, end, grid, positions))
        per_row[row] += 1
    if problem is not None:
        warnings.warn(
            f"Image geometry unknown: {problem}. The image positions are kept (they are the image tokens), but "
            "no span has a grid, so grid selectors (rows/cols/box) and grid reshapes are unavailable. "
            "Re-run the processor on the same images and text to get both.", stacklevel=4)
        spans = [replace(span, grid=None) for span in spans]
    return tuple(spans), tuple(per_row)


def prepare(
    processor: Any,
    *,
    images: Any = None,
    prompts: str | Sequence[str],
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
    placeholder = getattr(processor, "image_token", "<image>")
    texts = []
    for prompt, row_images in zip(prompts, per_row):
        if chat_template and getattr(processor, "chat_template", None) is None:
            texts.append(placeholder * len(row_images) + prompt)
        elif chat_template:
            content = [{"type": "image"} for _ in row_images] + [{"type": "text", "text": prompt}]
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
    flat = [image for row_images in per_row for image in row_images]
    tokenizer = getattr(processor, "tokenizer", processor)
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        given = per_row if adapter is not None and adapter.inputs.nested_images and flat else flat
        encoded = processor(images=given or None, text=texts, padding=True, return_tensors="pt",
                            **processor_kwargs)
    finally:
        tokenizer.padding_side = saved_side
    encoded = dict(encoded)
    if "suffix" not in processor_kwargs:  # PaliGemma adds training labels (all ignored without a suffix)
        encoded.pop("labels", None)
    counts = processor_token_counts(processor, [(image.height, image.width) for image in flat
                                                if hasattr(image, "height")])
    return MultimodalBatch.from_hf(encoded, image_token_id=image_token_id, adapter=adapter,
                                   config=config, tokenizer=tokenizer, prompts=prompts,
                                   image_token_counts=counts if counts is not None and len(counts) == len(flat) else None)


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
    counts = data.get("num_image_tokens") if isinstance(data, dict) else getattr(data, "num_image_tokens", None)
    return [int(c) for c in counts] if counts is not None else None


def _images_per_row(images: Any, n_rows: int) -> list[list[Any]]:
    if images is None:
        return [[] for _ in range(n_rows)]
    if not isinstance(images, (list, tuple)):
        raise ValueError("images must be a list (one image per prompt, or a list of images per prompt)")
    if len(images) != n_rows:
        raise ValueError(f"Got {len(images)} image entries for {n_rows} prompts; give one entry per prompt "
                         "(an image, a list of images, or None).")
    rows = []
    for entry in images:
        if entry is None:
            rows.append([])
        elif isinstance(entry, (list, tuple)):
            rows.append(list(entry))
        else:
            rows.append([entry])
    return rows
