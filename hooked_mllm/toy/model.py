"""Build, save, locate and load the toy LLaVA checkpoints.

Purpose:
    The toy default of the library: a real ``LlavaForConditionalGeneration`` (CLIP vision tower, two-layer
    projector, Llama language model) small enough to train on a CPU, shipped as Hub-format checkpoints in
    ``hooked_mllm/toy/checkpoints/<name>/``.

Connections:
    :mod:`hooked_mllm.toy.training` builds models with :func:`build_model` and writes checkpoints with
    :func:`save_checkpoint`; :func:`load` hands a shipped checkpoint to ``hooked_mllm.HookedMLLM``.

Contents:
    :data:`CHECKPOINTS`, :func:`toy_config`, :func:`build_model`, :func:`vlm_from_text_lm` (a toy LLaVA
    around a text LM), :func:`checkpoint_dir`, :func:`checkpoint_kind`, :func:`save_checkpoint`,
    :func:`load`, :func:`load_for_heads`, :func:`load_video` (``toy-video``). Everything that builds,
    saves, locates or loads a toy model is here, so the training, evaluation and science modules import
    this one and it imports none of them (the video model's processor comes from
    :mod:`hooked_mllm.toy.video_processor`, which imports no model code).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from hooked_mllm.toy.names import CHECKPOINTS as CHECKPOINTS
from hooked_mllm.toy.processor import NUM_IMAGE_TOKENS
from hooked_mllm.toy.tokenizer import SPECIAL_TOKENS, VOCAB
from hooked_mllm.toy.world import IMAGE_SIZE, PATCH

__all__ = [
    "CHECKPOINTS",
    "build_model",
    "checkpoint_dir",
    "checkpoint_kind",
    "load",
    "load_for_heads",
    "load_video",
    "save_checkpoint",
    "toy_config",
    "vlm_from_text_lm",
]

_CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"


def toy_config(
    *,
    vision_hidden: int = 96,
    vision_layers: int = 3,
    vision_heads: int = 4,
    text_hidden: int = 128,
    text_layers: int = 4,
    text_heads: int = 4,
    text_intermediate: int | None = None,
    tie_embeddings: bool = False,
) -> LlavaConfig:
    """The ``LlavaConfig`` of the toy model (defaults are the sizes of ``toy-llava``).

    ``text_intermediate`` is the LM's MLP width (default ``4 * text_hidden``); ``tie_embeddings`` ties the LM
    head to the input embedding (the LLaVA-recipe checkpoints do).
    """
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        num_channels=3,
        hidden_act="quick_gelu",
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=text_hidden,
        intermediate_size=text_intermediate or 4 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        tie_word_embeddings=tie_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=SPECIAL_TOKENS.index("<image>"),
        image_seq_length=NUM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    config.pad_token_id = text.pad_token_id
    config.bos_token_id = text.bos_token_id
    config.eos_token_id = text.eos_token_id
    return config


def build_model(seed: int = 0, **sizes: Any) -> LlavaForConditionalGeneration:
    """A freshly initialised toy LLaVA (float32, eval mode), deterministic per ``seed``.

    ``sizes`` are passed to :func:`toy_config`.
    """
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(toy_config(**sizes))
    gen = model.generation_config
    gen.pad_token_id = model.config.pad_token_id
    gen.bos_token_id = model.config.bos_token_id
    gen.eos_token_id = model.config.eos_token_id
    gen.do_sample = False
    gen.max_new_tokens = 16
    return model.eval()


def checkpoint_dir(name: str = "toy-llava") -> Path:
    """Directory of a shipped checkpoint (``hooked_mllm/toy/checkpoints/<name>/``).

    Raises:
        ValueError: for a name not in :data:`CHECKPOINTS`.
        FileNotFoundError: if the checkpoint is not present in this installation.
    """
    if name not in CHECKPOINTS:
        raise ValueError(f"Unknown toy checkpoint {name!r}; the shipped ones are {list(CHECKPOINTS)}.")
    path = _CHECKPOINT_ROOT / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"Toy checkpoint {name!r} is missing at {path}; rebuild it with "
            f"`hooked-mllm toy train --name {name} --out {path}`."
        )
    return path


def save_checkpoint(
    model: PreTrainedModel,
    processor: ProcessorMixin | PreTrainedTokenizerBase,
    out: str | os.PathLike[str],
    *,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save ``model`` (safetensors) and ``processor`` (tokenizer, image processor, chat template) to ``out``.

    ``model`` is the LLaVA or, for the text stage of :mod:`hooked_mllm.toy.recipe`, its language model alone;
    ``processor`` its ``LlavaProcessor`` or tokenizer.

    Writes into a temporary sibling directory and renames it over ``out`` at the end, so an interrupted save
    never leaves a half-written checkpoint. ``extra_files`` maps file names to text written alongside.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        tmp.chmod(0o755)  # mkdtemp makes the directory private; a checkpoint is ordinary package data
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load(name: str = "toy-llava", **kwargs: Any):
    """``hooked_mllm.HookedMLLM.from_pretrained(checkpoint_dir(name), **kwargs)``.

    A text-only checkpoint (``toy-lm``) loads inside a toy LLaVA whose language model is an exact copy of
    it (:func:`load_for_heads`): run it on text (``model("...")``, HF ``input_ids``),
    with the same hook names as the VLMs; its vision tower is untrained and takes no part in a text run.
    The video model (``toy-video``) loads with its processor built in code
    (:func:`load_video`): it takes clips (``model.prepare(videos=...)``).

    Examples:
        >>> from hooked_mllm import toy
        >>> model = toy.load("toy-llava")  # doctest: +SKIP
        >>> text_model = toy.load("toy-lm")  # doctest: +SKIP
    """
    from hooked_mllm import HookedMLLM  # the core imports heavy machinery; keep `toy` light

    path = checkpoint_dir(name)
    if checkpoint_kind(path) == "video":
        return load_video(path, **kwargs)
    if checkpoint_kind(path) == "text":
        if kwargs:
            raise TypeError(
                f"{name} is a text-only LM and loads without options; got {', '.join(sorted(kwargs))} "
                "(cast or move it afterwards: model.to(...))."
            )
        return load_for_heads(path)
    return HookedMLLM.from_pretrained(str(path), **kwargs)


def checkpoint_kind(model: str | os.PathLike[str]) -> str:
    """``"text"`` for a text-only toy LM (``toy-lm``), ``"video"`` for the toy video model (``toy-video``),
    else ``"image"``; ``model`` is a directory or a shipped checkpoint name (read from its
    ``toy_meta.json``)."""
    import json

    path = Path(model)
    if not path.exists() and str(model) in CHECKPOINTS:
        path = checkpoint_dir(str(model))
    meta = path / "toy_meta.json"
    return json.loads(meta.read_text()).get("kind", "image") if meta.is_file() else "image"


def load_for_heads(path: str | os.PathLike[str]) -> Any:
    """A :class:`~hooked_mllm.HookedMLLM` for a toy checkpoint directory: a VLM as it is, a text LM inside a
    LLaVA whose language model is a copy of it (run it with text-only inputs, ``mode="text"``).

    Examples:
        >>> model = load_for_heads(toy.checkpoint_dir("toy-llava"))  # doctest: +SKIP
    """
    from hooked_mllm import HookedMLLM
    from hooked_mllm.toy.processor import build_processor

    if checkpoint_kind(path) == "video":
        return load_video(path)
    if checkpoint_kind(path) != "text":
        return HookedMLLM.from_pretrained(str(path))
    from transformers import LlamaForCausalLM

    lm = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    return HookedMLLM.from_hf(vlm_from_text_lm(lm).eval(), processor=build_processor())


def vlm_from_text_lm(
    lm: LlamaForCausalLM,
    seed: int = 0,
    *,
    vision_from: str | os.PathLike[str] | None = None,
    **vision_sizes: int,
) -> LlavaForConditionalGeneration:
    """A toy LLaVA (fresh projector, seeded) whose language model is a copy of ``lm``.

    The vision tower is freshly initialised, or copied from the LLaVA checkpoint directory ``vision_from``
    (its sizes then come from that checkpoint).

    Examples:
        >>> lm = build_text_lm(0)                                                    # doctest: +SKIP
        >>> vlm = vlm_from_text_lm(lm, vision_from=checkpoint_dir("toy-llava"))      # doctest: +SKIP
    """
    donor = None
    if vision_from is not None:
        donor = LlavaForConditionalGeneration.from_pretrained(vision_from, dtype=torch.float32)
        vc = donor.config.vision_config
        assert isinstance(vc, CLIPVisionConfig)  # the toy LLaVAs have a CLIP tower
        vision_sizes = {"vision_hidden": vc.hidden_size, "vision_layers": vc.num_hidden_layers,
                        "vision_heads": vc.num_attention_heads}  # fmt: skip
    tc = lm.config
    sizes = {
        "text_layers": tc.num_hidden_layers, "text_hidden": tc.hidden_size,
        "text_heads": tc.num_attention_heads, "text_intermediate": tc.intermediate_size,
        "tie_embeddings": bool(tc.tie_word_embeddings), **vision_sizes,
    }  # fmt: skip
    vlm = build_model(seed, **sizes)
    vlm.model.language_model.load_state_dict(lm.model.state_dict())
    if donor is not None:
        vlm.model.vision_tower.load_state_dict(donor.model.vision_tower.state_dict())
    if not tc.tie_word_embeddings:
        vlm.lm_head.load_state_dict(lm.lm_head.state_dict())
    return vlm


def load_video(path: str | os.PathLike[str] | None = None, **kwargs: Any):
    """A :class:`~hooked_mllm.HookedMLLM` of ``toy-video`` (or the video checkpoint folder ``path``) with its
    processor (:func:`hooked_mllm.toy.video_processor.build_video_processor`, built in code: its video
    processor needs no torchvision and is no transformers class, so the folder keeps only the tokenizer).

    ``kwargs`` go to ``LlavaOnevisionForConditionalGeneration.from_pretrained``.

    Examples:
        >>> model = load_video()                                                   # doctest: +SKIP
        >>> clip = toy.VideoWorld(seed=1).clip(0)                                  # doctest: +SKIP
        >>> prompts = ["which object moved ?"]
        >>> batch = model.prepare(videos=[list(clip.frames)], prompts=prompts)     # doctest: +SKIP
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    from hooked_mllm import HookedMLLM
    from hooked_mllm.toy.video_processor import build_video_processor

    src = Path(path) if path is not None else checkpoint_dir("toy-video")
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(src, dtype=torch.float32, **kwargs).eval()
    return HookedMLLM.from_hf(hf, processor=build_video_processor())
