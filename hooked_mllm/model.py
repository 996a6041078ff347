"""``HookedMLLM``: a Hugging Face vision-language model with named hook points.

The class wraps a loaded HF model in nnsight (``model.nnsight``) and exposes the hook
points of :mod:`hooked_mllm.hook_points` by their TransformerLens names. Every run
method turns hook functions into nnsight interventions (:mod:`hooked_mllm._runtime.runner`),
so ``run_with_cache``, ``run_with_hooks``, ``generate`` and a user's own
``model.trace`` all go through one mechanism, run here or remotely by the backend chosen when the
model is built (:mod:`hooked_mllm._runtime.backend`). The class also keeps TransformerLens' run
habits: ``add_hook`` / ``reset_hooks``, ``return_type`` and ``lm_loss``; its weights come from
:mod:`hooked_mllm._tl_compat`, its inputs and tokens from :mod:`hooked_mllm._model_inputs`.
Inputs come from :meth:`prepare` (:mod:`hooked_mllm.inputs`) or as HF keyword tensors; caches
are :class:`~hooked_mllm.cache.ActivationCache`.

Examples:
    >>> model = HookedMLLM.from_pretrained("llava-hf/llava-1.5-7b-hf")      # doctest: +SKIP
    >>> batch = model.prepare(images=[image], prompts=["What is shown?"])   # doctest: +SKIP
    >>> resid_only = lambda n: "resid_post" in n
    >>> logits, cache = model.run_with_cache(batch, names_filter=resid_only)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from jaxtyping import Float, Int
from nnsight.tracing.tracer import WithBlockNotFoundError
from torch import Tensor

from . import positions as _positions
from ._model_inputs import InputsMixin
from ._runtime import caching, keywords, nnsight_private, plan, runner
from ._runtime import remote as _remote
from ._runtime.backend import backend_for
from ._runtime.hook_io import HookPointHandle
from ._runtime.invokes import MLLMEnvoy, check_invoke_point
from ._runtime.loading import load_local, refuse_tensor_parallel
from ._runtime.remote_host import Remote
from ._tl_compat import TLCompatMixin
from .architectures import adapter_for
from .architectures.base import Adapter
from .cache import ActivationCache
from .config import MLLMConfig
from .hook_points import HookPoints
from .inputs import MultimodalBatch
from .sae._splice import SAESpliceMixin

# A hook is a ``(name_or_filter, fn)`` pair. `| Any`: whatever else is passed (a bare name, a pair without a
# function) is let through to `runner.bind`, which refuses it saying what to pass.
HookSpec = tuple[Any, Callable] | Any


@dataclass(frozen=True)
class GenerationOutput:
    """What :meth:`HookedMLLM.generate` returns.

    Attributes:
        sequences: ``[batch, prompt + new]`` the prompt ids followed by the generated ids.
        new_tokens: ``[batch, new]`` the generated ids only.
        text: The decoded generated text per row (special tokens skipped), if a
            tokenizer is known.
    """

    sequences: Int[Tensor, "batch total"]
    new_tokens: Int[Tensor, "batch new"]
    text: list[str] | None


class _RunState:
    """What the hook bodies of a ``model.hooks()`` block learn about the current run."""

    def __init__(self) -> None:
        self.batch: MultimodalBatch | None = None

    def current_batch(self) -> MultimodalBatch | None:
        """The batch of the run in progress (what hook bodies call; a method, not a lambda over the
        model, so serializing a body for a remote run carries this small state, not the model)."""
        return self.batch


class HookedMLLM(InputsMixin, TLCompatMixin, SAESpliceMixin):
    """A multimodal LLM with TransformerLens-style hook points, on nnsight.

    Attributes:
        hf_model: The wrapped Hugging Face model.
        processor: Its processor (None if unknown; then pass HF tensors).
        nnsight: The ``nnsight.NNsight`` wrapper every run goes through.
        adapter: The :class:`~hooked_mllm.architectures.Adapter` of its family.
        cfg: Its sizes (:class:`~hooked_mllm.config.MLLMConfig`).
    """

    def __init__(
        self,
        hf_model: torch.nn.Module,
        processor: Any = None,
        adapter: Adapter | None = None,
        *,
        envoy: Any = None,
        remote: bool | str | Remote = False,
    ) -> None:
        refuse_tensor_parallel(model=hf_model)
        nnsight_private.check_tested_versions()
        self.hf_model = hf_model.eval()
        self.remote = remote  # nnsight's remote=: every run goes through its remote backend
        self._backend = backend_for(remote)
        self.processor = processor
        self.adapter = adapter.for_config(hf_model.config) if adapter is not None else adapter_for(hf_model)
        self.cfg = MLLMConfig.from_model(hf_model, self.adapter)
        if envoy is None:
            envoy = MLLMEnvoy(hf_model)
            envoy.attach(self.to_batch, lambda: plan.pad_id(self.tokenizer))
        self.nnsight = envoy
        self.hook_points = HookPoints.build(
            self.adapter,
            n_layers=self.cfg.n_layers,
            n_heads=self.cfg.n_heads,
            n_kv_heads=self.cfg.n_kv_heads,
            vision_layers=self.cfg.vision_n_layers,
            vision_heads=self.cfg.vision_n_heads,
            cross_layers=self.adapter.cross_layers(hf_model.config, self.cfg.n_layers),
            vision_layers_read=self.adapter.vision_layers_read(
                hf_model.config, self.cfg.vision_n_layers, hf_model
            ),
        )
        self._context: list[runner.HookFn] = []
        self._context_bodies: list[runner.Body] = []  # the interventions of active model.hooks() blocks
        self._state = _RunState()
        self._guard = runner.RunGuard.of(hf_model)  # shared by every wrapper of hf_model
        self._trace_reads: list[tuple[str, Tensor, int]] = []  # computed values handed out in model.trace

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: Any = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        remote: bool | str | Remote = False,
        **hf_kwargs: Any,
    ) -> HookedMLLM:
        """Load model and processor with the HF Auto classes and wrap them.

        With ``remote`` (nnsight's ``remote=``: ``True`` for NDIF, an ``https://`` host URL, a
        :class:`~hooked_mllm.Remote` for plain ``http://``, timeouts or a trusted server, or
        ``"local"`` to simulate a server here), the model is built on the meta device from its config
        (no weights are read) and every run goes through nnsight's remote backend; see
        docs/scale.md.

        ``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``proxies``,
        ``force_download`` and ``code_revision`` among ``hf_kwargs`` go to the processor too,
        so a pinned revision pins the processor (and its remote code) with the weights. A
        checkpoint whose remote code registers only ``AutoModelForCausalLM`` (Molmo) loads
        through that class.

        Examples:
            >>> model = HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-llava"))  # doctest: +SKIP
        """
        refuse_tensor_parallel(hf_kwargs)
        options = dict(dtype=dtype, device=device, device_map=device_map, **hf_kwargs)
        options.update(attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        if remote:
            return _remote.from_pretrained(cls, name_or_path, remote, **options)
        return cls(*load_local(name_or_path, **options))

    @classmethod
    def from_hf(cls, hf_model: torch.nn.Module, processor: Any = None) -> HookedMLLM:
        """Wrap a model that is already loaded (and optionally its processor)."""
        return cls(hf_model, processor)

    # -- hook points -----------------------------------------------------------------

    def hook_names(self, stream: str | None = None) -> list[str]:
        """Every hook name in forward order (``stream``: ``"lm"``, ``"vision"``, ``"projector"``)."""
        return [p.name for p in self.hook_points if stream is None or p.stream == stream]

    def hook_point(self, name: str | tuple) -> HookPointHandle:
        """The nnsight handle of a hook point, for use inside :meth:`trace`.

        Examples:
            >>> with model.trace(batch):                                            # doctest: +SKIP
            ...     resid = model.hook_point("blocks.3.hook_resid_post").output.save()
        """
        self._refuse_inner_point(name)  # a point inside a spliced SAE: run methods only
        point = self.hook_points.resolve(name)
        check_invoke_point(self.nnsight, point)
        return HookPointHandle(self.nnsight, point, self._trace_reads)

    # -- running ---------------------------------------------------------------------

    # what a run of a batch reaches (hooked_mllm._runtime.plan), also for estimate_cache and the SAE splices
    _runnable = staticmethod(plan.runnable)
    _has_images = staticmethod(plan.has_images)

    def _run(
        self,
        batch: MultimodalBatch,
        hooks: list[runner.HookFn],
        fn: Any = "__call__",
        every_step: bool = False,
        grad: bool = False,
        what: str = "run",
        bwd: Sequence[runner.HookFn] = (),
        keep: Any = None,
        **call_kwargs: Any,
    ) -> Any:
        hooks, bwd = plan.runnable_hooks(batch, hooks), plan.runnable_hooks(batch, bwd)
        return self._backend.run(self, batch, hooks, fn, every_step, grad, what, bwd, keep, call_kwargs)

    def __getstate__(self) -> dict:
        """A remote model's state for a remote ``model.trace`` body: no weights, lock or processor."""
        if not self._backend.ships_requests:
            raise TypeError(
                "A HookedMLLM pickles only as part of a remote request (from_pretrained(..., remote=...)); "
                "save the HF model with model.hf_model.save_pretrained(path) instead."
            )
        state = self.__dict__.copy()
        state.update(hf_model=None, processor=None, _guard=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._guard = runner.RunGuard()

    def forward(
        self,
        inputs: Any = None,
        *,
        return_type: str | None = "logits",
        grad: bool = False,
        loss_per_token: bool = False,
        **hf_kwargs: Any,
    ) -> Any:
        """Run the model (with any ``model.hooks()`` active); return logits, the HF output, or the loss.

        ``return_type``: ``"logits"``, ``"output"`` (the HF output object), ``"loss"`` (next-token
        cross-entropy over text targets, :meth:`lm_loss`), ``"both"`` (``(logits, loss)``) or None
        (run for the hooks' effects only). ``hf_kwargs`` are HF input tensors (every key the
        processor returns) and HF options (``output_hidden_states=True``...); an unknown keyword is
        a ``TypeError`` naming it.
        """
        own = ("inputs", "return_type", "grad", "loss_per_token")
        if return_type in ("loss", "both", None):
            batch, options = self._batch_and_options("forward", inputs, hf_kwargs, own)
            logits = self.run_with_hooks(batch, fwd_hooks=(), grad=grad, **options)
            if return_type is None:
                return None
            loss = self.lm_loss(logits, batch, per_token=loss_per_token)
            return loss if return_type == "loss" else (logits, loss)
        self._check_keywords("forward", hf_kwargs, own)
        return self.run_with_hooks(inputs, fwd_hooks=(), return_type=return_type, grad=grad, **hf_kwargs)

    __call__ = forward

    def run_with_hooks(
        self,
        inputs: Any = None,
        *,
        fwd_hooks: Iterable[HookSpec] = (),
        bwd_hooks: Iterable[HookSpec] = (),
        return_type: str | None = "logits",
        grad: bool = False,
        **hf_kwargs: Any,
    ) -> Float[Tensor, "batch pos vocab"] | Any:
        """Run once with hook functions ``fn(activation, hook) -> replacement | None``.

        Args:
            inputs: A :class:`MultimodalBatch`, or pass HF tensors as keywords.
            fwd_hooks: ``(name_or_filter, fn)`` pairs; a filter is a list of names or a
                predicate over names. Several functions on one point run in order.
            bwd_hooks: ``(name_or_filter, fn)`` pairs of backward hooks ``fn(grad, hook)``,
                called when the returned output is differentiated (``loss.backward()``) with
                the gradient w.r.t. the point's value (after the forward hooks); a returned
                tensor (or 1-tuple) replaces that gradient. They belong to this run's graph
                (:mod:`hooked_mllm._runtime.backward`); autograd is on for the run.
            return_type: ``"logits"``, ``"output"`` (the HF output object), ``"loss"``
                (:meth:`lm_loss`), ``"both"`` (``(logits, loss)``) or None.
            grad: Keep autograd on (for gradients through the run).

        Examples:
            >>> def zero(act, hook):
            ...     return torch.zeros_like(act)
            >>> hooks = [("blocks.0.hook_mlp_out", zero)]
            >>> logits = model.run_with_hooks(batch, fwd_hooks=hooks)  # doctest: +SKIP
        """
        self._check_return_type(return_type)
        batch, options = self._batch_and_options(
            "run_with_hooks", inputs, hf_kwargs, ("inputs", "fwd_hooks", "bwd_hooks", "return_type", "grad")
        )
        backward = self._bind(bwd_hooks, "bwd_hooks")
        output = self._run(
            batch,
            self._bind(fwd_hooks),
            grad=grad or bool(backward),
            what="run_with_hooks",
            bwd=backward,
            **options,
        )
        return self._returned(output, batch, return_type)

    def run_with_cache(
        self,
        inputs: Any = None,
        *,
        names_filter: Any = None,
        positions: Any = None,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype | None = None,
        fwd_hooks: Iterable[HookSpec] = (),
        grad: bool = False,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        return_type: str | None = "logits",
        **hf_kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """Run once and cache activations.

        Args:
            names_filter: A name, a list of names, a predicate, or None (every hook point).
            positions: Keep only these sequence positions of LM activations ("image", "text", "last",
                an int, a slice or list (kept in the order given, repeats too), a mask or a ``positions``
                selector); each row must select the same number. Patterns: on the query axis.
            device: Where cached tensors go (default CPU; None keeps them in place).
            dtype: Cast cached tensors.
            fwd_hooks: Hook functions to run too (the cache sees their results).
            remove_batch_dim: Drop the batch axis of a one-row run (:meth:`ActivationCache.remove_batch_dim`).
            incl_bwd: Also call ``backward()`` on the returned loss (``return_type="loss"``, as
                TransformerLens requires a scalar) and cache each point's gradient as
                ``"<name>_grad"`` (points no gradient reaches have none); parameters' ``.grad``
                accumulate as after any ``backward()``.
            return_type: As in :meth:`run_with_hooks`.

        Returns:
            ``(logits, cache)`` (the first element follows ``return_type``).

        Examples:
            >>> logits, cache = model.run_with_cache(batch, names_filter="blocks.2.hook_resid_post",
            ...                                      positions="image")   # doctest: +SKIP
            >>> cache["resid_post", 2].shape                               # doctest: +SKIP
            torch.Size([1, 576, 4096])
        """
        own: tuple[str, ...] = ("inputs", "names_filter", "positions", "device", "dtype", "fwd_hooks", "grad")
        own += ("remove_batch_dim", "incl_bwd", "return_type")
        batch, options = self._batch_and_options("run_with_cache", inputs, hf_kwargs, own)
        self._check_return_type(return_type)
        if incl_bwd and return_type != "loss":
            raise ValueError(
                f"incl_bwd=True needs a scalar output to call backward() on, got return_type="
                f"{return_type!r}; pass return_type='loss'."
            )
        index = None
        if positions is not None:
            index = _positions.ordered_index(positions, batch).to(self.device)
        names_filter, inner = self._cache_points(names_filter, positions, batch)  # inner: inside SAEs
        chosen = plan.runnable(batch, self.hook_points.select(names_filter), names_filter)

        def hooks(fn: Callable) -> list[runner.HookFn]:  # the user's, then the cache's (inside SAEs too)
            return (
                self._bind(fwd_hooks)
                + [runner.HookFn(p, fn) for p in chosen]
                + self._bind([(inner, fn)] * bool(inner))
            )

        def run(hooks: list[runner.HookFn], bwd: list[runner.HookFn], store: dict) -> Any:
            return self._run(
                batch, hooks, grad=grad or incl_bwd, what="run_with_cache", bwd=bwd, keep=store, **options
            )

        clone = {p.name for p in chosen} if self._backend.ships_requests else set()  # versions do not travel
        output, store, grads = caching.run(run, hooks, chosen, index, device, dtype, grad, incl_bwd, clone)
        result = self._returned(output, batch, return_type)
        if incl_bwd:
            result.backward()
            store.update({f"{name}_grad": value for name, value in grads.items()})
        cache = ActivationCache(
            store, self.readout(), batch=batch, positions=None if index is None else index.cpu()
        )
        if remove_batch_dim:
            cache.remove_batch_dim()
        return result, cache

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = ()) -> Iterator[HookedMLLM]:
        """Keep hook functions active for every run inside the block, generation included.

        They are nnsight edits of every run inside the block, so a ``model.trace`` inside
        the block sees them too; they end with the block, also when something raises.

        Examples:
            >>> with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):  # doctest: +SKIP
            ...     out = model.generate(batch, max_new_tokens=5)
        """
        bound = self._bind(fwd_hooks)
        bodies = runner.bodies(
            self.nnsight, bound, self.hook_points.order, batch=self._state.current_batch, every_step=True
        )
        self._context = self._context + bound
        self._context_bodies = self._context_bodies + bodies
        try:
            yield self
        finally:
            self._context = [hook for hook in self._context if hook not in bound]
            self._context_bodies = [body for body in self._context_bodies if body not in bodies]

    # Not wrapped by run-time type checkers (jaxtyping's import hook, which honours no_type_check): nnsight's
    # tracer.capture() below finds the caller's `with` block a fixed two frames up, and a checking wrapper
    # adds frames, so `with model.generate(...) as tracer:` would not be recognised.
    @no_type_check
    def generate(
        self,
        inputs: Any = None,
        *,
        max_new_tokens: int = 16,
        fwd_hooks: Iterable[HookSpec] = (),
        do_sample: bool = False,
        **generate_kwargs: Any,
    ) -> GenerationOutput:
        """Generate with hook functions firing on the prompt and on every generated token.

        ``hook.step`` is 0 on the prompt forward and ``k`` on the forward that produces
        generated token ``k + 1``. Greedy by default. HF input tensors among the keywords
        (every key the processor returns: ``model.generate(**processor(...))``) make the
        batch; other keywords go to HF ``generate``. Opened as ``with model.generate(...) as
        tracer:`` it is an nnsight trace of the generation instead (per-step reads and writes
        in ``for step in tracer.iter[...]`` / ``tracer.all()``; the ids at ``tracer.result``).

        Examples:
            >>> out = model.generate(batch, max_new_tokens=3)   # doctest: +SKIP
            >>> out.text                                         # doctest: +SKIP
            ['red']
        """
        tensors = {
            k: generate_kwargs.pop(k)
            for k in list(generate_kwargs)
            if k in self._input_names and isinstance(generate_kwargs[k], Tensor)
        }
        options = keywords.generate_options(generate_kwargs, max_new_tokens, do_sample)  # TL names mapped
        fn, tracer, run_options = self._backend.generation(self, inputs, tensors, options)
        try:  # `with model.generate(...) as tracer:` traces generation (nnsight's test: the caller's frame)
            tracer.capture()
            self._backend.check_traced_generation()
            if fwd_hooks:
                raise ValueError(
                    "A traced generate takes no fwd_hooks: write to hook points inside the block, "
                    "or wrap it in `with model.hooks(fwd_hooks=...)`."
                )
            return tracer
        except WithBlockNotFoundError:
            pass
        batch = self.to_batch(inputs, **tensors)
        sequences = self._run(
            batch,
            self._bind(fwd_hooks),
            fn=fn,
            every_step=True,
            what="generate",
            **run_options,
        )
        if not isinstance(sequences, Tensor):
            sequences = sequences.sequences
        sequences = sequences.cpu()
        new = sequences[:, batch.shape[1] :]
        tokenizer = getattr(self.processor, "tokenizer", None)
        text = tokenizer.batch_decode(new, skip_special_tokens=True) if tokenizer is not None else None
        return GenerationOutput(sequences, new, text)

    def trace(
        self, inputs: Any = None, *, eager_attention: bool | None = None, fn: Any = None, **hf_kwargs: Any
    ) -> Any:
        """nnsight's ``trace`` over the same inputs (a batch, text or HF tensors), or, given none, over
        the inputs of its ``tracer.invoke(...)`` blocks batched into one forward
        (:mod:`hooked_mllm._runtime.invokes`).

        ``eager_attention``: run under eager attention (patterns); None does so when the block
        names ``hook_pattern``. ``fn``: what to run instead of the forward (``generate`` uses it).

        Examples:
            >>> with model.trace(batch):                                                 # doctest: +SKIP
            ...     h = model.hook_point("blocks.0.hook_resid_post").output.save()
            ...     model.hook_point("blocks.1.hook_mlp_out").output[:] = 0
        """
        invokes = inputs is None and not any(
            isinstance(v, Tensor) for v in hf_kwargs.values()
        )  # invokes give inputs
        own = ("inputs", "eager_attention")
        return self._backend.trace(self, inputs, hf_kwargs, own, invokes, fn, eager_attention)

    # -- TransformerLens habits: persistent hooks, return types, loss ---------------------

    def add_hook(
        self,
        name: Any,
        hook: Callable[..., Any],
        dir: str = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Keep ``hook`` on ``name`` (a name, list or predicate) for every later run, until
        :meth:`reset_hooks`.

        The hook is active exactly as inside ``with model.hooks(...)`` (runs, generation and
        ``model.trace``); an unknown name fails here, not at the next run. ``is_permanent`` hooks
        survive ``reset_hooks()`` and go with ``reset_hooks(including_permanent=True)``.

        Examples:
            >>> model.add_hook("blocks.0.hook_mlp_out", lambda act, hook: act * 0)   # doctest: +SKIP
            >>> model.reset_hooks()                                                  # doctest: +SKIP
        """
        if dir != "fwd":
            raise ValueError(
                "add_hook keeps forward hooks only (dir='fwd'); backward hooks belong to one run: "
                "run_with_hooks(..., bwd_hooks=[(name, fn)]) or run_with_cache(..., incl_bwd=True)."
            )
        if prepend:
            raise ValueError(
                "prepend=True is not offered: hooks on one point run in the order they were added."
            )
        block = self.hooks(fwd_hooks=[(name, hook)])
        block.__enter__()
        self.__dict__.setdefault("_added_hooks", []).append((block, is_permanent))

    def reset_hooks(self, including_permanent: bool = False) -> None:
        """Remove the hooks :meth:`add_hook` added (the permanent ones too with ``including_permanent``)."""
        added = self.__dict__.get("_added_hooks", [])
        keep = [(block, permanent) for block, permanent in added if permanent and not including_permanent]
        errors = []
        for block, permanent in reversed(added):
            if (block, permanent) in keep:
                continue
            try:
                block.__exit__(None, None, None)
            except Exception as error:  # remove the others anyway, then report
                errors.append(error)
        self.__dict__["_added_hooks"] = keep
        if errors:
            raise errors[0]

    _RETURN_TYPES = ("logits", "output", "loss", "both", None)

    def _check_return_type(self, return_type: Any) -> None:
        if return_type not in self._RETURN_TYPES:
            raise ValueError(
                f"return_type must be one of {', '.join(map(repr, self._RETURN_TYPES))}, not {return_type!r}"
            )

    def _returned(self, output: Any, batch: Any, return_type: str | None) -> Any:
        """What a run returns for ``return_type`` (checked by :meth:`_check_return_type`)."""
        if return_type == "output":
            return output
        if return_type is None:
            return None
        if return_type == "logits":
            return output.logits
        loss = self.lm_loss(output.logits, batch)
        return loss if return_type == "loss" else (output.logits, loss)

    def lm_loss(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any, per_token: bool = False
    ) -> Float[Tensor, ""] | Float[Tensor, "batch pos_1"]:
        """Next-token cross-entropy of ``logits`` on ``batch``'s ids, over text targets only.

        Targets that are padding or image placeholder tokens (whose "next token" is an image
        feature, not a prediction) are left out: the mean is over the rest; ``per_token``
        gives ``[batch, pos - 1]`` with zeros there.

        Examples:
            >>> loss = model(batch, return_type="loss")         # doctest: +SKIP
        """
        ids = batch.input_ids.to(logits.device)
        log_probs = logits[:, :-1].float().log_softmax(-1)
        nll = -log_probs.gather(-1, ids[:, 1:, None])[..., 0]
        valid = (~batch.pad_mask[:, 1:] & ~batch.pad_mask[:, :-1] & ~batch.image_mask[:, 1:]).to(nll.device)
        nll = nll * valid
        return nll if per_token else nll.sum() / valid.sum().clamp(min=1)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedMLLM({c.model_class}: {c.n_layers} layers, d_model={c.d_model}, "
            f"vision {c.vision_n_layers} layers, {len(self.hook_points)} hook points)"
        )
