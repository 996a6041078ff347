"""Logit-lens grids: what each layer "says" at each position, as a coloured HTML table or a figure.

:func:`logit_lens_grid` reads the cached residual stream (the embedding, then every layer's
``hook_resid_post``) through the final norm and unembedding (:func:`hooked_mllm.lens.logit_lens`)
at chosen positions, text and image tokens alike, and keeps each cell's top token and its
probability: a :class:`LensGrid` (layers x positions). :func:`image_lens_grid` does the same
for one image's tokens laid out on its patch grid: an :class:`ImageLensGrid` (per layer, the
top token of every cell). Both show themselves in notebooks (``_repr_html_``), render as HTML
tables (``to_html``) and draw as matplotlib figures (``figure``).

Examples:
    >>> _, cache = model.run_with_cache(batch, names_filter=lambda n: "resid" in n)   # doctest: +SKIP
    >>> grid = logit_lens_grid(model, cache, part="text")                               # doctest: +SKIP
    >>> grid.tokens[-1][-1], grid.probs[-1, -1]                                         # doctest: +SKIP
    ('blue', 0.98)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from ..cache import ActivationCache
from ..inputs import MultimodalBatch
from ..model import HookedMLLM
from . import _html
from .attention import part_positions, token_labels


def _shade(p: SupportsFloat) -> str:
    """White (p=0) to a strong blue (p=1), with readable text colour."""
    p = min(max(float(p), 0.0), 1.0)
    r, g, b = (int(255 - p * (255 - t)) for t in (33, 102, 172))
    return f"background:rgb({r},{g},{b});color:{'#fff' if p > 0.55 else '#111'}"


@dataclass(frozen=True, kw_only=True)
class LensGrid:
    """Top token and its probability per (layer, position).

    Attributes:
        layers: Row labels (``"embed"``, ``"L0"``, ...).
        positions: The sequence positions of the columns.
        labels: Column labels (tokens; image tokens as ``img0[r1c2]``).
        tokens: ``[layer][position]`` top token.
        probs: ``[layer, position]`` its probability.
    """

    layers: list[str]
    positions: list[int]
    labels: list[str]
    tokens: list[list[str]]
    probs: Float[np.ndarray, "layer pos"]

    def to_html(self) -> str:
        """A table (rows = layers, columns = positions), each cell shaded by probability."""
        head = "<th></th>" + "".join(
            f"<th title='position {p}'>{_html.escape(lab)}</th>"
            for p, lab in zip(self.positions, self.labels)
        )
        body = []
        for i, name in enumerate(self.layers):
            cells = "".join(
                f"<td style='{_shade(self.probs[i, j])}' title='{self.probs[i, j]:.3f}'>"
                f"{_html.escape(self.tokens[i][j])}<br><small>{self.probs[i, j]:.2f}</small></td>"
                for j in range(len(self.positions))
            )
            body.append(f"<tr><th>{_html.escape(name)}</th>{cells}</tr>")
        return f"<div class='hm-scroll'><table class='hm-lens'><tr>{head}</tr>{''.join(body)}</table></div>"

    def figure(self, title: str | None = None) -> Any:
        """A matplotlib figure: probability as colour, the top token written in each cell."""
        import matplotlib.pyplot as plt

        n_layers, n_pos = self.probs.shape
        fig, ax = plt.subplots(figsize=(max(4.0, 0.62 * n_pos + 1.5), 0.45 * n_layers + 1.6))
        shown = ax.imshow(self.probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(n_layers):
            for j in range(n_pos):
                ax.text(
                    j,
                    i,
                    self.tokens[i][j],
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if self.probs[i, j] > 0.55 else "black",
                )
        ax.set_xticks(range(n_pos), self.labels, rotation=70, fontsize=7)
        ax.set_yticks(range(n_layers), self.layers, fontsize=8)
        fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.01, label="top-token probability")
        ax.set_title(title or "Logit lens: top token per layer and position", fontsize=10)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        return self.to_html()


@dataclass(frozen=True)
class ImageLensGrid:
    """Top token and its probability for every cell of one image's patch grid, per layer.

    Attributes:
        layers: Panel labels. grid: ``(rows, cols)``.
        tokens: ``[layer][rows * cols]`` top token (row-major).
        probs: ``[layer, rows, cols]`` its probability.
    """

    layers: list[str]
    grid: tuple[int, int]
    tokens: list[list[str]]
    probs: Float[np.ndarray, "layer rows cols"]

    def to_html(self) -> str:
        """One small shaded table per layer, side by side."""
        rows, cols = self.grid
        panels = []
        for i, name in enumerate(self.layers):
            trs = "".join(
                "<tr>"
                + "".join(
                    f"<td style='{_shade(self.probs[i, r, c])}' title='r{r}c{c}: {self.probs[i, r, c]:.3f}'>"
                    f"{_html.escape(self.tokens[i][r * cols + c])}</td>"
                    for c in range(cols)
                )
                + "</tr>"
                for r in range(rows)
            )
            panels.append(
                f"<figure><table class='hm-lens'>{trs}</table><figcaption>{_html.escape(name)}"
                "</figcaption></figure>"
            )
        return f"<div class='hm-scroll'>{''.join(panels)}</div>"

    def figure(self, image: Image.Image | None = None, title: str | None = None) -> Any:
        """Panels per layer: each cell's top token, shaded by probability; the image first when given."""
        import matplotlib.pyplot as plt

        rows, cols = self.grid
        n = len(self.layers) + (image is not None)
        fig, axes = plt.subplots(1, n, figsize=(2.9 * n + 0.9, 3.2), squeeze=False, constrained_layout=True)
        panels = list(axes[0])
        if image is not None:
            ax = panels.pop(0)
            ax.imshow(np.asarray(image.convert("RGB")), extent=(0, cols, rows, 0), interpolation="nearest")
            ax.set_title("image", fontsize=9)
            _cell_axes(ax, rows, cols, lines=True)
        shown = None
        for i, ax in enumerate(panels):
            shown = ax.imshow(
                self.probs[i],
                cmap="Blues",
                vmin=0,
                vmax=1,
                extent=(0, cols, rows, 0),
                interpolation="nearest",
            )
            for r in range(rows):
                for c in range(cols):
                    ax.text(
                        c + 0.5,
                        r + 0.5,
                        self.tokens[i][r * cols + c],
                        ha="center",
                        va="center",
                        fontsize=max(4.0, 9.0 - 0.5 * cols),
                        color="white" if self.probs[i, r, c] > 0.55 else "black",
                    )
            _cell_axes(ax, rows, cols, lines=False)
            ax.set_title(self.layers[i], fontsize=9)
        assert shown is not None  # a grid has at least one layer
        fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="top-token probability")
        fig.suptitle(title or "Logit lens on the image tokens: top token per cell and layer", fontsize=10)
        return fig

    def _repr_html_(self) -> str:
        return self.to_html()


def _cell_axes(ax: Any, rows: int, cols: int, lines: bool) -> None:
    ax.set_xticks([c + 0.5 for c in range(cols)], [f"c{c}" for c in range(cols)], fontsize=6)
    ax.set_yticks([r + 0.5 for r in range(rows)], [f"r{r}" for r in range(rows)], fontsize=6)
    ax.tick_params(length=0)
    if lines:
        for r in range(1, rows):
            ax.axhline(r, color="white", lw=0.4, alpha=0.5)
        for c in range(1, cols):
            ax.axvline(c, color="white", lw=0.4, alpha=0.5)


def _stack(
    model: HookedMLLM,
    cache: ActivationCache,
    row: int,
    positions: Sequence[int],
    hook: str,
    include_embed: bool,
) -> tuple[list[str], torch.Tensor]:
    names, acts = [], []
    if include_embed:
        names.append("embed")
        acts.append(cache["blocks.0.hook_resid_pre"][row, positions])
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_{hook}"
        if name in cache:
            names.append(f"L{layer}")
            acts.append(cache[name][row, positions])
    if len(names) == int(include_embed):
        raise ValueError(
            f"The cache holds no blocks.{{l}}.hook_{hook}; run_with_cache with a names_filter that "
            f"keeps them (e.g. lambda n: 'resid' in n)."
        )
    return names, torch.stack(acts)


def _top(model: HookedMLLM, resid: torch.Tensor, apply_norm: bool) -> tuple[list[list[str]], np.ndarray]:
    from ..lens import logit_lens

    probs = logit_lens(model, resid, apply_norm=apply_norm).float().softmax(-1)
    values, ids = probs.max(-1)
    tokenizer = getattr(model.processor, "tokenizer", None)
    flat = ids.flatten().tolist()
    words = tokenizer.convert_ids_to_tokens(flat) if tokenizer is not None else [str(i) for i in flat]
    width = ids.shape[-1]
    tokens = [[str(w) for w in words[i : i + width]] for i in range(0, len(words), width)]
    return tokens, values.cpu().numpy()


def logit_lens_grid(
    model: HookedMLLM,
    cache: ActivationCache,
    *,
    batch: MultimodalBatch | None = None,
    row: int = 0,
    positions: Sequence[int] | None = None,
    part: str = "all",
    hook: str = "resid_post",
    include_embed: bool = True,
    apply_norm: bool = True,
) -> LensGrid:
    """The top token and probability of the logit lens at every (layer, position) of one row.

    Args:
        cache: From ``run_with_cache`` with ``blocks.{l}.hook_resid_post`` (and ``blocks.0.hook_resid_pre``
            for the embedding row) kept at every position.
        positions: Sequence positions (default: every non-padding position in ``part``).
        part: ``"all"``, ``"image"``, ``"video"`` or ``"text"`` (neither image nor video).
        hook: ``resid_post`` (default), ``resid_mid`` or ``resid_pre``.
        apply_norm: Read through the final norm first (as the model does).

    Examples:
        >>> logit_lens_grid(model, cache, part="text").figure().savefig("lens.png")   # doctest: +SKIP
    """
    batch = batch if batch is not None else cache.batch
    if batch is None:
        raise ValueError("Pass batch= (the cache does not carry the batch it was run on).")
    if getattr(cache, "positions", None) is not None:
        raise ValueError(
            "This cache kept only some positions; run_with_cache without positions= for a lens grid."
        )
    chosen = list(positions) if positions is not None else part_positions(batch, row, part)
    layers, resid = _stack(model, cache, row, chosen, hook, include_embed)
    tokens, probs = _top(model, resid, apply_norm)
    labels = token_labels(batch, row)
    return LensGrid(
        layers=layers, positions=chosen, labels=[labels[p] for p in chosen], tokens=tokens, probs=probs
    )


def image_lens_grid(
    model: HookedMLLM,
    cache: ActivationCache,
    *,
    batch: MultimodalBatch | None = None,
    row: int = 0,
    image: int = 0,
    hook: str = "resid_post",
    include_embed: bool = False,
    apply_norm: bool = True,
) -> ImageLensGrid:
    """The logit lens over one image's patch grid: top token per cell, per layer.

    Examples:
        >>> image_lens_grid(model, cache).figure(scene.image)          # doctest: +SKIP
    """
    batch = batch if batch is not None else cache.batch
    if batch is None:
        raise ValueError("Pass batch= (the cache does not carry the batch it was run on).")
    spans = batch.images_of(row)
    span = spans[image] if image < len(spans) else None
    if span is None or span.grid is None:
        raise ValueError(f"Image {image} of row {row} has no patch grid (found {len(spans)} image(s)).")
    layers, resid = _stack(model, cache, row, list(span.token_positions), hook, include_embed)
    tokens, probs = _top(model, resid, apply_norm)
    return ImageLensGrid(layers, span.grid, tokens, probs.reshape(len(layers), *span.grid))
