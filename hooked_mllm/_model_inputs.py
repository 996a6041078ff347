"""How ``HookedMLLM`` turns what a user passes into a :class:`~hooked_mllm.inputs.MultimodalBatch`.

Purpose:
    ``prepare`` (images and prompts through the processor), ``to_batch`` (a batch, HF tensors,
    HF keywords or text), the keyword check that names an unknown keyword and the closest known
    one, and ``device`` (where inputs go).

Connections:
    Mixed into :class:`~hooked_mllm.model.HookedMLLM`; reads its ``processor``, ``cfg``,
    ``adapter``, ``hf_model`` and ``remote``; encoding is :mod:`hooked_mllm.inputs`, span finding
    :mod:`hooked_mllm.spans`.

Contents:
    ``InputsMixin``: the mixin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._runtime import keywords as run_keywords
from ._runtime.offload import execution_device
from .inputs import MultimodalBatch, prepare, processor_token_counts

if TYPE_CHECKING:
    from ._runtime.remote_host import Remote
    from .architectures.base import Adapter
    from .config import MLLMConfig


class InputsMixin:
    """Input handling of :class:`~hooked_mllm.model.HookedMLLM` (see there).

    Examples:
        >>> hf = processor(images=[image], text=[prompt], return_tensors="pt")  # doctest: +SKIP
        >>> batch = model.to_batch(**hf)                                         # doctest: +SKIP
    """

    hf_model: torch.nn.Module
    processor: Any
    adapter: Adapter
    cfg: MLLMConfig
    remote: bool | str | Remote

    if TYPE_CHECKING:

        def text_batch(
            self, text: str | Sequence[str], prepend_bos: bool = True, padding_side: str = "left"
        ) -> MultimodalBatch: ...

    def prepare(
        self,
        *,
        images: Any = None,
        prompts: str | Sequence[str],
        videos: Any = None,
        chat_template: bool = True,
        padding_side: str = "left",
        **processor_kwargs: Any,
    ) -> MultimodalBatch:
        """Encode images, videos and prompts into one :class:`~hooked_mllm.inputs.MultimodalBatch`.

        See :func:`hooked_mllm.inputs.prepare` (``videos=``: one video per prompt, a list of PIL
        frames or an array ``[T, H, W, C]``, for the families in docs/video.md).
        """
        return prepare(
            self.processor,
            images=images,
            prompts=prompts,
            videos=videos,
            chat_template=chat_template,
            padding_side=padding_side,
            image_token_id=self.cfg.image_token_id,
            adapter=self.adapter,
            config=self.hf_model.config,
            **processor_kwargs,
        )

    def to_batch(self, inputs: Any = None, **hf_kwargs: Any) -> MultimodalBatch:
        """A :class:`MultimodalBatch` from a batch, a dict of HF tensors, HF keywords, or text.

        A dict or keywords may hold every key the model's processor returns; an unknown
        key is an error naming it (and the closest known one). A string or a list of
        strings is a text-only batch (:meth:`text_batch`); a ``[pos]`` or ``[batch, pos]`` tensor of
        token ids (``model.to_tokens(...)``) is one too, every id attended.
        """
        if isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)
        ):
            if hf_kwargs:
                raise ValueError(
                    f"Pass either text or HF input tensors, not both (got text and "
                    f"{', '.join(sorted(hf_kwargs))})."
                )
            return self.text_batch(inputs)
        if isinstance(inputs, Tensor) and not inputs.is_floating_point() and inputs.dim() in (1, 2):
            ids = (inputs[None] if inputs.dim() == 1 else inputs).long()  # TransformerLens' model(tokens)
            image_id = self.cfg.image_token_id
            if image_id is not None and bool((ids == image_id).any()):
                raise ValueError(
                    "The token ids hold the image placeholder token, but a run of bare ids has no image for "
                    "it; pass images with model.prepare(images=..., prompts=...)."
                )
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if isinstance(inputs, MultimodalBatch):
            if hf_kwargs:
                raise ValueError(
                    "Pass either a MultimodalBatch or HF input tensors, not both (got a batch and "
                    f"{', '.join(sorted(hf_kwargs))})."
                )
            return inputs
        if inputs is not None and not isinstance(inputs, dict) and not hasattr(inputs, "keys"):
            raise TypeError(
                f"Inputs must be a MultimodalBatch (model.prepare(...)) or HF tensors; got "
                f"{type(inputs).__name__}."
            )
        tensors = dict(inputs or {}, **hf_kwargs)
        self._check_keywords("to_batch", tensors, ())
        tokenizer = getattr(self.processor, "tokenizer", None)
        return MultimodalBatch.from_hf(
            tensors,
            image_token_id=self.cfg.image_token_id,
            adapter=self.adapter,
            config=self.hf_model.config,
            tokenizer=tokenizer,
            image_token_counts=self._token_counts(tensors),
        )

    def _token_counts(self, tensors: dict) -> list[int] | None:
        """Each image's token count as the processor computes it, from the HF tensors (None if unknown):
        from ``image_sizes`` where given, else from ``pixel_values`` of one resized image per entry."""
        sizes = tensors.get("image_sizes")
        if isinstance(sizes, Tensor) and sizes.dim() == 2:
            return processor_token_counts(self.processor, sizes.tolist())
        pixels = tensors.get("pixel_values")
        one_per_image = (
            "pixel_values" not in dict(self.adapter.inputs.split) and self.adapter.tokens.grids is None
        )
        if isinstance(pixels, Tensor) and pixels.dim() == 4 and one_per_image:
            return processor_token_counts(self.processor, [tuple(pixels.shape[-2:])] * pixels.shape[0])
        return None

    @property
    def _input_names(self) -> frozenset[str]:
        """The named inputs of the HF model's forward (every key its processor returns).

        Cached by hand: a ``functools.cached_property`` holds a lock on Python 3.11, which
        would stop the class from travelling by value with a remote request."""
        if "_input_names_cache" not in self.__dict__:
            self.__dict__["_input_names_cache"] = run_keywords.input_names(self.hf_model)
        return self.__dict__["_input_names_cache"]

    def _check_keywords(self, method: str, keywords: dict, own: Sequence[str]) -> None:
        """Raise ``TypeError`` for a keyword that is neither ``method``'s own nor an HF input or option."""
        run_keywords.check(method, keywords, own, self._input_names)

    def _batch_and_options(
        self, method: str, inputs: Any, hf_kwargs: dict, own: Sequence[str]
    ) -> tuple[MultimodalBatch, dict]:
        """Check ``hf_kwargs``; tensors make the batch, other values (``output_attentions=True``,
        ``vision_feature_layer=-2``...) are options for the HF call."""
        self._check_keywords(method, hf_kwargs, own)
        options = {k: v for k, v in hf_kwargs.items() if not isinstance(v, Tensor)}
        tensors = {k: v for k, v in hf_kwargs.items() if isinstance(v, Tensor)}
        return self.to_batch(inputs, **tensors), options

    @property
    def device(self) -> torch.device:
        """Where inputs go: the model's execution device.

        The CPU for a remote model: the server places them.
        """
        return torch.device("cpu") if self.remote else execution_device(self.hf_model)
