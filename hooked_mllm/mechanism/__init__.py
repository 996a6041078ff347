"""Visual mechanism toolkit: which heads and which image locations carry the answer.

After "Understanding Multimodal LLMs: the Mechanistic Interpretability of LLaVA in VQA"
(Yu & Ananiadou 2024): one forward, no gradient, per-head per-source-position
contributions at the last position read out with the final norm's scale frozen; head and
layer scores; the important-image-locations map; its baselines (mean attention,
attention-gradient relevancy, input x gradient, occlusion); explaining single image
positions with the logit lens; a logit-lens map over the image grid; and the pointing game
on the toy world that scores every method. See docs/mechanism.md.

Modules: :mod:`.capture` (the forward and the frozen readout, :class:`MechanismRun`),
:mod:`.scores` (head / layer scores, :func:`image_locations`), :mod:`.baselines`,
:mod:`.explain` (:func:`explain_positions`, :func:`logit_lens_map`), :mod:`.maps`
(:class:`LocationMap`); :func:`pointing_game` is :mod:`hooked_mllm.toy.pointing`'s.

Examples:
    >>> from hooked_mllm import toy
    >>> from hooked_mllm.mechanism import image_locations, attention_map
    >>> model = toy.load("toy-llava")                                        # doctest: +SKIP
    >>> scene = toy.World(seed=7).scene(0)
    >>> batch = model.prepare(images=[scene.image], prompts=[scene.questions[0].question])  # doctest: +SKIP
    >>> image_locations(model, batch, heads="all").overlay(scene.image)      # doctest: +SKIP
"""

from .._lazy import lazy_exports
from .baselines import attention_map as attention_map
from .baselines import gradient_map as gradient_map
from .baselines import occlusion_map as occlusion_map
from .baselines import relevancy_map as relevancy_map
from .capture import MechanismRun as MechanismRun
from .capture import capture as capture
from .explain import LensMap as LensMap
from .explain import PositionExplanation as PositionExplanation
from .explain import explain_positions as explain_positions
from .explain import lens_location_map as lens_location_map
from .explain import logit_lens_map as logit_lens_map
from .maps import LocationMap as LocationMap
from .scores import HeadScores as HeadScores
from .scores import LayerScores as LayerScores
from .scores import head_contributions as head_contributions
from .scores import head_scores as head_scores
from .scores import image_locations as image_locations
from .scores import layer_scores as layer_scores

# The pointing game knows the toy world, so it lives in hooked_mllm.toy.pointing; re-exported on first use
# (an import here would run the toy module, which imports the modules above, while this one is starting).
_NAMES = {name: "hooked_mllm.toy.pointing" for name in ("METHODS", "PointingResult", "pointing_game")}
__getattr__ = lazy_exports(__name__, _NAMES, {})[0]  # dir() stays the default

__all__ = [
    "METHODS",
    "HeadScores",
    "LayerScores",
    "LensMap",
    "LocationMap",
    "MechanismRun",
    "PointingResult",
    "PositionExplanation",
    "attention_map",
    "capture",
    "explain_positions",
    "gradient_map",
    "head_contributions",
    "head_scores",
    "image_locations",
    "layer_scores",
    "lens_location_map",
    "logit_lens_map",
    "occlusion_map",
    "pointing_game",
    "relevancy_map",
]
