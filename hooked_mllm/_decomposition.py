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

from .readout import CacheReadout


def pos_index(selection: Any, what: str = "pos_slice") -> int | slice | Tensor | None:
    """A ``pos_slice`` (or ``neuron_slice``) as an index, read as TransformerLens' ``Slice`` reads it.

    None keeps everything; an int (or a one-element 0-d tensor) picks one and drops the axis; a
    ``slice`` or a ``(start, stop[, step])`` tuple is a slice; a list, array or 1-d tensor picks
    those entries in the order given, repeats kept. A TransformerLens ``Slice`` is unwrapped.

    Raises:
        ValueError: for anything else (says what is accepted).

    Examples:
        >>> pos_index((1, 3)), pos_index([3, 1, 3]).tolist(), pos_index(-1)
        (slice(1, 3, None), [3, 1, 3], -1)
    """
    if selection is None:
        return None
    if hasattr(selection, "slice") and hasattr(selection, "mode"):  # TransformerLens' Slice
        selection = selection.slice
    if isinstance(selection, tuple):
        return slice(*selection)
    if isinstance(selection, slice):
        return selection
    if isinstance(selection, bool):
        raise ValueError(f"{what} takes positions, not a bool ({selection!r}).")
    if isinstance(selection, int):
        return selection
    try:
        index = torch.as_tensor(selection)
    except (TypeError, ValueError, RuntimeError):
        index = None
    if index is None or index.dtype in (torch.bool, *_FLOAT_DTYPES) or index.dim() > 1:
        raise ValueError(
            f"{what} takes None, an int, a slice, a (start, stop[, step]) tuple, or a list or 1-d tensor of "
            f"indices; got {selection!r}."
        )
    return int(index) if index.dim() == 0 else index.long()


def batch_index(selection: Any) -> int | slice | Tensor | None:
    """A ``batch_slice`` as an index (read as :func:`pos_index` reads a ``pos_slice``)."""
    return pos_index(selection, "batch_slice")


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
        """``layer`` as a count of layers in ``0 .. n_layers``: None and -1 mean all, -2 all but the last."""
        n = self.readout.n_layers
        if layer is None:
            return n
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int or None, not {type(layer).__name__}.")
        count = layer if layer >= 0 else n + 1 + layer
        if not 0 <= count <= n:
            raise ValueError(
                f"layer must be in -{n + 1}..{n} (None and -1 mean every layer, n_layers = {n}), got {layer}."
            )
        return count

    @staticmethod
    def _pos(tensor: Tensor, pos_slice: Any) -> Tensor:
        """``pos_slice`` on the position axis (dim -2), read as TransformerLens' ``Slice`` reads it.

        An int drops the axis; a tuple is ``slice(*tuple)``; a list, array or tensor picks positions in
        the order given, repeats kept.
        """
        index = pos_index(pos_slice)
        return tensor if index is None else tensor[..., index, :]

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Float[Tensor, "layer *rest"]:  # noqa: F821 (jaxtyping shape string)
        """Stack one activation over layers ``0 .. layer-1`` (all with ``layer=-1``), as TransformerLens does.

        ``activation_name`` is a short name (``"resid_post"``, ``"pattern"``, ``"q"``...) and
        ``sublayer_type`` the sublayer that holds it (``"attn"``, ``"mlp"``, ``"ln1"``, ``"ln2"``),
        read together as ``cache[activation_name, l, sublayer_type]``.

        Examples:
            >>> cache.stack_activation("q", -1, "attn").shape   # layer batch pos head d_head # doctest: +SKIP
        """
        n = self._n_layers(layer)
        key = (activation_name,) if sublayer_type is None else (activation_name, sublayer_type)
        return torch.stack([self[(key[0], l, *key[1:])] for l in range(n)])

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        """The residual stream before each layer up to and including ``layer`` (every one and the final
        residual with None or -1), as TransformerLens' ``accumulated_resid``.

        Labels ``{l}_pre`` (``hook_resid_pre``), ``{l}_mid`` (``hook_resid_mid`` with ``incl_mid``,
        layers below ``layer``; of ``layer`` itself with ``mlp_input``) and ``final_post``. With
        ``apply_ln`` over every layer it is a logit lens: the final norm is recomputed on each
        component (``apply_ln_to_stack(..., recompute_ln=True)``); up to a layer below the last,
        every component is scaled as that layer's norm scales its own input.

        Returns:
            ``[component, batch, pos, d_model]`` (and labels if asked).

        Examples:
            >>> stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)  # doctest: +SKIP
            >>> lens_logits = stack @ cache.readout.W_U                                      # doctest: +SKIP
        """
        n_layers = self.readout.n_layers
        layer = self._n_layers(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n_layers:
                parts.append(self["resid_post", n_layers - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = self._pos(torch.stack(parts), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, mlp_input=mlp_input, pos_slice=pos_slice, recompute_ln=layer == n_layers
            )
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """The residual read by ``layer`` (the final one with None or -1) split into what built it.

        Components: ``"embed"`` (``blocks.0.hook_resid_pre``: text embeddings with the
        projected image features scattered in), then each layer's attention and MLP
        outputs (``mode``: ``"all"``, ``"attn"`` or ``"mlp"``), and with ``mlp_input`` the
        attention output of ``layer`` itself (the MLP's input). Summing the components gives
        the residual. Arguments in TransformerLens' order.

        Returns:
            ``[component, batch, pos, d_model]`` (and labels if asked).

        Examples:
            >>> stack = cache.decompose_resid(layer=2, mlp_input=True)   # doctest: +SKIP
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', not {mode!r}")
        n = self._n_layers(layer)
        if mlp_input and n == self.readout.n_layers:
            raise ValueError("mlp_input=True needs a layer below n_layers (the unembedding has no MLP).")
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
        if mlp_input and mode != "mlp":
            parts.append(self["attn_out", n])
            labels.append(f"{n}_attn_out")
        if not parts:
            raise ValueError("decompose_resid selected no component (layer 0 without incl_embeds).")
        stack = self._pos(torch.stack(parts), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, n, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _empty_stack(self, pos_slice: Any) -> Tensor:
        like = self._pos(self["resid_pre", 0], pos_slice)
        return like.new_zeros((0, *like.shape))

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ) -> Any:
        """Each head's output (``hook_z`` times its slice of ``W_O``) for layers below ``layer``.

        Returns ``[layer * head, batch, pos, d_model]`` (no component for ``layer=0``); with
        ``incl_remainder`` a last component holds the rest of the residual that ``layer``
        reads (``hook_resid_pre`` of ``layer``; the last ``hook_resid_post`` for every layer).

        Examples:
            >>> stack = cache.stack_head_results(layer=2, pos_slice=-1)   # doctest: +SKIP
        """
        n = self._n_layers(layer)
        parts, labels = [], []
        for l in range(n):
            result = self._pos(self._head_result(l).movedim(-2, 0), pos_slice)
            parts.append(result)
            labels += [f"L{l}H{h}" for h in range(result.shape[0])]
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice)
        if incl_remainder:
            resid = self._pos(self._resid_into(n, False), pos_slice)
            stack = torch.cat([stack, (resid - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, n, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "... d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool | None = None,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "... d_model"]:
        """Scale components by the norm that reads the residual at ``layer`` (None, -1, n_layers: final).

        The scale is taken from the cached full residual there (``blocks.{L-1}.hook_resid_post``
        for the final norm, ``blocks.{layer}.hook_resid_pre`` for a layer's ``ln1``, or
        ``hook_resid_mid`` and ``ln2`` with ``mlp_input``), so the components stay additive:
        their sum equals the norm's output (minus its bias). With ``recompute_ln`` the norm is
        instead applied to each component on its own (its own scale, plus the norm's bias), as
        TransformerLens' logit lens does. Arguments in TransformerLens' order.

        Args:
            residual_stack: ``[component, batch, pos, d_model]`` (``pos`` absent after an int
                ``pos_slice``, ``batch`` absent with ``has_batch_dim=False``).
            pos_slice: The positions ``residual_stack`` holds (the cached residual is cut alike).
            batch_slice: Rows to keep, applied to the stack's batch axis and the cached residual.
            has_batch_dim: Whether ``residual_stack`` has a batch axis (default: as the cache).
            recompute_ln: Normalise each component by its own scale.

        Examples:
            >>> scaled = cache.apply_ln_to_stack(cache.decompose_resid(), layer=None)  # doctest: +SKIP
        """
        readout = self.readout
        has_batch_dim = self.has_batch_dim if has_batch_dim is None else has_batch_dim
        n = self._n_layers(layer)
        final = n == readout.n_layers
        rows = batch_index(batch_slice)
        if has_batch_dim and rows is not None:
            residual_stack = residual_stack[:, rows]
        if mlp_input and final:
            raise ValueError("mlp_input=True needs a layer below n_layers (the unembedding has no MLP).")
        if mlp_input:
            if all(norm is None for norm in readout.ln2) and not any(
                k.startswith("ln2.") for k in readout.missing
            ):
                raise ValueError("This model's blocks are parallel (no ln2): the MLP reads ln1 of resid_pre.")
            resid, norm = self["resid_mid", n], readout.weight("ln2", n)
        elif final:
            resid, norm = self["resid_post", readout.n_layers - 1], readout.weight("ln_final")
        else:
            resid, norm = self["resid_pre", n], readout.weight("ln1", n)
        if recompute_ln:
            return norm.normalize(residual_stack)
        resid = self._pos(resid, pos_slice)
        if self.has_batch_dim and rows is not None:
            resid = resid[rows]
        if self.has_batch_dim and not has_batch_dim:
            resid = resid[0]
        return norm.apply(residual_stack, resid)

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "... d_model"],
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool | None = None,
    ) -> Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``).

        Applies the final norm (:meth:`apply_ln_to_stack`) and dots with the unembedding
        columns. ``tokens``: an id, a string (one token), ``[batch]`` or ``[batch, pos]`` ids;
        ``incorrect_tokens`` of the same shape (another shape is refused, as in TransformerLens).
        Returns the stack's shape without ``d_model``.

        Examples:
            >>> stack = cache.decompose_resid(pos_slice=-1)                       # doctest: +SKIP
            >>> attrs = cache.logit_attrs(stack, "red", "blue", pos_slice=-1)   # doctest: +SKIP
        """
        if incorrect_tokens is not None:
            shapes = [self._token_ids(t).shape for t in (tokens, incorrect_tokens)]
            if shapes[0] != shapes[1]:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape, got {tuple(shapes[0])} and "
                    f"{tuple(shapes[1])}; give one incorrect token per correct one."
                )
        scaled = self.apply_ln_to_stack(
            residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        keep_pos = not isinstance(pos_index(pos_slice), int)
        directions = self._directions(tokens, scaled, keep_pos)
        if incorrect_tokens is not None:
            directions = directions - self._directions(incorrect_tokens, scaled, keep_pos)
        return (scaled * directions).sum(-1)

    def _token_ids(self, tokens: Any) -> Tensor:
        """``tokens`` as an id tensor: an id, a one-token string, or ids."""
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
        return torch.as_tensor(tokens)

    def _directions(self, tokens: Any, like: Tensor, keep_pos: bool = True) -> Tensor:
        tokens = self._token_ids(tokens)
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
    ) -> Float[Tensor, "... d_model"]:
        """Each MLP neuron's contribution to the residual: ``mlp.hook_post[..., n] * W_out[layer, n]``.

        ``mlp.hook_post`` is the down projection's input (for gated MLPs, the activation of the
        gate times the up projection), so the neurons plus the down projection's bias sum to
        ``hook_mlp_out``. Returns ``[batch, pos, neuron, d_model]`` (``pos`` dropped by an
        int ``pos_slice``, ``neuron`` by an int ``neuron_slice``, as in TransformerLens;
        ``neuron_slice`` is read as ``pos_slice`` is).

        Examples:
            >>> cache.get_neuron_results(1, neuron_slice=[7, 3]).shape   # doctest: +SKIP
            torch.Size([1, 60, 2, 128])
        """
        self._neuron_checks()
        acts = self._pos(self["post", layer], pos_slice)
        w_out = self.readout.weight("W_out", layer).to(device=acts.device, dtype=acts.dtype)
        index = pos_index(neuron_slice, "neuron_slice")
        if index is not None:
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
        n = self._n_layers(layer)
        chosen = pos_index(neuron_slice, "neuron_slice")
        if isinstance(chosen, int):  # one neuron keeps its axis here, as in TransformerLens
            chosen = torch.tensor([chosen])
        parts, labels = [], []
        for l in range(n):
            result = self.get_neuron_results(l, neuron_slice=chosen, pos_slice=pos_slice)
            parts.append(result.movedim(-2, 0))
            ids = torch.arange(self.readout.weight("W_out", l).shape[0])
            ids = ids if chosen is None else ids[chosen]
            labels += [f"L{l}N{int(i)}" for i in ids.flatten()]
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice)
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
        layer = self._n_layers(layer)
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
