"""What the explorer computes: one question about one image, read out layer by layer, head by head.

Purpose:
    The numbers behind each panel of ``hooked-mllm explore``, as JSON-ready dicts: the model's answer,
    the logit lens over the image grid at every layer (top token and its probability per cell), head
    scores as a layer x head grid, a head's location map over the image, the baselines (every head
    summed, attention, attention x gradient relevancy, occlusion on small grids), a circuitsvis
    attention view, and an occlusion patching sweep (which cell, blacked out, changes the answer).

Connections:
    Runs the library's own tools (:mod:`hooked_mllm.mechanism`, :mod:`hooked_mllm.viz`) on a
    :class:`~hooked_mllm.HookedMLLM`; :mod:`.server` serves the results to the page. One lock
    serialises every model call, so requests from several browser tabs never run the model at once.

Examples:
    >>> explorer = Explorer(toy.load("toy-llava"))                     # doctest: +SKIP
    >>> scene = toy.World(seed=7).scene(6)                             # doctest: +SKIP
    >>> result = explorer.ask(scene.image, "what color is the triangle ?")  # doctest: +SKIP
    >>> result["answer"]                                               # doctest: +SKIP
    'blue'
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..model import HookedMLLM
from ..viz._html import png_data_uri

#: Largest image side accepted (pixels) and largest number of pixels: bigger uploads are refused.
MAX_SIDE = 4096
MAX_PIXELS = 16_000_000
#: Longest question accepted (characters).
MAX_QUESTION = 500
#: Occlusion runs one forward per cell: only on grids up to this many cells.
MAX_OCCLUSION_CELLS = 64


@dataclass
class _Asked:
    """One analysed question, kept so that clicks on its heads and cells need no new forward."""

    image: Image.Image
    question: str
    batch: Any
    run: Any


def check_image(image: Image.Image) -> Image.Image:
    """``image`` as RGB, or a ValueError saying why it cannot be used (too large)."""
    width, height = image.size
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(
            f"The image is {width}x{height} pixels; the explorer takes images up to {MAX_SIDE} pixels a side "
            f"and {MAX_PIXELS:,} pixels in all. Resize it first."
        )
    return image.convert("RGB")


def check_question(question: Any) -> str:
    """The question stripped, or a ValueError saying what a question must be."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("Type a question about the image, e.g. 'what color is the circle ?'.")
    if len(question) > MAX_QUESTION:
        raise ValueError(f"The question has {len(question)} characters; at most {MAX_QUESTION} are taken.")
    return question.strip()


class Explorer:
    """A model and the questions asked of it, for the explorer's page.

    Args:
        model: The wrapped model (any supported family; the toy by default in the CLI).
        keep: How many analysed questions to keep for clicks (the oldest is dropped).
        max_new_tokens: Length of the generated answer.

    Examples:
        >>> explorer = Explorer(toy.load("toy-llava"))                 # doctest: +SKIP
        >>> asked = explorer.ask(image, "what color is the circle ?")  # doctest: +SKIP
        >>> explorer.head(asked["id"], layer=2, head=1)["peak"]       # doctest: +SKIP
        [5, 1]
    """

    def __init__(self, model: HookedMLLM, keep: int = 8, max_new_tokens: int = 6) -> None:
        self.model = model
        self.keep = keep
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()
        self._asked: OrderedDict[str, _Asked] = OrderedDict()

    def _get(self, key: str) -> _Asked:
        if key not in self._asked:
            raise KeyError(f"Unknown or expired question id {key!r}: ask the question again.")
        return self._asked[key]

    def ask(self, image: Image.Image, question: Any) -> dict[str, Any]:
        """Answer ``question`` about ``image`` and read out every panel.

        A question that is not a non-empty string, or an image too large, is refused with a ValueError
        saying what is wrong.

        Returns:
            ``id`` (for :meth:`head` and :meth:`cell`), ``answer``, ``image`` (a PNG data URI), ``grid``
            ``[rows, cols]``, ``lens`` (``layers``, ``tokens`` / ``probs`` ``[layer][row][col]``), ``heads``
            (``values`` ``[layer][head]``, ``top``), ``baselines`` (name -> ``{image, peak, label}``) and
            ``attention`` (a self-contained circuitsvis page of the layer of the top head).
        """
        from ..mechanism import (
            attention_map,
            capture,
            head_scores,
            image_locations,
            logit_lens_map,
            occlusion_map,
            relevancy_map,
        )

        image, question = check_image(image), check_question(question)
        with self.lock:
            batch = self.model.prepare(images=[image], prompts=[question])
            if not batch.images or batch.images[0].grid is None:
                raise ValueError(
                    "This model's image tokens have no patch grid (a resampler or cross-attention model), so "
                    "there is no map over the image to explore."
                )
            answer = self.model.generate(batch, max_new_tokens=self.max_new_tokens).text
            run = capture(self.model, batch)
            lens = logit_lens_map(self.model, batch)
            scores = head_scores(self.model, run)
            maps = {
                "every head": image_locations(self.model, run, heads="all"),
                "attention": attention_map(self.model, run),
                "relevancy": relevancy_map(self.model, batch),
            }
            rows, cols = batch.images[0].grid
            if rows * cols <= MAX_OCCLUSION_CELLS:
                maps["occlusion"] = occlusion_map(self.model, batch)
            top = scores.top(1)[0]
            attention = self._attention_page(batch, image, layer=top[0])
        key = uuid.uuid4().hex
        self._asked[key] = _Asked(image=image, question=question, batch=batch, run=run)
        while len(self._asked) > self.keep:
            self._asked.popitem(last=False)
        return {
            "id": key,
            "question": question,
            "answer": (answer[0] if answer else "").strip(),
            "image": png_data_uri(image),
            "grid": [rows, cols],
            "lens": {
                "layers": list(lens.layers),
                "tokens": [[[str(t) for t in row] for row in layer] for layer in lens.tokens.tolist()],
                "probs": [
                    [[round(float(p), 4) for p in row] for row in layer] for layer in lens.probs.tolist()
                ],
            },
            "heads": {
                "values": [[round(float(v), 5) for v in layer] for layer in scores.values[0].tolist()],
                "top": [list(head) for head in scores.top(3)],
            },
            "baselines": {name: self._map(where, image) for name, where in maps.items()},
            "attention": {"layer": top[0], "html": attention},
        }

    def _map(self, where: Any, image: Image.Image) -> dict[str, Any]:
        return {
            "image": png_data_uri(where.overlay(image.resize((256, 256)))),
            "peak": list(where.peak()),
            "label": str(where.label),
        }

    def _attention_page(self, batch: Any, image: Image.Image, layer: int) -> str:
        from ..viz import attention_heads

        name = f"blocks.{layer}.attn.hook_pattern"
        _, cache = self.model.run_with_cache(batch, names_filter=name)
        return attention_heads(cache, layer=layer, batch=batch, image=image).to_html()

    def head(self, key: str, layer: int, head: int) -> dict[str, Any]:
        """One head's location map over the image of question ``key``: ``{image, peak, label, score}``."""
        from ..mechanism import head_scores, image_locations

        asked = self._get(key)
        n_layers, n_heads = self.model.cfg.n_layers, self.model.cfg.n_heads
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"No head L{layer}H{head}: layers 0-{n_layers - 1}, heads 0-{n_heads - 1}.")
        with self.lock:
            where = image_locations(self.model, asked.run, heads=[(layer, head)])
            score = float(head_scores(self.model, asked.run).values[0, layer, head])
        return self._map(where, asked.image) | {"score": round(score, 5), "head": [layer, head]}

    def cell(self, key: str, layer: int, row: int, col: int, k: int = 5) -> dict[str, Any]:
        """The logit lens's top ``k`` tokens at one image cell after ``layer``: ``{tokens, probs}``."""
        from ..lens import logit_lens

        asked = self._get(key)
        rows, cols = asked.batch.images[0].grid
        if not (0 <= row < rows and 0 <= col < cols and 0 <= layer < self.model.cfg.n_layers):
            raise ValueError(f"No cell ({row}, {col}) at layer {layer}: the grid is {rows}x{cols}.")
        position = list(asked.batch.images[0].token_positions)[row * cols + col]
        name = f"blocks.{layer}.hook_resid_post"
        with self.lock:
            _, cache = self.model.run_with_cache(asked.batch, names_filter=name)
            probs = logit_lens(self.model, cache[name][0, position]).float().softmax(-1)
        top = probs.topk(k)
        tokens = self.model.processor.tokenizer.convert_ids_to_tokens(top.indices.tolist())
        return {"tokens": [str(t) for t in tokens], "probs": [round(float(p), 4) for p in top.values]}

    def patching(self, key: str, corruption: str = "noise", layer: int = 0) -> dict[str, Any]:
        """Activation patching over the image cells of question ``key`` at ``layer``'s input.

        The corrupted run is the same question with ``corruption``: ``"noise"`` (causal tracing: Gaussian
        noise on the image tokens), ``"blur"`` or ``"black"`` (the whole image blurred or blacked out, the
        token layout unchanged). Each cell's clean residual is patched into the corrupted run; the map is
        the restored fraction of the clean answer's log-probability (1: fully restored).

        Returns:
            ``{image, peak, label, clean, corrupted}`` (the metric of the two unpatched runs).
        """
        from ..patching import (
            activation_patching,
            answer_logprob,
            blur_region,
            mask_region,
            noise_image_tokens,
        )

        asked = self._get(key)
        if not 0 <= layer < self.model.cfg.n_layers:
            raise ValueError(f"No layer {layer}: layers 0-{self.model.cfg.n_layers - 1}.")
        box = (0, 0, *asked.image.size)
        images = {
            "blur": lambda: blur_region(asked.image, box, radius=8.0),
            "black": lambda: mask_region(asked.image, box),
        }
        if corruption not in ("noise", *images):
            raise ValueError(f"Unknown corruption {corruption!r}; use noise, blur or black.")
        with self.lock, torch.no_grad():
            logits = self.model(asked.batch)
            metric = answer_logprob(int(logits[0, -1].argmax()))
            hooks: list = []
            corrupted = asked.batch
            if corruption == "noise":
                hooks = [noise_image_tokens(self.model, asked.batch)]
            else:
                corrupted = self.model.prepare(images=[images[corruption]()], prompts=[asked.question])
            sweep = activation_patching(
                self.model,
                asked.batch,
                corrupted,
                metric,
                hook="resid_pre",
                layers=[layer],
                over="cell",
                corrupted_hooks=hooks,
            )
        return self._map(sweep.location_map(layer), asked.image) | {
            "clean": round(sweep.clean_metric, 4),
            "corrupted": round(sweep.corrupted_metric, 4),
        }
