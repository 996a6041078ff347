"""Remote execution: hook functions shipped to NDIF (or simulated) through nnsight's remote backend.

A remote model is built on the meta device by nnsight's ``TransformersModel`` (no weights
are read); every run is one nnsight trace whose block holds the model's inputs in one
``tracer.invoke(...)`` and each hook point's intervention (:func:`hooked_mllm._runtime.runner.bodies`)
in an empty invoke of its own, so the server interleaves them with its forward pass or
``generate`` exactly as :mod:`hooked_mllm._runtime.runner` does locally. The block is serialized
by nnsight with ``hooked_mllm`` registered for pickling by value (the server does not have
it installed), so hook points, hook functions, position selectors and caches travel with
the request; the cache and the model's output come back as saved values.

``remote`` is what nnsight's ``trace(remote=...)`` takes: ``True`` (NDIF, the API key from
``nnsight.CONFIG``), an ``https://`` host URL, a :class:`~hooked_mllm._runtime.remote_host.Remote` (a
host with its timeouts and opt-ins), or ``"local"`` (serialize and deserialize here with local
modules hidden, then run: what the tests use). Requests to a host go through
:mod:`hooked_mllm._runtime.remote_host` (no plain ``http://`` unless allowed, bounded waits, restricted
unpickling of the answers).

Contents: :func:`load`, :func:`run`, :func:`refuse`, :func:`register`, :func:`run_model` and
:func:`trace` (a remote ``HookedMLLM``'s runs and traces), :func:`from_pretrained`. What a
remote model refuses, with a ``ValueError`` saying so: gradients (``grad=True``, backward
hooks, ``incl_bwd=True``), traces of several ``tracer.invoke`` inputs, ``with
model.generate(...) as tracer:``, ``eager_attention=True`` in a trace.

Examples:
    >>> model = HookedMLLM.from_pretrained("llava-hf/llava-1.5-7b-hf", remote=True)   # doctest: +SKIP
    >>> logits, cache = model.run_with_cache(batch, names_filter="blocks.3.hook_resid_post")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch

from . import nnsight_private
from .loading import PROCESSOR_LOADING, check_local_path
from .remote_host import Remote
from .runner import NEVER_REACHED, Body

_TASK = "image-text-to-text"


def register() -> None:
    """Ship ``hooked_mllm`` by value with remote requests (the server does not install it)."""
    import nnsight

    nnsight.register(sys.modules[__name__.split(".")[0]])  # the whole package, not only _runtime


def load(
    name_or_path: str | os.PathLike[str], processor: Any, *, revision: str | None = None, **kwargs: Any
) -> tuple[Any, Any]:
    """nnsight's ``TransformersModel`` of ``name_or_path`` built on the meta device, and its HF module.

    No weights are read: the module tree comes from the config alone (``dispatch=False``).

    Returns:
        ``(envoy, hf_model)``: the nnsight model (remote-capable) and the meta HF model it wraps.
    """
    from .remote_host import guarded_model_class

    tokenizer = getattr(processor, "tokenizer", None)
    envoy = guarded_model_class()(
        name_or_path, task=_TASK, processor=processor, tokenizer=tokenizer, revision=revision, **kwargs
    )
    return envoy, nnsight_private.wrapped_module(envoy)


def refuse(what: str, reason: str) -> None:
    """Raise a ``ValueError`` for an entry point or option that cannot run remotely."""
    raise ValueError(
        f"{what} cannot run remotely: {reason}. Remotely, run_with_hooks, run_with_cache, generate (with "
        "fwd_hooks or model.hooks()) and model.trace work; run it on a locally loaded model "
        "(from_pretrained without remote=...) otherwise."
    )


def run(
    envoy: Any,
    fn: str,
    interventions: list[Body],
    inputs: dict[str, torch.Tensor],
    options: dict,
    remote: bool | str | Remote,
    keep: Any = None,
) -> tuple[Any, Any]:
    """Run ``fn`` (``"__call__"`` or ``"generate"``) remotely with ``interventions``.

    Args:
        envoy: The remote-capable nnsight model (:func:`load`).
        fn: The HF model method to run.
        interventions: One ``body(tracer)`` per hook point, in forward order.
        inputs: The HF input tensors (on the CPU; the server places them).
        options: Keywords for ``fn`` that are not inputs (``max_new_tokens``...).
        remote: nnsight's ``remote=`` (``True``, a host URL or ``"local"``).
        keep: An object the interventions fill (a cache's store), returned as it is after the run.

    Returns:
        ``(result, keep)``: what ``fn`` returned, and ``keep`` after the run.
    """
    register()
    with warnings.catch_warnings():  # the expected end of per-step loops when generation stops
        warnings.filterwarnings("ignore", message=NEVER_REACHED)
        return _traced(envoy, fn, interventions, inputs, options, remote, keep)


def _traced(
    envoy: Any,
    fn: str,
    interventions: list[Body],
    inputs: dict[str, torch.Tensor],
    options: dict,
    remote: bool | str | Remote,
    keep: Any,
) -> tuple[Any, Any]:
    """The trace block itself (serialized by nnsight as written here, and run on the server)."""
    import nnsight

    result = kept = None
    with envoy.trace(fn=fn, remote=remote, **options) as tracer:
        with tracer.invoke(**inputs):
            pass
        for body in interventions:
            with tracer.invoke():
                body(tracer)
        with tracer.invoke():
            result = tracer.result.save()
        kept = nnsight.save(keep)
    return result, kept


def from_pretrained(
    cls: type,
    name_or_path: str | os.PathLike[str],
    remote: bool | str | Remote,
    *,
    device: Any,
    device_map: Any,
    **kwargs: Any,
) -> Any:
    """A ``cls`` (HookedMLLM) of ``name_or_path`` on the meta device whose runs go through ``remote``."""
    from transformers import AutoProcessor

    if device is not None or device_map is not None:
        refuse("from_pretrained(device=/device_map=)", "the server places the model")
    check_local_path(name_or_path)
    if remote != "local":
        Remote.of(remote)  # refuse plain http:// (unless allowed) and bad timeouts before loading anything
    # Only unset options (None) are dropped: a False, above all trust_remote_code=False, reaches
    # transformers as given (left out, transformers would ask on stdin whether to run the code).
    options = {k: v for k, v in kwargs.items() if v is not None}
    options["trust_remote_code"] = kwargs.get("trust_remote_code") or False
    loading = (*PROCESSOR_LOADING, "trust_remote_code")
    processor = AutoProcessor.from_pretrained(
        name_or_path, **{k: options[k] for k in loading if k in options}
    )
    envoy, hf_model = load(name_or_path, processor, **options)
    return cls(hf_model, processor, envoy=envoy, remote=remote)


def run_model(
    model: Any,
    batch: Any,
    hooks: list,
    fn: str,
    every_step: bool,
    grad: bool,
    what: str,
    keep: Any,
    options: dict,
    context: list,
    guard: Any,
    bwd: Any = (),
) -> Any:
    """One run of a remote HookedMLLM with ``hooks`` and the ``context`` of its ``model.hooks()`` blocks,
    holding its run ``guard``; ``keep`` is filled in place. Backward hooks (``bwd``) are refused."""
    from .runner import bodies

    if bwd:
        refuse(f"{what} with backward hooks (bwd_hooks= / incl_bwd=True)", "gradients stay on the server")
    if grad:
        refuse(f"{what}(grad=True)", "gradients stay on the server")
    if not isinstance(fn, str):
        refuse(what, "only the model's forward and generate run remotely")
    eager = [hook.point.name for hook in hooks + context if hook.point.needs_eager]
    text = model.adapter.text_cfg(model.hf_model.config)
    if eager and model.remote != "local":
        refuse(
            f"{what} reading {eager[0]}",
            "attention patterns need eager attention, and an NDIF deployment "
            "chooses its own attention implementation (a run cannot switch it on the server)",
        )
    if eager and getattr(text, "_attn_implementation", None) != "eager":
        refuse(
            f"{what} reading {eager[0]}",
            "attention patterns need eager attention, which a run cannot switch "
            "on the server; load with from_pretrained(..., attn_implementation='eager')",
        )
    order = model.hook_points.order
    with guard(what):
        context = bodies(model.nnsight, context, order, batch=batch, every_step=True)
        own = bodies(model.nnsight, hooks, order, batch=batch, every_step=every_step)
        result, kept = run(model.nnsight, fn, context + own, dict(batch.inputs), options, model.remote, keep)
    if keep is not None and kept is not keep:  # a real server sends back a copy
        keep.clear()
        keep.update(kept)
    return result


def trace(
    envoy: Any,
    remote: bool | str | Remote,
    batch_and_options: Any,
    *,
    invokes: bool,
    hooked: bool,
    fn: Any = None,
    eager: bool | None = None,
) -> Any:
    """A remote HookedMLLM's ``model.trace``: nnsight's trace of ``envoy`` with ``remote=``.

    Args:
        envoy: The remote-capable nnsight model.
        remote: nnsight's ``remote=``.
        batch_and_options: Returns ``(batch, options)`` of the trace's inputs (checked keywords).
        invokes: Whether the inputs come from ``tracer.invoke(...)`` blocks (refused).
        hooked: Whether a ``model.hooks()`` block is active (refused).
        fn: What to run instead of the forward.
        eager: ``eager_attention=`` (True is refused).
    """
    if hooked:
        refuse(
            "model.trace inside model.hooks()",
            "the block's edits are not shipped with a trace; pass the "
            "hooks to run_with_hooks / generate (fwd_hooks=...) instead",
        )
    if eager:
        refuse(
            "model.trace(eager_attention=True)",
            "a run cannot switch the attention implementation on the "
            "server; load with from_pretrained(..., attn_implementation='eager')",
        )
    if invokes:
        refuse(
            "model.trace() with tracer.invoke(...) inputs",
            "several invokes are batched by the local wrapper only; pass one batch: model.trace(batch)",
        )
    batch, options = batch_and_options()
    register()
    extra = {} if fn is None else {"fn": fn}
    return envoy.trace(remote=remote, **extra, **batch.inputs, **options)
