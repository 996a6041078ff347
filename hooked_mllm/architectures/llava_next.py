"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, e.g. llava-hf/llava-v1.6-mistral-7b-hf).

Module tree (transformers 5)::

    LlavaNextForConditionalGeneration
    ├── model: LlavaNextModel
    │   ├── vision_tower: CLIPVisionModel-like
    │   │   ├── embeddings                       -> vision.hook_embed
    │   │   └── encoder.layers[i]{layer_norm1, self_attn{q,k,v,out}_proj, layer_norm2, mlp{fc1, fc2}}
    │   ├── multi_modal_projector                -> projector.hook_in / hook_out (per tile)
    │   ├── image_newline (a learned vector, a parameter, not a module)
    │   └── language_model: MistralModel / LlamaModel / ...
    │       ├── embed_tokens                     -> hook_embed
    │       ├── layers[i]{input_layernorm, self_attn{q,k,v,o}_proj, post_attention_layernorm, mlp}
    │       └── norm                             -> ln_final.hook_normalized
    └── lm_head                                  -> hook_logits

Image tokens ("anyres"): each image is resized to the best of ``image_grid_pinpoints``,
cut into tiles plus a downscaled whole image, and every tile goes through the tower and
the projector (``projector.hook_out`` is ``[n_tiles_total, (size/patch)**2, d]``). The LM
sees one run of image-token ids per image: first the whole-image features (a square
``size/patch`` grid), then the tiles stitched into one feature map, with padding rows /
columns removed to restore the aspect ratio, and one ``image_newline`` vector appended to
every row of that map. That run is not one rectangle of patches, so its span has **no
grid** (``ImageSpan.grid is None``); the base part is ``span.start + [0, (size/patch)**2)``.
"""

from __future__ import annotations

from dataclasses import replace

from .llava import LLAVA

# The same module tree as LLaVA (CLIP-style tower only: no Pixtral specialisation); only the
# image-token geometry differs.
LLAVA_NEXT = replace(
    LLAVA,
    name="llava_next",
    config_classes=("LlavaNextConfig",),
    specialize=None,
    variants=(),
    image_grid=lambda n, cfg: None,
    test_model="tiny random from llava-hf/llava-v1.6-mistral-7b-hf's config, anyres pinpoints 16/32 "
               "(processor: LlavaNextImageProcessorPil)",
    notes="Anyres tiles + image_newline: one span per image, no grid.",
)
