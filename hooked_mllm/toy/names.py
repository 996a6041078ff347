"""Names of the toy checkpoints and training stages, importable without torch (the CLI's parser uses them).

Examples:
    >>> "toy-llava" in CHECKPOINTS
    True
"""

from __future__ import annotations

CHECKPOINTS: tuple[str, ...] = (
    "toy-llava",
    "toy-llava-ft",
    "toy-lm",
    "toy-llava-deep",
    "toy-llava-deep-ft",
    "toy-video",
)
"""Names of the shipped checkpoints. ``toy-llava`` captions with shapes only ("a circle and a square");
``toy-llava-ft`` is toy-llava fine-tuned to caption with colours ("a red circle and a blue square").
The LLaVA recipe's (:mod:`hooked_mllm.toy.recipe`): ``toy-lm``, a text-only LM of the world's words;
``toy-llava-deep``, a 6-layer LLaVA built on it; ``toy-llava-deep-ft``, its twin that captions with
colours. ``toy-video``: a LLaVA-OneVision built from ``toy-llava-deep`` that answers questions about clips of
the video world (:mod:`hooked_mllm.toy.video`)."""

STAGE_NAMES: tuple[str, ...] = (
    "toy-lm-base",
    "toy-lm-restart",
    "toy-lm-small",
    "toy-lm",
    "toy-llava-deep-align",
    "toy-llava-deep",
    "toy-llava-deep-ft",
)
"""The stages of the LLaVA recipe on the toy world (:data:`hooked_mllm.toy.recipe.STAGES`), in training
order.
"""

VIDEO_NAMES: tuple[str, ...] = ("toy-video",)
"""The toy video model (:mod:`hooked_mllm.toy.video_model`): a LLaVA-OneVision built from ``toy-llava-deep``
and trained on clips of the video world (:mod:`hooked_mllm.toy.video`)."""
