"""Architecture adapters and the registry that maps HF config classes to them.

Each family's adapter lives in its own module (:mod:`.llava`, ...) and is registered
here. :func:`adapter_for` picks the adapter of a loaded HF model by its config class,
falling back to :func:`.discover.discover` (structure-based, checked by a probe forward:
:func:`.discover.verify_adapter`) for unknown models. :func:`supported_models_markdown`
renders the registry as docs/architectures.md.

Examples:
    >>> from hooked_mllm.architectures import adapter_for
    >>> adapter_for(hf_model).name        # doctest: +SKIP
    'llava'
"""

from __future__ import annotations

import logging
from typing import Any

from .base import Adapter as Adapter
from .base import BlockLayout as BlockLayout
from .base import ConfigKeys as ConfigKeys
from .base import CrossAttention as CrossAttention
from .base import InputLayout as InputLayout
from .base import Metadata as Metadata
from .base import ModuleLayout as ModuleLayout
from .base import TokenLayout as TokenLayout
from .base import no_grid as no_grid
from .base import square_grid as square_grid
from .base import square_tokens as square_tokens
from .discover import discover as discover
from .discover import verify_adapter as verify_adapter
from .gemma3 import GEMMA3
from .idefics2 import IDEFICS2
from .idefics3 import IDEFICS3, SMOLVLM
from .internvl import INTERNVL
from .llava import LLAVA
from .llava_next import LLAVA_NEXT
from .llava_next_video import LLAVA_NEXT_VIDEO
from .llava_onevision import LLAVA_ONEVISION
from .mistral3 import MISTRAL3
from .mllama import MLLAMA
from .molmo import MOLMO
from .molmo2 import MOLMO2
from .paligemma import PALIGEMMA
from .qwen2_vl import QWEN2_5_VL, QWEN2_VL
from .qwen3_vl import QWEN3_VL

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Register ``adapter`` for each of its config classes; a duplicate is an error."""
    for name in adapter.config_classes:
        if name in _REGISTRY:
            raise ValueError(
                f"Config class {name!r} already has the adapter {_REGISTRY[name].name!r}; "
                f"refusing to register {adapter.name!r} for it too."
            )
    for name in adapter.config_classes:
        _REGISTRY[name] = adapter
    return adapter


def registered_adapters() -> dict[str, Adapter]:
    """A copy of the registry: config class name -> adapter."""
    return dict(_REGISTRY)


def adapter_for(hf_model: Any) -> Adapter:
    """The adapter serving ``hf_model`` (by its config class), validated against its tree."""
    config_name = type(hf_model.config).__name__
    adapter = _REGISTRY.get(config_name)
    if adapter is None:
        known = ", ".join(sorted(_REGISTRY))
        try:
            adapter = discover(hf_model)
        except ValueError as error:
            raise ValueError(
                f"No adapter for {type(hf_model).__name__} (config {config_name}), and auto-discovery "
                f"failed: {error} Supported config classes: {known}."
            ) from None
        logger.warning(
            "No adapter registered for %s (config %s); using the layout discovered from its "
            "module tree, its LM residual identities checked on a text-only probe (the vision tower "
            "is mapped by names, unchecked): %s",
            type(hf_model).__name__,
            config_name,
            adapter,
        )
        return adapter
    adapter = adapter.for_config(hf_model.config)
    adapter.validate(hf_model)
    return adapter


register_adapter(LLAVA)
register_adapter(QWEN2_VL)
register_adapter(QWEN2_5_VL)
register_adapter(IDEFICS2)
register_adapter(GEMMA3)
register_adapter(LLAVA_NEXT)
register_adapter(LLAVA_ONEVISION)
register_adapter(LLAVA_NEXT_VIDEO)
register_adapter(IDEFICS3)
register_adapter(SMOLVLM)
register_adapter(PALIGEMMA)
register_adapter(INTERNVL)
register_adapter(QWEN3_VL)
register_adapter(MISTRAL3)
register_adapter(MLLAMA)
register_adapter(MOLMO)
register_adapter(MOLMO2)
