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

Examples:
    >>> from hooked_mllm.architectures.discover import discover
    >>> discover(hf_model).modules.lm_layers        # doctest: +SKIP
    'model.language_model.layers'
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from .base import Adapter, BlockLayout, Metadata, ModuleLayout, TokenLayout, no_grid

logger = logging.getLogger(__name__)

_ATTN = ("self_attn", "attn", "attention", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn")
_Q, _K, _V = ("q_proj", "query", "wq"), ("k_proj", "key", "wk"), ("v_proj", "value", "wv")
_O = ("o_proj", "out_proj", "proj", "dense", "wo", "projection_layer")
_LN1 = ("input_layernorm", "layer_norm1", "norm1", "ln_1", "attention_norm", "ln1", "layernorm_before")
_LN2 = (
    "pre_feedforward_layernorm",
    "post_attention_layernorm",
    "layer_norm2",
    "norm2",
    "ln_2",
    "ffn_norm",
    "ln2",
    "layernorm_after",
)
_MLP_PRE = ("gate_proj", "gate_up_proj", "fc1", "up_proj", "w1", "c_fc", "linear_fc1", "dense_h_to_4h")
_MLP_DOWN = ("down_proj", "fc2", "w2", "c_proj", "linear_fc2", "dense_4h_to_h")
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
    """The layout of one transformer block from its children, or None if ``layer`` is not one.

    A block with one norm (attention and MLP run in parallel off it, as Cohere's) gets
    ``ln2=None``; sandwich norms and layer scales under other names are found by
    :func:`_refine` from a probe run.
    """
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
    norm_module = layer.get_submodule(ln1)
    scales = next(
        (
            pair
            for pair in _LAYER_SCALES
            if all(isinstance(getattr(layer, name, None), nn.Parameter) for name in pair)
        ),
        (None, None),
    )
    qkv = [_first(attn_mod, names, f"{attn}.") for names in (_Q, _K, _V)]
    fused = None in qkv
    return BlockLayout(
        attn=attn,
        mlp=mlp,
        ln1=ln1,
        ln2=ln2,
        q=qkv[0],
        k=qkv[1],
        v=qkv[2],
        o=o,
        mlp_pre=pre,
        mlp_down=down,
        norm="layer" if isinstance(norm_module, nn.LayerNorm) else "rms",
        attn_index=None if fused else 0,
        pattern_index=None if fused else 1,
        attn_out="post_attention_layernorm" if sandwich else None,
        mlp_out="post_feedforward_layernorm"
        if sandwich and hasattr(layer, "post_feedforward_layernorm")
        else None,
        norm_offset=_norm_offset(norm_module),
        attn_scale=scales[0],
        mlp_scale=scales[1],
    )


def _unrecognised(layer: nn.Module) -> str:
    """What :func:`_block` could not find in ``layer`` (for the refusal message)."""
    children = ", ".join(f"{n} ({type(m).__name__})" for n, m in layer.named_children()) or "none"
    attn, mlp = _first(layer, _ATTN), _first(layer, _MLP)
    if attn is None:
        return f"no attention sub-module (looked for {', '.join(_ATTN)}) among its children: {children}"
    if mlp is None:
        return f"no MLP sub-module (looked for {', '.join(_MLP)}) among its children: {children}"
    if _first(layer, _LN1) is None:
        return f"no input norm (looked for {', '.join(_LN1)}) among its children: {children}"
    attn_mod, mlp_mod = layer.get_submodule(attn), layer.get_submodule(mlp)
    if _first(attn_mod, _O) is None:
        names = ", ".join(n for n, _ in attn_mod.named_children())
        return (
            f"no output projection in {attn} ({type(attn_mod).__name__}: {names}; looked for {', '.join(_O)})"
        )
    names = ", ".join(n for n, _ in mlp_mod.named_children())
    return (
        f"no input/output projections in {mlp} ({type(mlp_mod).__name__}: {names}; looked for "
        f"{', '.join(_MLP_PRE)} / {', '.join(_MLP_DOWN)})"
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


def _block_lists(root: nn.Module) -> tuple[list[tuple[str, nn.ModuleList, BlockLayout]], list[str]]:
    """The ModuleLists whose first element is a recognised block, and why each other list of
    transformer-like layers (one with an attention child) was not recognised."""
    found, refused = [], []
    for path, module in root.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            layout = _block(module[0])
            if layout is not None:
                found.append((path, module, layout))
            elif any(isinstance(getattr(module[0], name, None), nn.Module) for name in _ATTN + _MLP):
                refused.append(f"{path}.0 ({type(module[0]).__name__}): {_unrecognised(module[0])}")
    return found, refused


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


def discover(hf_model: nn.Module, verify: bool = True) -> Adapter:
    """Map ``hf_model``'s module tree onto an :class:`Adapter` (raise ``ValueError`` if it cannot).

    With ``verify`` (default), one probe forward on a short text-only input corrects the LM
    block layout by what each part reads (:func:`_refine`: sandwich norms, parallel blocks,
    layer scales under any name) and checks the residual identities
    (:func:`verify_adapter`); a layout that fails is refused, naming the identity, the layer
    and by how much. The vision tower's layout is mapped from its children's names and is
    not run by the text-only probe: pass a batch with images to :func:`verify_adapter` to
    check it too.

    Examples:
        >>> adapter = discover(hf_model)           # doctest: +SKIP
        >>> HookedMLLM(hf_model, processor, adapter=adapter)   # doctest: +SKIP
    """
    name = type(hf_model).__name__
    problems = []
    get_head = getattr(hf_model, "get_output_embeddings", None)  # a plain nn.Module has neither
    get_embed = getattr(hf_model, "get_input_embeddings", None)
    head = get_head() if get_head is not None else None
    embed = get_embed() if get_embed is not None else None
    unembed_path, embed_path = _path_of(hf_model, head), _path_of(hf_model, embed)
    if unembed_path is None:
        problems.append("LM head (get_output_embeddings())")
    if embed_path is None:
        problems.append("token embedding (get_input_embeddings())")
    lists, refused = _block_lists(hf_model)
    d_model = getattr(head, "in_features", None)
    lm = [entry for entry in lists if _width(entry[1], entry[2]) == d_model]
    if embed_path is not None:  # prefer the list beside the token embedding
        embed_parent = embed_path.rpartition(".")[0]
        lm = sorted(lm, key=lambda entry: entry[0].rpartition(".")[0] != embed_parent)
    if not lm:
        problems.append(
            f"ModuleList of decoder blocks of width {d_model} (attention with an output "
            "projection, an MLP, norms)"
        )
    if problems:
        missing = "; no ".join(problems)
        why = f" Layers not recognised: {'; '.join(refused)}." if refused else ""
        raise ValueError(
            f"Cannot map {name} automatically: found no {missing}. Found block lists: "
            f"{[path for path, _, _ in lists] or 'none'}.{why} Write an adapter for it (see "
            "docs/architectures.md)."
        )
    assert unembed_path is not None and embed_path is not None  # else a problem, raised above
    lm_path, _, block = lm[0]
    parent_path = lm_path.rpartition(".")[0]
    parent = hf_model.get_submodule(parent_path) if parent_path else hf_model
    final = _first(parent, _FINAL, f"{parent_path}." if parent_path else "")
    if final is None:
        raise ValueError(
            f"Cannot map {name} automatically: no final norm ({', '.join(_FINAL)}) beside "
            f"{lm_path}. Write an adapter for it (see docs/architectures.md)."
        )
    vision = [entry for entry in lists if entry[0] != lm_path and not entry[0].startswith(lm_path)]
    vision_path, vision_block, vision_embed = None, None, None
    if vision:
        vision_path, _, vision_block = vision[0]
        tower = vision_path
        while tower and vision_embed is None:  # walk up from the layers to the tower's embedding
            tower = tower.rpartition(".")[0]
            vision_embed = _first(
                hf_model.get_submodule(tower) if tower else hf_model, _EMBED, f"{tower}." if tower else ""
            )
    projector = next(
        (path for path, module in hf_model.named_modules() if path.rpartition(".")[2] in _PROJECTOR), None
    )
    adapter = Adapter(
        name="discovered",
        config_classes=(type(hf_model.config).__name__,),
        modules=ModuleLayout(
            lm_layers=lm_path,
            embed=embed_path,
            final_norm=final,
            unembed=unembed_path,
            block=block,
            vision_layers=vision_path,
            vision_embed=vision_embed,
            vision_block=vision_block,
            projector=projector,
            hidden_states_normed=True,
        ),
        tokens=TokenLayout(grid=no_grid),
        about=Metadata(verified=False, notes=f"discovered from the module tree of {name}"),
    )
    adapter.validate(hf_model)
    if verify:
        adapter = replace(adapter, modules=replace(adapter.modules, block=_refine(hf_model, adapter)))
        adapter = verify_adapter(hf_model, adapter)
    logger.info(
        "Discovered the layout of %s: lm_layers=%s block=%s final_norm=%s embed=%s unembed=%s "
        "vision_layers=%s vision_block=%s vision_embed=%s projector=%s",
        name,
        lm_path,
        adapter.modules.block,
        final,
        embed_path,
        unembed_path,
        vision_path,
        vision_block,
        vision_embed,
        projector,
    )
    return adapter


# -- the probe run: what each LM block's parts read and wrote ------------------------------


def _first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, Tensor) and value.is_floating_point():
            return value
    return None


def _out(value: Any, index: int | None = 0) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and index is not None:
        return value[index] if isinstance(value[index], Tensor) else None
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    return None


def _probe_inputs(hf_model: nn.Module) -> dict[str, Tensor]:
    """A short text-only batch avoiding every special token id the config names."""
    config = hf_model.config
    taken: set[int] = set()
    for cfg in (config, getattr(config, "text_config", None)):
        for key, value in vars(cfg).items() if cfg is not None else ():
            if "token" in key and isinstance(value, int):
                taken.add(value)
            elif "token" in key and isinstance(value, (list, tuple)):
                taken.update(v for v in value if isinstance(v, int))
    vocab = hf_model.get_input_embeddings().weight.shape[0]  # type: ignore[operator]  # nn.Module attribute
    ids = [i for i in range(vocab) if i not in taken][3:11]
    device = next(hf_model.parameters()).device
    ids_t = torch.tensor([ids], device=device)
    return {"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t)}


def _record(
    hf_model: nn.Module, lists: dict[str, int], inputs: dict
) -> tuple[dict[str, list[dict[str, tuple]]], Any]:
    """Run ``inputs`` with torch hooks on every block of each list (path -> length) and its direct children.

    Returns, per list and block, ``{"": (input, output), child: (input, raw output), ...}``, and the HF
    output.
    """
    records: dict[str, list[dict[str, tuple]]] = {
        prefix: [{} for _ in range(n)] for prefix, n in lists.items()
    }
    handles = []
    for prefix, n_layers in lists.items():
        for layer in range(n_layers):
            block = hf_model.get_submodule(f"{prefix}.{layer}")
            for name, module in [("", block), *block.named_children()]:

                def hook(
                    mod: nn.Module,
                    args: tuple,
                    kwargs: dict,
                    output: Any,
                    name: str = name,
                    rec: dict = records[prefix][layer],
                ) -> None:
                    rec.setdefault(name, (_first_tensor(args, kwargs), output))

                handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            output = hf_model(**inputs, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return records, output


def _close(a: Tensor | None, b: Tensor | None) -> tuple[bool, float, float]:
    """Whether ``a`` equals ``b`` up to float error, the largest difference, and ``b``'s scale."""
    if a is None or b is None or a.shape != b.shape:
        return False, float("inf"), 0.0
    a, b = a.detach(), b.detach()
    diff = float((a.float() - b.float()).abs().max())
    scale = float(b.float().abs().max())
    return diff <= 1e-4 + 1e-3 * scale, diff, scale


def _refine(hf_model: nn.Module, adapter: Adapter) -> BlockLayout:
    """The LM block layout corrected by what a probe run shows, whatever the parts are called.

    A norm that reads the attention output (or the MLP output) is a sandwich norm: it becomes
    ``attn_out`` (``mlp_out``). The norm whose output the MLP reads is ``ln2``; if the MLP reads
    ``ln1``'s output the block is parallel (``ln2=None``). Direct parameters of the block shaped
    ``[d_model]`` are layer scales when the residual only adds up with them.
    """
    block = adapter.modules.block
    records, _ = _record(hf_model, {adapter.modules.lm_layers: 1}, _probe_inputs(hf_model))
    rec = records[adapter.modules.lm_layers][0]
    layer = hf_model.get_submodule(f"{adapter.modules.lm_layers}.0")
    attn_raw = _out(rec[block.attn][1], block.attn_index) if block.attn in rec else None
    mlp_raw = _out(rec[block.mlp][1]) if block.mlp in rec else None
    mlp_in = rec[block.mlp][0] if block.mlp in rec else None
    norms = [
        n
        for n, m in layer.named_children()
        if n in rec and n not in (block.attn, block.mlp) and "norm" in (type(m).__name__ + n).lower()
    ]
    changes: dict[str, Any] = {}
    for n in norms:
        if n == block.ln1:
            continue
        inp, out = rec[n][0], _out(rec[n][1])
        if _close(inp, attn_raw)[0]:
            changes["attn_out"] = n
        elif _close(inp, mlp_raw)[0]:
            changes["mlp_out"] = n
        elif _close(out, mlp_in)[0]:
            changes["ln2"] = n
    if "ln2" not in changes and block.ln1 in rec and _close(_out(rec[block.ln1][1]), mlp_in)[0]:
        changes["ln2"] = None  # parallel attention and MLP off one norm
    d_model = hf_model.get_output_embeddings().in_features  # type: ignore[operator]  # nn.Module attribute
    own = sorted(
        n for n, p in layer.named_parameters(recurse=False) if p.dim() == 1 and p.shape[0] == d_model
    )
    if len(own) == 2 and block.attn_scale is None:
        changes.update(attn_scale=own[0], mlp_scale=own[1])
    return replace(block, **changes)


def verify_adapter(hf_model: nn.Module, adapter: Adapter, inputs: dict | None = None) -> Adapter:
    """Check an adapter's mapping on a probe run; return it (``hidden_states_normed`` set) or raise.

    The identities of the residual stream must hold at every block, computed from the modules
    the adapter names (torch hooks, not hook points): ``ln1`` output = the attention's input;
    ``resid_pre + attn_out`` = the input of ``ln2`` (``resid_mid``); ``ln2`` output (``ln1``'s in
    a parallel block) = the MLP's input; ``resid_mid + mlp_out = resid_post``;
    ``resid_post(l) = resid_pre(l + 1)``; and for the LM ``resid_post(l)`` = HF's
    ``hidden_states[l + 1]``, the last one before or after the final norm (which sets
    ``hidden_states_normed``). The vision tower's blocks are checked too when ``inputs`` hold
    images (the default probe is text-only: then they are not).

    Args:
        hf_model: The HF model.
        adapter: The layout to check (auto-discovered or hand-written).
        inputs: HF inputs to run (default: a short text-only probe).

    Raises:
        ValueError: Naming the identity that failed, the stream, the layer and by how much.

    Examples:
        >>> verify_adapter(hf_model, discover(hf_model, verify=False), batch.inputs)   # doctest: +SKIP
    """
    modules = adapter.modules
    n_layers = len(cast(nn.ModuleList, hf_model.get_submodule(modules.lm_layers)))
    lists = {modules.lm_layers: n_layers}
    if inputs is not None and modules.vision_layers is not None and modules.vision_block is not None:
        lists[modules.vision_layers] = len(cast(nn.ModuleList, hf_model.get_submodule(modules.vision_layers)))
    records, output = _record(hf_model, lists, inputs or _probe_inputs(hf_model))
    hidden = output.hidden_states if getattr(output, "hidden_states", None) is not None else None
    post = _check_blocks(
        hf_model, adapter, modules.lm_layers, modules.block, records[modules.lm_layers], hidden
    )
    if modules.vision_layers in records and len(lists) > 1:
        _check_blocks(
            hf_model,
            adapter,
            modules.vision_layers,
            modules.vision_block,  # type: ignore[arg-type]
            records[modules.vision_layers],
            None,
        )
    normed = modules.hidden_states_normed
    if hidden is not None:
        with torch.no_grad():
            final = hf_model.get_submodule(modules.final_norm)(post)
        if _close(final, hidden[-1])[0]:
            normed = True
        elif _close(post, hidden[-1])[0]:
            normed = False
        else:
            _fail(
                hf_model,
                adapter,
                modules.block,
                "resid_post(last) = HF hidden_states[-1] (before or after the final norm)",
                "LM",
                n_layers - 1,
                *_close(final, hidden[-1])[1:],
            )
    return replace(adapter, modules=replace(adapter.modules, hidden_states_normed=normed))


def _fail(
    hf_model: nn.Module,
    adapter: Adapter,
    block: BlockLayout,
    identity: str,
    stream: str,
    layer: int,
    diff: float,
    scale: float,
) -> None:
    raise ValueError(
        f"The {adapter.name!r} layout of {type(hf_model).__name__} failed its self-check: {identity} does "
        f"not hold at {stream} layer {layer} (off by {diff:.3g}; values up to {scale:.3g}). The mapping "
        f"({block}) would name the wrong values; write an adapter for this model (see docs/architectures.md)."
    )


def _check_blocks(
    hf_model: nn.Module,
    adapter: Adapter,
    prefix: str,
    block: BlockLayout,
    records: list[dict[str, tuple]],
    hidden: Any,
) -> Tensor | None:
    """The residual identities of every block of the list at ``prefix`` (see :func:`verify_adapter`);
    returns the last block's output."""
    stream = "LM" if prefix == adapter.modules.lm_layers else "vision"

    def scaled(value: Tensor | None, scale: str | None, layer: int) -> Tensor | None:
        if value is None or scale is None:
            return value
        return value * hf_model.get_submodule(f"{prefix}.{layer}").get_parameter(scale)

    post_prev = None
    for layer, rec in enumerate(records):
        if "" not in rec:
            raise ValueError(
                f"The {adapter.name!r} layout of {type(hf_model).__name__} failed its self-check: "
                f"{stream} layer {layer} ({prefix}.{layer}) did not run on the probe."
            )
        pre, post = rec[""][0], _out(rec[""][1])
        attn_out = (
            _out(rec[block.attn_out][1]) if block.attn_out else _out(rec[block.attn][1], block.attn_index)
        )
        mlp_out = _out(rec[block.mlp_out][1]) if block.mlp_out else _out(rec[block.mlp][1])
        attn_out, mlp_out = scaled(attn_out, block.attn_scale, layer), scaled(mlp_out, block.mlp_scale, layer)
        checks = [("ln1 output = the attention's input", _out(rec[block.ln1][1]), rec[block.attn][0])]
        mid = pre + attn_out if pre is not None and attn_out is not None else None
        if block.ln2 is not None:
            checks.append(("resid_pre + attn_out = resid_mid (the input of ln2)", mid, rec[block.ln2][0]))
            checks.append(("ln2 output = the MLP's input", _out(rec[block.ln2][1]), rec[block.mlp][0]))
        else:
            checks.append(
                ("ln1 output = the MLP's input (parallel block)", _out(rec[block.ln1][1]), rec[block.mlp][0])
            )
        checks.append(
            (
                "resid_mid + mlp_out = resid_post",
                None if mid is None or mlp_out is None else mid + mlp_out,
                post,
            )
        )
        if post_prev is not None:
            checks.append(("resid_post(l - 1) = resid_pre(l)", post_prev, pre))
        if hidden is not None and layer + 1 < len(records):
            checks.append(("resid_post = HF hidden_states[l + 1]", post, hidden[layer + 1]))
        for identity, got, want in checks:
            ok, diff, scale = _close(got, want)
            if not ok:
                _fail(hf_model, adapter, block, identity, stream, layer, diff, scale)
        post_prev = post
    return post_prev
