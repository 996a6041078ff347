"""nnsight habits on ``HookedMLLM``: several invokes in one forward, traced generation, patterns in a trace.

* :class:`MLLMEnvoy` is the ``NNsight`` wrapper every ``HookedMLLM`` runs through. It
  batches the inputs of several ``tracer.invoke(...)`` blocks into one forward itself
  (nnsight 0.8 cannot batch multimodal invokes): each invoke's input (a
  :class:`~hooked_mllm.inputs.MultimodalBatch`, text, or HF tensors) is made a batch, the
  batches are left-padded to one length and concatenated (:func:`combine`), and nnsight
  scopes every read and write of a language-model value to the invoke's rows. Positions
  counted from the right name the same token in every invoke; counted from the left they
  shift by the padding the longest invoke adds. Vision-tower and projector values are laid
  out by image, not by row, so a batched invoke refuses them (:func:`check_invoke_point`).
* :func:`habit_tracer` runs a trace under eager attention when its ``with`` block names
  ``hook_pattern`` (or when asked), so ``model.hook_point("blocks.0.attn.hook_pattern")``
  reads the pattern there as it does in ``run_with_cache``.
* ``with model.generate(batch, max_new_tokens=...) as tracer:`` (in :mod:`hooked_mllm.model`)
  is a trace of HF ``generate`` through the same tracer, with nnsight's per-step access
  (``tracer.iter[...]``, ``tracer.all()``) and the generated ids at ``tracer.result``.

Examples:
    >>> with model.trace() as tracer:                                        # doctest: +SKIP
    ...     with tracer.invoke(batch_a):
    ...         a = model.hook_point("blocks.0.hook_resid_post").output.save()
    ...     with tracer.invoke("a text prompt"):
    ...         model.hook_point("blocks.1.hook_mlp_out").output = zeros
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from nnsight import Envoy, NNsight
from nnsight.intervention.interleaver import Mediator

from ..hook_points import HookPoint
from . import nnsight_private

if TYPE_CHECKING:
    from ..inputs import MultimodalBatch


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
    )


class MLLMEnvoy(NNsight):
    """``NNsight`` that batches several multimodal invokes into one forward (see the module docstring).

    It overrides nnsight's private ``_batch_size`` / ``_batch`` (listed in ``nnsight_private``).
    Runs go through an edited copy of it (:func:`hooked_mllm._runtime.runner.edited`), which keeps its class.

    ``to_batch`` turns one invoke's ``(args, kwargs)`` into a ``MultimodalBatch``; it is set
    by ``HookedMLLM`` (:meth:`attach`).
    """

    def attach(self, to_batch: Callable[..., MultimodalBatch], pad_id: Callable[[], int]) -> None:
        object.__setattr__(self, "_mllm_to_batch", to_batch)
        object.__setattr__(self, "_mllm_pad_id", pad_id)

    def _batch_size(self, *inputs: Any, **kwargs: Any) -> int:
        if inputs and hasattr(inputs[0], "input_ids"):  # a MultimodalBatch
            return int(inputs[0].input_ids.shape[0])
        if inputs and _is_text(inputs[0]):
            return 1 if isinstance(inputs[0], str) else len(inputs[0])
        if inputs and isinstance(inputs[0], torch.Tensor) and not inputs[0].is_floating_point():
            return int(inputs[0].shape[0]) if inputs[0].dim() > 1 else 1  # token ids, as to_batch takes them
        ids = kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return int(ids.shape[0]) if ids.dim() > 1 else 1
        if inputs:
            raise TypeError(
                f"tracer.invoke takes a MultimodalBatch, text, token ids, or HF tensors as keywords; got "
                f"{type(inputs[0]).__name__}."
            )
        return 0

    def _batch(self, invokes: list[tuple], fn: Any) -> tuple:
        if len(invokes) == 1 and not invokes[0][0]:
            return invokes[0]  # one call's HF keywords (every run of HookedMLLM): unchanged
        batches = []
        for args, kwargs in invokes:
            batches.append(
                self._mllm_to_batch(
                    args[0] if args else None,
                    **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)},
                )
            )
        options = {
            k: v for args, kwargs in invokes for k, v in kwargs.items() if not isinstance(v, torch.Tensor)
        }
        return (), dict(combine(batches, self._mllm_pad_id()), **options)


def combine(batches: Sequence[MultimodalBatch], pad_id: int) -> dict[str, torch.Tensor]:
    """The HF inputs of several batches as one: token-aligned tensors left-padded to one length, the rest
    (pixel values, image sizes and grids) concatenated along their first axis.

    Raises:
        ValueError: The batches' image tensors cannot be stacked (say what differs).
    """
    width = max(b.input_ids.shape[1] for b in batches)
    keys: list[str] = []
    for batch in batches:
        keys += [k for k in batch.inputs if k not in keys]
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        parts = []
        for batch in batches:
            value = batch.inputs.get(key)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"Invoke input {key!r} is not a tensor; it cannot be batched across invokes."
                )
            ids = batch.input_ids
            if value.dim() >= 2 and value.shape[:2] == ids.shape:  # token-aligned: pad on the left
                fill = pad_id if key == "input_ids" else 0
                pad = value.new_full((value.shape[0], width - value.shape[1], *value.shape[2:]), fill)
                value = torch.cat([pad, value], dim=1)
            parts.append(value)
        try:
            out[key] = torch.cat(parts, dim=0)
        except RuntimeError as error:
            shapes = ", ".join(str(tuple(p.shape)) for p in parts)
            raise ValueError(
                f"The invokes' {key!r} cannot be batched into one forward (shapes {shapes}): {error}. "
                "Give invokes inputs of one layout (e.g. the same number of images per row)."
            ) from None
    if "attention_mask" not in out:
        raise ValueError("Invokes need attention masks to be batched (to tell padding from tokens).")
    return out


def check_invoke_point(nn: Envoy, point: HookPoint) -> None:
    """Refuse a vision or projector point inside one of several invokes (its values are laid out by image)."""
    batcher = getattr(nn.interleaver, "batcher", None)
    if point.stream == "lm" or batcher is None or not batcher.batching:
        return
    try:
        grouped = Mediator.current("model.hook_point").batch_group is not None
    except Exception:  # not inside a trace body
        return
    if grouped:
        raise ValueError(
            f"{point.name} is a {point.stream} value, laid out by image rather than by row, so it cannot be "
            "scoped to one of several invokes. Read it in a trace of one input, or in an empty "
            "`tracer.invoke()` (which sees the whole batch)."
        )


def _names_patterns(node: Any) -> bool:
    """Whether the source of a ``with`` block names an attention pattern."""
    try:
        text = ast.unparse(node)
    except Exception:
        return False
    return "hook_pattern" in text or '"pattern"' in text or "'pattern'" in text


def habit_tracer(base: type, eager_configs: Callable[[], list[Any]], eager: bool | None) -> type:
    """``base`` (a tracer class), running under eager attention when ``eager`` is true, or when it is
    None and the block names ``hook_pattern``."""

    class HabitTracer(base):
        def __exit__(self, *exc: Any) -> bool:
            wanted = eager if eager is not None else _names_patterns(getattr(self, "node", None))
            with nnsight_private.eager_attention(eager_configs() if wanted else []):
                return super().__exit__(*exc)

    return HabitTracer
