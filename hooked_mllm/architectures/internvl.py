"""InternVL (``InternVLForConditionalGeneration``, e.g. OpenGVLab/InternVL3-1B-hf).

Module tree (transformers 5)::

    InternVLForConditionalGeneration
    ├── model: InternVLModel
    │   ├── vision_tower: InternVLVisionModel (InternViT)
    │   │   ├── embeddings{cls_token, patch_embeddings, position_embeddings}  -> vision.hook_embed
    │   │   └── encoder.layer[i]: InternVLVisionLayer
    │   │       ├── layernorm_before, attention{q,k,v}_proj (+ q_norm, k_norm), attention.projection_layer
    │   │       ├── lambda_1 (layer scale, a parameter)    -> hook_attn_out = lambda_1 * attention
    │   │       ├── layernorm_after, mlp{fc1, fc2}
    │   │       └── lambda_2                               -> hook_mlp_out = lambda_2 * mlp
    │   ├── multi_modal_projector{layer_norm, linear_1, linear_2}  -> projector.hook_in / hook_out
    │   └── language_model: Qwen2Model (InternVL3) / LlamaModel ...
    │       ├── embed_tokens                                -> hook_embed
    │       ├── layers[i]{input_layernorm, self_attn{q,k,v,o}_proj, post_attention_layernorm, mlp}
    │       └── norm                                        -> ln_final.hook_normalized
    └── lm_head                                             -> hook_logits

Vision blocks use layer scale: ``mid = pre + lambda_1 * attn(ln1(pre))`` and ``post = mid +
lambda_2 * mlp(ln2(mid))``. ``vision.blocks.{l}.hook_attn_out`` / ``hook_mlp_out`` are the
scaled values (what the residual adds), so the residual identities hold; a replacement is
divided by the scale before it is written back. ``attn.hook_z`` is the input of
``projection_layer`` (unscaled).

Image tokens: with tiling (``crop_to_patches``) the processor picks the ``cols x rows``
arrangement of at most ``max_patches`` tiles whose aspect ratio is closest to the image's,
cuts the resized image into those tiles (row-major) and, if there is more than one,
appends a thumbnail of the whole image. The tower drops the CLS token; ``pixel_shuffle``
(ratio 0.5) folds each 2x2 block of patches into one token in raster order, so each tile is
a square grid of ``image_seq_length`` tokens ((448/14/2)**2 = 256). The LM sees **one run**
per image, ``<img>`` + tiles x ``image_seq_length`` ``<IMG_CONTEXT>`` + ``</img>``: one span
per image, with a square grid when it is one tile and no grid otherwise (tile ``k`` is
``span.start + k * image_seq_length``, the thumbnail last). ``projector.hook_out`` is
``[n_tiles_total, image_seq_length, d_model]``.

Inputs: ``pixel_values`` ``[n_tiles_total, 3, H, W]`` concatenates every image's tiles (the
processor does not return the per-image count); a batch splits into rows by each image's
share of the image tokens (the ``inputs.split`` rule ``Tiles()``).
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockLayout, InputLayout, Metadata, ModuleLayout, TokenLayout, square_grid
from .split import Tiles


def _tile_grid(n_tokens: int, config: Any) -> tuple[int, int] | None:
    """A square grid for a one-tile image; None for several tiles (and for the table's probe)."""
    if config is None:
        return None
    vision = config.vision_config
    size, patch = vision.image_size, vision.patch_size
    side = int(size[0] if isinstance(size, (list, tuple)) else size) // int(
        patch[0] if isinstance(patch, (list, tuple)) else patch
    )
    per_tile = round(side * side * float(config.downsample_ratio) ** 2)
    return square_grid(n_tokens) if n_tokens == per_tile else None


INTERNVIT_BLOCK = BlockLayout(
    attn="attention",
    mlp="mlp",
    ln1="layernorm_before",
    ln2="layernorm_after",
    q="attention.q_proj",
    k="attention.k_proj",
    v="attention.v_proj",
    o="attention.projection_layer",
    mlp_pre="mlp.fc1",
    mlp_down="mlp.fc2",
    norm="layer",
    attn_scale="lambda_1",
    mlp_scale="lambda_2",
)

INTERNVL = Adapter(
    name="internvl",
    config_classes=("InternVLConfig",),
    modules=ModuleLayout(
        block=BlockLayout(),
        vision_layers="model.vision_tower.encoder.layer",
        vision_embed="model.vision_tower.embeddings",
        vision_block=INTERNVIT_BLOCK,
        projector="model.multi_modal_projector",
        hidden_states_normed=True,
    ),
    tokens=TokenLayout(grid=_tile_grid),
    inputs=InputLayout(split={"pixel_values": Tiles()}),
    about=Metadata(
        test_model="tiny random from OpenGVLab/InternVL3-1B-hf's config: 16 px tiles, up to 4 + thumbnail, "
        "random layer scales, Qwen2 LM (processor: GotOcr2ImageProcessorPil, crop_to_patches)",
        notes="One span per image (all its tiles, thumbnail last): square grid for one tile, else none. "
        "Vision blocks' attn_out / mlp_out include the layer scale (lambda_1 / lambda_2). Video inputs are "
        "not covered.",
    ),
)
