"""Hook functions that fill an ``ActivationCache``: values (forward) and gradients (backward).

Used by :meth:`hooked_mllm.model.HookedMLLM.run_with_cache`: :func:`cache_fn` is a forward
hook function for :mod:`hooked_mllm._runtime.runner`, :func:`grad_cache_fn` a backward one for
:mod:`hooked_mllm._runtime.backward`; both keep only the selected positions, on the chosen device
and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..hook_points import HookContext


def cache_fn(
    store: dict[str, Tensor],
    index: Tensor | None,
    device: Any,
    dtype: Any,
    grad: bool,
    versions: dict[str, int],
    clone: set[str],
) -> Callable:
    """A hook storing each value in ``store`` (and, for values that share the activation's memory,
    their version in ``versions``, so that an in-place edit by the model after the hook is seen);
    names in ``clone`` are copied."""

    def cache_hook(act: Tensor, hook: HookContext) -> None:
        if hook.step != 0:
            return None
        value = act if grad else act.detach()
        if hook.name in clone:
            value = value.clone()
        if index is not None and hook.point.sequence:
            at = index.to(value.device)  # a remote run's index was made on the client's device
            if hook.point.needs_eager:  # [batch, heads, query, key]: select queries
                gather = at[:, None, :, None].expand(-1, value.shape[1], -1, value.shape[3])
                value = value.gather(2, gather)
            else:
                shape = at.shape + value.shape[2:]
                gather = at.view(*at.shape, *([1] * (value.dim() - 2))).expand(shape)
                value = value.gather(1, gather)
        if device is not None or dtype is not None:
            value = value.to(device=device, dtype=dtype)
        store[hook.name] = value
        if value.untyped_storage().data_ptr() == act.untyped_storage().data_ptr():
            versions[hook.name] = value._version
        return None

    return cache_hook


def grad_cache_fn(store: dict[str, Tensor], index: Tensor | None, device: Any, dtype: Any) -> Callable:
    """A backward hook storing each gradient in ``store`` as :func:`cache_fn` stores values."""
    fn = cache_fn(store, index, device, dtype, False, {}, set())
    fn.optional = True  # type: ignore[attr-defined]  # points no gradient reaches are skipped
    return fn
