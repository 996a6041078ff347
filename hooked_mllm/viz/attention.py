"""Attention views through circuitsvis, with image tokens named by image and cell, rendered offline.

:func:`attention_heads` and :func:`attention_patterns` take a cache from
``run_with_cache`` (with ``blocks.{l}.attn.hook_pattern`` in it) and a layer, and return an
:class:`AttentionView`: circuitsvis's ``AttentionHeads`` (one small pattern per head, click
to enlarge) or ``AttentionPatterns`` (pick a head, hover a token) over the row's tokens.
Image tokens are labelled ``img{i}[r{r}c{c}]``, video tokens ``vid{i}[t{t} r{r}c{c}]``
(:func:`token_labels`), ``part="image"``, ``part="video"`` or ``part="text"`` keeps only that
part of the sequence (both axes), and when the image is
given a strip of its patches, in token order and with the same labels, sits above the view
so a reader sees which patch a column is.

The views never load anything from the network: :func:`circuitsvis_bundle` reads the
JavaScript bundle shipped inside the installed circuitsvis package
(``circuitsvis/dist/cdn/iife.js``, which defines the global ``CircuitsVis``) and the
HTML inlines it. A report with several views (:class:`hooked_mllm.viz.Report`) inlines it
once. circuitsvis's own ``RenderedHTML`` is not used: it probes the internet and falls back
to a CDN link when online.

Examples:
    >>> _, cache = model.run_with_cache(
    ...     batch, names_filter=lambda n: n.endswith("hook_pattern"))     # doctest: +SKIP
    >>> view = attention_heads(cache, layer=2, image=scene.image)       # doctest: +SKIP
    >>> view.save("reports/attention_l2.html")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from ..cache import ActivationCache
from ..inputs import MultimodalBatch
from . import _html

PARTS = ("all", "image", "video", "text")


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The installed circuitsvis package's browser bundle (defines ``CircuitsVis``), safe to inline.

    Raises:
        ImportError: circuitsvis is not installed (``pip install 'hooked-mllm[viz]'``).
    """
    try:
        import circuitsvis
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Attention views need circuitsvis: pip install 'hooked-mllm[viz]'") from error
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"circuitsvis {getattr(circuitsvis, '__version__', '?')} has no browser bundle at "
            f"{path}; reinstall circuitsvis>=1.43."
        )
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("//# sourceMappingURL=")]
    return "\n".join(lines).replace("</script", "<\\/script")


def bundle_script() -> str:
    """``<script>`` holding :func:`circuitsvis_bundle`: include once per page before any view."""
    return f"<script>{circuitsvis_bundle()}</script>"


def _json(props: Any) -> str:
    """``props`` as a JavaScript literal safe inside ``<script>``: ``<``, ``>``, ``&`` and U+2028/U+2029
    written as ``\\uXXXX`` escapes, so no token (``</script>``, ``<!--<script>``, ``]]>``) can end the
    script, open a comment the parser honours, or break the line; the values are unchanged."""
    text = json.dumps(props)
    for char, escaped in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escaped)
    return text


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ELEMENTS = ("AttentionHeads", "AttentionPatterns")


def token_labels(batch: MultimodalBatch, row: int = 0) -> list[str]:
    """One label per sequence position of ``row``: the token, ``img{i}[r{r}c{c}]`` for image tokens,
    ``vid{i}[t{t} r{r}c{c}]`` for video tokens (time step ``t``, cell ``(r, c)`` of its grid).

    ``i`` counts the row's images (videos) from 0. Image tokens without a grid (resampled latents)
    are ``img{i}[{k}]``, video tokens without frame geometry ``vid{i}[{k}]``; padding is ``<pad>``.

    Examples:
        >>> token_labels(batch)[:4]                        # doctest: +SKIP
        ['<s>', 'USER:', 'img0[r0c0]', 'img0[r0c1]']
    """
    n = batch.shape[1]
    tokens = (
        list(batch.tokens[row]) if batch.tokens is not None else [str(int(t)) for t in batch.input_ids[row]]
    )
    labels = [tokens[p] if p < len(tokens) else str(p) for p in range(n)]
    for i, span in enumerate(batch.images_of(row)):  # i: the image's index within the row
        for k, position in enumerate(span.token_positions):
            if span.grid is not None:
                r, c = divmod(k, span.grid[1])
                labels[position] = f"img{i}[r{r}c{c}]"
            else:
                labels[position] = f"img{i}[{k}]"
    for i, video in enumerate(batch.videos_of(row)):
        for k, position in enumerate(video.token_positions):
            if video.time is not None and video.grid is not None:
                t, cell = divmod(k, video.grid[0] * video.grid[1])
                r, c = divmod(cell, video.grid[1])
                labels[position] = f"vid{i}[t{t} r{r}c{c}]"
            else:
                labels[position] = f"vid{i}[{k}]"
    for p in batch.pad_mask[row].nonzero().flatten().tolist():
        labels[p] = "<pad>"
    return labels


def part_positions(batch: MultimodalBatch, row: int = 0, part: str = "all") -> list[int]:
    """The non-padding positions of ``row`` in ``part``.

    ``part`` is ``"all"``, ``"image"``, ``"video"`` or ``"text"`` (neither image nor video).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    keep = ~batch.pad_mask[row]
    video = batch.video_mask[row] if batch.video_mask is not None else torch.zeros_like(keep)
    if part == "image":
        keep &= batch.image_mask[row]
    elif part == "video":
        keep &= video
    elif part == "text":
        keep &= ~batch.image_mask[row] & ~video
    positions = keep.nonzero().flatten().tolist()
    if not positions:
        raise ValueError(f"Row {row} has no {part} tokens to show.")
    return positions


def patch_strip(
    image: Image.Image, grid: tuple[int, int], labels: Sequence[str] | None = None, size: int = 28
) -> str:
    """HTML: the image's patches in row-major (token) order, each enlarged to ``size`` px and labelled.

    ``labels`` default to ``r{r}c{c}``. The image is cut into ``grid`` equal cells, as the
    vision tower sees it after resizing (pass the image the processor resized when it differs).
    """
    rows, cols = grid
    labels = list(labels) if labels is not None else [f"r{r}c{c}" for r in range(rows) for c in range(cols)]
    if len(labels) != rows * cols:
        raise ValueError(f"{len(labels)} labels for a {rows}x{cols} grid")
    rgb = image.convert("RGB")
    w, h = rgb.size
    cells = []
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        tile = rgb.crop((c * w // cols, r * h // rows, (c + 1) * w // cols, (r + 1) * h // rows))
        tile = tile.resize((size, size), Image.Resampling.NEAREST)
        cells.append(
            f'<div><img src="{_html.png_data_uri(tile)}" width="{size}" height="{size}" '
            f'alt="{_html.escape(labels[k])}"/>{_html.escape(labels[k])}</div>'
        )
    return f'<div class="hm-strip">{"".join(cells)}</div>'


@dataclass(frozen=True, kw_only=True)
class AttentionView:
    """A circuitsvis attention view ready to show, save or embed.

    Attributes:
        element: ``"AttentionHeads"`` or ``"AttentionPatterns"`` (circuitsvis React components).
        props: The component's properties (``attention`` ``[heads, dest, src]`` as nested lists,
            ``tokens``...).
        title: A line shown above the view.
        header: Extra HTML above the view (the image-patch strip).
    """

    element: str
    props: dict[str, Any]
    title: str = ""
    header: str = ""
    element_id: str = field(default_factory=lambda: "hm-cv-" + uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.element not in _ELEMENTS:
            raise ValueError(f"element must be one of {_ELEMENTS}, not {self.element!r}")

    def fragment(self) -> str:
        """The view's HTML without the circuitsvis bundle (for pages that include it once).

        Every string is escaped for where it lands: the title as text, the element id as an
        attribute, the properties (tokens, head names) as a script literal (:func:`_json`).
        """
        title = f"<p><b>{_html.escape(self.title)}</b></p>" if self.title else ""
        element_id = _html.escape(self.element_id)
        return (
            f'<div class="hm-attention hm-scroll">{title}{self.header}<div id="{element_id}" '
            f'style="margin:15px 0"></div><script>CircuitsVis.render({_json(self.element_id)}, '
            f"CircuitsVis.{self.element}, {_json(self.props)});</script></div>"
        )

    def to_html(self) -> str:
        """A complete offline page: the bundle inline, then the view."""
        return _html.page(self.title or self.element, self.fragment(), head=bundle_script())

    def _repr_html_(self) -> str:
        return bundle_script() + self.fragment()

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_html` atomically (mode 0644) and return the path."""
        return _html.write_atomic(path, self.to_html())


def _pattern(cache: ActivationCache | Tensor, layer: int | None, row: int) -> Float[Tensor, "heads q k"]:
    if isinstance(cache, Tensor):
        pattern = cache
        if pattern.dim() == 4:
            pattern = pattern[row]
    else:
        if getattr(cache, "positions", None) is not None:
            raise ValueError(
                "This cache kept only some positions; attention views need every query: "
                "run_with_cache without positions=."
            )
        if layer is None:
            raise ValueError("Pass layer= to read blocks.{layer}.attn.hook_pattern from the cache.")
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][row]
    if pattern.dim() != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(
            f"Need an attention pattern [heads, query, key] (or [batch, heads, query, key]); "
            f"got {tuple(pattern.shape)}."
        )
    return pattern.detach().float().cpu()


def _view(
    element: str,
    cache: Any,
    layer: int | None,
    *,
    batch: MultimodalBatch | None,
    row: int,
    part: str,
    positions: Sequence[int] | None,
    heads: Sequence[int] | None,
    image: Image.Image | None,
    tokens: Sequence[str] | None,
    extra: dict[str, Any],
) -> AttentionView:
    pattern = _pattern(cache, layer, row)
    batch = batch if batch is not None else getattr(cache, "batch", None)
    header = ""
    if batch is not None:
        labels = token_labels(batch, row)
        chosen = list(positions) if positions is not None else part_positions(batch, row, part)
        if image is not None:
            spans = batch.images_of(row)
            span = spans[0] if spans else None
            if span is None or span.grid is None:
                raise ValueError("image= draws the patch strip of image 0, which has no patch grid here.")
            header = (
                "<p><small>Image 0's patches in token order (columns <code>img0[r.c.]</code>):</small></p>"
                + patch_strip(image, span.grid)
            )
    else:
        if tokens is None:
            raise ValueError("Pass batch= (or a cache that carries its batch) or tokens= to label the view.")
        labels = list(tokens)
        chosen = list(positions) if positions is not None else list(range(len(labels)))
        if part != "all":
            raise ValueError("part= needs the batch to know which tokens are image tokens.")
    if len(labels) != pattern.shape[-1]:
        raise ValueError(f"{len(labels)} token labels for a pattern over {pattern.shape[-1]} positions.")
    heads = list(heads) if heads is not None else list(range(pattern.shape[0]))
    index = torch.tensor(chosen)
    sub = pattern[heads][:, index][:, :, index]
    props = {"attention": np.round(sub.numpy(), 5), "tokens": [labels[p] for p in chosen], **extra}
    if element == "AttentionHeads":
        props["attentionHeadNames"] = [f"L{layer}H{h}" if layer is not None else f"H{h}" for h in heads]
    props = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in props.items() if v is not None}
    where = f"layer {layer}, " if layer is not None else ""
    title = f"Attention ({where}row {row}, {part} tokens, {len(heads)} heads)"
    return AttentionView(element=element, props=props, title=title, header=header)


def attention_heads(
    cache: ActivationCache | Tensor,
    layer: int | None = None,
    *,
    batch: MultimodalBatch | None = None,
    row: int = 0,
    part: str = "all",
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    image: Image.Image | None = None,
    tokens: Sequence[str] | None = None,
    mask_upper_tri: bool = True,
) -> AttentionView:
    """circuitsvis ``AttentionHeads`` for layer ``layer``'s pattern of one row.

    Args:
        cache: An ``ActivationCache`` holding ``blocks.{layer}.attn.hook_pattern``
            (``[batch, heads, query, key]``), or a pattern tensor ``[heads, q, k]`` /
            ``[batch, heads, q, k]``.
        layer: The decoder layer (needed with a cache).
        batch: The batch that was run (default: the cache's own) for labels and parts;
            without it pass ``tokens``.
        row: Which row of the batch.
        part: ``"all"`` non-padding positions, only the ``"image"`` tokens, only the ``"video"``
            tokens, or only the ``"text"`` tokens (queries and keys alike; rows then need not sum to 1).
        positions: Explicit positions to show instead of ``part``.
        heads: Heads to show (default all).
        image: The row's first image: adds a strip of its patches labelled like the columns.
        mask_upper_tri: Grey out the future (causal attention).

    Returns:
        An :class:`AttentionView` (``.save(path)``, ``.to_html()``, shown in notebooks).

    Examples:
        >>> view = attention_heads(cache, 3, part="image", image=scene.image)   # doctest: +SKIP
    """
    return _view(
        "AttentionHeads",
        cache,
        layer,
        batch=batch,
        row=row,
        part=part,
        positions=positions,
        heads=heads,
        image=image,
        tokens=tokens,
        extra={"maskUpperTri": mask_upper_tri},
    )


def attention_patterns(
    cache: ActivationCache | Tensor,
    layer: int | None = None,
    *,
    batch: MultimodalBatch | None = None,
    row: int = 0,
    part: str = "all",
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    image: Image.Image | None = None,
    tokens: Sequence[str] | None = None,
) -> AttentionView:
    """circuitsvis ``AttentionPatterns`` (head selector, hover a token to see where it looks).

    Arguments as :func:`attention_heads`.

    Examples:
        >>> attention_patterns(cache, 0, part="text").save("attn_text.html")   # doctest: +SKIP
    """
    return _view(
        "AttentionPatterns",
        cache,
        layer,
        batch=batch,
        row=row,
        part=part,
        positions=positions,
        heads=heads,
        image=image,
        tokens=tokens,
        extra={},
    )
