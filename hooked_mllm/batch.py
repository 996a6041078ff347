"""``MultimodalBatch``: the HF tensors of one forward with their geometry.

:class:`MultimodalBatch` carries the Hugging Face tensors for one forward of several
rows (we batch ourselves: nnsight 0.8 cannot batch multimodal invokes) together with
per-row masks, the span and patch grid of every image, and the token strings.
:meth:`MultimodalBatch.from_hf` wraps HF tensors (the processor's, or a user's own): it
derives the masks, gathers the adapter's image geometry and finds the images with
:func:`hooked_mllm.spans.find_image_spans`. :func:`hooked_mllm.inputs.prepare` encodes
images and prompts through the processor into one.

Used by :mod:`hooked_mllm.model` (every run), :mod:`hooked_mllm.positions` (selectors)
and :mod:`hooked_mllm.cache` (image / text views, saving).

Examples:
    >>> import torch
    >>> batch = MultimodalBatch.from_hf({"input_ids": torch.tensor([[1, 9, 9, 9, 9, 2]])}, image_token_id=9)
    >>> batch.image_mask.sum().item(), [(s.start, s.end) for s in batch.images]
    (4, [(1, 5)])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .architectures import split as _split_rules
from .architectures.split import Computed, Patches, PerImage, PerVideo, SplitRule, rule_for
from .spans import ImageSpan, VideoSpan, find_image_spans, find_video_spans

if TYPE_CHECKING:
    from .architectures.base import Adapter


@dataclass(frozen=True, eq=False, kw_only=True)
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
        video_mask: ``[batch, pos]`` True at video tokens (None: no video in the batch).
        videos: Every video's :class:`~hooked_mllm.spans.VideoSpan`, in order.
        videos_per_row: How many videos each row holds.

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
    video_mask: Bool[Tensor, "batch pos"] | None = None
    videos: tuple[VideoSpan, ...] = ()
    videos_per_row: tuple[int, ...] = ()

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

    def videos_of(self, row: int) -> list[VideoSpan]:
        """The video spans of one row, in order."""
        return [span for span in self.videos if span.row == row]

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
        per_item = (Patches, PerImage, PerVideo, Computed)  # a row without images (videos): no such inputs
        for key in [k for k in inputs if isinstance(rules.get(k), per_item) and not inputs[k].shape[0]]:
            del inputs[key]
        spans = []
        for i, span in enumerate(self.images_of(index)):
            offset = int((~keep[: span.start]).sum())
            spans.append(span.shifted(offset, row=0, index=i))
        videos = tuple(
            video.shifted(int((~keep[: video.start]).sum()), row=0, index=i)
            for i, video in enumerate(self.videos_of(index))
        )
        return MultimodalBatch(
            inputs=inputs,
            image_mask=self.image_mask[index : index + 1][:, keep],
            text_mask=self.text_mask[index : index + 1][:, keep],
            special_mask=self.special_mask[index : index + 1][:, keep],
            pad_mask=self.pad_mask[index : index + 1][:, keep],
            images=tuple(spans),
            tokens=None
            if self.tokens is None
            else (tuple(t for t, k in zip(self.tokens[index], keep) if k),),
            prompts=None if self.prompts is None else (self.prompts[index],),
            images_per_row=(n_images,),
            input_split=self.input_split,
            no_image_tokens=self.no_image_tokens,
            video_mask=None if self.video_mask is None else self.video_mask[index : index + 1][:, keep],
            videos=videos,  # type: ignore[arg-type]  # shifted keeps the VideoSpan type
            videos_per_row=(len(videos),) if self.videos_per_row else (),
        )

    def frames_as_images(self, video: int = 0) -> MultimodalBatch:
        """This batch with each time step of each row's video ``video`` standing as one image.

        Every image tool then works frame by frame: ``image=t`` names time step ``t`` in
        ``image_locations``, the baselines, ``logit_lens_map`` and ``lens_location_map``, and
        ``"image"`` selects the video's tokens. The HF inputs (so the forward) are unchanged;
        the videos stay as they are. A batch that also holds images is refused (their inputs
        split by image).

        Returns:
            A batch whose ``images`` are the frames, ``images_per_row`` the frame counts.

        Examples:
            >>> frames = batch.frames_as_images()                    # doctest: +SKIP
            >>> steps = range(batch.videos[0].time)                  # doctest: +SKIP
            >>> maps = [image_locations(model, frames, image=t) for t in steps]  # doctest: +SKIP
        """
        if self.images:
            raise ValueError(
                "frames_as_images needs a batch without images (this one holds "
                f"{len(self.images)}); run the video rows alone (batch.row(i))."
            )
        frames: list[ImageSpan] = []
        per_row = [0] * len(self)
        mask = torch.zeros_like(self.pad_mask)
        for row in range(len(self)):
            videos = self.videos_of(row)
            if not -len(videos) <= video < len(videos):
                continue
            span = videos[video]
            time, grid = span.frame_geometry()
            for t in range(time):
                where = span.frame_positions(t)
                contiguous = where == list(range(where[0], where[-1] + 1))
                frames.append(
                    ImageSpan(
                        row=row,
                        index=len(frames),
                        start=where[0],
                        end=where[-1] + 1,
                        grid=grid,
                        positions=None if contiguous else tuple(where),
                    )
                )
                mask[row, where] = True
            per_row[row] = time
        if not frames:
            raise ValueError(
                f"No row of this batch holds a video {video} (videos per row: {self.videos_per_row})."
            )
        return replace(self, images=tuple(frames), images_per_row=tuple(per_row), image_mask=mask)

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
        inputs = {}
        for k, v in self.inputs.items():
            rule = rules.get(k)
            if callable(rule):
                inputs[k] = rule(self, [0] * times)
            else:
                inputs[k] = torch.cat([v] * times) if isinstance(v, Tensor) else v
        spans = tuple(
            replace(span, row=r, index=r * len(self.images) + span.index)
            for r in range(times)
            for span in self.images
        )
        videos = tuple(
            replace(span, row=r, index=r * len(self.videos) + span.index)
            for r in range(times)
            for span in self.videos
        )
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
            video_mask=None if self.video_mask is None else self.video_mask.repeat(times, 1),
            videos=videos,
            videos_per_row=self.videos_per_row * times,
        )

    def to(self, device: torch.device | str) -> MultimodalBatch:
        """The batch with its HF tensors on ``device`` (masks stay on the CPU)."""
        return replace(
            self, inputs={k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.inputs.items()}
        )

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
                f"Row(s) {empty or list(range(ids.shape[0]))} of input_ids hold no tokens (an empty prompt "
                "with no image and no chat template encodes to nothing); give each row at least one token."
            )
        in_sequence = adapter is None or adapter.tokens.in_sequence
        if image_token_id is not None and in_sequence:
            image = ids.eq(image_token_id) & ~pad
        else:  # cross-attention models: the placeholder is a special token, not an image position
            image = torch.zeros_like(pad)
        row_break = _row_break_id(adapter, tokenizer)
        found = _find_videos(tensors, ids, pad, adapter, config, row_break, image_token_id)
        video_mask, videos, videos_per_row, video_token_id = found
        video = torch.zeros_like(pad) if video_mask is None else video_mask
        image = image & ~video  # Molmo2 writes video frames with its image token
        special = torch.zeros_like(pad)
        if tokenizer is not None:
            special_ids = [
                i
                for i in tokenizer.all_special_ids
                if (i != image_token_id or not in_sequence) and (video_mask is None or i != video_token_id)
            ]
            special = torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype)) & ~pad & ~image & ~video
        text = ~pad & ~image & ~special & ~video
        grids = (
            adapter.tokens.grids(tensors, config) if adapter is not None and adapter.tokens.grids else None
        )
        if grids == [] and bool(image.any()):
            raise ValueError(
                f"input_ids hold image tokens (id {image_token_id}), but the inputs carry no image geometry "
                f"for the {adapter.name!r} architecture "  # type: ignore[union-attr]
                f"(got keys: {', '.join(sorted(tensors))}). Pass every key the "
                "processor returned with the images (model(**processor(images=..., text=...)))."
            )
        views = (
            adapter.tokens.views(tensors, config) if adapter is not None and adapter.tokens.views else None
        )
        image_grid = None if adapter is None else (lambda n: adapter.tokens.grid(n, config))
        spans, per_row = find_image_spans(
            image,
            ids=ids,
            row_break=row_break,
            grids=grids,
            image_grid=image_grid,
            token_counts=image_token_counts,
            views=views,
        )
        if not in_sequence and image_token_id is not None:
            per_row = tuple(int(n) for n in (ids.eq(image_token_id) & ~pad).sum(1).tolist())
        no_image_tokens = (
            None
            if in_sequence
            else (
                f"The {adapter.name!r} architecture has no image tokens in the language model's sequence: "  # type: ignore[union-attr]
                "images enter through cross-attention to the vision states, and the image placeholder is one "
                "special token. Image position selectors and cache.image() do not apply; select the "
                "placeholder with positions.token(...) or read the cross-attention hooks "
                "(blocks.{l}.hook_cross_attn_out)."
            )
        )
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
        return cls(
            inputs=tensors,
            image_mask=image,
            text_mask=text,
            special_mask=special,
            pad_mask=pad,
            images=spans,
            tokens=tokens,
            prompts=None if prompts is None else tuple(prompts),
            images_per_row=per_row,
            # InputLayout stores its split as checked (key, rule) pairs
            input_split=cast(
                "tuple[tuple[str, SplitRule], ...]", adapter.inputs.split if adapter is not None else ()
            ),
            no_image_tokens=no_image_tokens,
            video_mask=video_mask,
            videos=videos,
            videos_per_row=videos_per_row,
        )

    # -- saving (with a cache) ---------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``).

        HF inputs that are not tensors, and ``Computed`` split rules (functions), are not kept;
        :meth:`from_state` puts a rule in their place that says so when a row is split.
        """
        return {
            "inputs": {k: v for k, v in self.inputs.items() if isinstance(v, Tensor)},
            "image_mask": self.image_mask,
            "text_mask": self.text_mask,
            "special_mask": self.special_mask,
            "pad_mask": self.pad_mask,
            "images": [
                [
                    s.row,
                    s.index,
                    s.start,
                    s.end,
                    None if s.grid is None else list(s.grid),
                    None if s.positions is None else list(s.positions),
                ]
                for s in self.images
            ],
            "tokens": None if self.tokens is None else [list(row) for row in self.tokens],
            "prompts": None if self.prompts is None else list(self.prompts),
            "images_per_row": list(self.images_per_row),
            "input_split": [[key, _rule_state(rule)] for key, rule in self.input_split],
            "no_image_tokens": self.no_image_tokens,
            "video_mask": self.video_mask,
            "videos": [
                [s.row, s.index, s.start, s.end, None if s.grid is None else list(s.grid), s.time]
                + [s.frames_per_step, None if s.positions is None else list(s.positions)]
                for s in self.videos
            ],
            "videos_per_row": list(self.videos_per_row),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MultimodalBatch:
        """The batch :meth:`state` described."""
        images = tuple(
            ImageSpan(
                row=row,
                index=index,
                start=start,
                end=end,
                grid=None if grid is None else (grid[0], grid[1]),
                positions=None if positions is None else tuple(positions),
            )
            for row, index, start, end, grid, positions in state["images"]
        )
        return cls(
            inputs=dict(state["inputs"]),
            image_mask=state["image_mask"],
            text_mask=state["text_mask"],
            special_mask=state["special_mask"],
            pad_mask=state["pad_mask"],
            images=images,
            tokens=None if state["tokens"] is None else tuple(tuple(row) for row in state["tokens"]),
            prompts=None if state["prompts"] is None else tuple(state["prompts"]),
            images_per_row=tuple(state["images_per_row"]),
            input_split=tuple((key, _rule_from_state(key, rule)) for key, rule in state["input_split"]),
            no_image_tokens=state["no_image_tokens"],
            video_mask=state.get("video_mask"),
            videos=tuple(
                VideoSpan(
                    row=row,
                    index=index,
                    start=start,
                    end=end,
                    grid=None if grid is None else (grid[0], grid[1]),
                    time=time,
                    frames_per_step=step,
                    positions=None if positions is None else tuple(positions),
                )
                for row, index, start, end, grid, time, step, positions in state.get("videos", [])
            ),
            videos_per_row=tuple(state.get("videos_per_row", ())),
        )


def _rule_state(rule: SplitRule) -> list[Any] | None:
    """A split rule as ``[class name, fields]`` (None for a ``Computed`` function, which is not saved)."""
    if isinstance(rule, Computed) or not dataclasses.is_dataclass(rule):
        return None
    return [type(rule).__name__, {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)}]


def _rule_from_state(key: str, state: list[Any] | None) -> SplitRule:
    if state is None:
        return Computed(_UnsavedRule(key))
    return getattr(_split_rules, state[0])(**state[1])


class _UnsavedRule:
    """Stands for a ``Computed`` split function that a saved batch could not keep."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, batch: MultimodalBatch, rows: list[int]) -> Tensor:
        raise ValueError(
            f"This batch was loaded from a saved cache without its architecture's rule for splitting "
            f"{self.key!r} by row; build the batch again with model.prepare(...) to split or repeat it."
        )


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


_VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw")
# other families' video inputs (LLaVA-OneVision, Molmo2): refused where video is not covered
_OTHER_VIDEO_KEYS = ("image_sizes_videos", "video_grids", "video_token_pooling")


def video_families() -> list[str]:
    """The names of the registered adapters whose video inputs this library covers.

    Examples:
        >>> video_families()
        ['llava_onevision', 'molmo2', 'qwen2_5_vl', 'qwen2_vl', 'qwen3_vl']
    """
    from .architectures import registered_adapters

    layouts = [layout for a in registered_adapters().values() for layout in (a, *a.variants)]
    return sorted(a.name for a in layouts if a.tokens.videos is not None)


def refuse_video(adapter: Adapter | None, what: str) -> None:
    """Raise the one error for video given to a family whose video this library does not cover.

    Args:
        adapter: The model's adapter (None: "this model").
        what: What was given, the start of the message (``"videos= was given"``).

    Raises:
        ValueError: always, naming the families whose video is covered.

    Examples:
        >>> refuse_video(None, "videos= was given")
        Traceback (most recent call last):
        ...
        ValueError: videos= was given: video is not covered for this model. Video inputs are covered for ...
    """
    name = "this model" if adapter is None else f"the {adapter.name!r} architecture"
    raise ValueError(
        f"{what}: video is not covered for {name}. Video inputs are covered for "
        f"{', '.join(video_families())}; for other families pass the frames as images (one image per frame)."
    )


def _find_videos(
    tensors: dict[str, Any],
    ids: Tensor,
    pad: Tensor,
    adapter: Adapter | None,
    config: Any,
    row_break: int | None = None,
    image_token_id: int | None = None,
) -> tuple[Tensor | None, tuple[VideoSpan, ...], tuple[int, ...], int | None]:
    """The video mask, spans, videos per row and video token id (None, (), (), None without video).

    Where video frames use the image token (Molmo2), its tokens are video tokens exactly when the
    inputs carry video geometry, and inputs holding images too are refused (as HF's forward does).
    """
    given = [key for key in _VIDEO_KEYS + _OTHER_VIDEO_KEYS if key in tensors]
    rule = None if adapter is None else adapter.tokens.videos
    if rule is None:
        if given:
            refuse_video(adapter, f"The inputs hold {', '.join(given)}")
        return None, (), (), None
    token = getattr(config, adapter.config_keys.video_token_id, None)  # type: ignore[union-attr]
    if token is None:
        return None, (), (), None
    mask = ids.eq(int(token)) & ~pad
    geometry = rule(tensors, config)
    shared = image_token_id is not None and int(token) == int(image_token_id)
    if shared and not geometry and not given:
        mask = torch.zeros_like(mask)
    if shared and geometry and "pixel_values" in tensors:
        raise ValueError(
            f"The inputs hold both images (pixel_values) and videos ({', '.join(given)}), but the "
            f"{adapter.name!r} architecture writes video frames with its image token (id {int(token)}) and "  # type: ignore[union-attr]
            "its HF forward takes images or videos, not both: run the image rows and the video rows as "
            "separate batches (model.prepare(images=...) and model.prepare(videos=...))."
        )
    if bool(mask.any()) and not geometry:
        raise ValueError(
            f"input_ids hold video tokens (id {int(token)}), but the inputs carry no video geometry (got "
            f"keys: {', '.join(sorted(tensors))}). Pass every key the processor returned with the videos "
            "(pixel_values_videos with video_grid_thw, or Molmo2's video_grids and video_token_pooling)."
        )
    step = geometry[0][3] if geometry else 1
    spans, per_row = find_video_spans(
        mask,
        [(t, r, c) for t, r, c, _ in geometry],
        frames_per_step=step,
        trailing=adapter.tokens.video_trailing,  # type: ignore[union-attr]  # rule is not None: adapter is
        ids=ids,
        row_break=row_break,
    )
    return mask, spans, per_row, int(token)
