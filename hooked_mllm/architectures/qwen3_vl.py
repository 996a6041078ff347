"""Qwen3-VL (``Qwen3VLForConditionalGeneration``, e.g. Qwen/Qwen3-VL-2B-Instruct).

Module tree (transformers 5)::

    Qwen3VLForConditionalGeneration
    ├── model: Qwen3VLModel
    │   ├── visual: Qwen3VLVisionModel
    │   │   ├── patch_embed{proj: Conv3d}                  -> vision.hook_embed
    │   │   ├── pos_embed (learned, interpolated to each image's grid; added after patch_embed)
    │   │   ├── blocks[i]: Qwen3VLVisionBlock
    │   │   │   ├── norm1 (LayerNorm), attn{qkv (fused), proj}
    │   │   │   └── norm2, mlp{linear_fc1, linear_fc2}
    │   │   ├── merger: PatchMerger{norm, linear_fc1, linear_fc2}  -> projector.hook_in / hook_out
    │   │   └── deepstack_merger_list[k]: PatchMerger  (reads vision block deepstack_visual_indexes[k])
    │   └── language_model: Qwen3VLTextModel
    │       ├── embed_tokens                               -> hook_embed
    │       ├── layers[i]: Qwen3VLTextDecoderLayer
    │       │   ├── input_layernorm, self_attn{q,k,v,o}_proj (+ q_norm, k_norm)
    │       │   └── post_attention_layernorm, mlp{gate,up,down}_proj
    │       └── norm                                       -> ln_final.hook_normalized
    └── lm_head                                            -> hook_logits

Inputs and image tokens are Qwen2-VL's (:mod:`.qwen2_vl`): ``pixel_values`` packs every
image's patches, ``image_grid_thw`` gives each image's (t, h, w) and the 2x2 merger makes
an ``(h/2, w/2)`` row-major grid of ``<|image_pad|>`` tokens per image; positions are
interleaved M-RoPE computed from ``image_grid_thw`` and ``mm_token_type_ids``.

DeepStack: ``deepstack_merger_list[k]`` merges the output of vision block
``deepstack_visual_indexes[k]`` (Qwen3-VL-2B: 5, 11, 17) into one more set of image
features, which the text model **adds at the image positions after decoder layer k** (for
``k < len(deepstack_visual_indexes)``), outside the layer modules. So for those layers
``blocks.{k}.hook_resid_post`` is the layer's output *before* the addition (equal to HF's
``hidden_states[k + 1]``), and ``blocks.{k+1}.hook_resid_pre`` is *after* it:
``resid_pre[k+1] = resid_post[k] + deepstack_k`` at image positions, equal elsewhere. The
within-block identities (``resid_pre + attn_out = resid_mid``, ``resid_mid + mlp_out =
resid_post``) hold everywhere; ``decompose_resid`` / ``accumulated_resid`` have no
component for the deepstack additions (read ``model.visual.deepstack_merger_list.{k}``
with ``model.trace`` if you need them). Patching ``resid_post[k]`` at an image position
still gets the deepstack features added on top.

Video (docs/video.md): as Qwen2-VL's (``pixel_values_videos``, ``video_grid_thw``, time steps of
``temporal_patch_size`` frames), except that each time step is its own run: the processor
writes ``<t seconds>`` + ``<|vision_start|>`` + ``h*w / 4`` copies of ``<|video_pad|>`` +
``<|vision_end|>`` per step, so a video's :class:`~hooked_mllm.spans.VideoSpan` lists its
positions (timestamps and markers excluded). DeepStack features are added at video positions
as at image positions.

Vision tower: as Qwen2-VL's, blocks see ``[patches, d]`` (all images packed), the fused
``qkv`` gives no per-head q / k / v and no patterns. ``vision.hook_embed`` is before the
position embeddings are added; ``vision.blocks.0.hook_resid_pre`` is after.
"""

from __future__ import annotations

from .base import Adapter, BlockLayout, Metadata, ModuleLayout
from .qwen2_vl import VIDEO_INPUTS, VIDEO_TOKENS

QWEN3_VL = Adapter(
    name="qwen3_vl",
    config_classes=("Qwen3VLConfig",),
    modules=ModuleLayout(
        block=BlockLayout(),
        vision_layers="model.visual.blocks",
        vision_embed="model.visual.patch_embed",
        vision_block=BlockLayout(
            attn="attn",
            mlp="mlp",
            ln1="norm1",
            ln2="norm2",
            q=None,
            k=None,
            v=None,
            o="attn.proj",
            mlp_pre="mlp.linear_fc1",
            mlp_down="mlp.linear_fc2",
            norm="layer",
            attn_index=None,
            pattern_index=None,
        ),
        projector="model.visual.merger",
        hidden_states_normed=True,
    ),
    tokens=VIDEO_TOKENS,
    inputs=VIDEO_INPUTS,
    about=Metadata(
        test_model="tiny random from Qwen/Qwen3-VL-2B-Instruct's config: deepstack after vision blocks 0, 1 "
        "into LM layers 0, 1 of 3 (processor: Qwen2VLImageProcessorPil)",
        notes="Grid (h/2, w/2) per image from image_grid_thw. DeepStack features are added at image "
        "positions between resid_post[k] and resid_pre[k+1] (k < n_deepstack), verified against the "
        "mergers' outputs; they are not hook points. Video: time steps of 2 frames, each (h/2, w/2), "
        "one run per step with a '<t seconds>' timestamp before it; deepstack adds at video positions too.",
    ),
)
