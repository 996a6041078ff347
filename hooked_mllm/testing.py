"""Tiny random LLaVA models, tokenizers and processors built from configs (nothing downloaded).

For tests (ours and users'), benchmarks and the demo's fallback. Sizes are shrunk from
llava-1.5-7b's config (CLIP ViT-L/14 tower, Llama-2 LM): the same module tree with a
few thousand parameters, and a real word-level tokenizer and LLaVA processor.

Example:
    >>> from hooked_mllm import HookedMLLM
    >>> from hooked_mllm.testing import tiny_llava, tiny_processor
    >>> model = HookedMLLM.from_hf(tiny_llava("qwen2"), tiny_processor())
    >>> model.cfg.n_layers
    3
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

WORDS = ("what color is the circle square triangle red green blue yellow purple how many objects "
         "where left right top bottom yes no a an and of there one two three describe image picture "
         "USER ASSISTANT : ? . , hello world").split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER : "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image> "
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT :{% endif %}"
)


def tiny_tokenizer():
    """A word-level HF tokenizer over a small English vocabulary, with ``<image>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    return tok


def tiny_processor(image_size: int = 32, patch_size: int = 8):
    """A ``LlavaProcessor`` (PIL CLIP image processor, tiny tokenizer, chat template)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def tiny_llava(text: str = "llama", seed: int = 0, image_size: int = 32, patch_size: int = 8,
               attn_implementation: str | None = None, n_layers: int = 3, d_model: int = 64,
               vision_d_model: int = 32, vision_layers: int = 2, n_heads: int = 4):
    """A tiny random LlavaForConditionalGeneration with a Llama, Qwen2 or Mistral LM."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import MistralConfig, Qwen2Config

    tok = tiny_tokenizer()
    vocab = len(tok)
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[text]
    vision = CLIPVisionConfig(hidden_size=vision_d_model, intermediate_size=2 * vision_d_model,
                              num_hidden_layers=vision_layers, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size, projection_dim=vision_d_model)
    text_cfg = text_cls(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                        num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2), vocab_size=vocab, max_position_embeddings=512,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text_cfg, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=(image_size // patch_size) ** 2, pad_token_id=tok.pad_token_id)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


def image_pair(model, seeds: tuple[int, int], prompt: str = "what color is the circle ?"):
    """Two one-row batches with the same prompt and layout and different random images (clean, corrupted)."""
    return tuple(model.prepare(images=[random_image(seed)], prompts=[prompt]) for seed in seeds)


def random_image(seed: int, size: int = 32) -> Image.Image:
    """A seeded random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# -- other families (tiny random models for the conformance suite) -------------------------------
#
# Each builder shrinks the real checkpoint's config named in its docstring to a few thousand
# parameters, keeping the module tree, the token layout and the image processing.


def word_tokenizer(specials: list[str], **special_tokens: str):
    """A word-level tokenizer over :data:`WORDS` plus ``specials`` (added first, never split).

    ``special_tokens`` names extra special tokens (``image_token="<image>"``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(base + specials + list(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", extra_special_tokens=special_tokens)
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in special_tokens.values()]})
    return tok


def _chat_template(image: str) -> str:
    return ("{% for message in messages %}{% if message['role'] == 'user' %}USER : "
            "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + image + " "
            "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %} ASSISTANT :{% endif %}")


def _finish(model, tok):
    model = model.eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    return model


def _text_kwargs(tok, d_model: int, n_layers: int, n_heads: int) -> dict:
    return dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2), vocab_size=len(tok),
                max_position_embeddings=512, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)


QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def tiny_qwen2_vl_processor(patch_size: int = 4):
    """A ``Qwen2VLProcessor``: PIL Qwen2-VL image processor (patch 4, 2x2 merge), tiny tokenizer."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                                size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32})
    template = _chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    return _without_video(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tok, chat_template=template)


def _without_video(processor_cls):
    """``processor_cls`` accepting ``video_processor=None`` or a PIL-only video processor (the class
    check of video processors needs torchvision)."""

    class ImageOnly(processor_cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = processor_cls.__name__
    return ImageOnly


def tiny_qwen2_vl(version: str = "2", seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2,
                  d_model: int = 64, n_heads: int = 4, patch_size: int = 4):
    """A tiny random Qwen2-VL (``version="2"``, shrunk from Qwen/Qwen2-VL-2B-Instruct) or
    Qwen2.5-VL (``"2.5"``, from Qwen/Qwen2.5-VL-3B-Instruct): 2 vision blocks of width 32."""
    import transformers as tf

    tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
    head_dim = d_model // n_heads
    mrope = [head_dim // 4, head_dim // 8, head_dim // 8]  # temporal, height, width: head_dim / 2 in all
    text = dict(_text_kwargs(tok, d_model, n_layers, n_heads),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope})
    vision = dict(depth=2, hidden_size=d_model, num_heads=4, patch_size=patch_size, spatial_merge_size=2,
                  temporal_patch_size=2)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    if version == "2":
        vision.update(embed_dim=32, mlp_ratio=2)
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls = tf.Qwen2VLForConditionalGeneration
    else:
        vision.update(out_hidden_size=d_model, hidden_size=32, intermediate_size=64, num_heads=4,
                      window_size=4 * patch_size, fullatt_block_indexes=[1])
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls = tf.Qwen2_5_VLForConditionalGeneration
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(model_cls(config), tok)


IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def tiny_idefics2(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64,
                  n_latents: int = 4):
    """A tiny random Idefics2 (shrunk from HuggingFaceM4/idefics2-8b: SigLIP tower, perceiver
    resampler of ``n_latents`` latents, Mistral LM) and its processor (image splitting on).

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    tok = word_tokenizer(IDEFICS_SPECIALS)
    image_processor = Idefics2ImageProcessorPil(do_image_splitting=True,
                                                size={"shortest_edge": 16, "longest_edge": 32})
    processor = tf.Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=n_latents,
                                     chat_template=_chat_template("<image>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    perceiver = dict(hidden_size=d_model, resampler_n_latents=n_latents, resampler_depth=1, resampler_n_heads=4,
                     resampler_head_dim=8, num_key_value_heads=2)
    config = tf.Idefics2Config(vision_config=vision, perceiver_config=perceiver,
                               text_config=dict(_text_kwargs(tok, d_model, n_layers, 4), model_type="mistral"),
                               image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.Idefics2ForConditionalGeneration(config), tok), processor


GEMMA3_SPECIALS = ["<start_of_image>", "<image_soft_token>", "<end_of_image>"]


def tiny_gemma3(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64,
                image_size: int = 32, patch_size: int = 4, tokens_per_image: int = 16):
    """A tiny random Gemma 3 (shrunk from google/gemma-3-4b-it: SigLIP tower, average-pool
    projector to ``tokens_per_image`` tokens, Gemma 3 LM with sandwich norms) and its processor.

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = word_tokenizer(GEMMA3_SPECIALS, boi_token="<start_of_image>", image_token="<image_soft_token>",
                         eoi_token="<end_of_image>")
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=tokens_per_image,
                                   chat_template=_chat_template("<start_of_image>"))
    text = dict(_text_kwargs(tok, d_model, n_layers, 4), head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "full_attention"][:n_layers] + ["full_attention"] * (n_layers - 2))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("image_token_index", "<image_soft_token>"),
           ("boi_token_index", "<start_of_image>"), ("eoi_token_index", "<end_of_image>"))}
    config = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image, **ids)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.Gemma3ForConditionalGeneration(config), tok), processor


def tiny_llava_next(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64,
                    image_size: int = 16, patch_size: int = 4):
    """A tiny random LLaVA-NeXT (shrunk from llava-hf/llava-v1.6-mistral-7b-hf: CLIP tower,
    anyres tiles over pinpoints ``[[16, 32], [32, 16], [32, 32]]``, Mistral LM) and its processor.

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = tiny_tokenizer()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                                 crop_size={"height": image_size, "width": image_size})
    processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                      chat_template=CHAT_TEMPLATE)
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=image_size, patch_size=patch_size, projection_dim=32)
    text = tf.MistralConfig(**_text_kwargs(tok, d_model, n_layers, 4))
    config = tf.LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                                image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                                vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.LlavaNextForConditionalGeneration(config), tok), processor


def tiny_llava_onevision(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2,
                         d_model: int = 64, image_size: int = 16, patch_size: int = 4):
    """A tiny random LLaVA-OneVision (shrunk from llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP
    tower, anyres tiles over pinpoints ``[[16, 32], [32, 16], [32, 32]]``, Qwen2 LM) and its processor.

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok = tiny_tokenizer()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size},
                                                      image_grid_pinpoints=pinpoints)
    processor = _without_video(tf.LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE)
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=image_size, patch_size=patch_size)
    text = tf.Qwen2Config(**_text_kwargs(tok, d_model, n_layers, 4))
    config = tf.LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                                     image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                                     vision_feature_select_strategy="full", pad_token_id=tok.pad_token_id)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.LlavaOnevisionForConditionalGeneration(config), tok), processor


IDEFICS3_SPECIALS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
                     + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])


def _idefics3_like(smol: bool, seed: int, attn_implementation: str | None, n_layers: int, d_model: int):
    import transformers as tf

    tok = word_tokenizer(IDEFICS3_SPECIALS)
    # Idefics3: 16px tiles of 8x8 patches (patch 2), shuffled by 2 -> 16 tokens per tile.
    # SmolVLM: 32px tiles of 16x16 patches (patch 2), shuffled by 4 -> 16 tokens per tile.
    tile, scale = (32, 4) if smol else (16, 2)
    n_tokens = (tile // 2) ** 2 // scale**2
    sizes = dict(do_image_splitting=True, size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=tile,
                  patch_size=2)
    text = dict(_text_kwargs(tok, d_model, n_layers, 4), model_type="llama")
    if smol:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
        from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

        processor = _without_video(tf.SmolVLMProcessor)(image_processor=SmolVLMImageProcessorPil(**sizes), tokenizer=tok,
                                        video_processor=SmolVLMVideoProcessor(), image_seq_len=n_tokens,
                                        chat_template=_chat_template("<image>"))
        config_cls, model_cls = tf.SmolVLMConfig, tf.SmolVLMForConditionalGeneration
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        processor = tf.Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**sizes), tokenizer=tok,
                                         image_seq_len=n_tokens, chat_template=_chat_template("<image>"))
        config_cls, model_cls = tf.Idefics3Config, tf.Idefics3ForConditionalGeneration
    config = config_cls(vision_config=vision, text_config=text, scale_factor=scale,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(model_cls(config), tok), processor


def tiny_idefics3(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64):
    """A tiny random Idefics3 (shrunk from HuggingFaceM4/Idefics3-8B-Llama3: SigLIP tower, pixel
    shuffle by 2 and a linear projection, Llama LM) and its processor (image splitting on).

    Tiles are 16 px (8x8 patches of 2 px), so each tile gives 16 ``<image>`` tokens; images are
    resized to a longest edge of 32 px before splitting. Returns ``(model, processor)``.
    """
    return _idefics3_like(False, seed, attn_implementation, n_layers, d_model)


def tiny_smolvlm(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64):
    """A tiny random SmolVLM (shrunk from HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP tower, pixel
    shuffle by 4, Llama (SmolLM2) LM) and its processor (image splitting on; needs ``num2words``).

    Tiles are 32 px (16x16 patches of 2 px), shuffled by 4 into 16 ``<image>`` tokens; images are
    resized to a longest edge of 64 px before splitting. Returns ``(model, processor)``.
    """
    return _idefics3_like(True, seed, attn_implementation, n_layers, d_model)


def tiny_paligemma(version: str = "2", seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2,
                   d_model: int = 32, image_size: int = 16, patch_size: int = 4):
    """A tiny random PaliGemma 2 (``version="2"``, shrunk from google/paligemma2-3b-pt-224: SigLIP
    tower, linear projector, Gemma 2 LM with sandwich norms, logit soft-capping and alternating
    sliding-window layers) or PaliGemma (``"1"``, from google/paligemma-3b-pt-224: Gemma LM) and
    its processor (no chat template, as the real one).

    ``(image_size / patch_size) ** 2`` (16) image tokens per image. The processor adds PaliGemma's
    1024 ``<locXXXX>`` and 128 ``<segXXX>`` tokens, so the vocabulary is built after it.
    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    tok = word_tokenizer(["<image>"], image_token="<image>")
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = dict(_text_kwargs(tok, d_model, n_layers, 4), head_dim=8, hidden_activation="gelu_pytorch_tanh")
    if version == "2":
        text.update(model_type="gemma2", sliding_window=8, query_pre_attn_scalar=8, final_logit_softcapping=30.0,
                    attn_logit_softcapping=50.0,
                    layer_types=["sliding_attention", "full_attention"] * (n_layers // 2) + ["sliding_attention"]
                    * (n_layers % 2))
    else:
        text.update(model_type="gemma", num_key_value_heads=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size, vision_use_head=False)
    config = tf.PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=d_model, hidden_size=d_model,
                                image_token_index=tok.convert_tokens_to_ids("<image>"), vocab_size=len(tok))
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.PaliGemmaForConditionalGeneration(config), tok), processor


INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]


def tiny_internvl(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 64,
                  tile: int = 16, patch_size: int = 2, max_tiles: int = 4):
    """A tiny random InternVL (shrunk from OpenGVLab/InternVL3-1B-hf: InternViT tower with layer
    scale, pixel shuffle by 0.5 and an MLP projector, Qwen2 LM) and its processor, with tiling on
    (``crop_to_patches``: up to ``max_tiles`` tiles of ``tile`` px plus a thumbnail).

    Each tile is ``(tile / patch_size) ** 2 / 4`` (16) ``<IMG_CONTEXT>`` tokens. Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tok = word_tokenizer(INTERNVL_SPECIALS, start_image_token="<img>", end_image_token="</img>",
                         context_image_token="<IMG_CONTEXT>", video_token="<video>")
    n_tokens = (tile // patch_size) ** 2 // 4
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_tiles)
    processor = _without_video(tf.InternVLProcessor)(image_processor=image_processor, tokenizer=tok,
                                                      video_processor=None, image_seq_length=n_tokens,
                                                      chat_template=_chat_template("<IMG_CONTEXT>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=[tile, tile], patch_size=[patch_size, patch_size], layer_scale_init_value=0.1)
    text = dict(_text_kwargs(tok, d_model, n_layers, 4), model_type="qwen2")
    config = tf.InternVLConfig(vision_config=vision, text_config=text, image_seq_length=n_tokens,
                               image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = tf.InternVLForConditionalGeneration(config)
    with torch.no_grad():  # random layer scales, so that hooks see them apply per channel
        for layer in model.model.vision_tower.encoder.layer:
            layer.lambda_1.uniform_(0.05, 0.5)
            layer.lambda_2.uniform_(0.05, 0.5)
    return _finish(model, tok), processor


def tiny_qwen3_vl(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 3, d_model: int = 64,
                  n_heads: int = 4, patch_size: int = 4):
    """A tiny random Qwen3-VL (shrunk from Qwen/Qwen3-VL-2B-Instruct: 3 vision blocks of width 32,
    2x2 merger, deepstack mergers after vision blocks 0 and 1 feeding LM layers 0 and 1, Qwen3 LM
    with interleaved M-RoPE) and its processor.

    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = word_tokenizer(QWEN_SPECIALS, image_token="<|image_pad|>", video_token="<|video_pad|>")
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                                size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32})
    processor = _without_video(tf.Qwen3VLProcessor)(
        image_processor=image_processor, tokenizer=tok, video_processor=None,
        chat_template=_chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
    head_dim = d_model // n_heads
    mrope = [head_dim // 4, head_dim // 8, head_dim // 8]  # temporal, height, width: head_dim / 2 in all
    text = dict(_text_kwargs(tok, d_model, n_layers, n_heads), head_dim=head_dim,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope,
                                 "mrope_interleaved": True})
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=patch_size,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=d_model, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.Qwen3VLForConditionalGeneration(config), tok), processor


PIXTRAL_SPECIALS = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def _pixtral_processor_cls():
    """``PixtralProcessor`` without torchvision: its module imports the torchvision image
    processor only for a token-count helper, which is pointed at the PIL one while it loads."""
    import importlib
    import sys
    import types

    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    name = "transformers.models.pixtral.processing_pixtral"
    if name not in sys.modules:
        stub = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
        stub.get_resize_output_image_size = pil.get_resize_output_image_size  # type: ignore[attr-defined]
        missing = stub.__name__ not in sys.modules
        if missing:
            sys.modules[stub.__name__] = stub
        try:
            importlib.import_module(name)
        finally:
            if missing:
                del sys.modules[stub.__name__]
    return sys.modules[name].PixtralProcessor


def tiny_mistral3(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 2, d_model: int = 32,
                  patch_size: int = 4, longest_edge: int = 32):
    """A tiny random Mistral 3 (shrunk from mistralai/Mistral-Small-3.1-24B-Instruct-2503: Pixtral
    tower with 2D RoPE, RMSNorm projector with a 2x2 patch merger, Mistral LM with ``head_dim``
    set apart from ``d_model / n_heads``) and its ``PixtralProcessor`` (PIL image processor).

    Images are resized to a longest edge of at most ``longest_edge`` px and to multiples of
    ``2 * patch_size``; each ``2 * patch_size`` block is one ``[IMG]`` token, rows ended by
    ``[IMG_BREAK]`` (the last by ``[IMG_END]``). Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tok = word_tokenizer(PIXTRAL_SPECIALS, image_token="[IMG]")
    image_processor = PixtralImageProcessorPil(size={"longest_edge": longest_edge}, patch_size=patch_size)
    processor = _pixtral_processor_cls()(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                                         spatial_merge_size=2, chat_template=_chat_template("[IMG]"))
    text = dict(_text_kwargs(tok, d_model, n_layers, 4), model_type="mistral", head_dim=d_model // 2,
                sliding_window=None)
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, head_dim=8, image_size=longest_edge, patch_size=patch_size)
    config = tf.Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=2, vision_feature_layer=-1,
                               image_token_index=tok.convert_tokens_to_ids("[IMG]"))
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return _finish(tf.Mistral3ForConditionalGeneration(config), tok), processor


def tiny_mllama(seed: int = 0, attn_implementation: str | None = None, n_layers: int = 3, d_model: int = 32,
                cross_layers: tuple[int, ...] = (1,), image_size: int = 16, patch_size: int = 4):
    """A tiny random Mllama (shrunk from meta-llama/Llama-3.2-11B-Vision-Instruct: tiled vision
    encoder with local and gated global layers, linear projector, Llama LM whose layers
    ``cross_layers`` cross-attend to the vision states) and its ``MllamaProcessor``.

    Tiles are ``image_size`` px (``(image_size / patch_size)**2`` patches + CLS), at most 2 per
    image (aspect ratios 1x1, 1x2, 2x1). The cross-attention gates, zero at initialisation
    in HF, are set to random non-zero values so that the image reaches the text.
    Returns ``(model, processor)``.
    """
    import transformers as tf
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tok = word_tokenizer(["<|image|>"], image_token="<|image|>")
    image_processor = MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=2)
    processor = tf.MllamaProcessor(image_processor=image_processor, tokenizer=tok,
                                   chat_template=_chat_template("<|image|>"))
    text = dict(_text_kwargs(tok, d_model, n_layers, 4), cross_attention_layers=list(cross_layers))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                  image_size=image_size, patch_size=patch_size, max_num_tiles=2, intermediate_layers_indices=[0],
                  vision_output_dim=64, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    config = tf.MllamaConfig(text_config=text, vision_config=vision, image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = tf.MllamaForConditionalGeneration(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("_gate", ".gate", "gate_attn", "gate_ffn")) and param.numel() == 1:
                param.uniform_(0.3, 1.0)
    return _finish(model, tok), processor
