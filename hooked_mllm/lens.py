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
    ids_list = ids.tolist()
    names = tokenizer.convert_ids_to_tokens(ids_list) if tokenizer is not None else [str(i) for i in ids_list]
    return [(name, float(v)) for name, v in zip(names, values.tolist())]


def _input_embedding_matrix(model) -> Float[Tensor, "d_vocab d_model"]:
    """The input token-embedding matrix of a ``HookedMLLM`` or of any Hugging Face model."""
    hf = getattr(model, "hf_model", model)
    get = getattr(hf, "get_input_embeddings", None)
    emb = get() if get is not None else None
    if emb is None or not hasattr(emb, "weight"):
        raise TypeError(
            f"embedding_lens needs a HookedMLLM or a Hugging Face model with get_input_embeddings(); "
            f"got {type(model).__name__}."
        )
    return emb.weight


def embedding_lens(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """The embedding lens: cosine similarity of residual vectors to every input token embedding.

    Reads a vector by its nearest words in the *input* embedding space (the "input embedding matrix" reading
    of vision tokens): entry ``[..., v]`` is ``cos(resid, W_E[v])``. Unlike :func:`logit_lens` it needs no final
    norm or LM head, so it reads what a token *is* rather than what the model predicts *next*; with tied
    embeddings the two spaces coincide. Works for a ``HookedMLLM`` or any Hugging Face model with
    ``get_input_embeddings()``. :func:`nearest_tokens` names the top entries.

    Args:
        model: a ``HookedMLLM`` or a ``PreTrainedModel``.
        resid: vectors of any leading shape in the LM's residual space (``d_model`` wide).

    Returns:
        Cosine similarities in ``[-1, 1]``, shape ``[..., d_vocab]``.

    Example:
        >>> sims = embedding_lens(model, cache["resid_pre", 0][0, batch.image_mask[0]])  # doctest: +SKIP
        >>> nearest_tokens(model, sims[0])                                                  # doctest: +SKIP
    """
    weight = _input_embedding_matrix(model)
    if resid.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"embedding_lens: resid has width {resid.shape[-1]} but the input embeddings are "
            f"{weight.shape[-1]} wide; pass residual-stream vectors of the language model."
        )
    with torch.no_grad():
        x = torch.nn.functional.normalize(resid.to(device=weight.device, dtype=weight.dtype), dim=-1)
        w = torch.nn.functional.normalize(weight, dim=-1)
        return x @ w.T


def nearest_tokens(model, sims: Float[Tensor, " d_vocab"], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` highest-scoring tokens of one :func:`embedding_lens` vector as ``(token, cosine)``."""
    hf = getattr(model, "hf_model", None)
    proc = getattr(model, "processor", None)
    tokenizer = getattr(proc, "tokenizer", proc) if hf is not None else None
    values, ids = sims.float().topk(k)
    ids_list = ids.tolist()
    names = tokenizer.convert_ids_to_tokens(ids_list) if tokenizer is not None else [str(i) for i in ids_list]
    return [(name, float(v)) for name, v in zip(names, values.tolist())]
