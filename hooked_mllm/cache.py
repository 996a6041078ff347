"""``ActivationCache``: cached activations by name, with TransformerLens' helpers.

Returned by :meth:`HookedMLLM.run_with_cache`. Index by canonical name
(``cache["blocks.3.hook_resid_post"]``) or short form (``cache["resid_post", 3]``).
The residual helpers (``accumulated_resid``, ``decompose_resid``,
``stack_head_results``, ``apply_ln_to_stack``, ``logit_attrs``) stack components as
``[component, batch, pos, d_model]`` like TransformerLens; weights are not folded, so
``apply_ln_to_stack`` multiplies by the norm's weight and the components of the final
residual sum exactly to the final norm's output (minus any bias). Modality views
(``image``, ``text``) use the batch's image spans and grids
(:mod:`hooked_mllm.inputs`). The residual helpers live in a mixin
(``hooked_mllm._decomposition.ResidDecomposition``); this module keeps the mapping, saving
and loading, batch slicing and the modality views.

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
from torch import Tensor

from ._decomposition import ResidDecomposition
from .batch import MultimodalBatch
from .hook_points import HookNameError, act_name, tl_hint
from .readout import CacheReadout, compact

_FORMAT = "hooked_mllm.ActivationCache"
_VERSION = 1


class ActivationCache(ResidDecomposition, Mapping):
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
        return isinstance(key, (str, tuple)) and self._key(key) in self._store

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
        first = grids[0] if grids else None
        if first is not None and len(set(grids)) == 1:  # one grid, shared by every row
            rows, cols = first
            return torch.stack([p.reshape(rows, cols, *p.shape[1:]) for p in pieces])
        return pieces

    def video(self, name: str | tuple, video: int = 0, frames: Any = None) -> Tensor | list[Tensor]:
        """Video ``video`` of every row for one hook: ``[batch, time, rows, cols, ...]``.

        ``time`` counts the language model's time steps (:class:`~hooked_mllm.spans.VideoSpan`);
        ``frames`` picks some: an int, a slice, or a list of ints gathered in the order given,
        repeats included (the time axis stays). Rows whose videos differ in geometry give a list
        of ``[time, rows, cols, ...]`` tensors.

        Examples:
            >>> cache.video("blocks.0.hook_resid_post", frames=[2, 0]).shape   # doctest: +SKIP
            torch.Size([1, 2, 2, 3, 64])
        """
        batch = self._require_batch()
        if batch.video_mask is None:
            from .batch import refuse_video

            refuse_video(None, "cache.video() was called")
        act = self[name]
        pieces, shapes = [], []
        for row in range(len(batch)):
            spans = batch.videos_of(row)
            if not -len(spans) <= video < len(spans):
                raise ValueError(f"Row {row} has {len(spans)} video(s); video index {video} is out of range.")
            span = spans[video]
            time, (rows, cols) = span.frame_geometry()
            if frames is None or isinstance(frames, slice):
                steps = list(range(time))[frames or slice(None)]
            else:
                steps = [frames] if isinstance(frames, int) else list(frames)
                if any(not -time <= t < time for t in steps):
                    raise IndexError(
                        f"frames={frames!r}: video {video} of row {row} has {time} time step(s)."
                    )
            where = [p for t in steps for p in span.frame_positions(t)]
            value = act[row, self._row_positions(row, where)]
            pieces.append(value.reshape(len(steps), rows, cols, *value.shape[1:]))
            shapes.append(pieces[-1].shape)
        if len(set(shapes)) == 1:
            return torch.stack(pieces)
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
