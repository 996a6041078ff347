"""TransformerLens habits that ``HookedMLLM`` adds to its weights and token helpers.

Contents: :class:`TLHabitsMixin` with ``to_single_str_token``, ``tokens_to_residual_directions``,
``get_token_position`` and the factored ``OV`` / ``QK`` circuits, each as TransformerLens defines it
(tests/test_tl_differential.py runs both on the same weights). Mixed into
:class:`~hooked_mllm._tl_compat.TLCompatMixin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor


class TLHabitsMixin:
    """Token helpers and factored circuits a TransformerLens user types from habit.

    Examples:
        >>> model.to_single_str_token(model.to_single_token("red"))   # doctest: +SKIP
        'red'
    """

    if TYPE_CHECKING:  # provided by TLCompatMixin

        def to_tokens(self, input: Any, prepend_bos: bool = True, padding_side: str = "right",
                      move_to_device: bool = True) -> Tensor: ...  # fmt: skip
        def to_single_token(self, string: str) -> int: ...
        def _need_tokenizer(self) -> Any: ...
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
