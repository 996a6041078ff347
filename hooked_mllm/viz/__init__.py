"""Seeing it: attention views, heatmaps over the image, logit-lens grids, notebook pictures and HTML reports.

Purpose:
    The views a researcher looks at: circuitsvis attention patterns over text and image tokens
    (image tokens named ``img0[r2c3]``, rendered with circuitsvis's local JavaScript, offline),
    per-cell maps over the image with matplotlib, logit-lens grids (layers x positions, and per
    image cell), and self-contained HTML reports.

Connections:
    Reads an :class:`~hooked_mllm.cache.ActivationCache` and its
    :class:`~hooked_mllm.inputs.MultimodalBatch`; :mod:`hooked_mllm.lens` for the logit lens;
    result classes of :mod:`hooked_mllm.patching` and :mod:`hooked_mllm.concepts` delegate their
    ``_repr_html_`` to :mod:`.display`, and :class:`~hooked_mllm.mechanism.LocationMap` its
    ``colorize``, ``overlay`` and ``_repr_html_`` to :mod:`.location`. matplotlib and circuitsvis
    are imported when a view is drawn (``pip install 'hooked-mllm[viz]'``).

Contents (public API):
    :func:`attention_heads`, :func:`attention_patterns`, :class:`AttentionView`, :func:`token_labels`,
    :func:`patch_strip` (attention); :func:`heatmap`, :func:`heatmaps`, :func:`frame_strip`,
    :func:`as_map` (maps over the image, or over a video's frames); :func:`logit_lens_grid`,
    :func:`image_lens_grid`, :class:`LensGrid`, :class:`ImageLensGrid`;
    :func:`patching_figure`, :func:`steering_dose_figure`, :func:`concept_dictionary_html`; :class:`Report`.

Examples:
    >>> from hooked_mllm import viz
    >>> fig = viz.heatmap([[0.0, 1.0], [0.5, 0.2]], title="a 2 x 2 map")
"""

from .attention import AttentionView as AttentionView
from .attention import attention_heads as attention_heads
from .attention import attention_patterns as attention_patterns
from .attention import patch_strip as patch_strip
from .attention import token_labels as token_labels
from .display import concept_dictionary_html as concept_dictionary_html
from .display import patching_figure as patching_figure
from .display import steering_dose_figure as steering_dose_figure
from .heatmap import as_map as as_map
from .heatmap import frame_strip as frame_strip
from .heatmap import heatmap as heatmap
from .heatmap import heatmaps as heatmaps
from .lens_grid import ImageLensGrid as ImageLensGrid
from .lens_grid import LensGrid as LensGrid
from .lens_grid import image_lens_grid as image_lens_grid
from .lens_grid import logit_lens_grid as logit_lens_grid
from .report import Report as Report
