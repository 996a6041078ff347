"""The adapter interface: where things live in one family's Hugging Face module tree.

An :class:`Adapter` is declarative data. It names module paths (relative to the
``*ForConditionalGeneration`` model) for the language model's decoder layers, their
attention / MLP / norms, the embedding, the final norm and the unembedding, the vision
tower's layers and the projector, and says how image tokens sit in the sequence.
Everything generic (hook-point naming in :mod:`hooked_mllm.hook_points`, running in
:mod:`hooked_mllm.model`, caching in :mod:`hooked_mllm.cache`) reads an adapter and knows
nothing of families. One file per family lives beside this one and registers itself in
:mod:`hooked_mllm.architectures`.

Contents: :class:`BlockLayout` (one transformer block), :class:`Adapter`,
:func:`square_grid` (the grid rule for towers whose image tokens form a square).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

NormKind = Literal["rms", "layer"]


@dataclass(frozen=True)
class BlockLayout:
    """Paths inside one transformer block, relative to the block module.

    A pre-norm block computes ``mid = pre + attn(ln1(pre))`` and
    ``post = mid + mlp(ln2(mid))``; these paths say which submodule is which.

    Attributes:
        attn: The attention module; its output is ``(attn_out, weights, ...)``.
        mlp: The MLP module; its output is ``mlp_out``.
        ln1, ln2: The norms before attention and before the MLP. ``ln2=None``: a parallel block
            (Cohere, GPT-J style), ``post = pre + attn(ln1(pre)) + mlp(ln1(pre))``; then
            ``hook_resid_mid`` is ``pre + attn_out`` (the MLP does not read it) and there is no
            ``ln2.hook_normalized``.
        q, k, v: Query / key / value projections (outputs split into heads).
        o: Attention output projection; its input is ``z`` (heads concatenated).
        mlp_pre: The MLP's first projection (the gate for gated MLPs).
        mlp_down: The MLP's last projection; its input is ``mlp.hook_post``.
        norm: ``"rms"`` or ``"layer"`` (how ``apply_ln_to_stack`` scales).
        attn_index: Element of the attention module's output tuple holding ``attn_out``
            (None: the output is a tensor, as in Qwen2-VL's vision attention).
        pattern_index: Element holding the attention weights (None: no pattern is
            exposed, e.g. fused-kernel towers; then no ``attn.hook_pattern``).
        attn_out: For post-norm ("sandwich") blocks such as Gemma 2/3: the module whose
            output is what is added to the residual after attention (the post-attention
            norm), so ``resid_pre + attn_out == resid_mid`` still holds. None: the
            attention output itself.
        mlp_out: Likewise for the MLP (Gemma's post-feedforward norm). None: ``mlp``.
        norm_offset: Added to a norm's weight when scaling (1.0 for Gemma's
            ``x * (1 + weight)`` RMSNorm).
        attn_scale: For "layer scale" blocks (InternViT, CaiT-style): the name of the block's
            parameter that multiplies the attention output before it is added to the
            residual (``mid = pre + attn_scale * attn(ln1(pre))``); ``hook_attn_out`` is then
            the scaled value, so the residual identities hold. None: no such scale.
        mlp_scale: Likewise for the MLP output.

    Paths ``q``, ``k``, ``v`` may be None where the block has a fused QKV projection;
    the per-head q / k / v hook points are then not offered.
    """

    attn: str = "self_attn"
    mlp: str = "mlp"
    ln1: str = "input_layernorm"
    ln2: str | None = "post_attention_layernorm"
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    mlp_pre: str = "mlp.gate_proj"
    mlp_down: str = "mlp.down_proj"
    norm: NormKind = "rms"
    attn_index: int | None = 0
    pattern_index: int | None = 1
    attn_out: str | None = None
    mlp_out: str | None = None
    norm_offset: float = 0.0
    attn_scale: str | None = None
    mlp_scale: str | None = None


ImageViews = tuple[int, list[tuple[tuple[int, ...], tuple[int, int]]]]
"""One image's token count and its views ``[(offsets in the image's run, (rows, cols)), ...]``."""


def square_grid(n_tokens: int) -> tuple[int, int] | None:
    """The ``(rows, cols)`` of ``n_tokens`` image tokens laid out as a square, else None.

    Examples:
        >>> square_grid(576)
        (24, 24)
    """
    side = math.isqrt(n_tokens)
    return (side, side) if side * side == n_tokens else None


@dataclass(frozen=True)
class Adapter:
    """Where one family keeps its parts, as module paths from the HF model root.

    Attributes:
        name: Short family name (``"llava"``).
        config_classes: Names of the HF config classes this adapter serves.
        lm_layers: The language model's decoder ``ModuleList``.
        embed: The token embedding (``hook_embed``).
        final_norm: The final norm (``ln_final.hook_normalized``).
        unembed: The unembedding / LM head (``hook_logits``).
        block: Paths inside one decoder layer.
        vision_layers: The vision tower's layer ``ModuleList`` (None: no tower).
        vision_embed: The vision embedding module (``vision.hook_embed``).
        vision_block: Paths inside one vision layer.
        projector: The module mapping image features into the LM space.
        text_config: Attribute of the HF config holding the LM config.
        vision_config: Attribute of the HF config holding the vision config.
        image_token_attr: Attribute of the HF config holding the image token id.
        image_grid: Maps the number of tokens of one image (and the HF config) to its
            ``(rows, cols)`` grid, or None where the tokens form no grid.
        hidden_states_normed: Whether HF's ``hidden_states[-1]`` is already after the
            final norm (then ``resid_post`` of the last layer is not it).
        image_grids: Optional rule computing every image's grid from the HF inputs
            (``inputs, config -> [grid per image-token run, in order]``), for families
            whose processor reports the geometry (Qwen2-VL's ``image_grid_thw``).
            Overrides ``image_grid`` when given.
        image_views: Optional rule for families whose one run of image tokens per image holds
            several views (LLaVA-NeXT's base tile, then its stitched high-resolution tiles with a
            newline token per row): ``inputs, config -> [(n_tokens, [(offsets, (rows, cols)), ...])
            per image]`` or None where the geometry cannot be computed. Each image's run must
            hold exactly ``n_tokens`` tokens; it then becomes one span per view, listing the
            positions ``run start + offsets`` (row-major, separators excluded) with that grid.
            Where the runs do not match, every run stays one span without a grid (with a warning).
        input_split: How :meth:`MultimodalBatch.row` splits each HF input key per row:
            ``"token"`` (``[batch, pos]``), ``"image"`` (dim 0 is one entry per image-token
            run), ``"row"`` (dim 0 is the batch row), ``"patches:<key>"`` (dim 0
            concatenates each image's patches, ``prod(<key>[i])`` of them), ``"tiles"`` (dim 0
            concatenates each image's tiles, every tile giving the same number of image
            tokens, so image ``i`` has a share proportional to its tokens), or a callable
            ``(batch, rows) -> tensor`` giving the key's tensor for the listed rows of the
            batch, in order, repeats allowed (for tensors that index into others, as
            Molmo2's pooling indices; :meth:`MultimodalBatch.repeat` uses it too). Keys not
            listed keep the LLaVA rule.
        nested_images: Whether the processor takes images as one list per prompt (Gemma 3)
            rather than one flat list.
        specialize: Optional rule ``(adapter, hf_config) -> adapter`` for families whose
            layout depends on the config (PaliGemma's Gemma 1 or Gemma 2 text backbone);
            :func:`hooked_mllm.architectures.adapter_for` applies it (:meth:`for_config`).
        variants: The other adapters ``specialize`` can return, each with its own name
            (LLaVA's Pixtral-tower layout, :data:`~.llava.LLAVA_PIXTRAL`): the supported-models
            table lists each in a row of its own, after this one. ``dataclasses.replace`` copies
            it with ``specialize``: clear both when deriving another family from an adapter.
        image_row_break: The token (a string) that ends each row of one image's tokens in
            the sequence (Pixtral's ``"[IMG_BREAK]"``, Molmo2's ``"<im_col>"``): runs of image
            tokens separated by exactly one such token are one image, whose span lists its
            image tokens' positions (separators excluded) and whose grid is
            ``(runs, run length)``, checked against ``image_grids`` where given (a span that is
            a single run takes the grid ``image_grids`` gives it).
        images_in_sequence: False for cross-attention models (Mllama), whose LM sequence
            holds one placeholder token per image and no image features: the placeholder
            is then marked special and image selectors raise a clear error.
        cross_block: Paths inside the LM's cross-attention layers (Mllama), which replace
            self-attention by attention to the vision states in the layers listed by
            ``cross_layers_attr``; their hook points are named ``cross_attn.*`` and
            ``hook_cross_attn_out`` (:mod:`hooked_mllm.hook_points`).
        cross_layers_attr: Attribute of the text config listing the cross-attention layers.
        cross_gates: Names of the cross-attention layer's attention and MLP gate
            parameters: the residual receives ``tanh(gate) * output`` (documentation and
            the conformance suite's residual identities).
        vision_feature_layer_attr: Attribute of the HF config naming the vision layer(s) whose hidden
            state the projector reads (LLaVA's ``vision_feature_layer``: an index into the tower's
            ``hidden_states``, ``-2`` for LLaVA-1.5, or a list of them). Vision layers after the last
            one read never reach the output, so their hook points are read-only (a write there would
            be a silent no-op). None: the projector reads the tower's last output.
        vision_layers_read_rule: For models whose config does not say which vision layers the
            projector reads (remote code that fixes them in the model): ``(hf_model, n_vision_layers)
            -> how many vision layers, from the first, reach the projector``.
        verified: False for adapters written from a published layout but never run in the suite.
        checked_by: A script that checks an unverified adapter outside the suite (remote code the
            suite cannot hold), shown in the supported-models table.
        test_model: Which tiny model the conformance suite builds (for the table).
        notes: Free text shown in the supported-models table.
    """

    name: str
    config_classes: tuple[str, ...]
    lm_layers: str
    embed: str
    final_norm: str
    unembed: str
    block: BlockLayout = field(default_factory=BlockLayout)
    vision_layers: str | None = None
    vision_embed: str | None = None
    vision_block: BlockLayout | None = None
    projector: str | None = None
    text_config: str = "text_config"
    vision_config: str = "vision_config"
    image_token_attr: str = "image_token_id"
    image_grid: Callable[[int, Any], tuple[int, int] | None] = lambda n, cfg: square_grid(n)
    hidden_states_normed: bool = False
    image_grids: Callable[[dict, Any], list[tuple[int, int] | None]] | None = None
    image_views: Callable[[dict, Any], list[ImageViews] | None] | None = None
    input_split: tuple[tuple[str, str | Callable[[Any, list[int]], torch.Tensor]], ...] = ()
    nested_images: bool = False
    specialize: Callable[[Adapter, Any], Adapter] | None = None
    variants: tuple[Adapter, ...] = ()
    image_row_break: str | None = None
    images_in_sequence: bool = True
    cross_block: BlockLayout | None = None
    cross_layers_attr: str | None = None
    cross_gates: tuple[str, str] | None = None
    vision_feature_layer_attr: str | None = "vision_feature_layer"
    vision_layers_read_rule: Callable[[Any, int], int] | None = None
    verified: bool = True
    checked_by: str = ""
    test_model: str = ""
    notes: str = ""

    def module(self, root: torch.nn.Module, path: str) -> torch.nn.Module:
        """The submodule of ``root`` at dotted ``path``, with a clear error if absent."""
        try:
            return root.get_submodule(path)
        except AttributeError as error:
            raise ValueError(
                f"The {self.name!r} adapter expects a module at {path!r} in "
                f"{type(root).__name__}, but there is none ({error}). The checkpoint's "
                "module tree does not match this adapter; see docs/architectures.md."
            ) from None

    def for_config(self, config: Any) -> Adapter:
        """This adapter as it applies to a model with HF config ``config`` (see ``specialize``).

        Examples:
            >>> PALIGEMMA.for_config(hf_model.config).name     # doctest: +SKIP
            'paligemma2'
        """
        return self if self.specialize is None else self.specialize(self, config)

    def validate(self, root: torch.nn.Module) -> None:
        """Check that every path of this adapter exists in ``root`` (raise otherwise)."""
        for path in (self.lm_layers, self.embed, self.final_norm, self.unembed):
            self.module(root, path)
        layer0 = f"{self.lm_layers}.0"
        blocks = [(layer0, self.block)]
        n_layers = len(self.module(root, self.lm_layers))
        cross = self.cross_layers(root.config, n_layers) if self.cross_block is not None else frozenset()
        if cross:  # layers alternate between two layouts: check the first of each
            first_self = next((i for i in range(n_layers) if i not in cross), None)
            blocks = [(f"{self.lm_layers}.{min(cross)}", self.cross_block)]
            if first_self is not None:
                blocks.append((f"{self.lm_layers}.{first_self}", self.block))
        if self.vision_layers is not None and self.vision_block is not None:
            blocks.append((f"{self.vision_layers}.0", self.vision_block))
        for prefix, block in blocks:
            for sub in _block_paths(block):
                self.module(root, f"{prefix}.{sub}")
            for scale in (block.attn_scale, block.mlp_scale):
                if scale is not None and not isinstance(getattr(self.module(root, prefix), scale, None),
                                                        torch.nn.Parameter):
                    raise ValueError(f"The {self.name!r} adapter expects a layer-scale parameter {scale!r} in "
                                     f"{prefix}, but there is none; see docs/architectures.md.")
        for path in (self.vision_embed, self.projector):
            if path is not None:
                self.module(root, path)

    def text_cfg(self, config: Any) -> Any:
        """The language model's sub-config (the config itself for flat configs)."""
        return getattr(config, self.text_config, None) or config

    def cross_layers(self, config: Any, n_layers: int | None = None) -> frozenset[int]:
        """The indices of the LM's cross-attention layers (empty for most families).

        Only layers the model has count: a config listing layers past ``n_layers`` (default:
        the text config's ``num_hidden_layers``), as a truncated or tiny model's may, is
        read as HF builds it (``layer_idx in cross_attention_layers`` for each layer that exists).
        """
        if self.cross_layers_attr is None:
            return frozenset()
        if n_layers is None:
            n_layers = getattr(self.text_cfg(config), "num_hidden_layers", None)
        listed = (int(i) for i in getattr(self.text_cfg(config), self.cross_layers_attr, None) or ())
        return frozenset(i for i in listed if n_layers is None or 0 <= i < n_layers)

    def vision_layers_read(self, config: Any, n_vision_layers: int, model: Any = None) -> int:
        """How many vision layers (from the first) reach the projector: layers at or after it do not.

        ``model`` (the HF model) is needed by adapters with a ``vision_layers_read_rule``.

        Examples:
            >>> LLAVA.vision_layers_read(hf_model.config, 24)   # vision_feature_layer=-2   # doctest: +SKIP
            23
        """
        if self.vision_layers_read_rule is not None and model is not None:
            return self.vision_layers_read_rule(model, n_vision_layers)
        value = getattr(config, self.vision_feature_layer_attr, None) if self.vision_feature_layer_attr else None
        if value is None:
            return n_vision_layers
        indices = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        # hidden_states[k] is the output of layer k - 1 (index 0: the embeddings), n_vision_layers + 1 entries
        return max(min(n_vision_layers, k if k >= 0 else n_vision_layers + 1 + k) for k in indices)

    def vision_cfg(self, config: Any) -> Any | None:
        """The vision tower's sub-config, or None."""
        return getattr(config, self.vision_config, None)


def _block_paths(block: BlockLayout) -> tuple[str, ...]:
    paths = (block.attn, block.mlp, block.ln1, block.ln2, block.q, block.k, block.v, block.o,
             block.mlp_pre, block.mlp_down, block.attn_out, block.mlp_out)
    return tuple(path for path in paths if path is not None)
