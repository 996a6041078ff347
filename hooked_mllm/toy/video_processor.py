"""The toy video model's processor and vocabulary (``toy-video``, :mod:`hooked_mllm.toy.video_model`).

Purpose:
    Build the ``LlavaOnevisionProcessor`` of ``toy-video`` in code, without torchvision: the toy tokenizer
    grown by :data:`VIDEO_WORDS`, a PIL image processor and
    :class:`hooked_mllm.testing.TorchLlavaOnevisionVideoProcessor` for frames, pixels scaled to ``[0, 1]``
    with mean 0 and std 1 as in the still toy models (black stays 0). :mod:`hooked_mllm.toy.model` loads the
    checkpoint with it; training and evaluation build their inputs with it.

Contents:
    :data:`VIDEO_TOKEN`, :data:`VIDEO_WORDS`, :data:`VIDEO_VOCAB`, :data:`VIDEO_CHAT_TEMPLATE`,
    :func:`video_prompt`, :func:`build_video_processor`.

Prompt (one turn; the tokenizer adds ``<s>``)::

    <s> USER: <video> where is the red circle last ? ASSISTANT: bottom </s>
"""

from __future__ import annotations

from hooked_mllm.toy.processor import CHAT_TEMPLATE
from hooked_mllm.toy.tokenizer import VOCAB, build_tokenizer
from hooked_mllm.toy.world import IMAGE_SIZE

__all__ = [
    "VIDEO_CHAT_TEMPLATE",
    "VIDEO_TOKEN",
    "VIDEO_VOCAB",
    "VIDEO_WORDS",
    "build_video_processor",
    "video_prompt",
]

VIDEO_TOKEN = "<video>"
"""The video placeholder (id 48), expanded to 28 tokens for a 3-frame clip."""
VIDEO_WORDS: tuple[str, ...] = (VIDEO_TOKEN, "first", "last", "which", "moved")
"""Tokens the video model adds to the toy vocabulary (ids 48-52)."""

VIDEO_VOCAB: tuple[str, ...] = VOCAB + VIDEO_WORDS
"""The video model's vocabulary: :data:`~hooked_mllm.toy.tokenizer.VOCAB` then :data:`VIDEO_WORDS`."""

_IMAGE_ITEM = "{% if item['type'] == 'image' %}{{ ' <image>' }}{% endif %}"
VIDEO_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    _IMAGE_ITEM, _IMAGE_ITEM + "{% if item['type'] == 'video' %}{{ ' <video>' }}{% endif %}"
)
"""The toy chat template, with ``<video>`` for a video item."""


def video_prompt(question: str) -> str:
    """The chat-formatted prompt for one clip and one question, without ``<s>``.

    Examples:
        >>> video_prompt("which object moved ?")
        'USER: <video> which object moved ? ASSISTANT:'
    """
    return f"USER: {VIDEO_TOKEN} {question} ASSISTANT:"


def build_video_processor():
    """The ``LlavaOnevisionProcessor`` of ``toy-video`` (built in code: its video processor needs no
    torchvision, so it is not read from the checkpoint).

    Examples:
        >>> proc = build_video_processor()
        >>> from hooked_mllm.toy.video import VideoWorld
        >>> clip = VideoWorld(seed=0).clip(0)
        >>> text = [video_prompt("which object moved ?")]
        >>> batch = proc(videos=[list(clip.frames)], text=text, return_tensors="pt")
        >>> int((batch["input_ids"] == proc.video_token_id).sum()), tuple(batch["pixel_values_videos"].shape)
        (28, (1, 3, 3, 48, 48))
    """
    import transformers as tf
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from hooked_mllm.testing._common import without_video
    from hooked_mllm.testing.video import TorchLlavaOnevisionVideoProcessor

    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        image_mean=list(zero),
        image_std=list(one),
    )
    return without_video(tf.LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=build_tokenizer(VIDEO_VOCAB, video_token=VIDEO_TOKEN),
        video_processor=TorchLlavaOnevisionVideoProcessor(size=IMAGE_SIZE, image_mean=zero, image_std=one),
        # the tower's tokens, CLS included as HF counts them ("default" drops it): 6 x 6 + 1; a frame pools
        # to 3 x 3
        num_image_tokens=37,
        vision_feature_select_strategy="default",
        chat_template=VIDEO_CHAT_TEMPLATE,
    )
