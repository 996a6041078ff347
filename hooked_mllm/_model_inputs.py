"""How ``HookedMLLM`` turns what a user passes into a ``MultimodalBatch``, and text into tokens.

Purpose:
    ``prepare`` (images and prompts through the processor), ``to_batch`` (a batch, HF tensors,
    HF keywords or text), ``text_batch`` (text only), the keyword check that names an unknown keyword
    and the closest known one, ``device`` (where inputs go), and TransformerLens' token helpers
    (``tokenizer``, ``to_tokens``, ``to_string``, ``to_str_tokens``, ``to_single_token``,
    ``to_single_str_token``, ``get_token_position``). Rows are padded with
    :func:`hooked_mllm._runtime.plan.pad_id`.

Connections:
    Mixed into :class:`~hooked_mllm.model.HookedMLLM`; reads its ``processor``, ``cfg``,
    ``adapter``, ``hf_model`` and ``remote``; encoding is :mod:`hooked_mllm.inputs`, span finding
    :mod:`hooked_mllm.spans`.

Contents:
    ``InputsMixin``: the mixin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Int
from torch import Tensor

from ._runtime import keywords as run_keywords
from ._runtime import plan
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

    # -- text and tokens -------------------------------------------------------------

    def text_batch(
        self, text: str | Sequence[str], prepend_bos: bool = True, padding_side: str = "left"
    ) -> MultimodalBatch:
        """A text-only :class:`~hooked_mllm.inputs.MultimodalBatch`: ``model("a prompt")`` and every run
        method take strings through it.

        Tokenized as :meth:`to_tokens` (BOS prepended, no chat template), left-padded by default
        (as :meth:`prepare` pads) with an attention mask over the real tokens.

        Raises:
            ValueError: The text holds the image placeholder token (a text-only run has no image
                to put there: use :meth:`prepare` with images), or the model has no tokenizer.

        Examples:
            >>> logits = model("a red circle")                 # doctest: +SKIP
            >>> logits, cache = model.run_with_cache(["a red circle", "two squares"])   # doctest: +SKIP
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("Text input must be a string or a non-empty list of strings.")
        tokenizer = self._need_tokenizer()
        rows = [self.to_tokens(t, prepend_bos=prepend_bos, move_to_device=False)[0] for t in texts]
        image_id = self.cfg.image_token_id
        for t, row in zip(texts, rows):
            if image_id is not None and bool((row == image_id).any()):
                raise ValueError(
                    f"The text {t!r} holds the image placeholder token (id {image_id}), but a text-only run "
                    "has no image for it; pass images with model.prepare(images=..., prompts=...)."
                )
            if row.numel() == 0:
                raise ValueError(f"The text {t!r} encodes to no tokens; give each prompt at least one token.")
        width = max(row.numel() for row in rows)
        pad = plan.pad_id(tokenizer)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            where = slice(width - row.numel(), width) if padding_side == "left" else slice(0, row.numel())
            ids[i, where], mask[i, where] = row, 1
        return MultimodalBatch.from_hf(
            {"input_ids": ids, "attention_mask": mask},
            image_token_id=image_id,
            adapter=self.adapter,
            config=self.hf_model.config,
            tokenizer=tokenizer,
            prompts=texts,
        )

    @property
    def tokenizer(self) -> Any:
        """The text tokenizer (the processor's, or the processor itself), or None."""
        if self.processor is None:
            return None
        return getattr(self.processor, "tokenizer", None) or (
            self.processor if hasattr(self.processor, "encode") else None
        )

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("This model has no tokenizer (no processor was given); pass token ids instead.")
        return self.tokenizer

    def to_tokens(
        self,
        input: str | list[str],
        prepend_bos: bool = True,
        padding_side: str = "right",
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids of text, ``[batch, pos]``, BOS prepended (if the tokenizer has one), right-padded.

        Text only: image placeholders are not expanded (use :meth:`prepare` for a multimodal batch).
        As in TransformerLens, ``truncate`` cuts each row to ``cfg.n_ctx`` tokens (when known).

        Examples:
            >>> model.to_tokens("a red circle").shape       # doctest: +SKIP
            torch.Size([1, 4])
        """
        tokenizer = self._need_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        rows = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        if prepend_bos and tokenizer.bos_token_id is not None:
            rows = [[tokenizer.bos_token_id, *row] for row in rows]
        if truncate and self.cfg.n_ctx is not None:
            rows = [row[: self.cfg.n_ctx] for row in rows]
        width = max(len(row) for row in rows)
        pad = plan.pad_id(tokenizer)
        out = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            if padding_side == "left":
                out[i, width - len(row) :] = torch.tensor(row)
            else:
                out[i, : len(row)] = torch.tensor(row)
        return out.to(self.device) if move_to_device else out

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids: ``[pos]`` gives a string, ``[batch, pos]`` a list of strings."""
        tokenizer = self._need_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [tokenizer.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]
        return tokenizer.decode(tokens.tolist(), clean_up_tokenization_spaces=False)

    def to_str_tokens(
        self, input: str | list[str] | Tensor | Sequence[int], prepend_bos: bool = True
    ) -> list[str] | list[list[str]]:
        """Each token as a string: for text (tokenized as :meth:`to_tokens`) or ids (``[pos]`` or
        ``[1, pos]``).
        """
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self._str_tokens(text, prepend_bos) for text in cast(list[str], input)]
        return self._str_tokens(cast("str | Tensor | Sequence[int]", input), prepend_bos)

    def _str_tokens(self, input: str | Tensor | Sequence[int], prepend_bos: bool) -> list[str]:
        tokenizer = self._need_tokenizer()
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos, move_to_device=False)[0]
        else:
            ids = torch.as_tensor(input)
            if ids.dim() == 2:
                if ids.shape[0] != 1:
                    raise ValueError(f"to_str_tokens takes one row of ids, got shape {tuple(ids.shape)}")
                ids = ids[0]
        return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids.tolist()]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS).

        Raises:
            ValueError: if it is several tokens.
        """
        ids = self.to_tokens(string, prepend_bos=False, move_to_device=False)[0]
        if ids.numel() != 1:
            raise ValueError(f"{string!r} is {ids.numel()} tokens, not one: {self.to_str_tokens(ids)}")
        return int(ids[0])

    def to_single_str_token(self, int_token: int | Tensor) -> str:
        """The string of one token id.

        Examples:
            >>> model.to_single_str_token(5)    # doctest: +SKIP
            'red'
        """
        if isinstance(int_token, Tensor):
            if int_token.numel() != 1:
                raise ValueError(f"to_single_str_token takes one id, got shape {tuple(int_token.shape)}.")
            int_token = int(int_token)
        return self._need_tokenizer().decode([int(int_token)], clean_up_tokenization_spaces=False)

    def get_token_position(
        self,
        single_token: str | int,
        input: str | Tensor,
        mode: str = "first",
        prepend_bos: bool = True,
        padding_side: str = "right",
    ) -> int:
        """The position of ``single_token`` (a one-token string or an id) in ``input`` (text or one row of
        ids): its ``"first"`` or ``"last"`` occurrence.

        Raises:
            ValueError: the token does not occur, ``mode`` is unknown, or ``input`` has several rows.

        Examples:
            >>> model.get_token_position("red", "a red circle")   # doctest: +SKIP
            2
        """
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}.")
        if isinstance(input, str):
            ids = self.to_tokens(
                input, prepend_bos=prepend_bos, padding_side=padding_side, move_to_device=False
            )
        else:
            ids = torch.as_tensor(input)
        ids = ids[None] if ids.dim() == 1 else ids
        if ids.shape[0] != 1:
            raise ValueError(f"get_token_position takes one row, got shape {tuple(ids.shape)}.")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        where = (ids[0].cpu() == token).nonzero().flatten().tolist()
        if not where:
            raise ValueError(f"Token {single_token!r} (id {token}) does not occur in the input.")
        return where[0] if mode == "first" else where[-1]
