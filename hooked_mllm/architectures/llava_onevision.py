"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf).

Module tree (transformers 5): the same as LLaVA-NeXT's (:mod:`.llava_next`), with a SigLIP
tower (no CLS token, ``vision_feature_select_strategy="full"``) and usually a Qwen2 LM::

    LlavaOnevisionForConditionalGeneration
    ├── model: LlavaOnevisionModel
    │   ├── vision_tower: SiglipVisionModel-like {embeddings, encoder.layers[i]}
    │   ├── multi_modal_projector
    │   ├── image_newline (a parameter)
    │   └── language_model: Qwen2Model {embed_tokens, layers[i], norm}
    └── lm_head

Image tokens: anyres tiles as in LLaVA-NeXT (base image, then the stitched tiles with a
newline vector per row), so each image is two spans, the base view and the high-resolution
view (:func:`~.llava_next.anyres_views`). ``vision_aspect_ratio="anyres_max_N"`` pools a
high-resolution map of more than ``N`` tiles' worth of patches (bilinearly, ratio over 1.1)
to ``int(rows // ratio) x int(cols // ratio)`` before the newlines are added: the view's grid
is then that pooled map, each cell a blend of neighbouring patches.
``batch_num_images`` holds one count per row.
"""

from __future__ import annotations

from dataclasses import replace

from .base import Metadata
from .llava_next import LLAVA_NEXT
from .split import PerRow

LLAVA_ONEVISION = replace(
    LLAVA_NEXT,
    name="llava_onevision",
    config_classes=("LlavaOnevisionConfig",),
    inputs=replace(LLAVA_NEXT.inputs, split={**dict(LLAVA_NEXT.inputs.split), "batch_num_images": PerRow()}),
    about=Metadata(
        test_model="tiny random from llava-hf/llava-onevision-qwen2-7b-ov-hf's config: SigLIP tower, Qwen2 "
        "LM, anyres pinpoints 16/32 (processor: LlavaOnevisionImageProcessorPil)",
        notes="Anyres tiles + image_newline as LLaVA-NeXT: two spans per image (base view, high-resolution "
        "view, pooled by anyres_max_N where HF pools).",
    ),
)
