"""TransformerLens-style weights and tokenizer helpers on :class:`~hooked_mllm.model.HookedMLLM`.

:class:`TLCompatMixin` gives the model TransformerLens' weight attributes, shaped as
TransformerLens shapes them, and its ``to_tokens`` family. Weights are read through
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

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._runtime.offload import parameter
from ._tl_habits import TLHabitsMixin
from .inputs import MultimodalBatch
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


class TLCompatMixin(TLHabitsMixin):
    """TransformerLens' weight attributes and tokenizer helpers (mixed into ``HookedMLLM``)."""

    # what the mixin reads of the model it is mixed into
    hf_model: torch.nn.Module
    processor: Any
    adapter: Adapter
    cfg: MLLMConfig

    if TYPE_CHECKING:

        @property
        def device(self) -> torch.device: ...

        def hooks(self, fwd_hooks: Iterable[Any] = ()) -> contextlib.AbstractContextManager[Any]: ...

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
                up = None
            if up is not None:
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

    # -- persistent hooks ------------------------------------------------------------

    def add_hook(
        self,
        name: Any,
        hook: Callable[..., Any],
        dir: str = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Keep ``hook`` on ``name`` (a name, list or predicate) for every later run, until
        :meth:`reset_hooks`.

        The hook is active exactly as inside ``with model.hooks(...)`` (runs, generation and
        ``model.trace``); an unknown name fails here, not at the next run. ``is_permanent`` hooks
        survive ``reset_hooks()`` and go with ``reset_hooks(including_permanent=True)``.

        Examples:
            >>> model.add_hook("blocks.0.hook_mlp_out", lambda act, hook: act * 0)   # doctest: +SKIP
            >>> model.reset_hooks()                                                  # doctest: +SKIP
        """
        if dir != "fwd":
            raise ValueError(
                "add_hook keeps forward hooks only (dir='fwd'); backward hooks belong to one run: "
                "run_with_hooks(..., bwd_hooks=[(name, fn)]) or run_with_cache(..., incl_bwd=True)."
            )
        if prepend:
            raise ValueError(
                "prepend=True is not offered: hooks on one point run in the order they were added."
            )
        block = self.hooks(fwd_hooks=[(name, hook)])
        block.__enter__()
        self.__dict__.setdefault("_added_hooks", []).append((block, is_permanent))

    def reset_hooks(self, including_permanent: bool = False) -> None:
        """Remove the hooks :meth:`add_hook` added (the permanent ones too with ``including_permanent``)."""
        added = self.__dict__.get("_added_hooks", [])
        keep = [(block, permanent) for block, permanent in added if permanent and not including_permanent]
        errors = []
        for block, permanent in reversed(added):
            if (block, permanent) in keep:
                continue
            try:
                block.__exit__(None, None, None)
            except Exception as error:  # remove the others anyway, then report
                errors.append(error)
        self.__dict__["_added_hooks"] = keep
        if errors:
            raise errors[0]

    # -- return types and text-only input -------------------------------------------

    _RETURN_TYPES = ("logits", "output", "loss", "both", None)

    def _check_return_type(self, return_type: Any) -> None:
        if return_type not in self._RETURN_TYPES:
            raise ValueError(
                f"return_type must be one of {', '.join(map(repr, self._RETURN_TYPES))}, not {return_type!r}"
            )

    def _returned(self, output: Any, batch: Any, return_type: str | None) -> Any:
        """What a run returns for ``return_type`` (checked by :meth:`_check_return_type`)."""
        if return_type == "output":
            return output
        if return_type is None:
            return None
        if return_type == "logits":
            return output.logits
        loss = self.lm_loss(output.logits, batch)
        return loss if return_type == "loss" else (output.logits, loss)

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
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
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

    def _pad_id(self) -> int:
        tokenizer = self.tokenizer
        if tokenizer is None:
            return 0
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def _attention_configs(self) -> list[Any]:
        """The LM's and the vision tower's attention configs (switched to eager where patterns are read)."""
        configs = [self.adapter.text_cfg(self.hf_model.config)]
        vision = self.adapter.vision_cfg(self.hf_model.config)
        return configs + ([vision] if vision is not None else [])

    def _eager_configs(self, hooks: list[Any]) -> list[Any]:
        """The attention configs of the streams where ``hooks`` read patterns (switched to eager for the
        run).
        """
        streams = {hook.point.stream for hook in hooks if hook.point.needs_eager}
        configs = []
        if "lm" in streams:
            configs.append(self.adapter.text_cfg(self.hf_model.config))
        if "vision" in streams and self.adapter.vision_cfg(self.hf_model.config) is not None:
            configs.append(self.adapter.vision_cfg(self.hf_model.config))
        return configs

    @staticmethod
    def _has_images(batch: Any) -> bool:
        return any("pixel" in key or "image" in key for key in batch.inputs)

    def _runnable(self, batch: Any, points: Sequence[Any], names_filter: Any = "explicit") -> list[Any]:
        """``points`` that a run of ``batch`` reaches: on a text-only batch the vision tower and the
        projector do not run, so their points are left out of a filter (``None`` or a predicate) and
        refused when named."""
        if self._has_images(batch):
            return list(points)
        off = [p for p in points if p.stream != "lm"]
        if off and (names_filter is not None and not callable(names_filter)):
            raise ValueError(
                f"{off[0].name} does not run on a text-only input (the vision tower and projector run only "
                "with images); give images with model.prepare(images=..., prompts=...), or hook "
                "language-model points."
            )
        return [p for p in points if p.stream == "lm"]

    def _runnable_hooks(self, batch: Any, hooks: Sequence[Any]) -> list[Any]:
        """The bound ``hooks`` a run of ``batch`` reaches (:meth:`_runnable`): on a point that does not run,
        a hook a predicate chose is left out and one chosen by name refused."""
        self._runnable(batch, [hook.point for hook in hooks if not hook.by_filter])
        reached = {point.name for point in self._runnable(batch, [hook.point for hook in hooks], None)}
        return [hook for hook in hooks if hook.point.name in reached]

    # -- loss ------------------------------------------------------------------------

    def lm_loss(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any, per_token: bool = False
    ) -> Float[Tensor, ""] | Float[Tensor, "batch pos_1"]:
        """Next-token cross-entropy of ``logits`` on ``batch``'s ids, over text targets only.

        Targets that are padding or image placeholder tokens (whose "next token" is an image
        feature, not a prediction) are left out: the mean is over the rest; ``per_token``
        gives ``[batch, pos - 1]`` with zeros there.

        Examples:
            >>> loss = model(batch, return_type="loss")         # doctest: +SKIP
        """
        ids = batch.input_ids.to(logits.device)
        log_probs = logits[:, :-1].float().log_softmax(-1)
        nll = -log_probs.gather(-1, ids[:, 1:, None])[..., 0]
        valid = (~batch.pad_mask[:, 1:] & ~batch.pad_mask[:, :-1] & ~batch.image_mask[:, 1:]).to(nll.device)
        nll = nll * valid
        return nll if per_token else nll.sum() / valid.sum().clamp(min=1)
