"""Tiny random models, tokenizers and processors built from configs (nothing downloaded).

For tests (ours and users'), benchmarks and the demo's fallback. Each builder shrinks the
real checkpoint's config named in its docstring to a few thousand parameters, keeping the
module tree, the token layout and the image processing, with a real word-level tokenizer
and the family's own HF processor.

Modules: :mod:`._common` (vocabulary, tokenizers, chat templates, random images),
:mod:`.llava` (LLaVA, LLaVA-NeXT, LLaVA-NeXT-Video, LLaVA-OneVision; the default :func:`tiny_llava`),
:mod:`.qwen` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), :mod:`.video` (torch video
processors), :mod:`.idefics` (Idefics2, Idefics3, SmolVLM), :mod:`.gemma` (Gemma 3, PaliGemma),
:mod:`.internvl` (InternVL), :mod:`.pixtral` (Pixtral, Mistral 3), :mod:`.mllama` (Mllama),
:mod:`.molmo2` (Molmo2, its torch image and video processors). Every public name is importable from here.

Examples:
    >>> from hooked_mllm import HookedMLLM
    >>> from hooked_mllm.testing import tiny_llava, tiny_processor
    >>> model = HookedMLLM.from_hf(tiny_llava("qwen2"), tiny_processor())
    >>> model.cfg.n_layers
    3
"""

from __future__ import annotations

from ._common import CHAT_TEMPLATE, SPECIALS, WORDS, image_pair, random_image, tiny_tokenizer, word_tokenizer
from .gemma import GEMMA3_SPECIALS, tiny_gemma3, tiny_paligemma
from .idefics import IDEFICS3_SPECIALS, IDEFICS_SPECIALS, tiny_idefics2, tiny_idefics3, tiny_smolvlm
from .internvl import INTERNVL_SPECIALS, tiny_internvl
from .llava import tiny_llava, tiny_llava_next, tiny_llava_next_video, tiny_llava_onevision, tiny_processor
from .mllama import tiny_mllama
from .molmo2 import (
    MOLMO2_IMAGE_TOKENS,
    MOLMO2_SPECIALS,
    molmo2_image_processor,
    molmo2_video_processor,
    tiny_molmo2,
)
from .pixtral import PIXTRAL_SPECIALS, tiny_mistral3, tiny_pixtral
from .qwen import QWEN_SPECIALS, tiny_qwen2_vl, tiny_qwen2_vl_processor, tiny_qwen3_vl
from .video import (
    TorchLlavaNextVideoVideoProcessor,
    TorchLlavaOnevisionVideoProcessor,
    TorchQwen2VLVideoProcessor,
)

__all__ = [
    "CHAT_TEMPLATE",
    "GEMMA3_SPECIALS",
    "IDEFICS3_SPECIALS",
    "IDEFICS_SPECIALS",
    "INTERNVL_SPECIALS",
    "MOLMO2_IMAGE_TOKENS",
    "MOLMO2_SPECIALS",
    "PIXTRAL_SPECIALS",
    "QWEN_SPECIALS",
    "SPECIALS",
    "TorchLlavaNextVideoVideoProcessor",
    "TorchLlavaOnevisionVideoProcessor",
    "TorchQwen2VLVideoProcessor",
    "WORDS",
    "image_pair",
    "molmo2_image_processor",
    "molmo2_video_processor",
    "random_image",
    "tiny_gemma3",
    "tiny_idefics2",
    "tiny_idefics3",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_next_video",
    "tiny_llava_onevision",
    "tiny_mistral3",
    "tiny_mllama",
    "tiny_molmo2",
    "tiny_paligemma",
    "tiny_pixtral",
    "tiny_processor",
    "tiny_qwen2_vl",
    "tiny_qwen2_vl_processor",
    "tiny_qwen3_vl",
    "tiny_smolvlm",
    "tiny_tokenizer",
    "word_tokenizer",
]
