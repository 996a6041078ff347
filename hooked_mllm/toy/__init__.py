"""The embedded toy default: a synthetic visual world and small trained LLaVA checkpoints in the package.

Purpose:
    A model whose ground truth is known exactly, so every tool of hooked_mllm can be tried, tested and taught
    without a download: which image tokens show which object (:class:`World` scenes carry masks and
    ``patch_indices``), what the model answers (scored per question type, see docs/toy.md), and a
    fine-tuned twin whose behaviour differs in one documented way (captions with colours) for model-diffing.
    LLaVA's recipe (:mod:`hooked_mllm.toy.recipe`) adds ``toy-lm`` (text only), ``toy-llava-deep`` (image
    tokens that read as words; visual QA on the text model's heads) and its twin ``toy-llava-deep-ft``.
    A video world (:mod:`hooked_mllm.toy.video`: clips in which one object moves) and ``toy-video``, a
    LLaVA-OneVision built from ``toy-llava-deep`` (:mod:`hooked_mllm.toy.video_model`), score video tools.

Connections:
    ``world`` (scenes) -> ``tokenizer`` / ``processor`` (Hub-format ``LlavaProcessor``) -> ``model``
    (``LlavaForConditionalGeneration``, checkpoint paths, :func:`load` into ``hooked_mllm.HookedMLLM``) ->
    ``train`` / ``evaluate`` / ``cli``. Submodules that need transformers are imported on first use.

Contents (public API):
    :class:`World`, :class:`Scene`, :class:`SceneObject`, :class:`QA` (from ``world``);
    :func:`checkpoint_dir`, :func:`load`, :data:`CHECKPOINTS`, :func:`build_model` (from ``model``);
    :func:`build_processor`, :func:`prompt_text` (from ``processor``); :func:`train`; :func:`evaluate`;
    the video world and model: :class:`VideoWorld`, :class:`Clip` (from ``video``), :func:`load_video`
    (``toy-video``, a LLaVA-OneVision), :func:`evaluate_video`.

Examples:
    >>> from hooked_mllm import toy
    >>> path = toy.checkpoint_dir("toy-llava")            # doctest: +SKIP
    >>> model = toy.load("toy-llava")                     # doctest: +SKIP
    >>> scene = toy.World(seed=1).sample(1)[0]
"""

from __future__ import annotations

from hooked_mllm._lazy import lazy_exports
from hooked_mllm.toy.world import QA as QA
from hooked_mllm.toy.world import Scene as Scene
from hooked_mllm.toy.world import SceneObject as SceneObject
from hooked_mllm.toy.world import World as World

_NAMES = {
    "CHECKPOINTS": "hooked_mllm.toy.names",
    "build_model": "hooked_mllm.toy.model",
    "checkpoint_dir": "hooked_mllm.toy.model",
    "load": "hooked_mllm.toy.model",
    "build_processor": "hooked_mllm.toy.processor",
    "prompt_text": "hooked_mllm.toy.processor",
    "CAPTION_PROMPT": "hooked_mllm.toy.processor",
    "NUM_IMAGE_TOKENS": "hooked_mllm.toy.processor",
    "train": "hooked_mllm.toy.training",
    "evaluate": "hooked_mllm.toy.evaluation",
    "EvalReport": "hooked_mllm.toy.evaluation",
    "VideoWorld": "hooked_mllm.toy.video",
    "Clip": "hooked_mllm.toy.video",
    "load_video": "hooked_mllm.toy.model",
    "evaluate_video": "hooked_mllm.toy.video_eval",
}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, {})

__all__ = ["QA", "Scene", "SceneObject", "World", *_NAMES]
