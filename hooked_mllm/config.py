"""The sizes of a wrapped model, read once from its HF config and module tree.

:class:`MLLMConfig` is ``model.cfg``: the numbers a TransformerLens user reaches for
(``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_vocab``...) for the language
model, the vision tower's sizes, and the image token id. Built by
:meth:`MLLMConfig.from_model` from an adapter (:mod:`hooked_mllm.architectures`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from .architectures.base import Adapter


@dataclass(frozen=True, kw_only=True)
class MLLMConfig:
    """Sizes of the language model and the vision tower.

    TransformerLens' names: ``n_ctx`` is the language model's ``max_position_embeddings`` (None where
    the config has none); ``default_prepend_bos`` is True, as :meth:`HookedMLLM.to_tokens` prepends BOS.

    Examples:
        >>> model.cfg.n_layers, model.cfg.d_model       # doctest: +SKIP
        (32, 4096)
    """

    architecture: str
    model_class: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    vision_n_layers: int
    vision_d_model: int | None
    vision_n_heads: int
    image_token_id: int | None
    dtype: torch.dtype
    norm_eps: float
    n_ctx: int | None = None
    default_prepend_bos: bool = True

    @classmethod
    def from_model(cls, hf_model: torch.nn.Module, adapter: Adapter) -> MLLMConfig:
        """Read the sizes of ``hf_model`` through ``adapter``."""
        config = hf_model.config
        text = adapter.text_cfg(config)
        vision = adapter.vision_cfg(config)
        n_heads = int(text.num_attention_heads)
        d_model = int(text.hidden_size)
        head_dim = getattr(text, "head_dim", None) or d_model // n_heads
        lm_layers = cast(torch.nn.ModuleList, adapter.module(hf_model, adapter.modules.lm_layers))
        vision_path = adapter.modules.vision_layers
        vision_layers = (
            len(cast(torch.nn.ModuleList, adapter.module(hf_model, vision_path)))
            if vision_path is not None
            else 0
        )
        unembed = adapter.module(hf_model, adapter.modules.unembed)
        image_token = getattr(config, adapter.config_keys.image_token_id, None)
        eps = getattr(text, "rms_norm_eps", None) or getattr(text, "layer_norm_eps", None) or 1e-6
        return cls(
            architecture=adapter.name,
            model_class=type(hf_model).__name__,
            n_layers=len(lm_layers),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=int(getattr(text, "num_key_value_heads", None) or n_heads),
            d_head=int(head_dim),
            d_mlp=getattr(text, "intermediate_size", None),
            d_vocab=int(unembed.weight.shape[0]),  # type: ignore[index]  # nn.Module attribute
            vision_n_layers=vision_layers,
            vision_d_model=getattr(vision, "hidden_size", None) if vision is not None else None,
            vision_n_heads=int(getattr(vision, "num_attention_heads", 0) or 0) if vision is not None else 0,
            image_token_id=None if image_token is None else int(image_token),
            dtype=next(hf_model.parameters()).dtype,
            norm_eps=float(eps),
            n_ctx=getattr(text, "max_position_embeddings", None),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (dtype as its name)."""
        out = dict(self.__dict__)
        out["dtype"] = str(self.dtype).replace("torch.", "")
        return out
