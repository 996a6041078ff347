"""Activation patching, attribution patching and corruptions, over positions, image cells and heads.

:func:`activation_patching` patches one hook type (``"resid_pre"``, ``"resid_mid"``,
``"resid_post"``, ``"attn_out"``, ``"mlp_out"``, or ``"z"`` for heads) from a clean run
into a corrupted one, one unit at a time (a sequence position, an image-grid cell, or a
head), for every chosen layer, and records a metric. Patched runs are batched: each
forward carries ``batch_size`` copies of the corrupted input, each patching its own unit.
:func:`attribution_patching` estimates the same table from one forward and one
backward pass on the corrupted input (the gradient approximation
``(clean - corrupted) . d metric / d activation``). Both return a
:class:`PatchingResult` with its labels.

Corruptions: another image (just prepare it), :func:`noise_image_tokens` (causal tracing:
Gaussian noise on the image-token embeddings with the scale a multiple of their standard
deviation, as in ROME), :func:`mask_region` and :func:`blur_region` on PIL images.
Metrics: :func:`logit_diff`, :func:`answer_logprob`.

Examples:
    >>> metric = logit_diff(red_id, blue_id)
    >>> result = activation_patching(model, clean, corrupted, metric, hook="resid_pre",
    ...                              over="cell")                                # doctest: +SKIP
    >>> result.values.shape            # [layers, grid rows, grid cols]            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor

from .hook_points import HookContext, act_name
from .inputs import MultimodalBatch
from .mechanism.maps import LocationMap
from .model import HookedMLLM

Metric = Callable[[Tensor, MultimodalBatch], Tensor]


def logit_diff(correct: int, wrong: int) -> Metric:
    """Metric: last-position ``logit[correct] - logit[wrong]`` per row."""

    def metric(logits: Tensor, batch: MultimodalBatch) -> Tensor:
        last = logits[torch.arange(len(logits)), batch.last_positions().to(logits.device)]
        return last[:, correct] - last[:, wrong]

    return metric


def answer_logprob(answer: int) -> Metric:
    """Metric: last-position log-probability of ``answer`` per row."""

    def metric(logits: Tensor, batch: MultimodalBatch) -> Tensor:
        last = logits[torch.arange(len(logits)), batch.last_positions().to(logits.device)]
        return last.float().log_softmax(-1)[:, answer]

    return metric


@dataclass(frozen=True, kw_only=True)
class PatchingResult:
    """A sweep's table with its labels.

    Attributes:
        values: ``[layer, unit]``, ``[layer, rows, cols]`` over image cells, ``[layer, time]`` over a
            video's time steps, or ``[layer, time, rows, cols]`` over a video's ``(t, r, c)`` cells.
        hook: The canonical name pattern patched (``blocks.{l}.hook_resid_pre``).
        layers: The layers of dim 0.
        over: ``"position"``, ``"cell"``, ``"frame"`` or ``"head"``.
        labels: One label per unit, in the order of the flattened values (token string at a position,
            ``"r1c2"``, ``"vid0[t1]"``, ``"vid0[t1 r0c2]"``, ``"H3"``).
        units: Per unit, the sequence positions (or head index) it covers.
        video: The video of row 0 swept (``over="frame"``, or ``over="cell"`` with ``video=``), else None.
        clean_metric: The metric of the unpatched clean run.
        corrupted_metric: The metric of the unpatched corrupted run.
        forward_passes: Forward calls made; ``rows`` the total rows run; ``backward_passes``.
    """

    values: Tensor
    hook: str
    layers: list[int]
    over: str
    labels: list[str]
    units: list[list[int]]
    clean_metric: float
    corrupted_metric: float
    forward_passes: int
    rows: int
    backward_passes: int = 0
    method: str = "activation"
    extra: dict = field(default_factory=dict)
    video: int | None = None

    def normalized(self) -> Tensor:
        """``(value - corrupted) / (clean - corrupted)``: 1 = fully restored, 0 = no effect."""
        return (self.values - self.corrupted_metric) / (self.clean_metric - self.corrupted_metric)

    def flat(self) -> Tensor:
        """``[layer, unit]`` whatever the layout."""
        return self.values.reshape(len(self.layers), -1)

    def peak(self) -> tuple[int, int]:
        """``(layer, unit index)`` of the largest value."""
        index = int(self.flat().argmax())
        return self.layers[index // len(self.units)], index % len(self.units)

    def to_image(self, scale: int = 24) -> Image.Image:
        """A heatmap (white 0 .. red max, blue negative); one tile per unit, one band per layer."""
        table = self.flat().float()
        top = float(table.abs().max()) or 1.0
        h, w = table.shape
        image = Image.new("RGB", (w * scale, h * scale), "white")
        draw = ImageDraw.Draw(image)
        for i in range(h):
            for j in range(w):
                v = float(table[i, j]) / top
                color = (
                    (255, int(255 * (1 - v)), int(255 * (1 - v)))
                    if v >= 0
                    else (int(255 * (1 + v)), int(255 * (1 + v)), 255)
                )
                draw.rectangle([j * scale, i * scale, (j + 1) * scale - 1, (i + 1) * scale - 1], fill=color)
        return image

    def _repr_html_(self) -> str:
        from .viz.display import patching_html  # matplotlib is optional: imported when shown

        return patching_html(self)

    def location_map(
        self, layer: int | None = None, normalized: bool = True, frame: int | None = None
    ) -> LocationMap:
        """One layer's sweep over image cells (``over="cell"``) as a
        :class:`~hooked_mllm.mechanism.LocationMap`; over a video's cells, one time step's.

        ``layer`` is a layer of :attr:`layers` (default: the peak's); with ``normalized`` the
        values are :meth:`normalized` (1 = fully restored). ``frame`` is the time step of a sweep
        over a video's ``(t, r, c)`` cells (required there, refused elsewhere). ``.overlay(image)``
        draws it over the image (the step's frame) like every location map.

        Examples:
            >>> result.location_map().overlay(scene.image)      # doctest: +SKIP
            >>> video_sweep.location_map(frame=1).overlay(clip[2])  # doctest: +SKIP
        """
        if self.over != "cell" or self.values.dim() not in (3, 4):
            raise ValueError(
                f"location_map needs a sweep over image or video cells (over='cell'), not over={self.over!r}."
            )
        cells_per_step = 1
        if self.values.dim() == 4:
            time = self.values.shape[1]
            if frame is None or not -time <= frame < time:
                raise ValueError(
                    f"This sweep covers {time} time steps of a video: pass frame= in [0, {time})."
                )
            frame = frame % time
            cells_per_step = self.values.shape[2] * self.values.shape[3]
        elif frame is not None:
            raise ValueError(
                "frame= picks a time step of a sweep over a video's cells; this sweep is over an image."
            )
        layer = self.peak()[0] if layer is None else layer
        if layer not in self.layers:
            raise ValueError(f"Layer {layer} was not patched; patched layers: {self.layers}.")
        table = (self.normalized() if normalized else self.values)[self.layers.index(layer)]
        units = self.units
        label = f"{self.method} patching of {self.hook.replace('{l}', str(layer))}"
        if frame is not None:
            table = table[frame]
            units = units[frame * cells_per_step : (frame + 1) * cells_per_step]
            label += f", vid{self.video}[t{frame}]"
        return LocationMap(
            values=table.float().numpy(),
            method=f"{self.method}_patching",
            label=label,
            positions=tuple(p for u in units for p in u),
        )

    def save_plot(self, path: str) -> str:
        """Save :meth:`to_image` as a PNG and return the path.

        Written atomically (a temporary file in the same folder, then a rename, mode 0644 under the
        usual umask): a reader never sees half a picture, and an error leaves no partial file.
        """
        from .concepts._store import write_atomic

        image = self.to_image()
        write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
        return path


def _video_units(
    batch: MultimodalBatch, over: str, video: int, cell: tuple[int, int]
) -> tuple[list[list[int]], list[str], tuple[int, ...] | None]:
    """Units of video ``video`` of row 0: its time steps (``over="frame"``) or the ``cell``-sized blocks of
    each step's grid (``over="cell"``, grid ``(time, rows // cr, cols // cc)``)."""
    videos = batch.videos_of(0)
    if not videos:
        raise ValueError(f"over={over!r} with video= sweeps a video of row 0, and row 0 holds no video.")
    if not -len(videos) <= video < len(videos):
        raise ValueError(f"Row 0 has {len(videos)} video(s); video {video} is out of range.")
    v = video % len(videos)
    span = videos[v]
    time, (rows, cols) = span.frame_geometry()
    if over == "frame":
        return [span.frame_positions(t) for t in range(time)], [f"vid{v}[t{t}]" for t in range(time)], None
    cr, cc = cell
    if cr < 1 or cc < 1 or rows % cr or cols % cc:
        raise ValueError(f"cell {cell} does not tile video {v}'s {rows}x{cols} grid of each time step")
    units, labels = [], []
    for t in range(time):
        for r in range(rows // cr):
            for c in range(cols // cc):
                cells = [(r * cr + dr, c * cc + dc) for dr in range(cr) for dc in range(cc)]
                units.append([span.cell_position(t, i, j) for i, j in cells])
                labels.append(f"vid{v}[t{t} r{r}c{c}]")
    return units, labels, (time, rows // cr, cols // cc)


def _units(
    model: HookedMLLM,
    batch: MultimodalBatch,
    over: str,
    positions: Sequence[int] | None,
    image: int | None,
    cell: tuple[int, int],
    video: int | None = None,
) -> tuple[list[list[int]], list[str], tuple[int, ...] | None]:
    if over not in ("position", "cell", "frame", "head"):
        raise ValueError(f"over must be 'position', 'cell', 'frame' or 'head', not {over!r}")
    if video is not None and image is not None:
        raise ValueError(
            "Pass image= (an image's cells, over='cell') or video= (a video's cells or time steps), not both."
        )
    if over == "frame" and image is not None:
        raise ValueError(
            "over='frame' sweeps a video's time steps: choose the video with video= (e.g. video=0), not "
            "image= (image= chooses an image, for over='cell')."
        )
    if video is not None and over not in ("cell", "frame"):
        raise ValueError(
            f"video= chooses the video that over='cell' or over='frame' sweeps, not over={over!r}."
        )
    if over == "head":
        return [[h] for h in range(model.cfg.n_heads)], [f"H{h}" for h in range(model.cfg.n_heads)], None
    if over == "position":
        pos = list(positions) if positions is not None else (~batch.pad_mask[0]).nonzero().flatten().tolist()
        tokens = batch.tokens[0] if batch.tokens is not None else [str(p) for p in range(batch.shape[1])]
        return [[p] for p in pos], [f"{p}:{tokens[p]}" for p in pos], None
    if over == "frame" or video is not None:
        return _video_units(batch, over, 0 if video is None else video, cell)
    image = 0 if image is None else image
    spans = batch.images_of(0)
    if not spans and batch.videos_of(0):
        raise ValueError(
            "Row 0 holds no image to sweep over cells, but holds a video: pass video=0 to sweep its "
            "(t, r, c) cells."
        )
    span = spans[image] if image < len(spans) else None
    if span is None or span.grid is None:
        raise ValueError(f"Image {image} of row 0 has no patch grid to sweep over cells.")
    rows, cols = span.grid
    cr, cc = cell
    if rows % cr or cols % cc:
        raise ValueError(f"cell {cell} does not tile the {rows}x{cols} image-token grid")
    units, labels = [], []
    where = span.token_positions  # cell (r, c) -> its sequence position (row separators excluded)
    for r in range(rows // cr):
        for c in range(cols // cc):
            units.append([where[(r * cr + dr) * cols + c * cc + dc] for dr in range(cr) for dc in range(cc)])
            labels.append(f"r{r}c{c}")
    return units, labels, (rows // cr, cols // cc)


def _swept_video(batch: MultimodalBatch, over: str, video: int | None) -> int | None:
    """The index of the video of row 0 a sweep covers (non-negative), or None for other sweeps."""
    if over == "frame" or (over == "cell" and video is not None):
        return (0 if video is None else video) % len(batch.videos_of(0))
    return None


class _RowPatch:
    """Patch row ``i`` of a repeated batch at unit ``i`` from the clean activation."""

    def __init__(self, clean: Tensor, units: list[list[int]], heads: bool) -> None:
        self.clean, self.units, self.heads = clean, units, heads

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        if hook.step > 0:
            return None
        out = act.clone()
        clean = self.clean.to(act.device, act.dtype)
        for row, unit in enumerate(self.units):
            if self.heads:
                out[row, :, unit] = clean[0, :, unit]
            else:
                out[row, unit] = clean[0, unit]
        return out


def _check_pair(clean: MultimodalBatch, corrupted: MultimodalBatch) -> None:
    if len(clean) != 1 or len(corrupted) != 1:
        raise ValueError("Patching takes one clean and one corrupted row (batch.row(i) selects one).")
    a, b = clean.video_mask, corrupted.video_mask
    same_videos = a is None or b is None or torch.equal(a, b)
    if (
        clean.shape != corrupted.shape
        or not torch.equal(clean.image_mask, corrupted.image_mask)
        or not same_videos
    ):
        raise ValueError(
            f"Clean {clean.shape} and corrupted {corrupted.shape} inputs must share their token "
            "layout (same template, prompt length and image sizes) to patch position by position."
        )


def _setup(
    model: HookedMLLM,
    clean: MultimodalBatch,
    corrupted: MultimodalBatch,
    hook: str,
    layers: Sequence[int] | None,
    over: str,
    positions: Sequence[int] | None,
    image: int | None,
    cell: tuple[int, int],
    video: int | None,
) -> tuple[list[int], list[list[int]], list[str], tuple[int, ...] | None, list[str], Any, Any]:
    """What both sweeps share: checks, layers, units, hook names and the clean run's cache."""
    _check_pair(clean, corrupted)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if over == "head" and hook != "z":
        raise ValueError("over='head' patches attn.hook_z: pass hook='z'")
    units, labels, grid = _units(model, corrupted, over, positions, image, cell, video)
    names = [act_name(hook, layer) for layer in layers]
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=names, device=None)
    return layers, units, labels, grid, names, clean_logits, clean_cache


def activation_patching(
    model: HookedMLLM,
    clean: MultimodalBatch,
    corrupted: MultimodalBatch,
    metric: Metric,
    *,
    hook: str = "resid_pre",
    layers: Sequence[int] | None = None,
    over: str = "position",
    positions: Sequence[int] | None = None,
    image: int | None = None,
    video: int | None = None,
    cell: tuple[int, int] = (1, 1),
    corrupted_hooks: Sequence[tuple[str, Callable]] = (),
    batch_size: int = 16,
) -> PatchingResult:
    """Patch ``hook`` from the clean run into the corrupted run, unit by unit, per layer.

    Args:
        hook: Short hook type: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``,
            ``mlp_out``, or ``z`` (with ``over="head"``).
        over: ``"position"`` (each position in ``positions``, default all non-padding),
            ``"cell"`` (each ``cell``-sized block of image ``image``'s token grid, ``[layer, rows,
            cols]`` labelled ``r1c2``; with ``video=``, of each time step's grid of that video,
            ``[layer, time, rows, cols]`` labelled ``vid0[t1 r0c2]``), ``"frame"`` (each time step of
            video ``video``, all its tokens at once: which frame carries the answer; ``[layer,
            time]``, labelled ``vid0[t2]``) or ``"head"``.
        image: The image of row 0 that ``over="cell"`` sweeps (default 0); refused with
            ``over="frame"`` (choose the video with ``video=``).
        video: The video of row 0 that ``over="frame"`` sweeps (default 0), or that ``over="cell"``
            sweeps instead of an image. Images and videos are counted apart (``batch.images_of(0)``,
            ``batch.videos_of(0)``).
        cell: ``(rows, cols)`` of one unit over cells; it must tile the (step's) grid.
        corrupted_hooks: Hooks that make the corruption (e.g. :func:`noise_image_tokens`);
            they run before the patch on every corrupted run.
        batch_size: Patched runs per forward.

    Returns:
        A :class:`PatchingResult` (``values`` shaped as described under ``over``).

    Examples:
        >>> cells = activation_patching(model, clean, corrupted, metric, over="cell", video=0,
        ...                             cell=(1, 2))                                  # doctest: +SKIP
        >>> cells.values.shape, cells.labels[1]      # [layer, time, rows, cols / 2]  # doctest: +SKIP
        (torch.Size([2, 2, 2, 1]), 'vid0[t0 r1c0]')
    """
    layers, units, labels, grid, names, clean_logits, clean_cache = _setup(
        model, clean, corrupted, hook, layers, over, positions, image, cell, video
    )
    corrupted_logits = model.run_with_hooks(corrupted, fwd_hooks=list(corrupted_hooks))
    forwards, rows = 2, 2
    table = torch.empty(len(layers), len(units))
    for li, name in enumerate(names):
        for start in range(0, len(units), batch_size):
            chunk = units[start : start + batch_size]
            repeated = corrupted.repeat(len(chunk))
            patch = _RowPatch(clean_cache[name], chunk, heads=over == "head")
            logits = model.run_with_hooks(repeated, fwd_hooks=[*corrupted_hooks, (name, patch)])
            table[li, start : start + len(chunk)] = metric(logits, repeated).float().cpu()
            forwards, rows = forwards + 1, rows + len(chunk)
    values = table.view(len(layers), *grid) if grid is not None else table
    return PatchingResult(
        values=values,
        hook=act_name(hook, 0).replace("blocks.0.", "blocks.{l}."),
        layers=layers,
        over=over,
        labels=labels,
        units=units,
        clean_metric=float(metric(clean_logits, clean)[0]),
        corrupted_metric=float(metric(corrupted_logits, corrupted)[0]),
        forward_passes=forwards,
        rows=rows,
        video=_swept_video(corrupted, over, video),
    )


class _Delta:
    """Add a zero leaf tensor to the activation (its gradient is the activation's) and keep both."""

    def __init__(self, store: dict) -> None:
        self.store = store

    def __call__(self, act: Tensor, hook: HookContext) -> Tensor | None:
        if hook.step > 0:
            return None
        delta = torch.zeros_like(act, requires_grad=True)
        self.store[hook.name] = (act.detach(), delta)
        return act + delta


def attribution_patching(
    model: HookedMLLM,
    clean: MultimodalBatch,
    corrupted: MultimodalBatch,
    metric: Metric,
    *,
    hook: str = "resid_pre",
    layers: Sequence[int] | None = None,
    over: str = "position",
    positions: Sequence[int] | None = None,
    image: int | None = None,
    video: int | None = None,
    cell: tuple[int, int] = (1, 1),
    corrupted_hooks: Sequence[tuple[str, Callable]] = (),
) -> PatchingResult:
    """The gradient approximation of :func:`activation_patching`, same arguments and layout.

    Each unit's value is ``corrupted_metric + sum((clean - corrupted) * grad)`` over the
    unit's positions (or head) and the model dimension, so it is on the metric's scale
    like the activation-patching table. Over a video's time steps (``over="frame"``) or ``(t, r,
    c)`` cells (``over="cell", video=...``) each unit's attribution is the sum of its positions'
    attributions; the values are shaped ``[layer, time]`` / ``[layer, time, rows, cols]``.

    Examples:
        >>> frames = attribution_patching(model, clean, corrupted, metric, over="frame")  # doctest: +SKIP
        >>> frames.values.shape                                     # [layer, time]      # doctest: +SKIP
    """
    layers, units, labels, grid, names, clean_logits, clean_cache = _setup(
        model, clean, corrupted, hook, layers, over, positions, image, cell, video
    )
    store: dict = {}
    delta = _Delta(store)
    logits = model.run_with_hooks(
        corrupted, fwd_hooks=[*corrupted_hooks, *[(n, delta) for n in names]], grad=True
    )
    with torch.enable_grad():  # the metric joins the run's graph under a caller's torch.no_grad() too
        value = metric(logits, corrupted).sum()
        grads = torch.autograd.grad(value, [store[n][1] for n in names])
    table = torch.empty(len(layers), len(units))
    for li, (name, grad) in enumerate(zip(names, grads)):
        diff = (clean_cache[name].to(grad) - store[name][0]) * grad
        per_pos = diff[0].flatten(2).sum(-1) if over == "head" else diff[0].flatten(1).sum(-1)
        for ui, unit in enumerate(units):
            table[li, ui] = per_pos[:, unit].sum() if over == "head" else per_pos[unit].sum()
    corrupted_metric = float(value.detach())
    table = table + corrupted_metric
    values = table.view(len(layers), *grid) if grid is not None else table
    return PatchingResult(
        values=values,
        hook=act_name(hook, 0).replace("blocks.0.", "blocks.{l}."),
        layers=layers,
        over=over,
        labels=labels,
        units=units,
        clean_metric=float(metric(clean_logits, clean)[0]),
        corrupted_metric=corrupted_metric,
        forward_passes=2,
        rows=2,
        backward_passes=1,
        method="attribution",
        video=_swept_video(corrupted, over, video),
    )


def noise_image_tokens(
    model: HookedMLLM, batch: MultimodalBatch, scale: float = 3.0, seed: int = 0, std: float | None = None
) -> tuple[str, Callable]:
    """Causal-tracing corruption: Gaussian noise on the image tokens of ``blocks.0.hook_resid_pre``.

    The noise's standard deviation is ``scale`` times ``std``, by default the standard
    deviation of this batch's image-token embeddings (ROME uses 3x that of the subject
    embeddings over a corpus; pass ``std`` to use a corpus value). The same noise is used
    on every run, so a sweep compares like with like. Returns a ``fwd_hooks`` entry.
    """
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_pre", device=None)
    embeds = cache["resid_pre", 0]
    mask = batch.image_mask.to(embeds.device)
    sigma = scale * (std if std is not None else float(embeds[mask].float().std()))
    generator = torch.Generator().manual_seed(seed)
    noise = (torch.randn(embeds.shape[1:], generator=generator) * sigma).to(embeds)

    def add_noise(act: Tensor, hook: HookContext) -> Tensor | None:
        if hook.step > 0:
            return None
        where = mask[:1].expand(act.shape[0], -1) if mask.shape[0] == 1 else mask
        return act + noise.to(act) * where[..., None].to(act.dtype)

    return ("blocks.0.hook_resid_pre", add_noise)


def mask_region(image: Image.Image, box: tuple[int, int, int, int], fill: Any = (0, 0, 0)) -> Image.Image:
    """A copy of ``image`` with the pixel ``box`` (left, top, right, bottom) filled."""
    out = image.copy()
    ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=fill)
    return out


def blur_region(image: Image.Image, box: tuple[int, int, int, int], radius: float = 4.0) -> Image.Image:
    """A copy of ``image`` with the pixel ``box`` Gaussian-blurred."""
    out = image.copy()
    out.paste(out.crop(box).filter(ImageFilter.GaussianBlur(radius)), box[:2])
    return out


def correlation(a: Float[Tensor, "..."], b: Float[Tensor, "..."]) -> float:
    """Pearson correlation of two tables (e.g. attribution vs activation patching)."""
    x, y = a.flatten().float(), b.flatten().float()
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()).clamp_min(1e-12))
