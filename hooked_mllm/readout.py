"""``CacheReadout``: the few model facts an :class:`~hooked_mllm.cache.ActivationCache` reads.

A cache's residual helpers need a little of the model besides the activations: the layer
count, each layer's ``W_O`` / ``W_out`` and their biases (head and neuron results), the
norms that read the residual (``apply_ln_to_stack``), ``W_U`` (``logit_attrs``) and which
hook names exist in which stream. :class:`CacheReadout` is that, as a frozen value with no
reference to the model, so a cache can be saved, loaded and moved on its own.

:meth:`CacheReadout.from_model` builds one from a :class:`~hooked_mllm.model.HookedMLLM`
through its public TransformerLens weight attributes (``W_O``, ``W_out``, ``b_O``,
``b_out``, ``W_U``) and its adapter's norm paths; the weights are views of the model's
parameters (no copies), loaded from accelerate's offload map where offloaded. This module
imports nothing of the model: :mod:`hooked_mllm.model` builds the readout and
:mod:`hooked_mllm.cache` reads it.

Examples:
    >>> import torch
    >>> norm = NormSpec(kind="rms", weight=torch.ones(4), eps=1e-6)
    >>> norm.apply(torch.ones(2, 1, 3, 4), torch.ones(1, 3, 4)).shape
    torch.Size([2, 1, 3, 4])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ._runtime.offload import parameter

NormKind = Literal["rms", "layer"]


def compact(tensor: Tensor) -> Tensor:
    """``tensor`` detached, copied into its own storage if it is a view of a larger one (``torch.save``
    writes a view's whole storage)."""
    tensor = tensor.detach()
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole and tensor.is_contiguous() else tensor.clone(memory_format=torch.contiguous_format)


_MISSING_WEIGHT_ERRORS = (AttributeError, KeyError, IndexError, ValueError, RuntimeError)


@dataclass(frozen=True, eq=False, kw_only=True)
class NormSpec:
    """One norm as ``apply_ln_to_stack`` uses it: its kind, weight, epsilon, weight offset and bias.

    Attributes:
        kind: ``"rms"`` (RMSNorm) or ``"layer"`` (LayerNorm: components are centred first).
        weight: ``[d_model]`` the norm's weight, or None (no affine weight: ones).
        eps: The epsilon added to the variance.
        offset: Added to the weight (1.0 for Gemma's ``x * (1 + weight)``).
        bias: ``[d_model]`` the norm's bias, or None (added only by :meth:`normalize`).

    Examples:
        >>> import torch
        >>> x, w = torch.ones(1, 2, 3), torch.arange(3.)[None]
        >>> NormSpec(kind="layer", weight=None, eps=1e-5).apply(x, w).shape
        torch.Size([1, 2, 3])
    """

    kind: NormKind
    weight: Float[Tensor, " d_model"] | None
    eps: float
    offset: float = 0.0
    bias: Float[Tensor, " d_model"] | None = None

    def apply(
        self, stack: Float[Tensor, "*lead d_model"], resid: Float[Tensor, "*rest d_model"]
    ) -> Float[Tensor, "*lead d_model"]:
        """``stack``'s components scaled as this norm scales the full residual ``resid`` (no bias).

        The scale is computed from ``resid`` (which broadcasts against ``stack``'s trailing
        axes), so the scaled components still sum to the norm's output minus its bias.
        """
        stack32, resid = stack.float(), resid.float()
        if self.kind == "layer":
            stack32 = stack32 - stack32.mean(-1, keepdim=True)
            scale = (resid.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        else:
            scale = (resid.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        weight = torch.ones(stack.shape[-1]) if self.weight is None else self.weight.detach().float()
        weight = weight.to(stack32.device) + self.offset
        return (stack32 / scale.to(stack32.device) * weight).to(stack.dtype)

    def normalize(self, stack: Float[Tensor, "*lead d_model"]) -> Float[Tensor, "*lead d_model"]:
        """The norm itself on each vector of ``stack`` (its own scale, weight and bias), as the model runs it.

        Examples:
            >>> import torch
            >>> NormSpec(kind="rms", weight=None, eps=0.0).normalize(torch.tensor([[3.0, 4.0]])).pow(2).mean()
            tensor(1.)
        """
        x = stack.float()
        out = self.apply(x, x)
        if self.bias is not None:
            out = out + self.bias.detach().float().to(out.device)
        return out.to(stack.dtype)

    def to(self, device: torch.device | str) -> NormSpec:
        return replace(
            self,
            weight=None if self.weight is None else self.weight.to(device),
            bias=None if self.bias is None else self.bias.to(device),
        )

    @classmethod
    def of(cls, module: torch.nn.Module, kind: NormKind, offset: float, default_eps: float) -> NormSpec:
        """The spec of a norm module (``variance_epsilon`` or ``eps``, else ``default_eps``)."""
        eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", None) or default_eps
        weight = parameter(module) if getattr(module, "weight", None) is not None else None
        bias = parameter(module, "bias") if getattr(module, "bias", None) is not None else None
        return cls(
            kind=kind,
            weight=None if weight is None else weight.detach(),
            eps=float(eps),
            offset=offset,
            bias=None if bias is None else bias.detach(),
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class CacheReadout:
    """The model facts a cache reads, without the model.

    Attributes:
        n_layers: Language-model layers.
        d_model: Residual width.
        d_mlp: MLP width (None where the config does not say).
        hook_streams: Every hook name of the model and its stream (``"lm"``, ``"vision"``,
            ``"projector"``); says which cached entries lead with the batch axis.
        W_U: ``[d_model, d_vocab]`` the unembedding.
        W_O: Per layer ``[n_heads, d_head, d_model]`` the attention output weights.
        b_O: Per layer ``[d_model]`` the attention output bias (zeros where none).
        W_out: Per layer ``[d_mlp, d_model]`` the MLP down projection.
        b_out: Per layer ``[d_model]`` its bias (zeros where none).
        ln1: Per layer the norm before attention.
        ln2: Per layer the norm before the MLP (None for parallel blocks).
        ln_final: The final norm.
        neuron_note: Why per-neuron results do not add up to ``hook_mlp_out`` (a
            post-feedforward norm or layer scale), or None where they do.
        missing: Weights that could not be read (``"W_O.3"``...) and why; a helper that
            needs one raises with that reason.
        tokenizer: The tokenizer, for string tokens in ``logit_attrs`` (not saved).

    Examples:
        >>> readout = model.readout()                    # doctest: +SKIP
        >>> readout.W_O[0].shape                          # doctest: +SKIP
        torch.Size([4, 32, 128])
    """

    n_layers: int
    d_model: int
    d_mlp: int | None
    hook_streams: Mapping[str, str]
    W_U: Float[Tensor, "d_model d_vocab"] | None
    W_O: tuple[Float[Tensor, "head d_head d_model"] | None, ...]
    b_O: tuple[Float[Tensor, " d_model"] | None, ...]
    W_out: tuple[Float[Tensor, "d_mlp d_model"] | None, ...]
    b_out: tuple[Float[Tensor, " d_model"] | None, ...]
    ln1: tuple[NormSpec | None, ...]
    ln2: tuple[NormSpec | None, ...]
    ln_final: NormSpec | None
    neuron_note: str | None = None
    missing: Mapping[str, str] = field(default_factory=dict)
    tokenizer: Any = None

    # -- reading --------------------------------------------------------------------

    def stream(self, name: str) -> str:
        """The stream of hook ``name`` (``"lm"`` for names the model does not have)."""
        return self.hook_streams.get(name, "lm")

    def weight(self, name: str, layer: int | None = None) -> Any:
        """Field ``name`` (of layer ``layer``), raising with the reason if it could not be read.

        Raises:
            ValueError: if the weight was not readable when the cache was made.
        """
        value = getattr(self, name)
        if layer is not None:
            value = value[layer]
        if value is None:
            key = name if layer is None else f"{name}.{layer}"
            raise ValueError(
                f"{key} is not available for this model: {self.missing.get(key, 'it has none')}."
            )
        return value

    # -- moving and saving ------------------------------------------------------------

    def to(self, device: torch.device | str) -> CacheReadout:
        """The readout with every weight on ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, (Tensor, NormSpec)):
                return value.to(device)
            if isinstance(value, tuple):
                return tuple(move(v) for v in value)
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def state(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``)."""

        def pack(value: Any) -> Any:
            if isinstance(value, NormSpec):
                return {
                    "kind": value.kind,
                    "weight": value.weight,
                    "eps": value.eps,
                    "offset": value.offset,
                    "bias": value.bias,
                }
            if isinstance(value, tuple):
                return [pack(v) for v in value]
            if isinstance(value, Tensor):
                return compact(value)
            return dict(value) if isinstance(value, Mapping) else value

        return {f.name: pack(getattr(self, f.name)) for f in fields(self) if f.name != "tokenizer"}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], tokenizer: Any = None) -> CacheReadout:
        """The readout :meth:`state` described."""

        def norm(value: Any) -> NormSpec | None:
            return None if value is None else NormSpec(**value)

        layered = ("W_O", "b_O", "W_out", "b_out")
        return cls(
            n_layers=int(state["n_layers"]),
            d_model=int(state["d_model"]),
            d_mlp=state["d_mlp"],
            hook_streams=dict(state["hook_streams"]),
            W_U=state["W_U"],
            **{name: tuple(state[name]) for name in layered},
            ln1=tuple(norm(v) for v in state["ln1"]),
            ln2=tuple(norm(v) for v in state["ln2"]),
            ln_final=norm(state["ln_final"]),
            neuron_note=state["neuron_note"],
            missing=dict(state["missing"]),
            tokenizer=tokenizer,
        )

    # -- building -------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any) -> CacheReadout:
        """The readout of a :class:`~hooked_mllm.model.HookedMLLM` (views of its weights, no copies).

        Reads ``model.cfg``, ``model.adapter``, ``model.hf_model``, ``model.hook_points``,
        ``model.tokenizer`` and the TransformerLens weights ``W_O``, ``b_O``, ``W_out``,
        ``b_out``, ``W_U``. A weight that cannot be read is recorded in ``missing``.
        """
        cfg, adapter, block = model.cfg, model.adapter, model.adapter.modules.block
        missing: dict[str, str] = {}

        def read(key: str, get: Callable[[], Any]) -> Any:
            try:
                value = get()
            except _MISSING_WEIGHT_ERRORS as error:
                missing[key] = str(error)
                return None
            return value.detach() if isinstance(value, Tensor) else value

        def norm(path: str | None) -> Callable[[], NormSpec]:
            return lambda: NormSpec.of(
                adapter.module(model.hf_model, path), block.norm, block.norm_offset, cfg.norm_eps
            )

        def weight(name: str, layer: int) -> Callable[[], Any]:
            return lambda: getattr(model, name)(layer)

        layers = range(cfg.n_layers)
        prefix = adapter.modules.lm_layers
        weights = {
            name: tuple(read(f"{name}.{l}", weight(name, l)) for l in layers)
            for name in ("W_O", "b_O", "W_out", "b_out")
        }
        ln2: tuple[NormSpec | None, ...] = tuple(None for _ in layers)
        if block.ln2 is not None:
            ln2 = tuple(read(f"ln2.{l}", norm(f"{prefix}.{l}.{block.ln2}")) for l in layers)
        note = None
        if block.mlp_out is not None or block.mlp_scale is not None:
            note = (
                "This model maps the MLP output (a post-feedforward norm or layer scale) before it reaches "
                "the residual, so per-neuron results do not add up to hook_mlp_out; use "
                "decompose_resid(mode='mlp') for whole-MLP outputs."
            )
        return cls(
            n_layers=cfg.n_layers,
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp,
            hook_streams={point.name: point.stream for point in model.hook_points},
            W_U=read("W_U", lambda: model.W_U),
            **weights,
            ln1=tuple(read(f"ln1.{l}", norm(f"{prefix}.{l}.{block.ln1}")) for l in layers),
            ln2=ln2,
            ln_final=read("ln_final", norm(adapter.modules.final_norm)),
            neuron_note=note,
            missing=missing,
            tokenizer=model.tokenizer,
        )
