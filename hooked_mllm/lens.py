"""The logit lens: read residual-stream vectors through the final norm and unembedding.

:func:`logit_lens` maps any ``[..., d_model]`` residual (text or image tokens, any layer)
to vocabulary logits with the model's own final norm module and LM head, so the last
layer's ``hook_resid_post`` gives exactly the model's logits. :func:`top_tokens` names
the top entries.

Example:
    >>> _, cache = model.run_with_cache(batch, names_filter=lambda n: "resid_post" in n)  # doctest: +SKIP
    >>> logits = logit_lens(model, cache["resid_post", 2][:, batch.image_mask[0]])          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from .model import HookedMLLM


def logit_lens(model: HookedMLLM, resid: Float[Tensor, "... d_model"], apply_norm: bool = True) -> Float[Tensor, "... d_vocab"]:
    """Vocabulary logits of residual vectors: ``unembed(final_norm(resid))``.

    Args:
        model: The model whose norm and unembedding are used.
        resid: Residual-stream vectors of any leading shape.
        apply_norm: Apply the final norm first (as the model does); False reads the raw
            residual through the unembedding only.
    """
    head = model.adapter.module(model.hf_model, model.adapter.unembed)
    x = resid.to(device=model.device, dtype=head.weight.dtype)
    with torch.no_grad():
        if apply_norm:
            x = model.final_norm()(x)
        return head(x)


def top_tokens(model: HookedMLLM, logits: Float[Tensor, " d_vocab"], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely tokens of one logit vector as ``(token, probability)``."""
    tokenizer = getattr(model.processor, "tokenizer", None)
    probs = logits.float().softmax(-1)
    values, ids = probs.topk(k)
    names = tokenizer.convert_ids_to_tokens(ids.tolist()) if tokenizer is not None else [str(i) for i in ids.tolist()]
    return [(name, float(v)) for name, v in zip(names, values.tolist())]
