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


def random_image(seed: int, size: int = 32) -> Image.Image:
    """A seeded random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
