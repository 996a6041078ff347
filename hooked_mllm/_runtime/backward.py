"""Backward hooks: TransformerLens' ``bwd_hooks``, put on the autograd graph of one run.

A backward hook ``fn(grad, hook) -> replacement | None`` receives the gradient of what
``backward()`` is called on with respect to a hook point's value, as TransformerLens'
``bwd_hooks`` do: ``grad`` has the value's shape (``[batch, pos, d_model]`` for the residual
stream, ``[batch, pos, heads, d_head]`` for per-head points), and is taken after the run's
forward hooks on that point (w.r.t. what the model went on with). A returned tensor of the
same shape (or TransformerLens' 1-tuple of it) replaces that gradient for the rest of the backward pass.

How: one intervention per hook point (:func:`bodies`, stored as an nnsight ``edit()`` of
the run's envoy copy after the forward hooks' interventions of :mod:`hooked_mllm._runtime.runner`,
through :func:`hooked_mllm._runtime.runner.edited`) reads the site's tensor through
:mod:`hooked_mllm._runtime.hook_io` and registers a *tensor* hook on it (``Tensor.register_hook``,
public torch API). Values computed from the
site are mapped exactly, without writing anything into the run: a per-head view takes the
site's gradient split into heads, a sum ``base + site`` (``hook_resid_mid``) the site's
gradient (the site feeds only that sum), a layer-scaled output ``site * scale`` the site's
gradient divided by the scale. Nothing is registered on a module: the hooks belong to that
run's graph, fire when its output is differentiated, and go with the graph, whatever
happened during the run. Used by ``run_with_hooks(bwd_hooks=...)`` and
``run_with_cache(incl_bwd=True)`` in :mod:`hooked_mllm.model`.

Examples:
    >>> grads = {}
    >>> def keep(grad, hook):
    ...     grads[hook.name] = grad
    >>> loss = model.run_with_hooks(batch, return_type="loss",
    ...                             bwd_hooks=[("blocks.0.hook_resid_post", keep)])   # doctest: +SKIP
    >>> loss.backward()                                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from nnsight import Envoy
from torch import Tensor

from ..hook_points import HookContext, HookPoint
from . import hook_io
from .runner import Body, HookFn, tower_calls

GradFunction = Callable[[Tensor, HookContext], "Tensor | None"]


def _body(nn: Envoy, point: HookPoint, fns: list[GradFunction], batch: Any) -> Body:
    strict = not all(getattr(fn, "optional", False) for fn in fns)

    def body(tracer: Any) -> None:
        run_batch = batch() if callable(batch) else batch
        calls = tower_calls(point, run_batch)
        if calls == 1:
            register(tracer, run_batch, 0, 1)
        else:  # the tower runs on the images, then on the videos: one gradient hook per call
            for call in tracer.iter[0:calls]:
                register(tracer, run_batch, call, calls)

    def register(tracer: Any, run_batch: Any, call: int, calls: int) -> None:
        io = hook_io.bind(nn, point)  # bound inside the run, against the envoy that runs it
        value = hook_io.read(io).value  # the tensor the model goes on with
        if not torch.is_grad_enabled() or not value.requires_grad:
            if not strict:
                return
            raise RuntimeError(
                f"A backward hook on {point.name} cannot fire: its value does not require grad in this run "
                "(autograd is off, or no parameter or input before it requires grad)."
            )
        scale = io.scale
        if scale is not None and bool((scale == 0).any()):
            raise ValueError(
                f"A backward hook on {point.name} cannot be served: the value is the sublayer output "
                f"times the layer scale {point.scale!r}, which has zero entries. Hook the residual "
                "stream (hook_resid_mid / hook_resid_post) instead."
            )
        hook = HookContext(point.name, point, run_batch, 0, {}, call=call, calls=calls)

        def on_grad(grad_site: Tensor) -> Tensor | None:
            grad = grad_site if scale is None else grad_site / scale.to(grad_site.dtype)
            if point.heads is not None:
                grad = grad.unflatten(-1, (point.heads, -1))
            changed = False
            for fn in fns:
                new = fn(grad, hook)
                if isinstance(new, tuple) and len(new) == 1:  # TransformerLens' (grad,) form
                    new = new[0]
                if new is None:
                    continue
                if not isinstance(new, Tensor) or new.shape != grad.shape:
                    got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
                    raise ValueError(
                        f"Backward hook {getattr(fn, '__name__', fn)!r} on {point.name} returned {got}; "
                        f"return a gradient of shape {tuple(grad.shape)}, or None to leave it unchanged."
                    )
                grad, changed = new.to(device=grad_site.device, dtype=grad_site.dtype), True
            if not changed:
                return None
            out = grad.flatten(-2) if point.heads is not None else grad
            return out if scale is None else out * scale.to(out.dtype)

        value.register_hook(on_grad)

    return body


def bodies(nn: Envoy, hooks: Sequence[HookFn], batch: Any = None) -> list[Body]:
    """One intervention ``body(tracer)`` per hook point, registering its backward hooks (in list order)
    on the run's graph; run them as edits after the forward hooks' (``runner.edited``).

    Args:
        nn: The nnsight wrapper of the HF model.
        hooks: Hook points bound to ``fn(grad, hook) -> replacement | None``.
        batch: The batch being run (or a callable returning it at run time).

    A point whose value does not require grad is an error, unless every function on it has a
    true ``optional`` attribute (then the point is skipped quietly, as
    ``run_with_cache(incl_bwd=True)`` does for points no gradient can reach).
    """
    grouped: dict[str, tuple[HookPoint, list[GradFunction]]] = {}
    for hook in hooks:
        grouped.setdefault(hook.point.name, (hook.point, []))[1].append(hook.fn)
    return [_body(nn, point, fns, batch) for point, fns in grouped.values()]
