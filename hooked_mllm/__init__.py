"""hooked_mllm: TransformerLens-style hook points for multimodal LLMs, on nnsight.

Public surface:
    :class:`HookedMLLM` (load, hook, cache, generate, trace), :class:`ActivationCache`,
    :class:`MultimodalBatch`, :class:`MLLMConfig`, :class:`HookContext`,
    :mod:`positions` (position selectors), :func:`act_name`; from :mod:`mechanism`:
    :class:`LocationMap`, :func:`image_locations`, :func:`head_scores`, :func:`layer_scores`,
    :func:`head_contributions`, the baselines (:func:`attention_map`, :func:`relevancy_map`,
    :func:`gradient_map`, :func:`occlusion_map`), :func:`explain_positions`,
    :func:`logit_lens_map`, :func:`pointing_game`.
"""

from . import mechanism as mechanism
from . import positions as positions
from ._runner import HookContext as HookContext
from .cache import ActivationCache as ActivationCache
from .config import MLLMConfig as MLLMConfig
from .hook_points import HookNameError as HookNameError
from .hook_points import act_name as act_name
from .inputs import ImageSpan as ImageSpan
from .inputs import MultimodalBatch as MultimodalBatch
from .mechanism import LocationMap as LocationMap
from .mechanism import attention_map as attention_map
from .mechanism import explain_positions as explain_positions
from .mechanism import gradient_map as gradient_map
from .mechanism import head_contributions as head_contributions
from .mechanism import head_scores as head_scores
from .mechanism import image_locations as image_locations
from .mechanism import layer_scores as layer_scores
from .mechanism import logit_lens_map as logit_lens_map
from .mechanism import occlusion_map as occlusion_map
from .mechanism import pointing_game as pointing_game
from .mechanism import relevancy_map as relevancy_map
from .model import GenerationOutput as GenerationOutput
from .model import HookedMLLM as HookedMLLM

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "GenerationOutput",
    "HookContext",
    "HookNameError",
    "HookedMLLM",
    "ImageSpan",
    "LocationMap",
    "MLLMConfig",
    "MultimodalBatch",
    "act_name",
    "attention_map",
    "explain_positions",
    "gradient_map",
    "head_contributions",
    "head_scores",
    "image_locations",
    "layer_scores",
    "logit_lens_map",
    "mechanism",
    "occlusion_map",
    "pointing_game",
    "positions",
    "relevancy_map",
]
