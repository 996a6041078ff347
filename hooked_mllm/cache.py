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
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from ._weights import parameter
from .hook_points import HookNameError, act_name

if TYPE_CHECKING:
    from .inputs import MultimodalBatch
    from .model import HookedMLLM


class ActivationCache(Mapping):
    """Cached activations of one run.

    Attributes:
        model: The :class:`~hooked_mllm.model.HookedMLLM` that produced it.
        batch: The :class:`~hooked_mllm.inputs.MultimodalBatch` that was run.
        positions: ``[batch, k]`` the positions kept along dim 1, or None (all).

    Example:
        >>> logits, cache = model.run_with_cache(batch)            # doctest: +SKIP
        >>> cache["resid_post", 0].shape                            # doctest: +SKIP
        torch.Size([1, 60, 128])
    """

    def __init__(self, store: dict[str, Tensor], model: HookedMLLM, batch: MultimodalBatch | None = None,
                 positions: Tensor | None = None) -> None:
        self._store = store
        self.model = model
        self.batch = batch
        self.positions = positions

    # -- mapping ---------------------------------------------------------------------

    def _key(self, key: str | tuple) -> str:
        return act_name(*key) if isinstance(key, tuple) else key

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._key(key)
        if name in self._store:
            return self._store[name]
        close = difflib.get_close_matches(name, list(self._store), n=5, cutoff=0.6)
        known = name in self.model.hook_points
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
        return f"ActivationCache({len(self)} hook points: {', '.join(list(self)[:4])}{', ...' if len(self) > 4 else ''})"

    def to(self, device: torch.device | str) -> ActivationCache:
        """A cache with every tensor on ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model, self.batch,
                               self.positions)

    # -- stacking --------------------------------------------------------------------

    def _n_layers(self, layer: int | None) -> int:
        n = self.model.cfg.n_layers
        return n if layer is None else (layer if layer >= 0 else n + 1 + layer)

    @staticmethod
    def _pos(tensor: Tensor, pos_slice: Any) -> Tensor:
        if pos_slice is None:
            return tensor
        if isinstance(pos_slice, int):
            return tensor[..., pos_slice : pos_slice + 1 or None, :]
        return tensor[..., pos_slice, :]

    def stack_activation(self, activation_name: str, layer: int = -1,
                         sublayer_type: str | None = None) -> Float[Tensor, "layer *rest"]:
        """Stack one activation over layers ``0 .. layer-1`` (all with ``layer=-1``).

        ``activation_name`` is a short name (``"resid_post"``, ``"pattern"``...);
        ``sublayer_type`` picks e.g. ``"ln1"``/``"ln2"`` for ``"normalized"``.
        """
        short = f"{sublayer_type}" if sublayer_type else activation_name
        n = self._n_layers(None if layer == -1 else layer)
        return torch.stack([self[act_name(short, l)] for l in range(n)])

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: Any = None, return_labels: bool = False) -> Any:
        """The residual stream before each layer up to ``layer`` (and the final one if None).

        Returns ``[component, batch, pos, d_model]`` (and labels if asked).
        """
        n = self._n_layers(layer)
        parts, labels = [], []
        for l in range(min(n, self.model.cfg.n_layers)):
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if incl_mid:
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        if n == self.model.cfg.n_layers:
            parts.append(self["resid_post", n - 1])
            labels.append("final_post")
        stack = self._pos(torch.stack(parts), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mode: str = "all", apply_ln: bool = False,
                        pos_slice: Any = None, incl_embeds: bool = True, return_labels: bool = False) -> Any:
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

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: Any = None, apply_ln: bool = False) -> Any:
        """Each head's output (``hook_z`` times its slice of ``W_O``) for layers below ``layer``.

        Returns ``[layer * head, batch, pos, d_model]``; with ``incl_remainder`` a last
        component holds the rest of the residual at ``layer``.
        """
        n = self._n_layers(None if layer == -1 else layer)
        parts, labels = [], []
        for l in range(n):
            z = self["z", l]
            w_o = self.model.W_O(l).to(device=z.device, dtype=z.dtype)
            result = torch.einsum("bphd,hdm->hbpm", z, w_o)
            parts.append(result)
            labels += [f"L{l}H{h}" for h in range(result.shape[0])]
        stack = torch.cat(parts) if parts else torch.empty(0)
        if incl_remainder:
            resid = self["resid_post", n - 1] if n == self.model.cfg.n_layers else self["resid_pre", n]
            stack = torch.cat([stack, (resid - stack.sum(0))[None]])
            labels.append("remainder")
        stack = self._pos(stack, pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer == -1 else layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, residual_stack: Float[Tensor, "... batch pos d_model"], layer: int | None = None,
                          pos_slice: Any = None, has_batch_dim: bool = True) -> Float[Tensor, "... batch pos d_model"]:
        """Scale components by the norm that reads the residual at ``layer`` (final if None).

        The scale is taken from the cached full residual there (``blocks.{L-1}.hook_resid_post``
        for the final norm, ``blocks.{layer}.hook_resid_pre`` for a layer's ``ln1``), so the
        components stay additive: their sum equals the norm's output (minus its bias).
        """
        cfg = self.model.cfg
        final = layer is None or layer >= cfg.n_layers or layer == -1
        if final:
            resid = self["resid_post", cfg.n_layers - 1]
            norm = self.model.final_norm()
            kind = self.model.adapter.block.norm
        else:
            resid = self["resid_pre", layer]
            norm = self.model.adapter.module(self.model.hf_model,
                                             f"{self.model.adapter.lm_layers}.{layer}.{self.model.adapter.block.ln1}")
            kind = self.model.adapter.block.norm
        resid = self._pos(resid, pos_slice).float()
        stack = residual_stack.float()
        eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None) or cfg.norm_eps
        if kind == "layer":
            stack = stack - stack.mean(-1, keepdim=True)
            scale = (resid.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
        else:
            scale = (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        if not has_batch_dim:
            scale = scale[0]
        weight = parameter(norm).detach().float().to(stack.device) + self.model.adapter.block.norm_offset
        return (stack / scale.to(stack.device) * weight).to(residual_stack.dtype)

    def logit_attrs(self, residual_stack: Float[Tensor, "... batch pos d_model"], tokens: Any,
                    incorrect_tokens: Any = None, pos_slice: Any = None) -> Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``).

        Applies the final norm (:meth:`apply_ln_to_stack`) and dots with the unembedding
        columns. ``tokens``: an id, a string (one token), ``[batch]`` or ``[batch, pos]`` ids.
        Returns the stack's shape without ``d_model``.
        """
        scaled = self.apply_ln_to_stack(residual_stack, layer=None, pos_slice=pos_slice)
        directions = self._directions(tokens, scaled)
        if incorrect_tokens is not None:
            directions = directions - self._directions(incorrect_tokens, scaled)
        return (scaled * directions).sum(-1)

    def _directions(self, tokens: Any, like: Tensor) -> Tensor:
        if isinstance(tokens, str):
            tokenizer = getattr(self.model.processor, "tokenizer", None)
            if tokenizer is None:
                raise ValueError("String tokens need a processor with a tokenizer; pass token ids instead.")
            ids = tokenizer.encode(tokens, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"{tokens!r} is {len(ids)} tokens; logit_attrs takes one token.")
            tokens = ids[0]
        tokens = torch.as_tensor(tokens)
        w_u = self.model.W_U.detach().to(device=like.device, dtype=like.dtype)
        directions = w_u[:, tokens].movedim(0, -1)
        if tokens.dim() == 1:
            directions = directions[:, None, :]
        return directions

    # -- modality views --------------------------------------------------------------

    def _require_batch(self) -> MultimodalBatch:
        if self.batch is None:
            raise ValueError("This cache has no batch, so it cannot tell image tokens from text tokens.")
        return self.batch

    def _row_positions(self, row: int, positions: Sequence[int]) -> Tensor:
        wanted = torch.tensor(list(positions))
        if self.positions is None:
            return wanted
        kept = self.positions[row]
        where = (kept[None, :] == wanted[:, None])
        if not bool(where.any(1).all()):
            raise ValueError("The cache was made with a position selector that dropped some of these "
                             "tokens; cache with positions=None or positions='image'.")
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
