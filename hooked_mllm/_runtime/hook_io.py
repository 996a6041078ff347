"""Reading a hook point's value from nnsight envoys and writing a replacement back.

A hook point's value is not always one module's tensor: it may be an element of a tuple
output, the first field of a ``ModelOutput``, a module's input, a sum ``base + site``
(``hook_resid_mid``), a sublayer output times a layer scale (InternVL), or a per-head
view ``[..., heads, d_head]``. This module is the one place that turns the envoys'
values into the hook point's value (:func:`read`) and a replacement back into what the
module passes on (:func:`write`), refusing every write that could not take effect as
given (read-only points, another shape, a non-float tensor for a float activation,
another device, a zero layer scale). Both the run path (:mod:`hooked_mllm._runtime.runner`:
``run_with_hooks``, ``run_with_cache``, ``generate``, ``model.hooks()``) and
``model.hook_point(...).output`` inside ``model.trace`` (:mod:`hooked_mllm.model`) go
through it, so the two cannot drift apart.

Contents: :class:`Access` (a hook point bound to its envoys, :func:`bind`),
:class:`Reading` (one read, what a write goes back into), :func:`read`, :func:`write`,
:func:`check` and :func:`check_writable` (the checks alone, for errors naming each hook function),
:class:`HookPointHandle` (``model.hook_point(name)`` inside ``model.trace``).

What both paths do, inside an nnsight trace or mediator:

Examples:
    >>> io = bind(model.nnsight, model.hook_points.resolve("blocks.0.hook_mlp_out"))  # doctest: +SKIP
    >>> reading = read(io)                                                            # doctest: +SKIP
    >>> write(io, reading, torch.zeros_like(reading.act), "A trace write")            # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from nnsight import Envoy
from torch import Tensor
from transformers.utils import ModelOutput

from ..hook_points import HookPoint, Site


@dataclass(frozen=True)
class Access:
    """A hook point bound to the envoys (and layer-scale parameter) it is read from.

    Attributes:
        point: The hook point.
        envoy: The envoy of ``point.site``, the module whose input or output is written.
        base_envoy: The envoy of ``point.base`` (value = base + site), or None.
        scale: The layer-scale parameter (value = site * scale), or None.
    """

    point: HookPoint
    envoy: Any
    base_envoy: Any
    scale: torch.Tensor | None


@dataclass(frozen=True)
class Reading:
    """One read of a hook point: its value, and what a write needs to go back into.

    Attributes:
        act: The hook point's value (``[..., heads, d_head]`` for per-head points).
        raw: The site's whole input or output (a tensor, tuple or ``ModelOutput``).
        value: The site's own tensor inside ``raw``.
        base: The base value for sums (``hook_resid_mid``), or None.
    """

    act: torch.Tensor
    raw: Any
    value: torch.Tensor
    base: torch.Tensor | None


def bind(nn: Envoy, point: HookPoint) -> Access:
    """The envoys and layer-scale parameter of ``point`` in the wrapped model ``nn``."""
    envoy = nn.get(point.site.path)
    base_envoy = nn.get(point.base.path) if point.base is not None else None
    scale = (
        None if point.scale is None else nn.get_parameter(point.scale)
    )  # the envoy falls through to the module
    return Access(point, envoy, base_envoy, scale)


def _index(site: Site, raw: Any) -> int | None:
    """The tuple element a site reads: its own index, or 0 for a tuple output of a module that
    HF code returns as a tensor (older remote code returns ``(hidden, cache)`` from its blocks)."""
    if (
        site.index is None
        and site.io == "output"
        and isinstance(raw, tuple)
        and not isinstance(raw, ModelOutput)
    ):
        return 0
    return site.index


def _get(envoy: Any, site: Site) -> tuple[Any, Any]:
    raw = envoy.input if site.io == "input" else envoy.output
    index = _index(site, raw)
    if index is not None:
        value = raw[index]
    elif isinstance(raw, ModelOutput):  # a PreTrainedModel used as a part (Molmo2's adapter): its first field
        value = raw[0]
    else:
        value = raw
    return raw, value


def _put(envoy: Any, site: Site, raw: Any, value: Any) -> None:
    index = _index(site, raw)
    if site.io == "input":
        envoy.input = value
    elif index is None and isinstance(raw, ModelOutput):
        fields = dict(raw)
        fields[next(iter(fields))] = value
        envoy.output = type(raw)(**fields)
    elif index is None:
        envoy.output = value
    else:
        items = list(raw)
        items[index] = value
        envoy.output = type(raw)(items) if isinstance(raw, tuple) else items


def read(io: Access) -> Reading:
    """Read the hook point's value (waits for it inside an nnsight trace or mediator).

    Raises:
        RuntimeError: The site produced no value in this run (an attention pattern
            without eager attention).
    """
    point = io.point
    base = None
    if io.base_envoy is not None and point.base is not None:  # bound together (see bind)
        base = _get(io.base_envoy, point.base)[1]
    raw, value = _get(io.envoy, point.site)
    if value is None:
        raise RuntimeError(
            f"{point.name} has no value in this run (is attention eager? hook_pattern needs "
            "attn_implementation='eager')."
        )
    act = value if io.scale is None else value * io.scale
    act = act if base is None else base + act
    if point.heads is not None:
        act = act.unflatten(-1, (point.heads, -1))
    return Reading(act, raw, value, base)


def read_only_reason(point: HookPoint) -> str:
    """`` (why)`` for a read-only point whose reason is recorded, else ``""``."""
    return f" ({point.read_only})" if point.read_only else ""


def check_writable(point: HookPoint, who: str) -> None:
    """Raise a ``ValueError`` naming ``point`` (and why) if it is read-only."""
    if not point.writable:
        raise ValueError(
            f"{point.name} is read-only{read_only_reason(point)}: {who} cannot replace it; "
            "read it without changing it (a hook function returns None)."
        )


def check(point: HookPoint, new: Any, act: torch.Tensor, who: str) -> None:
    """Raise a ``ValueError`` naming the hook point unless ``new`` can replace ``act`` there.

    The point must be writable, and ``new`` a tensor of exactly ``act``'s shape, on its
    device, and floating point where ``act`` is (another float precision is cast by
    :func:`write`; an integer or boolean tensor is refused rather than cast silently).
    ``who`` names the writer in the message (``"Hook function 'steer'"``, ``"A trace write"``).
    """
    name = point.name
    check_writable(point, who)
    if not isinstance(new, torch.Tensor):
        raise ValueError(
            f"{who} on {name} returned {type(new).__name__}; return a tensor of shape "
            f"{tuple(act.shape)}, or None to leave the activation unchanged."
        )
    if new.shape != act.shape:
        raise ValueError(
            f"{who} on {name} returned shape {tuple(new.shape)}, but the activation has shape "
            f"{tuple(act.shape)}; return a tensor of the same shape, or None to leave it unchanged."
        )
    if act.is_floating_point() and not new.is_floating_point():
        raise ValueError(
            f"{who} on {name} returned dtype {new.dtype}, but the activation is {act.dtype}; an integer or "
            f"boolean replacement would be cast silently. Return a floating tensor (e.g. new.to(act.dtype))."
        )
    if new.device != act.device:
        raise ValueError(
            f"{who} on {name} returned a tensor on {new.device}, but the activation is on {act.device}; "
            "move it there (e.g. new.to(act.device))."
        )


def write(io: Access, reading: Reading, new: torch.Tensor | Any, who: str) -> None:
    """Write ``new`` as the hook point's value: back into the site ``reading`` was read from.

    Every check is here: the point is writable, ``new`` passes :func:`check` against
    ``reading.act``, and a layer scale it is divided by has no zero entries. Per-head
    values are flattened back, the base of a sum subtracted, the layer scale divided out,
    and the result cast to the site's dtype.

    Args:
        io: The bound hook point.
        reading: The :func:`read` this write replaces (same run, same step).
        new: The replacement, a tensor shaped like ``reading.act`` (anything else is refused by
            :func:`check`, naming the point).
        who: The writer, for error messages.

    Raises:
        ValueError: The write cannot take effect as given (the message says why and what
            would be right).
    """
    point = io.point
    check(point, new, reading.act, who)
    out = new.flatten(-2) if point.heads is not None else new
    if reading.base is not None:
        out = out - reading.base
    if io.scale is not None:
        if bool((io.scale == 0).any()):
            raise ValueError(
                f"Cannot write {point.name}: it is the sublayer output times the layer scale "
                f"{point.scale!r}, which has zero entries, so the write cannot be passed back through it. "
                "Write the residual stream (hook_resid_mid / hook_resid_post) instead."
            )
        out = out / io.scale
    _put(io.envoy, point.site, reading.raw, out.to(reading.value.dtype))


class _Reroute(torch.autograd.Function):
    """Forward: the site's own value, unchanged. Backward: the gradient goes to the hook point's computed
    value ``act = base + value * scale`` (as ``d site / d act``), and is taken back from ``base``, so
    ``act.grad`` is the gradient w.r.t. the hook point and every other gradient is as before."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, act: Tensor, base: Tensor | None, scale: Tensor | None) -> Tensor:
        ctx.scale, ctx.has_base = scale, base is not None
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        to_act = grad if ctx.scale is None else grad / ctx.scale
        return None, to_act, -to_act if ctx.has_base else None, None


def reroute(io: Access, reading: Reading) -> None:
    """Put a trace read's value on the model's path, so that nnsight's ``.grad`` of it is the gradient.

    A per-head view (``hook_q``...) goes back flattened, so the model runs on it; a computed value
    (``hook_resid_mid``, a layer-scaled output) through :class:`_Reroute`. The forward's numbers are
    unchanged, and so is every other gradient.
    """
    point = io.point
    act = reading.act.flatten(-2) if point.heads is not None else reading.act
    if reading.base is not None or io.scale is not None:
        act = _Reroute.apply(reading.value, act, reading.base, io.scale)
    _put(io.envoy, point.site, reading.raw, act)


class HookPointHandle:
    """A hook point inside a user's ``model.trace``: read or assign ``.output``.

    ``.output`` is the hook point's value (whether the module's input or output holds
    it), with heads split out for per-head points; assigning it replaces the value with a
    tensor of exactly its shape, on its device, floating point (another float precision
    is cast), refusing read-only points and writes through a zero layer scale, all
    checked by :func:`hooked_mllm.write` as in ``run_with_hooks``, naming the point.
    """

    def __init__(
        self, nn: Envoy, point: HookPoint, reads: list[tuple[str, Tensor, int]] | None = None
    ) -> None:
        self.point = point
        self._io = bind(nn, point)
        self.envoy = self._io.envoy
        self._reading: Reading | None = None
        self._reads = reads  # where computed values are recorded, to refuse in-place edits of them afterwards

    @property
    def output(self) -> Tensor:
        self._reading = read(self._io)
        act = self._reading.act
        computed = self._io.base_envoy is not None or self._io.scale is not None
        if (computed or not self.point.writable) and self._reads is not None:
            self._reads.append((self.point.name, act, act._version))
        if (
            (computed or self.point.heads is not None)
            and self.point.writable
            and act.requires_grad
            and torch.is_grad_enabled()
        ):
            reroute(self._io, self._reading)  # `.grad` of a per-head or computed value in a backward
        return act

    @output.setter
    def output(self, new: Tensor | Any) -> None:  # `| Any`: anything else is refused by `write`
        check_writable(self.point, "A trace write")  # refused before waiting for a value
        reading = self._reading if self._reading is not None else read(self._io)
        self._reading = None  # the write goes back into the value read, once
        if self._reads is not None:  # an assignment honours any in-place edit of the value read
            self._reads[:] = [r for r in self._reads if r[1] is not reading.act]
        write(self._io, reading, new, "A trace write")

    value = output


def check_trace_reads(reads: list[tuple[str, Tensor, int]]) -> None:
    """Refuse, after a trace, in-place edits of values that could not reach the model.

    ``reads`` holds ``(name, value, version)`` of each computed or read-only value handed out; it is
    cleared."""
    edited = sorted({name for name, value, version in reads if value._version != version})
    reads.clear()
    if edited:
        raise ValueError(
            f"An in-place edit of {', '.join(edited)} inside model.trace had no effect: there the trace "
            "hands out a computed value (a sum or a layer-scaled output), not the model's own tensor, or a "
            "read-only one (hook_pattern: the weights are handed out after the attention used them). "
            "Assign a computed point instead: `point.output = new_value` (or edit in place inside a hook "
            "function of run_with_hooks); a read-only point cannot be written."
        )
