"""Where a :class:`~hooked_mllm.HookedMLLM` runs: here or through nnsight's remote backend, chosen once.

Purpose:
    A model built with ``remote=...`` ships every run and trace to a server (:mod:`.remote`); any
    other runs them on the wrapped model here. :func:`backend_for` picks the :class:`LocalBackend` or
    :class:`RemoteBackend` once, when the model is built, and ``HookedMLLM._run`` / ``HookedMLLM.trace``
    / ``HookedMLLM.generate`` hand each run to it, so the model does not test ``remote`` on every run.

Connections:
    Both backends take the model (its envoy, hook points, ``model.hooks()`` edits and run guard) and
    go through :mod:`.runner` and :mod:`.backward` (the interventions), :mod:`.plan` (eager
    attention) and :mod:`.invokes` (the trace's tracer class).

Examples:
    >>> backend_for(False)
    LocalBackend()
    >>> backend_for("local")
    RemoteBackend(remote='local')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from . import backward, nnsight_private, plan, remote, runner
from .hook_io import check_trace_reads
from .invokes import habit_tracer
from .remote_host import Remote


@dataclass(frozen=True)
class LocalBackend:
    """Runs and traces on the wrapped model, here."""

    ships_requests = False  # runs, and the model's state, stay here

    def generation(self, model: Any, inputs: Any, tensors: dict, options: dict) -> tuple[Any, Any, dict]:
        """``model.generate``'s ``(fn, tracer, run options)``: HF ``generate`` with ``options`` bound, a
        ``model.trace`` of it over ``inputs`` (entered only as ``with model.generate(...)``), no options."""
        fn = functools.partial(model.hf_model.generate, **options)
        return fn, model.trace(inputs, fn=fn, **tensors), {}

    def check_traced_generation(self) -> None:
        """A traced generation (``with model.generate(...) as tracer``) runs here."""

    def run(
        self,
        model: Any,
        batch: Any,
        hooks: list[runner.HookFn],
        fn: Any,
        every_step: bool,
        grad: bool,
        what: str,
        bwd: Any,
        keep: Any,
        call_kwargs: dict,
    ) -> Any:
        """One run of ``model`` on ``batch`` with ``hooks`` (forward) and ``bwd`` (backward) as edits."""
        with model._guard(what), model._sae_run(hooks) as hooks:  # hooks inside SAEs go to their splices
            bodies = runner.bodies(
                model.nnsight,
                hooks,
                model.hook_points.order,
                batch=model._state.current_batch,
                every_step=every_step,
            )
            bodies += backward.bodies(model.nnsight, bwd, batch=model._state.current_batch)
            envoy = runner.edited(model.nnsight, model._context_bodies + bodies)
            eager = plan.eager_configs(model.adapter, model.hf_model.config, [*hooks, *bwd, *model._context])
            kwargs = dict(batch.to(model.device).inputs, **call_kwargs)
            previous, model._state.batch = model._state.batch, batch
            try:
                with runner.grad_mode(grad, what), nnsight_private.eager_attention(eager):
                    return runner.interleave(envoy, fn, kwargs)
            finally:
                model._state.batch = previous

    def trace(
        self,
        model: Any,
        inputs: Any,
        hf_kwargs: dict,
        own: tuple[str, ...],
        invokes: bool,
        fn: Any,
        eager_attention: bool | None,
    ) -> Any:
        """``model.trace``: nnsight's trace of a copy of the envoy carrying the ``model.hooks()`` edits."""
        model._trace_reads.clear()
        tracer_cls = habit_tracer(
            runner.guarded_tracer(
                model._guard, quiet=bool(model._context), after=lambda: check_trace_reads(model._trace_reads)
            ),
            lambda: plan.attention_configs(model.adapter, model.hf_model.config),
            eager_attention,
        )
        envoy = runner.edited(model.nnsight, model._context_bodies)  # a copy carrying model.hooks() edits
        extra = {} if fn is None else {"fn": fn}
        if invokes:
            model._check_keywords("trace", hf_kwargs, own)
            return envoy.trace(tracer_cls=tracer_cls, **extra, **hf_kwargs)
        batch, options = model._batch_and_options("trace", inputs, hf_kwargs, own)
        return envoy.trace(tracer_cls=tracer_cls, **extra, **batch.to(model.device).inputs, **options)


@dataclass(frozen=True)
class RemoteBackend:
    """Runs and traces shipped through nnsight's remote backend (:mod:`.remote`).

    Attributes:
        remote: nnsight's ``remote=``: ``True``, a host URL, a :class:`~hooked_mllm.Remote` or ``"local"``.
    """

    remote: bool | str | Remote

    ships_requests = True  # each run (its hook functions, the model's state) is pickled to the server

    def generation(self, model: Any, inputs: Any, tensors: dict, options: dict) -> tuple[Any, Any, dict]:
        """``model.generate``'s ``(fn, tracer, run options)``: the envoy's ``"generate"``, a remote probe
        carrying no inputs (never entered unless refused by :meth:`check_traced_generation`), and
        ``options`` shipped with each run."""
        return "generate", model.nnsight.trace(fn="generate", remote=self.remote), options

    def check_traced_generation(self) -> None:
        """Refuse ``with model.generate(...) as tracer``: a traced generation is not shipped."""
        remote.refuse(
            "with model.generate(...) as tracer",
            "a traced generation is not shipped; pass "
            "fwd_hooks to model.generate, or use model.trace for one forward",
        )

    def run(
        self,
        model: Any,
        batch: Any,
        hooks: list[runner.HookFn],
        fn: Any,
        every_step: bool,
        grad: bool,
        what: str,
        bwd: Any,
        keep: Any,
        call_kwargs: dict,
    ) -> Any:
        """One run of ``model`` on the server, with the ``model.hooks()`` edits of ``model`` too."""
        return remote.run_model(
            model,
            batch,
            hooks,
            fn,
            every_step,
            grad,
            what,
            keep,
            call_kwargs,
            model._context,
            model._guard,
            bwd=bwd,
        )

    def trace(
        self,
        model: Any,
        inputs: Any,
        hf_kwargs: dict,
        own: tuple[str, ...],
        invokes: bool,
        fn: Any,
        eager_attention: bool | None,
    ) -> Any:
        """``model.trace`` with nnsight's ``remote=``."""
        return remote.trace(
            model.nnsight,
            self.remote,
            lambda: model._batch_and_options("trace", inputs, hf_kwargs, own),
            invokes=invokes,
            hooked=bool(model._context),
            fn=fn,
            eager=eager_attention,
        )


def backend_for(remote: bool | str | Remote) -> LocalBackend | RemoteBackend:
    """The backend of a model built with ``remote=`` (false: :class:`LocalBackend`)."""
    return RemoteBackend(remote) if remote else LocalBackend()
