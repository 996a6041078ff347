"""The logit lens: read residual-stream vectors through the final norm and unembedding.

:func:`logit_lens` maps any ``[..., d_model]`` residual (text or image tokens, any layer)
to vocabulary logits with the model's own final norm module, LM head and final logit
soft cap, so the last layer's ``hook_resid_post`` gives exactly the model's logits; with
``scale_from=`` the final norm's scale is frozen at another residual's (the readout of
:mod:`hooked_mllm.mechanism`). :func:`top_tokens` names the top entries;
:func:`frozen_final_norm` and :func:`softcap_logits` are the two pieces.

Examples:
    >>> _, cache = model.run_with_cache(batch, names_filter=lambda n: "resid_post" in n)  # doctest: +SKIP
    >>> logits = logit_lens(model, cache["resid_post", 2][:, batch.image_mask[0]])          # doctest: +SKIP
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .model import HookedMLLM


def logit_lens(
    model: HookedMLLM,
    resid: Float[Tensor, "... d_model"],
    apply_norm: bool = True,
    *,
    scale_from: Float[Tensor, "... d_model"] | None = None,
) -> Float[Tensor, "... d_vocab"]:
    """Vocabulary logits of residual vectors: ``softcap(unembed(final_norm(resid)))``.

    The model's final logit soft-capping (Gemma 2 / PaliGemma 2: ``cap * tanh(logits / cap)``)
    is applied as the model applies it, so the last layer's ``hook_resid_post`` gives exactly
    the model's logits.

    Args:
        model: The model whose norm and unembedding are used.
        resid: Residual-stream vectors of any leading shape.
        apply_norm: Apply the final norm first (as the model does); False reads the raw
            residual through the unembedding only.
        scale_from: The frozen-scale readout: take the final norm's scale from these
            residuals (broadcast against ``resid``, e.g. the final residual at the position
            read) instead of from ``resid`` itself, so the readout is linear in ``resid`` up to
            the soft cap (see :func:`frozen_final_norm`).

    Examples:
        >>> logits = logit_lens(model, cache["resid_post", 1][:, -1])                    # doctest: +SKIP
        >>> frozen = logit_lens(model, part, scale_from=cache["resid_post", 3][:, -1])   # doctest: +SKIP
    """
    head = model.adapter.module(model.hf_model, model.adapter.modules.unembed)
    with torch.no_grad():
        if scale_from is not None:
            if not apply_norm:
                raise ValueError("scale_from= sets the final norm's scale; it needs apply_norm=True.")
            x = frozen_final_norm(model, resid.to(model.device), scale_from.to(model.device))
            bias = getattr(head, "bias", None)
            logits = x @ head.weight.detach().float().T  # type: ignore[operator]  # nn.Module attribute
            if bias is not None:
                logits = logits + bias.detach().float()
        else:
            dtype = head.weight.dtype
            x = resid.to(device=model.device, dtype=dtype)  # type: ignore[arg-type]  # nn.Module attribute
            if apply_norm:
                x = model.final_norm()(x)
            logits = head(x)
        return softcap_logits(model, logits)


def final_logit_softcap(model: HookedMLLM) -> float | None:
    """The model's final logit soft cap (``final_logit_softcapping`` of its text config), or None.

    Examples:
        >>> final_logit_softcap(paligemma2_model)   # doctest: +SKIP
        30.0
    """
    text = model.adapter.text_cfg(model.hf_model.config)
    cap = getattr(text, "final_logit_softcapping", None)
    return None if cap is None else float(cap)


def softcap_logits(model: HookedMLLM, logits: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "... d_vocab"]:
    """``cap * tanh(logits / cap)`` with the model's final logit cap; the logits unchanged without one."""
    cap = final_logit_softcap(model)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def frozen_final_norm(
    model: HookedMLLM, resid: Float[Tensor, "... d_model"], scale_from: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_model"]:
    """The final norm of ``resid`` with its scale taken from ``scale_from`` (float32).

    RMSNorm: ``resid / sqrt(mean(scale_from**2) + eps) * (weight + offset)``; LayerNorm:
    ``(resid - mean(resid)) / sqrt(var(scale_from) + eps) * weight + bias``, with the norm
    module's own ``eps`` and the adapter's weight offset (1 for Gemma). With
    ``scale_from=resid`` it is the model's final norm. Linear in ``resid`` (up to the bias),
    so parts of a residual read out this way add up: the readout of the paper's per-head
    contributions. The same scaling as :meth:`ActivationCache.apply_ln_to_stack`, for any
    vectors and any reference.

    Args:
        resid: ``[..., d_model]`` vectors to normalise.
        scale_from: ``[..., d_model]`` the residuals whose norm scale is used, broadcastable
            against ``resid`` (e.g. ``[batch, 1, d_model]`` for ``[batch, k, d_model]``).
    """
    norm = model.final_norm()
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None) or model.cfg.norm_eps
    x, ref = resid.float(), scale_from.float().to(resid.device)
    if model.adapter.modules.block.norm == "layer":
        x = x - x.mean(-1, keepdim=True)
        scale = (ref.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    else:
        scale = (ref.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    weight = norm.weight.detach().float().to(x.device)  # type: ignore[operator]  # nn.Module attribute
    weight = weight + model.adapter.modules.block.norm_offset
    out = x / scale * weight
    bias = getattr(norm, "bias", None)
    return out if bias is None else out + bias.detach().float().to(x.device)


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
    of vision tokens): entry ``[..., v]`` is ``cos(resid, W_E[v])``. Unlike :func:`logit_lens` it needs no
    final norm or LM head, so it reads what a token *is* rather than what the model predicts *next*; with tied
    embeddings the two spaces coincide. Works for a ``HookedMLLM`` or any Hugging Face model with
    ``get_input_embeddings()``. :func:`nearest_tokens` names the top entries.

    Args:
        model: a ``HookedMLLM`` or a ``PreTrainedModel``.
        resid: vectors of any leading shape in the LM's residual space (``d_model`` wide).

    Returns:
        Cosine similarities in ``[-1, 1]``, shape ``[..., d_vocab]``.

    Examples:
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
