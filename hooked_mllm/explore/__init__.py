"""``hooked-mllm explore``: a local web page to ask a model about an image and click through what it did.

Purpose:
    Pick a toy scene or upload an image, type a question, see the answer; then the logit lens over the
    image grid at every layer (hover a cell: its top token; click: the top five), head scores as a layer
    x head grid (click a head: its location map over the image), the baselines side by side, an
    activation patching sweep of a chosen corruption, and the circuitsvis attention view of the top
    head's layer. Served on the loopback address by the standard library's HTTP server: no framework,
    nothing fetched from the network, so it works offline; the page is tested in headless Chromium.

Connections:
    :mod:`.analysis` computes with the library's own tools (:mod:`hooked_mllm.mechanism`,
    :mod:`hooked_mllm.patching`, :mod:`hooked_mllm.viz`); :mod:`.server` serves the page
    (:mod:`._page`) and a small JSON API; the CLI's ``explore`` command calls :func:`run`.

Contents (public API):
    :class:`Explorer`, :func:`serve`, :func:`run`.

Examples:
    >>> from hooked_mllm import explore, toy
    >>> explore.run(toy.load("toy-llava"), port=8765)        # doctest: +SKIP
"""

from .._lazy import lazy_exports

_NAMES = {"Explorer": ".analysis", "serve": ".server", "run": ".server"}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, {})

__all__ = sorted(_NAMES)
