"""The toy LLaVA's ``LlavaProcessor``: word-level tokenizer + PIL CLIP image processor + chat template.

Purpose:
    Build the processor saved with every toy checkpoint, so ``AutoProcessor.from_pretrained(dir)`` gives a
    standard ``LlavaProcessor`` that expands ``<image>`` into :data:`NUM_IMAGE_TOKENS` image tokens and
    formats prompts with :data:`CHAT_TEMPLATE`.

Connections:
    Uses :func:`hooked_mllm.toy.tokenizer.build_tokenizer` and the geometry of :mod:`hooked_mllm.toy.world`;
    :mod:`hooked_mllm.toy.model` saves it next to the weights; :mod:`hooked_mllm.toy.training` and
    :mod:`hooked_mllm.toy.evaluation` build their inputs with it (:func:`prompt_text`).

Contents:
    :data:`CHAT_TEMPLATE`, :data:`NUM_IMAGE_TOKENS`, :data:`CAPTION_PROMPT`, :func:`build_processor`,
    :func:`prompt_text`.

Prompt format (one turn; the tokenizer adds ``<s>``)::

    <s> USER: <image> what color is the circle ? ASSISTANT: red </s>

where ``<image>`` becomes 36 ``<image>`` tokens (a 6 x 6 grid of 8-px patches, CLS dropped) and the model
generates the answer words followed by ``</s>``.
"""

from __future__ import annotations

from transformers import CLIPImageProcessorPil, LlavaProcessor

from hooked_mllm.toy.tokenizer import build_tokenizer
from hooked_mllm.toy.world import IMAGE_SIZE, PATCH, PATCH_GRID

__all__ = ["CAPTION_PROMPT", "CHAT_TEMPLATE", "NUM_IMAGE_TOKENS", "build_processor", "prompt_text"]

NUM_IMAGE_TOKENS = PATCH_GRID * PATCH_GRID
"""Image tokens per image: one per 8-px patch of the 48 x 48 image, row-major (the CLS token is dropped)."""

CAPTION_PROMPT = "describe the image ."
"""The user text that asks for a caption."""

# "USER: <image> {text} ASSISTANT:" per user turn, " {text} </s>" per assistant turn (Vicuna/LLaVA-1.5 style).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'USER:' }}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ ' <image>' }}{% endif %}"
    "{% endfor %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ ' ' + item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ASSISTANT:' }}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{{ ' ' + item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ ' </s>' }}{% if not loop.last %}{{ ' ' }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


def build_processor() -> LlavaProcessor:
    """A fresh ``LlavaProcessor`` for 48 x 48 images (no-op resize and crop; pixels scaled to ``[0, 1]``).

    Examples:
        >>> from hooked_mllm.toy.world import World
        >>> proc = build_processor()
        >>> scene = World(seed=0).sample(1)[0]
        >>> batch = proc(images=[scene.image], text=[prompt_text("how many objects ?")], return_tensors="pt")
        >>> int((batch["input_ids"] == proc.image_token_id).sum())
        36
    """
    image_processor = CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.0, 0.0, 0.0],  # keep the black background at exactly 0: its patches embed to 0
        image_std=[1.0, 1.0, 1.0],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def prompt_text(question: str) -> str:
    """The chat-formatted prompt for one image and one question, without ``<s>`` (the tokenizer adds it).

    Identical to ``processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
    {"type": "text", "text": question}]}], add_generation_prompt=True)``.

    Examples:
        >>> prompt_text("how many objects ?")
        'USER: <image> how many objects ? ASSISTANT:'
    """
    return f"USER: <image> {question} ASSISTANT:"
