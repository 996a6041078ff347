"""The residual-stream decomposition helpers of :class:`~hooked_mllm.cache.ActivationCache`.

Purpose:
    TransformerLens' cache helpers (``stack_activation``, ``accumulated_resid``,
    ``decompose_resid``, ``stack_head_results``, ``apply_ln_to_stack``, ``logit_attrs``, the
    per-head and per-neuron results, ``get_full_resid_decomposition``) as a mixin, so the
    cache module keeps to mapping, persistence and batch views.

Connections:
    Mixed into ``ActivationCache``; reads ``self[...]`` and ``self.readout``
    (:class:`~hooked_mllm.readout.CacheReadout`) only, never a model.

Contents:
    ``ResidDecomposition``: the mixin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from .hook_points import act_name
from .readout import CacheReadout


class ResidDecomposition:
    """TransformerLens' residual decomposition helpers on a cache (see ``ActivationCache``).

    Components are stacked as ``[component, batch, pos, d_model]``; weights are not folded, so
    ``apply_ln_to_stack`` multiplies by the norm's weight.

    Examples:
        >>> stack, labels = cache.decompose_resid(return_labels=True)   # doctest: +SKIP
    """

    readout: CacheReadout
    has_batch_dim: bool
    _store: dict[str, Tensor]

    if TYPE_CHECKING:  # the cache's own lookup

        def __getitem__(self, key: str | tuple) -> Tensor: ...

    # -- stacking --------------------------------------------------------------------

    def _n_layers(self, layer: int | None) -> int:
        n = self.readout.n_layers
        return n if layer is None else (layer if layer >= 0 else n + 1 + layer)

    @staticmethod
    def _pos(tensor: Tensor, pos_slice: Any) -> Tensor:
        """``pos_slice`` on the position axis (dim -2); an int drops the axis, as in TransformerLens."""
        if pos_slice is None:
            return tensor
        if isinstance(pos_slice, (list, tuple)):
            pos_slice = torch.as_tensor(pos_slice)
        return tensor[..., pos_slice, :]

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Float[Tensor, "layer *rest"]:  # noqa: F821 (jaxtyping shape string)
        """Stack one activation over layers ``0 .. layer-1`` (all with ``layer=-1``).

        ``activation_name`` is a short name (``"resid_post"``, ``"pattern"``...);
        ``sublayer_type`` picks e.g. ``"ln1"``/``"ln2"`` for ``"normalized"``.
        """
        short = f"{sublayer_type}" if sublayer_type else activation_name
        n = self._n_layers(None if layer == -1 else layer)
        return torch.stack([self[act_name(short, l)] for l in range(n)])

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
    ) -> Any:
        """The residual stream before each layer up to ``layer`` (and the final one if None).

        Returns ``[component, batch, pos, d_model]`` (and labels if asked).
        """
        n = self._n_layers(layer)
        parts, labels = [], []
        for l in range(min(n, self.readout.n_layers)):
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if incl_mid:
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        if n == self.readout.n_layers:
            parts.append(self["resid_post", n - 1])
            labels.append("final_post")
        stack = self._pos(torch.stack(parts), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """The residual at ``layer`` (final if None) split into the outputs that built it.

        Components: ``"embed"`` (``blocks.0.hook_resid_pre``: text embeddings with the
        projected image features scattered in), then each layer's attention and MLP
        outputs (``mode``: ``"all"``, ``"attn"`` or ``"mlp"``). Summing the components
        gives the residual. Returns ``[component, batch, pos, d_model]``.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', not {mode!r}")
        n = self._n_layers(layer)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["resid_pre", 0])
            labels.append("embed")
        for l in range(n):
            if mode in ("all", "attn"):
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        stack = self._pos(torch.stack(parts), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ) -> Any:
        """Each head's output (``hook_z`` times its slice of ``W_O``) for layers below ``layer``.

        Returns ``[layer * head, batch, pos, d_model]``; with ``incl_remainder`` a last
        component holds the rest of the residual at ``layer``.
        """
        n = self._n_layers(None if layer == -1 else layer)
        parts, labels = [], []
        for l in range(n):
            result = self._head_result(l).movedim(-2, 0)
            parts.append(result)
            labels += [f"L{l}H{h}" for h in range(result.shape[0])]
        stack = torch.cat(parts) if parts else torch.empty(0)
        if incl_remainder:
            resid = self["resid_post", n - 1] if n == self.readout.n_layers else self["resid_pre", n]
            stack = torch.cat([stack, (resid - stack.sum(0))[None]])
            labels.append("remainder")
        stack = self._pos(stack, pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer == -1 else layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "... batch pos d_model"],
        layer: int | None = None,
        pos_slice: Any = None,
        has_batch_dim: bool | None = None,
        mlp_input: bool = False,
    ) -> Float[Tensor, "... batch pos d_model"]:
        """Scale components by the norm that reads the residual at ``layer`` (final if None).

        The scale is taken from the cached full residual there (``blocks.{L-1}.hook_resid_post``
        for the final norm, ``blocks.{layer}.hook_resid_pre`` for a layer's ``ln1``, or
        ``hook_resid_mid`` and ``ln2`` with ``mlp_input``), so the components stay additive:
        their sum equals the norm's output (minus its bias). ``has_batch_dim`` says whether
        ``residual_stack`` has a batch axis (default: as the cache).
        """
        readout = self.readout
        has_batch_dim = self.has_batch_dim if has_batch_dim is None else has_batch_dim
        final = layer is None or layer >= readout.n_layers or layer == -1
        if mlp_input and not final:
            if all(norm is None for norm in readout.ln2) and not any(
                k.startswith("ln2.") for k in readout.missing
            ):
                raise ValueError("This model's blocks are parallel (no ln2): the MLP reads ln1 of resid_pre.")
            resid, norm = self["resid_mid", layer], readout.weight("ln2", layer)
        elif final:
            resid, norm = self["resid_post", readout.n_layers - 1], readout.weight("ln_final")
        else:
            resid, norm = self["resid_pre", layer], readout.weight("ln1", layer)
        resid = self._pos(resid, pos_slice)
        if self.has_batch_dim and not has_batch_dim:
            resid = resid[0]
        return norm.apply(residual_stack, resid)

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "... batch pos d_model"],
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: Any = None,
    ) -> Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``).

        Applies the final norm (:meth:`apply_ln_to_stack`) and dots with the unembedding
        columns. ``tokens``: an id, a string (one token), ``[batch]`` or ``[batch, pos]`` ids.
        Returns the stack's shape without ``d_model``.
        """
        scaled = self.apply_ln_to_stack(residual_stack, layer=None, pos_slice=pos_slice)
        keep_pos = not isinstance(pos_slice, int)
        directions = self._directions(tokens, scaled, keep_pos)
        if incorrect_tokens is not None:
            directions = directions - self._directions(incorrect_tokens, scaled, keep_pos)
        return (scaled * directions).sum(-1)

    def _directions(self, tokens: Any, like: Tensor, keep_pos: bool = True) -> Tensor:
        if isinstance(tokens, str):
            tokenizer = self.readout.tokenizer
            if tokenizer is None:
                raise ValueError(
                    "String tokens need the model's tokenizer (a model without a processor, or a cache "
                    "loaded without tokenizer=...); pass token ids instead."
                )
            ids = tokenizer.encode(tokens, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"{tokens!r} is {len(ids)} tokens; logit_attrs takes one token.")
            tokens = ids[0]
        tokens = torch.as_tensor(tokens)
        w_u = self.readout.weight("W_U").to(device=like.device, dtype=like.dtype)
        directions = w_u[:, tokens].movedim(0, -1)
        if tokens.dim() == 1 and keep_pos:
            directions = directions[:, None, :]
        return directions

    # -- per-head and per-neuron components (TransformerLens' helpers) ---------------

    def _head_result(self, layer: int) -> Float[Tensor, "... pos head d_model"]:
        name = f"blocks.{layer}.attn.hook_result"
        if name in self._store:
            return self._store[name]
        z = self["z", layer]
        w_o = self.readout.weight("W_O", layer).to(device=z.device, dtype=z.dtype)
        return torch.einsum("...hd,hdm->...hm", z, w_o)

    def compute_head_results(self) -> None:
        """Cache each head's output as ``blocks.{l}.attn.hook_result``: ``[batch, pos, head, d_model]``.

        ``hook_z`` (per head) times that head's slice of ``W_O``, as TransformerLens'
        ``compute_head_results``; summed over heads (plus ``o_proj``'s bias, if any) it is the
        attention output. Needs ``attn.hook_z`` cached for every layer.

        Examples:
            >>> cache.compute_head_results()                         # doctest: +SKIP
            >>> cache["result", -1].shape                            # doctest: +SKIP
            torch.Size([1, 60, 4, 128])
        """
        for layer in range(self.readout.n_layers):
            self._store[f"blocks.{layer}.attn.hook_result"] = self._head_result(layer)

    def _neuron_checks(self) -> None:
        if self.readout.neuron_note is not None:
            raise ValueError(self.readout.neuron_note)

    def get_neuron_results(
        self, layer: int, neuron_slice: Any = None, pos_slice: Any = None
    ) -> Float[Tensor, "... pos neuron d_model"]:
        """Each MLP neuron's contribution to the residual: ``mlp.hook_post[..., n] * W_out[layer, n]``.

        ``mlp.hook_post`` is the down projection's input (for gated MLPs, the activation of the
        gate times the up projection), so the neurons plus the down projection's bias sum to
        ``hook_mlp_out``. Returns ``[batch, pos, neuron, d_model]`` (``pos`` dropped by an
        int ``pos_slice``).
        """
        self._neuron_checks()
        acts = self._pos(self["post", layer], pos_slice)
        w_out = self.readout.weight("W_out", layer).to(device=acts.device, dtype=acts.dtype)
        if neuron_slice is not None:
            index = torch.as_tensor(neuron_slice) if isinstance(neuron_slice, (list, tuple)) else neuron_slice
            if isinstance(index, int):
                index = torch.tensor([index])
            acts, w_out = acts[..., index], w_out[index]
        return acts[..., None] * w_out

    def stack_neuron_results(
        self,
        layer: int | None = None,
        pos_slice: Any = None,
        neuron_slice: Any = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        mlp_input: bool = False,
    ) -> Any:
        """Every neuron's result of the layers below ``layer`` (all with None or -1):
        ``[neuron, batch, pos, d_model]``.

        Labels ``L{l}N{n}``; with ``incl_remainder`` a last component holds the rest of the
        residual that ``layer``'s attention reads (its MLP with ``mlp_input``). Mind the
        memory: ``n_layers * d_mlp`` copies of the residual.
        """
        n = self.readout.n_layers if layer is None or layer == -1 else layer
        parts, labels = [], []
        for l in range(n):
            result = self.get_neuron_results(l, neuron_slice=neuron_slice, pos_slice=pos_slice)
            parts.append(result.movedim(-2, 0))
            if neuron_slice is None:
                ids = torch.arange(result.shape[-2])
            else:
                chosen = [neuron_slice] if isinstance(neuron_slice, int) else neuron_slice
                ids = torch.arange(self.readout.weight("W_out", l).shape[0])[chosen]
            labels += [f"L{l}N{int(i)}" for i in torch.as_tensor(ids).flatten()]
        like = self._pos(self["resid_pre", 0], pos_slice)
        stack = torch.cat(parts) if parts else like.new_zeros((0, *like.shape))
        if incl_remainder:
            target = self._pos(self._resid_into(n, mlp_input), pos_slice)
            stack = torch.cat([stack, (target - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=n, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def _resid_into(self, layer: int, mlp_input: bool) -> Tensor:
        if mlp_input:
            return self["resid_mid", layer]
        return self["resid_post", layer - 1] if layer == self.readout.n_layers else self["resid_pre", layer]

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
    ) -> Any:
        """The residual read by ``layer`` (the unembedding with None) split into every head, neuron, embed and
        bias.

        Components, in TransformerLens' order: each head's result (``L{l}H{h}``, layers below
        ``layer``, and ``layer`` itself with ``mlp_input``), each neuron's result (``L{l}N{n}``;
        with ``expand_neurons=False`` each MLP's output ``{l}_mlp_out``), ``embed``
        (``blocks.0.hook_resid_pre``: token embeddings with the image features merged in),
        and ``bias`` (the attention output and MLP down-projection biases). They sum to
        ``blocks.{layer}.hook_resid_pre`` (``hook_resid_mid`` with ``mlp_input``; the last
        ``hook_resid_post`` for the unembedding). Returns ``[component, batch, pos, d_model]``.

        Examples:
            >>> stack, labels = cache.get_full_resid_decomposition(return_labels=True)   # doctest: +SKIP
            >>> torch.allclose(stack.sum(0), cache["resid_post", -1], atol=1e-4)        # doctest: +SKIP
            True
        """
        n_layers = self.readout.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        if mlp_input and layer >= n_layers:
            raise ValueError("mlp_input=True needs a layer below n_layers (the unembedding has no MLP).")
        heads, labels = self.stack_head_results(
            layer + 1 if mlp_input else layer, pos_slice=pos_slice, return_labels=True
        )
        if heads.numel() == 0:
            heads = heads.reshape(0, *self._pos(self["resid_pre", 0], pos_slice).shape)
        parts = [heads]
        if layer > 0:
            if expand_neurons:
                neurons, neuron_labels = self.stack_neuron_results(
                    layer, pos_slice=pos_slice, return_labels=True
                )
            else:
                neurons, neuron_labels = self.decompose_resid(
                    layer, mode="mlp", incl_embeds=False, pos_slice=pos_slice, return_labels=True
                )
            parts.append(neurons)
            labels = labels + neuron_labels
        embed = self._pos(self["resid_pre", 0], pos_slice)
        parts.append(embed[None])
        labels.append("embed")
        bias = torch.zeros(self.readout.d_model, dtype=embed.dtype, device=embed.device)
        for l in range(layer + 1 if mlp_input else layer):
            bias = bias + self.readout.weight("b_O", l).to(bias)
        if expand_neurons:
            for l in range(layer):
                bias = bias + self.readout.weight("b_out", l).to(bias)
        parts.append(bias.expand_as(embed)[None])
        labels.append("bias")
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack
