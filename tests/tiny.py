"""Tiny random LLaVA models, tokenizers and processors built from configs (nothing downloaded).

Shared by the tests and the benchmarks. Sizes are shrunk from llava-1.5-7b's config
(CLIP ViT-L/14 tower, Llama-2 LM): same module tree, a few thousand parameters.
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
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    return tok


def tiny_processor(image_size: int = 32, patch_size: int = 8):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def tiny_llava(text: str = "llama", seed: int = 0, image_size: int = 32, patch_size: int = 8,
               attn_implementation: str | None = None, n_layers: int = 3):
    """A tiny random LlavaForConditionalGeneration with a Llama, Qwen2 or Mistral LM."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import MistralConfig, Qwen2Config

    tok = tiny_tokenizer()
    vocab = len(tok)
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[text]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    text_cfg = text_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512,
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
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
