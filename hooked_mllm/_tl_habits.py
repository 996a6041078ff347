"""TransformerLens habits that ``HookedMLLM`` adds to its weights: its token helpers and circuits.

Contents: :class:`TLHabitsMixin` with the ``to_tokens`` family (``tokenizer``, ``to_tokens``,
``to_string``, ``to_str_tokens``, ``to_single_token``), ``to_single_str_token``,
``tokens_to_residual_directions``, ``get_token_position`` and the factored ``OV`` / ``QK`` circuits,
each as TransformerLens defines it (tests/test_tl_differential.py runs both on the same weights). Mixed into
:class:`~hooked_mllm._tl_compat.TLCompatMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from .config import MLLMConfig


class TLHabitsMixin:
    """Token helpers and factored circuits a TransformerLens user types from habit.

    Examples:
        >>> model.to_single_str_token(model.to_single_token("red"))   # doctest: +SKIP
        'red'
    """

    if TYPE_CHECKING:  # provided by HookedMLLM and TLCompatMixin
        processor: Any
        cfg: MLLMConfig

        @property
        def device(self) -> torch.device: ...
        @property
        def W_U(self) -> Tensor: ...
        @property
        def W_Q(self) -> Any: ...
        @property
        def W_K(self) -> Any: ...
        @property
        def W_V(self) -> Any: ...
        @property
        def W_O(self) -> Any: ...

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

    def tokens_to_residual_directions(self, tokens: Any) -> Float[Tensor, "... d_model"]:
        """The unembedding column of each token: ``W_U[:, token]``.

        ``tokens``: a one-token string or an id (``[d_model]``), or ``[batch]`` / ``[batch, pos]`` ids
        (``[batch, d_model]`` / ``[batch, pos, d_model]``).

        Examples:
            >>> model.tokens_to_residual_directions("red").shape    # doctest: +SKIP
            torch.Size([4096])
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        ids = torch.as_tensor(tokens)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"tokens must be ids (an int or an integer tensor), got dtype {ids.dtype}.")
        w_u = self.W_U
        return w_u[:, ids.to(w_u.device)].movedim(0, -1)

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

    @property
    def OV(self) -> Any:
        """TransformerLens' ``FactoredMatrix(W_V, W_O)``: ``[n_layers, n_heads, d_model, d_model]``, each
        head's value-output circuit (grouped key/value heads repeated per query head).

        Needs ``transformer-lens`` (the ``tl`` extra).

        Examples:
            >>> model.OV[2, 1].eigenvalues.shape                   # doctest: +SKIP
            torch.Size([128])
        """
        return _factored(_per_head(self.W_V), self.W_O.full())

    @property
    def QK(self) -> Any:
        """TransformerLens' ``FactoredMatrix(W_Q, W_K^T)``: ``[n_layers, n_heads, d_model, d_model]``, each
        head's query-key circuit (grouped key heads repeated per query head).

        Needs ``transformer-lens`` (the ``tl`` extra).

        Examples:
            >>> model.QK[0, 3].AB.shape                             # doctest: +SKIP
            torch.Size([128, 128])
        """
        return _factored(self.W_Q.full(), _per_head(self.W_K).transpose(-2, -1))

    # -- tokens ----------------------------------------------------------------------

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
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
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


def _per_head(weights: Any) -> Tensor:
    """Every layer's key/value heads repeated to the query heads: ``[n_layers, n_heads, ...]``."""
    return torch.stack([weights.expanded(layer) for layer in range(len(weights))])


def _factored(a: Tensor, b: Tensor) -> Any:
    try:
        from transformer_lens import FactoredMatrix
    except ImportError as error:
        raise ImportError(
            "OV and QK are TransformerLens' FactoredMatrix: install transformer-lens (pip install "
            "'hooked-mllm[tl]'), or multiply the weights yourself (model.W_V.expanded(l) @ model.W_O(l))."
        ) from error
    return FactoredMatrix(a, b)
