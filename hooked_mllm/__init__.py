"""hooked_mllm: TransformerLens-style hook points for multimodal LLMs, on nnsight.

Public surface:
    :class:`HookedMLLM` (load, hook, cache, generate, trace), :class:`ActivationCache`
    (with its :class:`CacheReadout`),
    :class:`MultimodalBatch`, :class:`MLLMConfig`, :class:`HookContext`, :class:`Remote` (a remote host),
    :mod:`positions` (position selectors), :func:`act_name`; from :mod:`mechanism`:
    :class:`LocationMap`, :func:`image_locations`, :func:`head_scores`, :func:`layer_scores`,
    :func:`head_contributions`, the baselines (:func:`attention_map`, :func:`relevancy_map`,
    :func:`gradient_map`, :func:`occlusion_map`), :func:`explain_positions`,
    :func:`logit_lens_map`, :func:`pointing_game`.
"""

from ._lazy import lazy_exports

_NAMES = {
    "HookContext": ".hook_points",
    "ActivationCache": ".cache",
    "CacheReadout": ".readout",
    "MLLMConfig": ".config",
    "HookNameError": ".hook_points",
    "act_name": ".hook_points",
    "ImageSpan": ".inputs",
    "MultimodalBatch": ".inputs",
    "LocationMap": ".mechanism",
    "attention_map": ".mechanism",
    "explain_positions": ".mechanism",
    "gradient_map": ".mechanism",
    "head_contributions": ".mechanism",
    "head_scores": ".mechanism",
    "image_locations": ".mechanism",
    "layer_scores": ".mechanism",
    "logit_lens_map": ".mechanism",
    "occlusion_map": ".mechanism",
    "pointing_game": ".mechanism",
    "relevancy_map": ".mechanism",
    "GenerationOutput": ".model",
    "HookedMLLM": ".model",
    "Remote": "._runtime.remote_host",
    "CacheEstimate": ".estimate",
    "estimate_cache": ".estimate",
    "estimate_tool": ".estimate",
}
_MODULES = {
    "mechanism": ".mechanism",
    "positions": ".positions",
    "utils": ".utils",
    "geometry": ".geometry",
    "budget": ".budget",
}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _MODULES)

__version__ = "0.1.0"

__all__ = sorted({*_NAMES, *_MODULES})
