"""hooked_mllm: TransformerLens-style hook points for multimodal LLMs, on nnsight.

Public surface:
    :class:`HookedMLLM` (load, hook, cache, generate, trace), :class:`ActivationCache`,
    :class:`MultimodalBatch`, :class:`MLLMConfig`, :class:`HookContext`,
    :mod:`positions` (position selectors), :func:`act_name`.
"""

from . import positions as positions
from ._runner import HookContext as HookContext
from .cache import ActivationCache as ActivationCache
from .config import MLLMConfig as MLLMConfig
from .hook_points import HookNameError as HookNameError
from .hook_points import act_name as act_name
from .inputs import ImageSpan as ImageSpan
from .inputs import MultimodalBatch as MultimodalBatch
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
    "MLLMConfig",
    "MultimodalBatch",
    "act_name",
    "positions",
]
