"""TransformerLens-style weights on :class:`~hooked_mllm.model.HookedMLLM`: the weights mixin.

:class:`TLCompatMixin` gives the model TransformerLens' weight attributes, shaped as
TransformerLens shapes them, ``readout()`` for caches, ``to`` / ``cpu`` / ``cuda``,
``tokens_to_residual_directions`` and the factored ``OV`` / ``QK`` circuits (the token helpers are
in :mod:`hooked_mllm._model_inputs`; ``add_hook``, ``reset_hooks`` and ``lm_loss`` in
:mod:`hooked_mllm.model`). Weights are read through
:func:`hooked_mllm._runtime.offload.parameter` (so accelerate-offloaded models work) and are not
processed (no LayerNorm folding or centering). Each ``W_*`` / ``b_*`` is a
:class:`LayerWeights`: ``model.W_O[3]`` or ``model.W_O(3)`` reads one layer without
stacking the others, ``model.W_O[3, 0]`` one head, and anything else (``model.W_O.shape``,
``torch.einsum(..., model.W_O)``) acts on the full ``[n_layers, ...]`` tensor.

Grouped-query attention: ``W_K``, ``W_V``, ``b_K``, ``b_V`` have ``n_kv_heads`` heads, as
TransformerLens 4.3's ``TransformerBridge`` gives them (its older ``HookedTransformer``
expanded them); ``model.W_K.expanded(layer)`` repeats each key/value head for the
``n_heads // n_kv_heads`` query heads that share it.

Biases a model does not have read as zeros (the bridge raises ``AttributeError`` there).

Gated MLPs: ``W_in`` is the up projection and ``W_gate`` the gate projection, as in
TransformerLens; ``mlp.hook_post`` is ``act(gate) * up``, the down projection's input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._runtime.offload import parameter
from .readout import CacheReadout

if TYPE_CHECKING:
    from .architectures.base import Adapter
    from .config import MLLMConfig


def _map(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return fn(value)


class LayerWeights:
    """One weight of every LM layer: indexable like a ``[n_layers, ...]`` tensor and callable per layer.

    Examples:
        >>> model.W_Q[0].shape == (model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head)   # doctest: +SKIP
        True
    """

    def __init__(self, name: str, n_layers: int, read: Callable[[int], Tensor], group: int = 1) -> None:
        self._name, self._n, self._read, self._group = name, n_layers, read, group

    def __call__(self, layer: int) -> Tensor:
        if not -self._n <= layer < self._n:
            raise IndexError(f"{self._name}: layer {layer} out of range for {self._n} layers")
        return self._read(layer % self._n)

    def expanded(self, layer: int) -> Tensor:
        """Key/value heads of ``layer`` repeated to ``n_heads`` (each for the query heads sharing it)."""
        return self(layer).repeat_interleave(self._group, dim=0)

    def full(self) -> Tensor:
        """The stacked ``[n_layers, ...]`` tensor."""
        return torch.stack([self._read(layer) for layer in range(self._n)])

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, int):
            return self(key)
        if isinstance(key, tuple) and key and isinstance(key[0], int):
            return self(key[0])[key[1:]]
        return self.full()[key]

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        return (self._read(layer) for layer in range(self._n))

    def __getattr__(self, name: str) -> Any:  # shape, dtype, detach(), to() ... of the full tensor
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full(), name)

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Sequence = (), kwargs: dict | None = None
    ) -> Any:
        def unwrap(x: Any) -> Any:
            return x.full() if isinstance(x, LayerWeights) else x

        return func(*_map(tuple(args), unwrap), **{k: _map(v, unwrap) for k, v in (kwargs or {}).items()})

    def __repr__(self) -> str:
        return f"LayerWeights({self._name}, {self._n} layers)"


class TLCompatMixin:
    """TransformerLens' weight attributes and circuits (mixed into ``HookedMLLM``)."""

    # what the mixin reads of the model it is mixed into
    hf_model: torch.nn.Module
    processor: Any
    adapter: Adapter
    cfg: MLLMConfig

    if TYPE_CHECKING:

        @property
        def device(self) -> torch.device: ...

        def to_single_token(self, string: str) -> int: ...

    # -- weights ---------------------------------------------------------------------

    def final_norm(self) -> torch.nn.Module:
        """The language model's final norm module."""
        return self.adapter.module(self.hf_model, self.adapter.modules.final_norm)

    def readout(self) -> CacheReadout:
        """What a cache's helpers read of this model (layer count, ``W_O``, ``W_U``, norms, hook names),
        as a frozen :class:`~hooked_mllm.readout.CacheReadout` of views of the weights (no copies).

        Built once and reused until a parameter is replaced or moved (new storage); in-place weight
        edits show through the views."""
        key = tuple((id(p), p.data_ptr()) for p in self.hf_model.parameters())
        memo = self.__dict__.get("_readout_memo")
        if memo is None or memo[0] != key:
            memo = self.__dict__["_readout_memo"] = (key, CacheReadout.from_model(self))
        return memo[1]

    def _layer_module(self, layer: int, rel: str) -> torch.nn.Module:
        return self.adapter.module(self.hf_model, f"{self.adapter.modules.lm_layers}.{layer}.{rel}")

    def _heads(self, rel: str | None, what: str, n: int) -> Callable[[int], Tensor]:
        if rel is None:
            raise AttributeError(f"This model has a fused QKV projection; {what} is not available per head.")
        cfg = self.cfg

        def read(layer: int) -> Tensor:
            module = self._layer_module(layer, rel)
            if what.startswith("b_"):
                if getattr(module, "bias", None) is None:
                    return torch.zeros(n, cfg.d_head, dtype=cfg.dtype)
                return parameter(module, "bias").reshape(n, cfg.d_head)
            return parameter(module).T.reshape(cfg.d_model, n, cfg.d_head).permute(1, 0, 2)

        return read

    def _attn(self, what: str) -> LayerWeights:
        cfg, block = self.cfg, self.adapter.modules.block
        rel = {"Q": block.q, "K": block.k, "V": block.v}[what[-1]]
        if what[-1] == "Q":
            return LayerWeights(what, cfg.n_layers, self._heads(rel, what, cfg.n_heads))
        return LayerWeights(
            what, cfg.n_layers, self._heads(rel, what, cfg.n_kv_heads), cfg.n_heads // cfg.n_kv_heads
        )

    def to(self, device_or_dtype: torch.device | str | torch.dtype) -> Any:
        """Move or cast the wrapped model, as TransformerLens' ``model.to``; returns the model itself.

        Inputs follow (runs send them to :attr:`device`). A remote model lives on its server and a model
        dispatched by accelerate (``device_map``) keeps its placement: both refuse.

        Examples:
            >>> model = model.to(torch.float64)  # doctest: +SKIP
        """
        if getattr(self, "remote", False):
            raise ValueError(
                "A remote model lives on its server: it cannot be moved or cast; load it with the dtype you "
                "want (from_pretrained(..., dtype=...))."
            )
        if getattr(self.hf_model, "hf_device_map", None):
            raise ValueError(
                "This model is dispatched by accelerate (device_map): moving it would break its placement; "
                "reload it with another device_map or dtype instead."
            )
        self.hf_model.to(device_or_dtype)
        return self

    def cpu(self) -> Any:
        """``model.to("cpu")``."""
        return self.to("cpu")

    def cuda(self, device: int | str | None = None) -> Any:
        """``model.to("cuda")`` (or ``f"cuda:{device}"``)."""
        return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)

    @property
    def W_Q(self) -> LayerWeights:
        """``[n_layers, n_heads, d_model, d_head]`` query weights."""
        return self._attn("W_Q")

    @property
    def W_K(self) -> LayerWeights:
        """``[n_layers, n_kv_heads, d_model, d_head]`` key weights (``.expanded(l)``: ``n_heads``)."""
        return self._attn("W_K")

    @property
    def W_V(self) -> LayerWeights:
        """``[n_layers, n_kv_heads, d_model, d_head]`` value weights (``.expanded(l)``: ``n_heads``)."""
        return self._attn("W_V")

    @property
    def b_Q(self) -> LayerWeights:
        """``[n_layers, n_heads, d_head]`` query biases (zeros where the projection has none)."""
        return self._attn("b_Q")

    @property
    def b_K(self) -> LayerWeights:
        """``[n_layers, n_kv_heads, d_head]`` key biases."""
        return self._attn("b_K")

    @property
    def b_V(self) -> LayerWeights:
        """``[n_layers, n_kv_heads, d_head]`` value biases."""
        return self._attn("b_V")

    @property
    def W_O(self) -> LayerWeights:
        """``[n_layers, n_heads, d_head, d_model]`` attention output weights; ``model.W_O(l)`` reads one
        layer.
        """
        cfg = self.cfg
        return LayerWeights(
            "W_O",
            cfg.n_layers,
            lambda l: parameter(self._layer_module(l, self.adapter.modules.block.o)).T.reshape(
                cfg.n_heads, cfg.d_head, cfg.d_model
            ),
        )

    @property
    def b_O(self) -> LayerWeights:
        """``[n_layers, d_model]`` attention output biases (zeros where there are none)."""
        return LayerWeights("b_O", self.cfg.n_layers, lambda l: self._bias(self.adapter.modules.block.o, l))

    def _bias(self, rel: str, layer: int) -> Tensor:
        module = self._layer_module(layer, rel)
        if getattr(module, "bias", None) is None:
            return torch.zeros(parameter(module).shape[0], dtype=self.cfg.dtype)
        return parameter(module, "bias")

    def _mlp_in_paths(self) -> tuple[str, str | None]:
        """(W_in path, W_gate path or None)."""
        pre = self.adapter.modules.block.mlp_pre
        if pre.endswith("gate_proj"):
            up = pre[: -len("gate_proj")] + "up_proj"
            try:
                self._layer_module(0, up)
            except (AttributeError, KeyError, IndexError):
                return pre, None
            return up, pre
        return pre, None

    def _linear_in(self, rel: str, layer: int) -> Tensor:
        weight = parameter(self._layer_module(layer, rel))
        if self.cfg.d_mlp is not None and weight.shape[0] != self.cfg.d_mlp:
            raise ValueError(
                f"{rel} has {weight.shape[0]} outputs, not d_mlp={self.cfg.d_mlp} (a fused projection); "
                "W_in / W_gate are not available for this model."
            )
        return weight.T

    @property
    def W_in(self) -> LayerWeights:
        """``[n_layers, d_model, d_mlp]`` MLP input weights (the up projection of a gated MLP)."""
        rel = self._mlp_in_paths()[0]
        return LayerWeights("W_in", self.cfg.n_layers, lambda l: self._linear_in(rel, l))

    @property
    def W_gate(self) -> LayerWeights:
        """``[n_layers, d_model, d_mlp]`` gate projection weights of a gated MLP."""
        gate = self._mlp_in_paths()[1]
        if gate is None:
            raise AttributeError("This model's MLP is not gated; it has W_in but no W_gate.")
        return LayerWeights("W_gate", self.cfg.n_layers, lambda l: self._linear_in(gate, l))

    @property
    def b_in(self) -> LayerWeights:
        """``[n_layers, d_mlp]`` MLP input biases (zeros where there are none)."""
        rel = self._mlp_in_paths()[0]
        return LayerWeights("b_in", self.cfg.n_layers, lambda l: self._bias(rel, l))

    @property
    def W_out(self) -> LayerWeights:
        """``[n_layers, d_mlp, d_model]`` MLP output weights (the down projection)."""
        return LayerWeights(
            "W_out",
            self.cfg.n_layers,
            lambda l: parameter(self._layer_module(l, self.adapter.modules.block.mlp_down)).T,
        )

    @property
    def b_out(self) -> LayerWeights:
        """``[n_layers, d_model]`` MLP output biases (zeros where there are none)."""
        return LayerWeights(
            "b_out", self.cfg.n_layers, lambda l: self._bias(self.adapter.modules.block.mlp_down, l)
        )

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """The token embedding matrix."""
        return parameter(self.adapter.module(self.hf_model, self.adapter.modules.embed))

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding matrix (transposed LM head weight)."""
        return parameter(self.adapter.module(self.hf_model, self.adapter.modules.unembed)).T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        """The LM head bias (zeros where there is none)."""
        head = self.adapter.module(self.hf_model, self.adapter.modules.unembed)
        if getattr(head, "bias", None) is None:
            return torch.zeros(self.cfg.d_vocab, dtype=self.cfg.dtype)
        return parameter(head, "bias")

    # -- circuits --------------------------------------------------------------------

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
