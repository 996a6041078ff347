"""The adapter interface: where things live in one family's Hugging Face module tree.

An :class:`Adapter` is declarative data, built by keyword from small frozen groups:
:class:`ModuleLayout` (module paths, relative to the ``*ForConditionalGeneration`` model, of
the language model's decoder layers, their attention / MLP / norms (a :class:`BlockLayout`),
the embedding, the final norm and the unembedding, the vision tower's layers and the
projector, and any :class:`CrossAttention` layers), :class:`ConfigKeys` (which HF config
attributes to read), :class:`TokenLayout` (how image tokens sit in the sequence: grids,
views, row separators), :class:`InputLayout` (how the processor takes images and how HF
inputs split by row, with the typed rules of :mod:`.split`) and :class:`Metadata` (what the
supported-models table says). Everything generic (hook-point naming in
:mod:`hooked_mllm.hook_points`, running in :mod:`hooked_mllm.model`, caching in
:mod:`hooked_mllm.cache`) reads an adapter and knows nothing of families. One file per
family lives beside this one and registers itself in :mod:`hooked_mllm.architectures`
(docs/architectures.md, "Adding a family").

Contents: :class:`BlockLayout` (one transformer block), the groups above, :class:`Adapter`,
:func:`square_grid` and the grid rules :func:`square_tokens` / :func:`no_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, no_type_check

import torch

from .split import SplitRule, check_rules

NormKind = Literal["rms", "layer"]


@dataclass(frozen=True, kw_only=True)
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


def square_tokens(n_tokens: int, config: Any) -> tuple[int, int] | None:
    """Grid rule: the tokens of one image form a square (:func:`square_grid`), else no grid."""
    return square_grid(n_tokens)


def no_grid(n_tokens: int, config: Any) -> tuple[int, int] | None:
    """Grid rule: the tokens of one image form no grid (resampled latents, several tiles)."""
    return None


@dataclass(frozen=True, kw_only=True)
class CrossAttention:
    """The LM's gated cross-attention layers (Mllama), which attend to the vision states instead
    of the sequence in the layers the text config lists.

    Attributes:
        block: Paths inside one cross-attention layer; its hook points are named
            ``cross_attn.*`` and ``hook_cross_attn_out`` (:mod:`hooked_mllm.hook_points`).
        layers_attr: Attribute of the text config listing the cross-attention layers.
        gates: Names of the layer's attention and MLP gate parameters: the residual receives
            ``tanh(gate) * output`` (documentation and the conformance suite's residual identities).

    Examples:
        >>> CrossAttention(block=BlockLayout(attn="cross_attn"), layers_attr="cross_attention_layers",
        ...                gates=("attn_gate", "mlp_gate")).layers_attr
        'cross_attention_layers'
    """

    block: BlockLayout
    layers_attr: str
    gates: tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class ModuleLayout:
    """Where the parts live: module paths from the HF model root (``*ForConditionalGeneration``).

    Attributes:
        lm_layers: The language model's decoder ``ModuleList`` (default
            ``model.language_model.layers``, as the next three: transformers' ``*ForConditionalGeneration``).
        embed: The token embedding (``hook_embed``; default ``model.language_model.embed_tokens``).
        final_norm: The final norm (``ln_final.hook_normalized``; default ``model.language_model.norm``).
        unembed: The unembedding / LM head (``hook_logits``; default ``lm_head``).
        block: Paths inside one decoder layer.
        vision_layers: The vision tower's layer ``ModuleList`` (None: no tower).
        vision_embed: The vision embedding module (``vision.hook_embed``).
        vision_block: Paths inside one vision layer (given with ``vision_layers``).
        projector: The module mapping image features into the LM space.
        cross: The LM's cross-attention layers (:class:`CrossAttention`), or None.
        hidden_states_normed: Whether HF's ``hidden_states[-1]`` is already after the final
            norm (then ``resid_post`` of the last layer is not it).
        vision_layers_read_rule: For models whose config does not say which vision layers the
            projector reads (remote code that fixes them in the model): ``(hf_model,
            n_vision_layers) -> how many vision layers, from the first, reach the projector``.

    Examples:
        >>> ModuleLayout(lm_layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
        ...              unembed="lm_head").block.attn
        'self_attn'
    """

    # the language model of transformers' *ForConditionalGeneration classes, which most adapters repeat
    lm_layers: str = "model.language_model.layers"
    embed: str = "model.language_model.embed_tokens"
    final_norm: str = "model.language_model.norm"
    unembed: str = "lm_head"
    block: BlockLayout = field(default_factory=BlockLayout)
    vision_layers: str | None = None
    vision_embed: str | None = None
    vision_block: BlockLayout | None = None
    projector: str | None = None
    cross: CrossAttention | None = None
    hidden_states_normed: bool = False
    vision_layers_read_rule: Callable[[Any, int], int] | None = None

    def __post_init__(self) -> None:
        for name in ("lm_layers", "embed", "final_norm", "unembed"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(
                    f"ModuleLayout.{name} must be a dotted module path such as 'model.norm', "
                    f"not {getattr(self, name)!r}."
                )
        if (self.vision_block is None) != (self.vision_layers is None):
            raise ValueError(
                "ModuleLayout needs vision_layers and vision_block together (the tower's layer list "
                f"and the paths inside one layer); got vision_layers={self.vision_layers!r}, "
                f"vision_block={self.vision_block!r}."
            )


@dataclass(frozen=True, kw_only=True)
class ConfigKeys:
    """Names of the HF config attributes the adapter reads.

    Attributes:
        text_config: Attribute holding the LM config (a flat config is its own).
        vision_config: Attribute holding the vision config.
        image_token_id: Attribute holding the image token id.
        video_token_id: Attribute holding the video token id (read where ``tokens.videos`` is given).
        vision_feature_layer: Attribute naming the vision layer(s) whose hidden state the
            projector reads (LLaVA's ``vision_feature_layer``: an index into the tower's
            ``hidden_states``, ``-2`` for LLaVA-1.5, or a list of them). Vision layers after the
            last one read never reach the output, so their hook points are read-only (a write there
            would be a silent no-op). None: the projector reads the tower's last output.

    Examples:
        >>> ConfigKeys(vision_feature_layer=None).image_token_id
        'image_token_id'
    """

    text_config: str = "text_config"
    vision_config: str = "vision_config"
    image_token_id: str = "image_token_id"
    video_token_id: str = "video_token_id"
    vision_feature_layer: str | None = "vision_feature_layer"


_Class = TypeVar("_Class", bound=type)


def _checked_in_post_init(cls: _Class) -> _Class:
    """Exempt a dataclass's generated ``__init__`` from run-time type checkers (``typing.no_type_check``).

    Its ``__post_init__`` checks the fields itself and refuses a wrong value saying what to write
    (``use Tiles()``, ``write ('LlavaConfig',)``); a checker wrapping ``__init__`` (the test suite's
    jaxtyping + beartype, or a user's) would refuse first with a generic type error. The fields keep
    their exact types for static checkers; the class's other methods stay checked. Put it above
    ``@dataclass``.

    Examples:
        >>> @_checked_in_post_init
        ... @dataclass
        ... class Point:
        ...     x: int
        >>> Point.__init__.__no_type_check__
        True
    """
    no_type_check(vars(cls)["__init__"])
    return cls


@_checked_in_post_init
@dataclass(frozen=True, kw_only=True)
class TokenLayout:
    """How one image's tokens sit in the LM sequence (its spans and grids).

    Attributes:
        grid: Maps the number of tokens of one image (and the HF config, None when the
            supported-models table probes it) to its ``(rows, cols)`` grid, or None where the
            tokens form no grid (:func:`square_tokens`, :func:`no_grid`, or a family's own).
        grids: Optional rule computing every image's grid from the HF inputs (``inputs, config
            -> [grid per image-token run, in order]``), for families whose processor reports the
            geometry (Qwen2-VL's ``image_grid_thw``). Overrides ``grid`` when given.
        views: Optional rule for families whose one run of image tokens per image holds several
            views (LLaVA-NeXT's base tile, then its stitched high-resolution tiles with a newline
            token per row): ``inputs, config -> [(n_tokens, [(offsets, (rows, cols)), ...]) per
            image]`` or None where the geometry cannot be computed. Each image's run must hold
            exactly ``n_tokens`` tokens; it then becomes one span per view, listing the positions
            ``run start + offsets`` (row-major, separators excluded) with that grid. Where the runs
            do not match, every run stays one span without a grid (with a warning).
        row_break: The token (a string) that ends each row of one image's tokens in the sequence
            (Pixtral's ``"[IMG_BREAK]"``, Molmo2's ``"<im_col>"``): runs of image tokens separated
            by exactly one such token are one image, whose span lists its image tokens' positions
            (separators excluded) and whose grid is ``(runs, run length)``, checked against
            ``grids`` where given (a span that is a single run takes the grid ``grids`` gives it).
        in_sequence: False for cross-attention models (Mllama), whose LM sequence holds one
            placeholder token per image and no image features: the placeholder is then marked
            special and image selectors raise a clear error.
        videos: Rule for families whose video inputs this library covers (Qwen2-VL's
            ``video_grid_thw``): ``inputs, config -> [(time, rows, cols, frames_per_step) per
            video, in order]``, each video being ``time`` frames of ``rows x cols`` tokens (after
            the temporal and spatial merges) with ``frames_per_step`` input frames per time step.
            None: ``videos=`` and video inputs are refused, naming the families that take them.
        video_trailing: Tokens at the end of each video's run that belong to no frame
            (LLaVA-OneVision's one ``image_newline`` after the last frame): they stay video
            tokens (``"video"`` selects them) but lie outside the video's span and its frames.

    Examples:
        >>> TokenLayout().grid(576, None), TokenLayout(grid=no_grid).grid(576, None)
        ((24, 24), None)
    """

    grid: Callable[[int, Any], tuple[int, int] | None] = square_tokens
    grids: Callable[[dict, Any], list[tuple[int, int] | None]] | None = None
    views: Callable[[dict, Any], list[ImageViews] | None] | None = None
    row_break: str | None = None
    in_sequence: bool = True
    videos: Callable[[dict, Any], list[tuple[int, int, int, int]]] | None = None
    video_trailing: int = 0

    def __post_init__(self) -> None:
        for name in ("grid", "grids", "views", "videos"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"TokenLayout.{name} must be a function (see its docstring), not {value!r}.")
        if self.row_break is not None and (not isinstance(self.row_break, str) or not self.row_break):
            raise ValueError(
                f"TokenLayout.row_break must be a token string such as '[IMG_BREAK]', not {self.row_break!r}."
            )


@_checked_in_post_init
@dataclass(frozen=True, kw_only=True)
class InputLayout:
    """How the processor takes images and how a batch's HF inputs split by row.

    Attributes:
        split: ``{key: rule}`` (or ``(key, rule)`` pairs; stored as pairs): how
            :meth:`MultimodalBatch.row <hooked_mllm.inputs.MultimodalBatch.row>` splits each HF
            input key per row, a typed rule of :mod:`.split` (``Tokens()``, ``PerImage()``,
            ``PerRow()``, ``Patches(key)``, ``Tiles()``, ``Shared()``, ``Computed(fn)``). Keys not
            listed follow :func:`.split.rule_for`. A string or a bare function is refused,
            naming the rule to use.
        nested_images: Whether the processor takes images as one list per prompt (Gemma 3)
            rather than one flat list.
        pixel_values_per_span: Whether ``pixel_values`` holds exactly one entry per image span
            (LLaVA); then inputs whose count of images differs from their runs of image tokens
            (an image without its placeholder) are refused.

    Examples:
        >>> from hooked_mllm.architectures.split import Tiles
        >>> InputLayout(split={"pixel_values": Tiles()}).split
        (('pixel_values', Tiles()),)
    """

    split: tuple[tuple[str, SplitRule], ...] | Mapping[str, SplitRule] = ()
    nested_images: bool = False
    pixel_values_per_span: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", check_rules(self.split))


@dataclass(frozen=True, kw_only=True)
class Metadata:
    """What the supported-models table says of an adapter.

    Attributes:
        verified: False for adapters written from a published layout but never run in the suite.
        checked_by: A script that checks an unverified adapter outside the suite (remote code the
            suite cannot hold), shown in the supported-models table.
        test_model: Which tiny model the conformance suite builds (for the table).
        notes: Free text shown in the supported-models table.
    """

    verified: bool = True
    checked_by: str = ""
    test_model: str = ""
    notes: str = ""


@_checked_in_post_init
@dataclass(frozen=True, kw_only=True)
class Adapter:
    """One family's layout: where its parts live, how its image tokens and inputs are laid out.

    Attributes:
        name: Short family name (``"llava"``).
        config_classes: Names of the HF config classes this adapter serves.
        modules: Module paths (:class:`ModuleLayout`).
        config_keys: HF config attribute names (:class:`ConfigKeys`).
        tokens: Image-token geometry (:class:`TokenLayout`).
        inputs: Processor and input-splitting rules (:class:`InputLayout`).
        about: What the supported-models table says (:class:`Metadata`).
        specialize: Optional rule ``(adapter, hf_config) -> adapter`` for families whose
            layout depends on the config (PaliGemma's Gemma 1 or Gemma 2 text backbone);
            :func:`hooked_mllm.architectures.adapter_for` applies it (:meth:`for_config`).
        variants: The other adapters ``specialize`` can return, each with its own name
            (LLaVA's Pixtral-tower layout, :data:`~.llava.LLAVA_PIXTRAL`): the supported-models
            table lists each in a row of its own, after this one. ``dataclasses.replace`` copies
            it with ``specialize``: clear both when deriving another family from an adapter.

    Examples:
        >>> Adapter(name="tiny", config_classes=("TinyConfig",),
        ...         modules=ModuleLayout(lm_layers="model.layers", embed="model.embed_tokens",
        ...                              final_norm="model.norm", unembed="lm_head"),
        ...         tokens=TokenLayout(grid=no_grid)).inputs.split
        ()
    """

    name: str
    config_classes: tuple[str, ...]
    modules: ModuleLayout
    config_keys: ConfigKeys = field(default_factory=ConfigKeys)
    tokens: TokenLayout = field(default_factory=TokenLayout)
    inputs: InputLayout = field(default_factory=InputLayout)
    about: Metadata = field(default_factory=Metadata)
    specialize: Callable[[Adapter, Any], Adapter] | None = None
    variants: tuple[Adapter, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Adapter.name must be a short family name such as 'llava', not {self.name!r}.")
        if isinstance(self.config_classes, str):
            raise TypeError(
                f"Adapter.config_classes is a tuple of config class names: write "
                f"({self.config_classes!r},), not {self.config_classes!r}."
            )
        for name, kind in (
            ("modules", ModuleLayout),
            ("config_keys", ConfigKeys),
            ("tokens", TokenLayout),
            ("inputs", InputLayout),
            ("about", Metadata),
        ):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"Adapter.{name} takes {kind.__name__}(...), not {getattr(self, name)!r}.")

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
        modules = self.modules
        for path in (modules.lm_layers, modules.embed, modules.final_norm, modules.unembed):
            self.module(root, path)
        blocks = [(f"{modules.lm_layers}.0", modules.block)]
        n_layers = len(cast(torch.nn.ModuleList, self.module(root, modules.lm_layers)))
        cross = self.cross_layers(root.config, n_layers) if modules.cross is not None else frozenset()
        if cross:  # layers alternate between two layouts: check the first of each
            first_self = next((i for i in range(n_layers) if i not in cross), None)
            blocks = [(f"{modules.lm_layers}.{min(cross)}", modules.cross.block)]  # type: ignore[union-attr]
            if first_self is not None:
                blocks.append((f"{modules.lm_layers}.{first_self}", modules.block))
        if modules.vision_layers is not None and modules.vision_block is not None:
            blocks.append((f"{modules.vision_layers}.0", modules.vision_block))
        for prefix, block in blocks:
            for sub in _block_paths(block):
                self.module(root, f"{prefix}.{sub}")
            for scale in (block.attn_scale, block.mlp_scale):
                if scale is not None and not isinstance(
                    getattr(self.module(root, prefix), scale, None), torch.nn.Parameter
                ):
                    raise ValueError(
                        f"The {self.name!r} adapter expects a layer-scale parameter {scale!r} in "
                        f"{prefix}, but there is none; see docs/architectures.md."
                    )
        for optional in (modules.vision_embed, modules.projector):
            if optional is not None:
                self.module(root, optional)

    def text_cfg(self, config: Any) -> Any:
        """The language model's sub-config (the config itself for flat configs)."""
        return getattr(config, self.config_keys.text_config, None) or config

    def cross_layers(self, config: Any, n_layers: int | None = None) -> frozenset[int]:
        """The indices of the LM's cross-attention layers (empty for most families).

        Only layers the model has count: a config listing layers past ``n_layers`` (default:
        the text config's ``num_hidden_layers``), as a truncated or tiny model's may, is
        read as HF builds it (``layer_idx in cross_attention_layers`` for each layer that exists).
        """
        if self.modules.cross is None:
            return frozenset()
        if n_layers is None:
            n_layers = getattr(self.text_cfg(config), "num_hidden_layers", None)
        listed = (int(i) for i in getattr(self.text_cfg(config), self.modules.cross.layers_attr, None) or ())
        return frozenset(i for i in listed if n_layers is None or 0 <= i < n_layers)

    def vision_layers_read(self, config: Any, n_vision_layers: int, model: Any = None) -> int:
        """How many vision layers (from the first) reach the projector: layers at or after it do not.

        ``model`` (the HF model) is needed by adapters with a ``modules.vision_layers_read_rule``.

        Examples:
            >>> LLAVA.vision_layers_read(hf_model.config, 24)   # vision_feature_layer=-2   # doctest: +SKIP
            23
        """
        rule, key = self.modules.vision_layers_read_rule, self.config_keys.vision_feature_layer
        if rule is not None and model is not None:
            return rule(model, n_vision_layers)
        value = getattr(config, key, None) if key else None
        if value is None:
            return n_vision_layers
        indices = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        # hidden_states[k] is the output of layer k - 1 (index 0: the embeddings), n_vision_layers + 1 entries
        return max(min(n_vision_layers, k if k >= 0 else n_vision_layers + 1 + k) for k in indices)

    def vision_cfg(self, config: Any) -> Any | None:
        """The vision tower's sub-config, or None."""
        return getattr(config, self.config_keys.vision_config, None)


def _block_paths(block: BlockLayout) -> tuple[str, ...]:
    paths = (
        block.attn,
        block.mlp,
        block.ln1,
        block.ln2,
        block.q,
        block.k,
        block.v,
        block.o,
        block.mlp_pre,
        block.mlp_down,
        block.attn_out,
        block.mlp_out,
    )
    return tuple(path for path in paths if path is not None)
