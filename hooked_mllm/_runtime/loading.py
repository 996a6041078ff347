"""Loading a Hugging Face model and its processor for :meth:`HookedMLLM.from_pretrained`.

Purpose:
    The HF Auto classes with the keywords ``from_pretrained`` accepts, the causal-LM fallback for
    remote code registered only as ``AutoModelForCausalLM`` (Molmo), and the processor loaded with
    the same pinned revision as the weights. A request for transformers' tensor parallelism is
    refused before anything loads (:func:`refuse_tensor_parallel`): nnsight 0.8.1 cannot trace a
    tensor-parallel transformers 5.24 model (its controller takes the ``forward`` slot in which
    transformers installs each sharded module's input and output transforms, so the first sharded
    module fails with ``got mixed torch.Tensor and DTensor``; nnsight's own tensor-parallel support
    imports ``transformers.distributed.tensor_parallel._get_parameter_plan``, which transformers 5.24
    no longer has). ``benchmarks/tensor_parallel_probe.py`` shows both under ``torchrun``.

Connections:
    Called by :meth:`hooked_mllm.model.HookedMLLM.from_pretrained` (local models; the tensor-parallel
    check by the wrapper's constructor too);
    :mod:`hooked_mllm._runtime.remote` loads remote ones with the same processor keywords.

Contents:
    ``PROCESSOR_LOADING``, ``check_local_path``, ``load_local``, ``TP_ARGUMENTS``, ``refuse_tensor_parallel``.

Examples:
    >>> refuse_tensor_parallel({"dtype": "float32"})   # nothing asked: returns
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

PROCESSOR_LOADING = (
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "proxies",
    "force_download",
    "code_revision",
)
"""The keywords of ``from_pretrained`` that go to ``AutoProcessor`` too, so a pinned revision pins both."""


def check_local_path(name_or_path: str | os.PathLike[str]) -> None:
    """Refuse a local checkpoint path that does not exist, before transformers reads it as a Hub id.

    A path is local when it is absolute, starts with ``.`` or ``~``, or has more than one ``/``
    (a Hub id is ``name`` or ``org/name``).

    Raises:
        FileNotFoundError: ``name_or_path`` is a local path and nothing is there.

    Examples:
        >>> check_local_path("./checkpoints/nope")   # doctest: +SKIP
        FileNotFoundError: No checkpoint folder at ./checkpoints/nope ...
    """
    text = os.fspath(name_or_path)
    local = isinstance(name_or_path, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if local and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"No checkpoint folder at {text} (the path does not exist)")


def load_local(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None,
    device: torch.device | str | None,
    device_map: Any,
    attn_implementation: str | None,
    trust_remote_code: bool,
    **hf_kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """The HF model (moved to ``device`` unless ``device_map`` places it) and its processor.

    The processor is None when none loads (then runs take HF tensors).

    Examples:
        >>> hf_model, processor = load_local(path, dtype=None, device=None, device_map=None,
        ...     attn_implementation=None, trust_remote_code=False)   # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    check_local_path(name_or_path)
    kwargs: dict[str, Any] = dict(hf_kwargs, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        hf_model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    except ValueError as error:  # remote code registered only as a causal LM (Molmo's MolmoForCausalLM)
        if "Unrecognized configuration class" not in str(error):
            raise
        hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if device is not None and device_map is None:
        hf_model = hf_model.to(device)  # type: ignore[arg-type]  # transformers wraps .to
    try:
        loading = {k: hf_kwargs[k] for k in PROCESSOR_LOADING if k in hf_kwargs}
        processor = AutoProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **loading
        )
    except (OSError, ValueError, TypeError) as error:
        logger.warning(
            "No processor loaded from %s (%s); pass HF tensors to run methods.", name_or_path, error
        )
        processor = None
    return hf_model, processor


#: Loading arguments of transformers that ask for tensor parallelism.
TP_ARGUMENTS = ("tp_plan", "tp_size", "distributed_config")

REASON = (
    "nnsight 0.8.1 cannot trace a tensor-parallel transformers 5.24 model: its wrapper takes the forward "
    "slot where transformers installs each sharded module's transforms (the first forward fails with "
    "'got mixed torch.Tensor and DTensor'), and its own tensor-parallel support imports "
    "transformers.distributed.tensor_parallel._get_parameter_plan, which transformers 5.24 removed. Split a "
    "model too large for one device with device_map='auto' (and max_memory), or speed up feature extraction "
    "with data-parallel processes (torchrun ... -m hooked_mllm.cli -- extract; see docs/scale.md)."
)


def refuse_tensor_parallel(kwargs: dict[str, Any] | None = None, model: Any = None) -> None:
    """Raise a ValueError if loading ``kwargs`` ask for tensor parallelism or ``model`` is sharded."""
    kwargs = dict(kwargs or {})
    config = kwargs.pop("distributed_config", None)
    asked = [k for k in TP_ARGUMENTS if kwargs.get(k) not in (None, 1)]
    tp_size = getattr(config, "tp_size", None) or 1
    if config is not None and (getattr(config, "tp_plan", None) or tp_size > 1):
        asked.append("distributed_config")
    if asked:
        raise ValueError(
            f"Tensor parallelism ({', '.join(f'{k}=' for k in asked)}) is not supported: {REASON}"
        )
    mesh = getattr(model, "_device_mesh", None)
    if mesh is not None and getattr(mesh, "size", lambda: 1)() > 1:
        raise ValueError(
            f"This model is sharded across {mesh.size()} ranks (tensor parallelism), which is "
            f"not supported: {REASON}"
        )
