"""Notebook pictures of the results users print: patching sweeps, concept shifts, steering, concept
dictionaries.

The result classes of :mod:`hooked_mllm.patching` and :mod:`hooked_mllm.concepts` delegate their
``_repr_html_`` here, so a notebook cell that ends with a result shows a picture and the
numbers that matter instead of a dataclass repr. :func:`concept_dictionary_html` shows a
dictionary's concepts with their top words and top image patches (used by the demo report).

Examples:
    >>> result = activation_patching(model, clean, corrupted, metric, over="cell")   # doctest: +SKIP
    >>> result          # in a notebook: one heatmap per layer over the image grid    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from . import _html


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    return str(value)


def patching_figure(result: Any, image: Image.Image | None = None, normalized: bool = False) -> Any:
    """A sweep's figure: per-layer heatmaps over the grid (``over="cell"``; over a video's cells one
    panel per layer and time step, titled ``layer 1, vid0[t2]``), else a layer x unit heatmap.

    ``normalized=True`` shows ``result.normalized()`` (1 = the clean metric fully restored, 0 = no effect).
    """
    import matplotlib.pyplot as plt

    from .heatmap import heatmaps

    values = (result.normalized() if normalized else result.values).detach().float().cpu().numpy()
    what = f"{result.method} patching of {result.hook}"
    label = "fraction of the clean metric restored" if normalized else "metric"
    if values.ndim == 4:  # [layer, time, rows, cols]: a video's (t, r, c) cells
        time = values.shape[1]
        return heatmaps(
            values.reshape(-1, *values.shape[2:]),
            image,
            titles=[
                f"layer {layer}, vid{result.video}[t{t}]" for layer in result.layers for t in range(time)
            ],
            suptitle=what,
            label=label,
            alpha=0.75,
            ncols=time,
        )
    if values.ndim == 3:
        return heatmaps(
            values,
            image,
            titles=[f"layer {layer}" for layer in result.layers],
            suptitle=what,
            label=label,
            alpha=0.75,
        )
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * values.shape[1] + 2), 0.4 * values.shape[0] + 1.6))
    top = float(np.abs(values).max()) or 1.0
    shown = ax.imshow(values, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")
    ax.set_xticks(range(len(result.labels)), result.labels, rotation=70, fontsize=7)
    ax.set_yticks(range(len(result.layers)), [f"L{layer}" for layer in result.layers], fontsize=8)
    fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.01, label=label)
    ax.set_title(what, fontsize=10)
    fig.tight_layout()
    return fig


def patching_html(result: Any, image: Image.Image | None = None, normalized: bool = False) -> str:
    """HTML for a :class:`~hooked_mllm.patching.PatchingResult`: its numbers, then its figure."""
    layer, unit = result.peak()
    summary = (
        f"<p>{_html.escape(result.method)} patching, <code>{_html.escape(result.hook)}</code> over "
        f"{_html.escape(result.over)}s: clean metric {result.clean_metric:.3f}, corrupted "
        f"{result.corrupted_metric:.3f}; peak at layer {layer}, {_html.escape(result.labels[unit])} "
        f"({float(result.flat().max()):.3f}); {result.forward_passes} forward and "
        f"{result.backward_passes} backward passes.</p>"
    )
    return summary + _html.img_tag(patching_figure(result, image, normalized), "patching sweep")


def shift_html(result: Any) -> str:
    """HTML for a :class:`~hooked_mllm.concepts.ShiftResult`: per-concept counts, consistency, gains."""
    rows = []
    gains = {}
    if result.improvement is not None:
        m = result.improvement.matching
        gains = {
            int(k): (int(j), float(d), float(c))
            for k, j, d, c in zip(
                m.index_x, m.index_y, result.improvement.distance_gain, result.improvement.cosine_gain
            )
        }
    for k in range(len(result.counts)):
        j, dist, cos = gains.get(k, (None, None, None))
        rows.append(
            [
                k,
                int(result.counts[k]),
                float(result.consistency[k]),
                float(np.linalg.norm(result.shift_vectors[k])),
                "" if j is None else j,
                "" if dist is None else dist,
                "" if cos is None else cos,
            ]
        )
    head = (
        f"<p>Concept shift ({_html.escape(result.reduce)}, alpha {result.alpha}): mean consistency "
        f"{result.mean_consistency:.3f}"
    )
    if result.improvement is not None:
        head += (
            "; shifted concepts closer to the fine-tuned model's by "
            f"{result.improvement.mean_distance_gain:.3f}"
            f" in distance and {result.improvement.mean_cosine_gain:.3f} in cosine"
        )
    for name, gain in (
        getattr(result, "baselines", None) or {}
    ).items():  # what the concept-wise shift must beat
        head += (
            f"; baseline {_html.escape(name.replace('_', ' '))}: {gain['mean_distance_gain']:.3f} in "
            f"distance, {gain['mean_cosine_gain']:.3f} in cosine"
        )
    return (
        head
        + ".</p>"
        + _table(
            [
                "concept",
                "samples",
                "consistency",
                "|shift|",
                "matched b concept",
                "distance gain",
                "cosine gain",
            ],
            rows,
        )
    )


def steering_html(report: Any) -> str:
    """HTML for a :class:`~hooked_mllm.concepts.SteeringReport`: rates and the changed answers."""
    changed = [a for a in report.answers if a[2] != a[3]]
    text = (
        f"<p>Target rate {report.target_rate_before:.2f} &rarr; {report.target_rate:.2f}; accuracy on the "
        f"other questions {report.other_accuracy_before:.2f} &rarr; {report.other_accuracy_after:.2f}. "
        f"{len(changed)} of {len(report.answers)} targeted answers changed.</p>"
    )
    return text + _table(["question", "expected", "before", "after"], report.answers[:12])


def steering_dose_figure(
    alphas: Sequence[float],
    target_rates: Sequence[float] | Sequence[Any],
    other_accuracies: Sequence[float] | None = None,
    target: str = "target",
    other: str = "accuracy on other questions",
) -> Any:
    """Dose response of a steering vector: target rate and side-effect accuracy against alpha.

    Pass the rates, or a list of :class:`~hooked_mllm.concepts.SteeringReport` (one per alpha) as
    ``target_rates`` alone.

    Examples:
        >>> fig = steering_dose_figure([0, 1, 2], [0.0, 0.6, 1.0], [1.0, 0.9, 0.4], target="no")
    """
    import matplotlib.pyplot as plt

    if other_accuracies is None:
        reports = list(target_rates)
        target_rates = [r.target_rate for r in reports]
        other_accuracies = [r.other_accuracy_after for r in reports]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(alphas, target_rates, "o-", color="#c0392b", label=f"answers '{target}' (targeted)")
    ax.plot(alphas, other_accuracies, "s--", color="#2471a3", label=other)
    ax.set_xlabel("steering strength alpha")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title("Steering dose response", fontsize=10)
    fig.tight_layout()
    return fig


def concept_dictionary_html(
    words: Sequence[Sequence[str]],
    patches: Sequence[Sequence[Image.Image]] | None = None,
    names: Sequence[str] | None = None,
    size: int = 40,
) -> str:
    """A table of concepts: their top words and (optionally) their top image patches.

    Args:
        words: Per concept, its grounded words (``text_grounding``).
        patches: Per concept, image crops of its top-activating image tokens (shown enlarged).
        names: Row labels (default ``concept k``).
    """
    rows = []
    for k, ws in enumerate(words):
        name = names[k] if names is not None else f"concept {k}"
        tiles = ""
        if patches is not None:
            tiles = "".join(
                f'<img src="{_html.png_data_uri(p.resize((size, size), Image.Resampling.NEAREST))}" '
                f'width="{size}" height="{size}" '
                'style="image-rendering:pixelated;margin:1px;border:1px solid #888"/>'
                for p in patches[k]
            )
        rows.append(
            f"<tr><th>{_html.escape(name)}</th><td>{_html.escape(', '.join(ws) or '(no words)')}</td>"
            + (f"<td>{tiles}</td>" if patches is not None else "")
            + "</tr>"
        )
    head = (
        "<tr><th></th><th>top words</th>"
        + ("<th>top image patches</th>" if patches is not None else "")
        + "</tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"
