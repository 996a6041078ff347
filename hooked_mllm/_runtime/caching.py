"""Hook functions that fill an ``ActivationCache``: values (forward) and gradients (backward).

Used by :meth:`hooked_mllm.model.HookedMLLM.run_with_cache`: :func:`cache_fn` is a forward
hook function for :mod:`hooked_mllm._runtime.runner`, :func:`grad_cache_fn` a backward one for
:mod:`hooked_mllm._runtime.backward`; both keep only the selected positions, on the chosen device
and dtype. :func:`run` is the caching run itself, repeated once when a value changed in place
after its hook read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..hook_points import HookContext, HookPoint, join_calls
from .runner import HookFn


def cache_fn(
    store: dict[str, Tensor],
    index: Tensor | None,
    device: Any,
    dtype: Any,
    grad: bool,
    versions: dict[str, list[tuple[Tensor, int]]],
    clone: set[str],
) -> Callable:
    """A hook storing each value in ``store`` (and, for values that share the activation's memory,
    each with its version in ``versions``, so that an in-place edit by the model after the hook is
    seen); names in ``clone`` are copied.

    A point called several times per forward (``hook.calls``: the vision tower on a batch mixing
    images and videos, images first) is stored as its calls' values concatenated on the first (packed)
    axis, in call order whatever order they arrive in (gradients arrive last call first)."""
    parts: dict[str, dict[int, Tensor]] = {}

    def cache_hook(act: Tensor, hook: HookContext) -> None:
        if hook.step != 0:
            return None
        value = act if grad else act.detach()
        if hook.name in clone:
            value = value.clone()
        if index is not None and hook.point.sequence:
            at = index.to(value.device)  # a remote run's index was made on the client's device
            axis = hook.point.seq_axis  # 1, or 2 for a pattern's query axis
            view = [at.shape[0]] + [1] * (value.dim() - 1)
            view[axis] = at.shape[1]
            shape = list(value.shape)
            shape[axis] = at.shape[1]
            value = value.gather(axis, at.view(view).expand(shape))
        if device is not None or dtype is not None:
            value = value.to(device=device, dtype=dtype)
        if value.untyped_storage().data_ptr() == act.untyped_storage().data_ptr():
            versions.setdefault(hook.name, []).append((value, value._version))
        if hook.calls == 1:
            store[hook.name] = value
            return None
        calls = parts.setdefault(hook.name, {})
        calls[hook.call] = value
        store[hook.name] = join_calls(hook.name, [calls[k] for k in sorted(calls)])
        return None

    return cache_hook


def grad_cache_fn(store: dict[str, Tensor], index: Tensor | None, device: Any, dtype: Any) -> Callable:
    """A backward hook storing each gradient in ``store`` as :func:`cache_fn` stores values."""
    fn = cache_fn(store, index, device, dtype, False, {}, set())
    fn.optional = True  # type: ignore[attr-defined]  # points no gradient reaches are skipped
    return fn


def run(
    run_once: Callable[[list[HookFn], list[HookFn], dict[str, Tensor]], Any],
    hooks: Callable[[Callable[..., Any]], list[HookFn]],
    chosen: list[HookPoint],
    index: Tensor | None,
    device: Any,
    dtype: Any,
    grad: bool,
    incl_bwd: bool,
    clone: set[str],
) -> tuple[Any, dict[str, Tensor], dict[str, Tensor]]:
    """One caching run: ``run_once(hooks(fn), backward_hooks, store)`` with ``fn`` a :func:`cache_fn`
    on the ``chosen`` points (and :func:`grad_cache_fn` backward hooks with ``incl_bwd``).

    A model that edits a value in place after the hook read it (Molmo adds the image features into its
    embedding output) leaves a stale cache entry: the run is repeated once, copying those entries
    (``clone``: names copied from the start). Returns ``(output, store, grads)``.
    """
    store: dict[str, Tensor] = {}
    versions: dict[str, list[tuple[Tensor, int]]] = {}
    for attempt in range(2):
        fn = cache_fn(store, index, device, dtype, grad, versions, clone)
        grads: dict[str, Tensor] = {}
        backward = [HookFn(point, grad_cache_fn(grads, index, device, dtype)) for point in chosen if incl_bwd]
        output = run_once(hooks(fn), backward, store)
        stale = {name for name, kept in versions.items() if any(v._version != n for v, n in kept)}
        if not stale or attempt:
            break
        clone |= stale
        store.clear()
        versions.clear()
    return output, store, grads
