"""Build, save, locate and load the toy LLaVA checkpoints.

Purpose:
    The toy default of the library: a real ``LlavaForConditionalGeneration`` (CLIP vision tower, two-layer
    projector, Llama language model) small enough to train on a CPU, shipped as Hub-format checkpoints in
    ``hooked_mllm/toy/checkpoints/<name>/``.

Connections:
    :mod:`hooked_mllm.toy.training` builds models with :func:`build_model` and writes checkpoints with
    :func:`save_checkpoint`; :func:`load` hands a shipped checkpoint to ``hooked_mllm.HookedMLLM``.

Contents:
    :data:`CHECKPOINTS`, :func:`toy_config`, :func:`build_model`, :func:`checkpoint_dir`,
    :func:`save_checkpoint`, :func:`load`.
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

__all__ = ["CHECKPOINTS", "build_model", "checkpoint_dir", "load", "save_checkpoint", "toy_config"]

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
    it (:func:`hooked_mllm.toy.heads.load_for_heads`): run it on text (``model("...")``, HF ``input_ids``),
    with the same hook names as the VLMs; its vision tower is untrained and takes no part in a text run.

    Examples:
        >>> from hooked_mllm import toy
        >>> model = toy.load("toy-llava")  # doctest: +SKIP
        >>> text_model = toy.load("toy-lm")  # doctest: +SKIP
    """
    from hooked_mllm import HookedMLLM  # the core imports heavy machinery; keep `toy` light
    from hooked_mllm.toy.science import checkpoint_kind

    path = checkpoint_dir(name)
    if checkpoint_kind(path) == "text":
        if kwargs:
            raise TypeError(
                f"{name} is a text-only LM and loads without options; got {', '.join(sorted(kwargs))} "
                "(cast or move it afterwards: model.to(...))."
            )
        from hooked_mllm.toy.heads import load_for_heads

        return load_for_heads(path)
    return HookedMLLM.from_pretrained(str(path), **kwargs)
