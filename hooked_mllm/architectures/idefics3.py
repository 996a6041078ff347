"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

Checkpoints: HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM-256M-Instruct (SmolVLM
is Idefics3's module tree with another pixel-shuffle factor and processor).

Module tree (transformers 5)::

    Idefics3ForConditionalGeneration                 (SmolVLMForConditionalGeneration)
    ├── model: Idefics3Model                         (SmolVLMModel)
    │   ├── vision_model: Idefics3VisionTransformer  (SigLIP)
    │   │   ├── embeddings{patch_embedding, position_embedding}  -> vision.hook_embed
    │   │   ├── encoder.layers[i]: Idefics3EncoderLayer
    │   │   │   ├── layer_norm1, self_attn{q,k,v,out}_proj
    │   │   │   └── layer_norm2, mlp{fc1, fc2}
    │   │   └── post_layernorm
    │   ├── connector: Idefics3Connector                          -> projector.hook_in / hook_out
    │   │   ├── pixel_shuffle (a function: s x s patches -> one token of width s*s*d)
    │   │   └── modality_projection.proj (Linear, no bias)
    │   └── text_model: LlamaModel
    │       ├── embed_tokens                                      -> hook_embed
    │       ├── layers[i]: LlamaDecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                              -> ln_final.hook_normalized
    └── lm_head                                                   -> hook_logits

Image tokens: the processor resizes each image (longest edge ``size``), then, with image
splitting, cuts it into ``rows x cols`` tiles of ``max_image_size`` and adds the whole image
downscaled to one tile (the global image). Each tile is written as
``<fake_token_around_image><row_i_col_j>`` + ``image_seq_len`` ``<image>`` tokens, rows
separated by newlines, then ``<fake_token_around_image><global-img>`` + ``image_seq_len``
``<image>`` + ``<fake_token_around_image>``; an image too small to split is only that last
part. So each tile and the global image is **one span** (tiles in row-major order, global
last). Within a span the tokens form a square grid: the tower sees ``(tile/patch)**2``
patches in raster order and ``pixel_shuffle`` folds each ``s x s`` block of patches into
one token, keeping raster order, giving a ``(tile/patch/s) x (tile/patch/s)`` grid
(Idefics3: 364/14/2 = 13, 169 tokens; SmolVLM-256M: 512/16/4 = 8, 64 tokens).
``projector.hook_in`` is ``[n_tiles, patches, d_vision]`` (real tiles only, padding tiles
dropped), ``projector.hook_out`` ``[n_tiles, image_seq_len, d_model]``.

Inputs: ``pixel_values`` ``[batch, max_tiles, 3, H, W]`` and ``pixel_attention_mask`` are
indexed by row. SmolVLM's processor takes images as one list per prompt.
"""

from __future__ import annotations

from dataclasses import replace

from .base import Metadata, square_tokens
from .idefics2 import IDEFICS2

# Idefics2's module tree and input layout; the connector's pixel shuffle keeps a square grid per tile.
IDEFICS3 = replace(
    IDEFICS2,
    name="idefics3",
    config_classes=("Idefics3Config",),
    tokens=replace(IDEFICS2.tokens, grid=square_tokens),
    about=Metadata(
        test_model="tiny random from HuggingFaceM4/Idefics3-8B-Llama3's config: 16 px tiles, shuffle 2, "
        "image splitting on (processor: Idefics3ImageProcessorPil)",
        notes="One span per tile and per global image (tiles row-major, global last), each a square grid "
        "(pixel shuffle keeps raster order); verified with 2x2 and 1x2 tilings. Not run: "
        "do_image_splitting=False (then one global span per image).",
    ),
)

SMOLVLM = replace(
    IDEFICS3,
    name="smolvlm",
    config_classes=("SmolVLMConfig",),
    inputs=replace(IDEFICS3.inputs, nested_images=True),
    about=Metadata(
        test_model="tiny random from HuggingFaceTB/SmolVLM-256M-Instruct's config: 32 px tiles, shuffle 4, "
        "image splitting on (processor: SmolVLMImageProcessorPil; needs num2words)",
        notes="As Idefics3 (shuffle 4): one span per tile and per global image, each a square grid; images "
        "as one list per prompt. Not covered: video inputs.",
    ),
)
