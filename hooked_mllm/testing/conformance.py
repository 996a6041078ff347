"""Checks that every hook point of a wrapped model honours writes: no accepted write is a no-op.

:func:`unreached_writes` runs the model once per write style with a zero perturbation
that requires grad added at **every** writable hook point at once (returned as a
replacement, or added in place with the hook returning None), back-propagates a random
projection of the logits, and reports the points whose perturbation got no gradient: a
write there would not change the output. One forward and one backward per style, however
many points there are, so the check is cheap enough for every family in the test suite and
for a user's own model. :func:`read_only_refusals` checks the other half: a read-only point
refuses a returned replacement and an in-place edit.

Examples:
    >>> from hooked_mllm.testing.conformance import unreached_writes
    >>> unreached_writes(model, batch)            # doctest: +SKIP
    {'returned': [], 'in_place': []}
"""

from __future__ import annotations

from typing import Any

import torch

STYLES = ("returned", "in_place")


def unreached_writes(
    model: Any, batch: Any, names: list[str] | None = None, seed: int = 0
) -> dict[str, list[str]]:
    """The writable hook points whose writes do not reach the logits, per write style.

    Args:
        model: A :class:`~hooked_mllm.HookedMLLM`.
        batch: Its inputs (a :class:`~hooked_mllm.inputs.MultimodalBatch`).
        names: The hook points to check (default: every writable one).
        seed: Seed of the random projection of the logits.

    Returns:
        ``{"returned": [...], "in_place": [...]}``: the names whose perturbation, in that
        style, does not reach the logits (an empty list everywhere is a pass).
    """
    points = [p.name for p in model.hook_points if p.writable and (names is None or p.name in names)]
    return {style: _unreached(model, batch, points, style, seed) for style in STYLES}


def _unreached(model: Any, batch: Any, names: list[str], style: str, seed: int) -> list[str]:
    """:func:`unreached_writes` for one style. An in-place edit of a value autograd saved (a
    tensor a later op reads for its backward, such as Qwen3-VL's DeepStack inputs) makes the
    backward fail; such points are found by splitting the set and checked by value instead."""
    if not names:
        return []
    deltas: dict[str, torch.Tensor] = {}

    def perturb(act: torch.Tensor, hook: Any) -> torch.Tensor | None:
        if hook.step != 0:
            return None
        delta = torch.zeros_like(act, requires_grad=True)
        deltas[hook.name] = delta
        if style == "returned":
            return act + delta
        act.add_(delta)
        return None

    logits = model.run_with_hooks(batch, fwd_hooks=[(names, perturb)], grad=True)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(logits.shape, generator=generator).to(logits.device, logits.dtype)
    keep = (~batch.pad_mask).to(logits.device)[..., None]
    try:
        (logits * weight * keep).sum().backward()
    except RuntimeError as error:
        if style != "in_place" or "inplace operation" not in str(error):
            raise
        if len(names) == 1:
            return [] if _changes_output(model, batch, names[0], seed) else names
        inputs = [n for n in names if n.endswith("hook_resid_pre")]  # the usual culprits: a block's input,
        if inputs and len(inputs) < len(names):  # also read by something outside the blocks
            rest = [n for n in names if n not in inputs]
            return [n for n in inputs if not _changes_output(model, batch, n, seed)] + _unreached(
                model, batch, rest, style, seed
            )
        half = len(names) // 2
        return _unreached(model, batch, names[:half], style, seed) + _unreached(
            model, batch, names[half:], style, seed
        )
    grads = {n: delta.grad for n, delta in deltas.items()}
    return [n for n in names if (grad := grads.get(n)) is None or not bool(grad.any())]


def _changes_output(model: Any, batch: Any, name: str, seed: int) -> bool:
    """Whether adding noise in place at ``name`` (hook returning None) changes the logits."""
    generator = torch.Generator().manual_seed(seed)

    def add_noise(act: torch.Tensor, hook: Any) -> None:
        if hook.step == 0:
            act.add_(torch.randn(act.shape, generator=generator).to(act.device, act.dtype))

    clean = model(batch)
    return not torch.equal(model.run_with_hooks(batch, fwd_hooks=[(name, add_noise)]), clean)


def read_only_refusals(model: Any, batch: Any) -> dict[str, list[str]]:
    """The read-only hook points that accepted a write, per write style (empty lists: a pass).

    Each distinct kind of read-only point (its name with layer numbers removed, or its
    stated reason) is tried once per style, at its first layer.
    """
    seen: dict[str, str] = {}
    for point in model.hook_points:
        if not point.writable:
            kind = point.read_only or (
                point.name.replace(f".{point.layer}.", ".{l}.", 1) if point.layer is not None else point.name
            )
            seen.setdefault(kind, point.name)
    out: dict[str, list[str]] = {style: [] for style in STYLES}
    for name in seen.values():
        for style in STYLES:

            def write(act: torch.Tensor, hook: Any, style: str = style) -> torch.Tensor | None:
                if style == "returned":
                    return act + 1
                act.add_(1)
                return None

            try:
                model.run_with_hooks(batch, fwd_hooks=[(name, write)])
            except ValueError as error:
                if "read-only" in str(error):
                    continue
                raise
            out[style].append(name)
    return out
