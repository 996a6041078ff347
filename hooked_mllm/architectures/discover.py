"""Auto-discovery: an :class:`~.base.Adapter` for an unregistered model, found from its structure.

Used by :func:`hooked_mllm.architectures.adapter_for` when no adapter is registered for a
model's config class. It reads the module tree, not names of families:

1. the LM head is ``get_output_embeddings()``, the token embedding ``get_input_embeddings()``;
2. the decoder layers are the ``ModuleList`` of transformer blocks (each with an attention
   module holding q / k / v / output projections, an MLP and norms) whose width matches
   the LM head's input; its sibling norm is the final norm;
3. inside a block, the attention, MLP, norms and projections are matched among the
   block's children by the conventional HF attribute names (``self_attn`` / ``attn``,
   ``q_proj`` / ``qkv``, ``input_layernorm`` / ``layer_norm1`` / ``norm1``,
   ``pre_feedforward_layernorm`` marking sandwich norms, layer-scale parameters
   ``lambda_1`` / ``gamma_1``, ...), and a norm's
   ``1 + weight`` scaling is detected by running it on a probe vector;
4. any other ``ModuleList`` of blocks is the vision tower; the projector is the module
   called ``*projector*``, ``connector`` or ``merger``.

What it mapped is logged at INFO level and returned as an adapter named
``"discovered"`` (``verified=False``). Where something essential is missing it raises a
``ValueError`` that says what it looked for; write an adapter file then
(docs/architectures.md).

Example:
    >>> from hooked_mllm.architectures.discover import discover
    >>> discover(hf_model).lm_layers        # doctest: +SKIP
    'model.language_model.layers'
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .base import Adapter, BlockLayout

logger = logging.getLogger(__name__)

_ATTN = ("self_attn", "attn", "attention", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn")
_Q, _K, _V = ("q_proj", "query", "wq"), ("k_proj", "key", "wk"), ("v_proj", "value", "wv")
_O = ("o_proj", "out_proj", "proj", "dense", "wo", "projection_layer")
_LN1 = ("input_layernorm", "layer_norm1", "norm1", "ln_1", "attention_norm", "ln1", "layernorm_before")
_LN2 = ("pre_feedforward_layernorm", "post_attention_layernorm", "layer_norm2", "norm2", "ln_2", "ffn_norm", "ln2",
        "layernorm_after")
_MLP_PRE = ("gate_proj", "fc1", "up_proj", "w1", "c_fc", "linear_fc1")
_MLP_DOWN = ("down_proj", "fc2", "w2", "c_proj", "linear_fc2")
_LAYER_SCALES = (("lambda_1", "lambda_2"), ("gamma_1", "gamma_2"))
_FINAL = ("norm", "final_layernorm", "ln_f", "final_norm", "post_layernorm")
_PROJECTOR = ("multi_modal_projector", "connector", "merger", "mm_projector", "projector")
_EMBED = ("embeddings", "patch_embed", "patch_embedding", "patch_conv")


def _first(module: nn.Module, names: tuple[str, ...], prefix: str = "") -> str | None:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return f"{prefix}{name}"
    return None


def _block(layer: nn.Module) -> BlockLayout | None:
    """The layout of one transformer block, or None if ``layer`` is not one."""
    attn, mlp = _first(layer, _ATTN), _first(layer, _MLP)
    ln1 = _first(layer, _LN1)
    if attn is None or mlp is None or ln1 is None:
        return None
    attn_mod, mlp_mod = layer.get_submodule(attn), layer.get_submodule(mlp)
    o = _first(attn_mod, _O, f"{attn}.")
    pre, down = _first(mlp_mod, _MLP_PRE, f"{mlp}."), _first(mlp_mod, _MLP_DOWN, f"{mlp}.")
    if o is None or pre is None or down is None:
        return None
    sandwich = isinstance(getattr(layer, "pre_feedforward_layernorm", None), nn.Module)
    ln2 = _first(layer, _LN2)
    if ln2 is None:
        return None
    norm_module = layer.get_submodule(ln1)
    scales = next((pair for pair in _LAYER_SCALES
                   if all(isinstance(getattr(layer, name, None), nn.Parameter) for name in pair)), (None, None))
    qkv = [_first(attn_mod, names, f"{attn}.") for names in (_Q, _K, _V)]
    fused = None in qkv
    return BlockLayout(
        attn=attn, mlp=mlp, ln1=ln1, ln2=ln2, q=qkv[0], k=qkv[1], v=qkv[2], o=o, mlp_pre=pre, mlp_down=down,
        norm="layer" if isinstance(norm_module, nn.LayerNorm) else "rms",
        attn_index=None if fused else 0, pattern_index=None if fused else 1,
        attn_out="post_attention_layernorm" if sandwich else None,
        mlp_out="post_feedforward_layernorm" if sandwich and hasattr(layer, "post_feedforward_layernorm") else None,
        norm_offset=_norm_offset(norm_module), attn_scale=scales[0], mlp_scale=scales[1],
    )


def _norm_offset(norm: nn.Module) -> float:
    """1.0 if ``norm`` scales by ``1 + weight`` (Gemma), else 0.0, found by a probe."""
    weight = getattr(norm, "weight", None)
    if isinstance(norm, nn.LayerNorm) or weight is None or weight.dim() != 1:
        return 0.0
    probe = torch.linspace(-1.0, 1.0, weight.shape[0], dtype=torch.float32)
    with torch.no_grad():
        out = norm(probe[None].to(weight.dtype)).float()[0]
        base = probe / probe.pow(2).mean().add(1e-5).sqrt()
        w = weight.detach().float().cpu()
        plain = (out.cpu() - base * w).abs().max()
        offset = (out.cpu() - base * (1 + w)).abs().max()
    return 1.0 if offset < plain else 0.0


def _block_lists(root: nn.Module) -> list[tuple[str, nn.ModuleList, BlockLayout]]:
    found = []
    for path, module in root.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            layout = _block(module[0])
            if layout is not None:
                found.append((path, module, layout))
    return found


def _path_of(root: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for path, module in root.named_modules():
        if module is target:
            return path
    return None


def _width(layers: nn.ModuleList, layout: BlockLayout) -> int | None:
    down = layers[0].get_submodule(layout.mlp_down)
    return getattr(down, "out_features", None)


def discover(hf_model: nn.Module) -> Adapter:
    """Map ``hf_model``'s module tree onto an :class:`Adapter` (raise ``ValueError`` if it cannot).

    Example:
        >>> adapter = discover(hf_model)           # doctest: +SKIP
        >>> HookedMLLM(hf_model, processor, adapter=adapter)   # doctest: +SKIP
    """
    name = type(hf_model).__name__
    problems = []
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    embed = hf_model.get_input_embeddings() if hasattr(hf_model, "get_input_embeddings") else None
    unembed_path, embed_path = _path_of(hf_model, head), _path_of(hf_model, embed)
    if unembed_path is None:
        problems.append("an LM head (get_output_embeddings())")
    if embed_path is None:
        problems.append("a token embedding (get_input_embeddings())")
    lists = _block_lists(hf_model)
    d_model = getattr(head, "in_features", None)
    lm = [entry for entry in lists if _width(entry[1], entry[2]) == d_model]
    if embed_path is not None:  # prefer the list beside the token embedding
        parent = embed_path.rpartition(".")[0]
        lm = sorted(lm, key=lambda entry: entry[0].rpartition(".")[0] != parent)
    if not lm:
        problems.append(f"a ModuleList of decoder blocks of width {d_model} (attention with q/k/v/output "
                        "projections, an MLP, norms)")
    if problems:
        missing = "; no ".join(problems)
        raise ValueError(
            f"Cannot map {name} automatically: found no {missing}. Found block lists: "
            f"{[path for path, _, _ in lists] or 'none'}. Write an adapter for it (see docs/architectures.md)."
        )
    lm_path, _, block = lm[0]
    parent_path = lm_path.rpartition(".")[0]
    parent = hf_model.get_submodule(parent_path) if parent_path else hf_model
    final = _first(parent, _FINAL, f"{parent_path}." if parent_path else "")
    if final is None:
        raise ValueError(f"Cannot map {name} automatically: no final norm ({', '.join(_FINAL)}) beside "
                         f"{lm_path}. Write an adapter for it (see docs/architectures.md).")
    vision = [entry for entry in lists if entry[0] != lm_path and not entry[0].startswith(lm_path)]
    vision_path, vision_block, vision_embed = None, None, None
    if vision:
        vision_path, _, vision_block = vision[0]
        tower = vision_path
        while tower and vision_embed is None:  # walk up from the layers to the tower's embedding
            tower = tower.rpartition(".")[0]
            vision_embed = _first(hf_model.get_submodule(tower) if tower else hf_model, _EMBED,
                                  f"{tower}." if tower else "")
    projector = next((path for path, module in hf_model.named_modules()
                      if path.rpartition(".")[2] in _PROJECTOR), None)
    adapter = Adapter(
        name="discovered", config_classes=(type(hf_model.config).__name__,), lm_layers=lm_path, embed=embed_path,
        final_norm=final, unembed=unembed_path, block=block, vision_layers=vision_path, vision_embed=vision_embed,
        vision_block=vision_block, projector=projector, image_grid=lambda n, cfg: None, hidden_states_normed=True,
        verified=False, notes=f"discovered from the module tree of {name}",
    )
    logger.info("Discovered the layout of %s: lm_layers=%s block=%s final_norm=%s embed=%s unembed=%s "
                "vision_layers=%s vision_block=%s vision_embed=%s projector=%s", name, lm_path, block, final,
                embed_path, unembed_path, vision_path, vision_block, vision_embed, projector)
    adapter.validate(hf_model)
    return adapter
