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
        ln1, ln2: The norms before attention and before the MLP.
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

    Paths ``q``, ``k``, ``v`` may be None where the block has a fused QKV projection;
    the per-head q / k / v hook points are then not offered.
    """

    attn: str = "self_attn"
    mlp: str = "mlp"
    ln1: str = "input_layernorm"
    ln2: str = "post_attention_layernorm"
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


def square_grid(n_tokens: int) -> tuple[int, int] | None:
    """The ``(rows, cols)`` of ``n_tokens`` image tokens laid out as a square, else None.

    Example:
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
        input_split: How :meth:`MultimodalBatch.row` splits each HF input key per row:
            ``"token"`` (``[batch, pos]``), ``"image"`` (dim 0 is one entry per image-token
            run), ``"row"`` (dim 0 is the batch row), ``"patches:<key>"`` (dim 0
            concatenates each image's patches, ``prod(<key>[i])`` of them). Keys not
            listed keep the LLaVA rule.
        nested_images: Whether the processor takes images as one list per prompt (Gemma 3)
            rather than one flat list.
        verified: False for adapters written from a published layout but never run.
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
    input_split: tuple[tuple[str, str], ...] = ()
    nested_images: bool = False
    verified: bool = True
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

    def validate(self, root: torch.nn.Module) -> None:
        """Check that every path of this adapter exists in ``root`` (raise otherwise)."""
        for path in (self.lm_layers, self.embed, self.final_norm, self.unembed):
            self.module(root, path)
        layer0 = f"{self.lm_layers}.0"
        for sub in _block_paths(self.block):
            self.module(root, f"{layer0}.{sub}")
        if self.vision_layers is not None and self.vision_block is not None:
            for sub in _block_paths(self.vision_block):
                self.module(root, f"{self.vision_layers}.0.{sub}")
        for path in (self.vision_embed, self.projector):
            if path is not None:
                self.module(root, path)

    def text_cfg(self, config: Any) -> Any:
        """The language model's sub-config (the config itself for flat configs)."""
        return getattr(config, self.text_config, None) or config

    def vision_cfg(self, config: Any) -> Any | None:
        """The vision tower's sub-config, or None."""
        return getattr(config, self.vision_config, None)


def _block_paths(block: BlockLayout) -> tuple[str, ...]:
    paths = (block.attn, block.mlp, block.ln1, block.ln2, block.q, block.k, block.v, block.o,
             block.mlp_pre, block.mlp_down, block.attn_out, block.mlp_out)
    return tuple(path for path in paths if path is not None)
