"""``ActivationCache``: cached activations by name, with TransformerLens' helpers.

Returned by :meth:`HookedMLLM.run_with_cache`. Index by canonical name
(``cache["blocks.3.hook_resid_post"]``) or short form (``cache["resid_post", 3]``).
The residual helpers (``accumulated_resid``, ``decompose_resid``,
``stack_head_results``, ``apply_ln_to_stack``, ``logit_attrs``) stack components as
``[component, batch, pos, d_model]`` like TransformerLens; weights are not folded, so
``apply_ln_to_stack`` multiplies by the norm's weight and the components of the final
residual sum exactly to the final norm's output (minus any bias). Modality views
(``image``, ``text``) use the batch's image spans and grids
(:mod:`hooked_mllm.inputs`).

The cache does not hold the model: the weights and norms its helpers read come in a
:class:`~hooked_mllm.readout.CacheReadout` (built by :meth:`HookedMLLM.readout`), so a
cache can be saved (:meth:`ActivationCache.save`), loaded (:meth:`ActivationCache.load`)
and moved (:meth:`ActivationCache.to`) on its own.
"""

from __future__ import annotations

import difflib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .batch import MultimodalBatch
from .hook_points import HookNameError, act_name, tl_hint
from .readout import CacheReadout, compact

_FORMAT = "hooked_mllm.ActivationCache"
_VERSION = 1


class ActivationCache(Mapping):
    """Cached activations of one run.

    Attributes:
        readout: The :class:`~hooked_mllm.readout.CacheReadout` of the model that produced
            it (layer count, weights and norms the helpers read; no model).
        batch: The :class:`~hooked_mllm.inputs.MultimodalBatch` that was run.
        positions: ``[batch, k]`` the positions kept along dim 1, or None (all).
        has_batch_dim: False after :meth:`remove_batch_dim`.

    Examples:
        >>> logits, cache = model.run_with_cache(batch)            # doctest: +SKIP
        >>> cache["resid_post", 0].shape                            # doctest: +SKIP
        torch.Size([1, 60, 128])
    """

    def __init__(
        self,
        store: dict[str, Tensor],
        readout: CacheReadout,
        batch: MultimodalBatch | None = None,
        positions: Tensor | None = None,
        has_batch_dim: bool = True,
    ) -> None:
        if not isinstance(readout, CacheReadout):
            raise TypeError(
                f"ActivationCache takes a CacheReadout (model.readout()), not {type(readout).__name__}."
            )
        self._store = store
        self.readout = readout
        self.batch = batch
        self.positions = positions
        self.has_batch_dim = has_batch_dim

    @property
    def model(self) -> Any:
        raise AttributeError(
            "An ActivationCache does not hold the model; cache.readout has the weights and norms "
            "its helpers read (W_U, W_O, norms), and the model that made it has the rest."
        )

    # -- mapping ---------------------------------------------------------------------

    def _key(self, key: str | tuple) -> str:
        """Canonical name of a key: a name, TransformerLens' shorthand, or ``(name, layer[, layer_type])``
        with a negative layer counted from the end as in TransformerLens."""
        if isinstance(key, str):
            return key if key in self._store else act_name(key)
        if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:
            key = (key[0], self.readout.n_layers + key[1], *key[2:])
        return act_name(*key)

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._key(key)
        if name in self._store:
            return self._store[name]
        tl = tl_hint(name)
        if tl is not None:
            raise HookNameError(
                f"{name!r} is a TransformerLens hook name that this library does not offer: {tl}."
            )
        close = difflib.get_close_matches(name, list(self._store), n=5, cutoff=0.6)
        known = name in self.readout.hook_streams
        reason = "was not cached (widen names_filter)" if known else "is not a hook name"
        hint = f" Close cached names: {', '.join(close)}." if close else ""
        raise HookNameError(f"{name!r} {reason}.{hint}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, tuple)) and self._key(key) in self._store  # type: ignore[arg-type]

    def __repr__(self) -> str:
        more = ", ..." if len(self) > 4 else ""
        return f"ActivationCache({len(self)} hook points: {', '.join(list(self)[:4])}{more})"

    def to(self, device: torch.device | str) -> ActivationCache:
        """A cache with every tensor, and the readout's weights, on ``device`` (the batch stays)."""
        return ActivationCache(
            {k: v.to(device) for k, v in self._store.items()},
            self.readout.to(device),
            self.batch,
            self.positions,
            self.has_batch_dim,
        )

    # -- saving ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache (activations, readout, batch geometry) to ``path``, atomically, mode 0644.

        One ``torch.save`` file of plain tensors, numbers and strings, read back by :meth:`load`
        without the model. It holds the readout's weights (``W_U``, ``W_O``...) too, so it is at
        least their size. The tokenizer is not saved (pass it to :meth:`load` for string tokens).

        Examples:
            >>> cache.save("run.cache")                                 # doctest: +SKIP
            >>> ActivationCache.load("run.cache")["resid_post", 0].shape  # doctest: +SKIP
            torch.Size([1, 60, 128])
        """
        path = Path(path)
        state = {
            "format": _FORMAT,
            "version": _VERSION,
            "store": {name: compact(value) for name, value in self._store.items()},
            "readout": self.readout.state(),
            "batch": None if self.batch is None else self.batch.state(),
            "positions": self.positions,
            "has_batch_dim": self.has_batch_dim,
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        map_location: torch.device | str | None = "cpu",
        tokenizer: Any = None,
    ) -> ActivationCache:
        """A cache :meth:`save` wrote (no model needed; loaded with ``weights_only=True``).

        ``tokenizer`` (e.g. ``model.tokenizer``) lets :meth:`logit_attrs` take string tokens.

        Raises:
            ValueError: if ``path`` is not a saved cache.
        """
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved ActivationCache (ActivationCache.save writes one).")
        if state["version"] > _VERSION:
            raise ValueError(
                f"{path} was saved by a newer hooked_mllm (format {state['version']}, this one "
                f"reads up to {_VERSION}); upgrade hooked_mllm to load it."
            )
        batch = None if state["batch"] is None else MultimodalBatch.from_state(state["batch"])
        return cls(
            dict(state["store"]),
            CacheReadout.from_state(state["readout"], tokenizer=tokenizer),
            batch,
            state["positions"],
            bool(state["has_batch_dim"]),
        )

    def _is_lm(self, name: str) -> bool:
        """Whether dim 0 of entry ``name`` is the batch (LM stream); vision/projector entries lead with
        images.
        """
        return self.readout.stream(name) == "lm"

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a one-row cache, in place (as TransformerLens does); returns the cache.

        Vision and projector entries (which lead with the image axis) lose it too when the row
        holds one image, as in TransformerLens, where every entry with a leading 1 loses it.

        Raises:
            ValueError: if the batch has more than one row.
        """
        if not self.has_batch_dim:
            logging.getLogger(__name__).warning(
                "Tried removing batch dimension after already having removed it."
            )
            return self
        sizes = {v.shape[0] for k, v in self._store.items() if v.dim() > 0 and self._is_lm(k)}
        if sizes - {1}:
            raise ValueError(
                f"Cannot remove the batch dimension from a cache with batch size {max(sizes)}; "
                "use apply_slice_to_batch_dim(i) to pick one row."
            )
        self._store = {k: v[0] if v.dim() > 0 and v.shape[0] == 1 else v for k, v in self._store.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: int | slice | Sequence[int] | Tensor) -> ActivationCache:
        """A new cache with ``batch_slice`` applied to the rows.

        An int drops the batch axis of LM entries (``has_batch_dim`` becomes False), like
        TransformerLens' ``Slice``; a slice, a list of ints or an index tensor keeps it. Vision
        and projector entries, which lead with the image axis, keep the images of the chosen
        rows (the axis stays); where that cannot be told (no batch, or an entry not laid out
        one image per slot) they are left out of the new cache, so reading them fails clearly.
        """
        if not self.has_batch_dim:
            raise ValueError("Cannot index into a cache without a batch dim.")
        index = torch.as_tensor(batch_slice) if isinstance(batch_slice, (list, tuple)) else batch_slice
        rows = torch.arange(self._batch_rows())[index]
        per_row = list(self.batch.images_per_row) if self.batch is not None else []
        first = [sum(per_row[:r]) for r in range(len(per_row))]
        images = None
        # A callable pixel_values rule means image spans are not one per pixel_values entry (LLaVA-NeXT's
        # two views per image, Molmo2's): vision entries, one per tile or crop, cannot be picked by span.
        by_span = self.batch is None or not callable(dict(self.batch.input_split).get("pixel_values"))
        if len(per_row) == self._batch_rows() and by_span:
            images = torch.tensor(
                [first[r] + i for r in rows.reshape(-1).tolist() for i in range(per_row[r])], dtype=torch.long
            )
        store, dropped = {}, []
        for name, value in self._store.items():
            if self._is_lm(name):
                store[name] = value[index]
            elif images is not None and value.dim() > 0 and value.shape[0] == sum(per_row):
                store[name] = value[images]
            else:
                dropped.append(name)
        if dropped:
            logging.getLogger(__name__).warning(
                "apply_slice_to_batch_dim left out %d entries not laid out by image (%s ...)",
                len(dropped),
                dropped[0],
            )
        positions = None if self.positions is None else self.positions[index]
        batch = (
            self.batch.row(batch_slice) if isinstance(batch_slice, int) and self.batch is not None else None
        )
        if isinstance(batch_slice, int) and positions is not None:
            positions = positions[None]
        return ActivationCache(
            store, self.readout, batch, positions, has_batch_dim=not isinstance(batch_slice, int)
        )

    def _batch_rows(self) -> int:
        if self.batch is not None:
            return len(self.batch)
        return next(v.shape[0] for k, v in self._store.items() if v.dim() > 0 and self._is_lm(k))

    @staticmethod
    def toggle_autodiff(mode: bool = False) -> None:
        """``torch.set_grad_enabled(mode)``: global state, as in TransformerLens (it logs a warning).

        ``torch.inference_mode()`` as a context manager does the same without global state.
        """
        logging.getLogger(__name__).warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

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

    # -- modality views --------------------------------------------------------------

    def _require_batch(self) -> MultimodalBatch:
        if not self.has_batch_dim:
            raise ValueError(
                "This cache has no batch dimension (remove_batch_dim / an int batch slice); "
                "the image / text views need it."
            )
        if self.batch is None:
            raise ValueError("This cache has no batch, so it cannot tell image tokens from text tokens.")
        return self.batch

    def _row_positions(self, row: int, positions: Sequence[int]) -> Tensor:
        wanted = torch.tensor(list(positions))
        if self.positions is None:
            return wanted
        kept = self.positions[row]
        where = kept[None, :] == wanted[:, None]
        if not bool(where.any(1).all()):
            raise ValueError(
                "The cache was made with a position selector that dropped some of these "
                "tokens; cache with positions=None or positions='image'."
            )
        return where.int().argmax(1)

    def image(self, name: str | tuple, image: int = 0) -> Tensor | list[Tensor]:
        """Image ``image`` of every row for one hook: ``[batch, rows, cols, ...]`` where gridded.

        Rows without that image, or images without a grid, give a list of
        ``[n_tokens, ...]`` tensors instead. Tokens between an image's rows (Pixtral's
        ``[IMG_BREAK]``) are not part of it (:attr:`ImageSpan.token_positions`).
        """
        batch = self._require_batch()
        if batch.no_image_tokens is not None:
            raise ValueError(batch.no_image_tokens)
        act = self[name]
        pieces, grids = [], []
        for row in range(len(batch)):
            spans = batch.images_of(row)
            if image >= len(spans):
                raise ValueError(f"Row {row} has {len(spans)} image(s); image index {image} is out of range.")
            span = spans[image]
            pieces.append(act[row, self._row_positions(row, span.token_positions)])
            grids.append(span.grid)
        if all(g is not None for g in grids) and len(set(grids)) == 1:
            rows, cols = grids[0]
            return torch.stack([p.reshape(rows, cols, *p.shape[1:]) for p in pieces])
        return pieces

    def text(self, name: str | tuple) -> Tensor | list[Tensor]:
        """The text-token activations per row: ``[batch, n_text, ...]`` if every row has as many."""
        batch = self._require_batch()
        act = self[name]
        pieces = []
        for row in range(len(batch)):
            where = batch.text_mask[row].nonzero().flatten().tolist()
            pieces.append(act[row, self._row_positions(row, where)])
        if len({p.shape[0] for p in pieces}) == 1:
            return torch.stack(pieces)
        return pieces
