"""``HookedMLLM``: a Hugging Face vision-language model with named hook points.

The class wraps a loaded HF model in nnsight (``model.nnsight``) and exposes the hook
points of :mod:`hooked_mllm.hook_points` by their TransformerLens names. Every run
method turns hook functions into nnsight interventions (:mod:`hooked_mllm._runner`),
so ``run_with_cache``, ``run_with_hooks``, ``generate`` and a user's own
``model.trace`` all go through one mechanism. Inputs come from :meth:`prepare`
(:mod:`hooked_mllm.inputs`) or as HF keyword tensors; caches are
:class:`~hooked_mllm.cache.ActivationCache`.

Examples:
    >>> model = HookedMLLM.from_pretrained("llava-hf/llava-1.5-7b-hf")      # doctest: +SKIP
    >>> batch = model.prepare(images=[image], prompts=["What is shown?"])   # doctest: +SKIP
    >>> logits, cache = model.run_with_cache(batch, names_filter=lambda n: "resid_post" in n)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from nnsight import NNsight
from nnsight.tracing.tracer import WithBlockNotFoundError
from torch import Tensor

from . import _grad_hooks, _hook_io, _runner
from ._tensor_parallel import refuse_tensor_parallel
from ._tl_compat import TLCompatMixin
from ._tracing import MLLMEnvoy, check_invoke_point, habit_tracer
from ._weights import execution_device
from . import positions as _positions
from .architectures import adapter_for
from .architectures.base import Adapter
from ._cache_hooks import _cache_fn, _grad_cache_fn
from .cache import ActivationCache
from .config import MLLMConfig
from .hook_points import HookPoint, HookPoints
from .inputs import MultimodalBatch, prepare, processor_token_counts
from .readout import CacheReadout

logger = logging.getLogger(__name__)

HookSpec = tuple[Any, Callable]

# Options every HF forward takes through ``**kwargs`` besides its named inputs.
_HF_OPTIONS = frozenset({"output_hidden_states", "output_attentions", "return_dict", "use_cache",
                         "output_router_logits", "cache_position"})
# TransformerLens keywords with no counterpart here, and what to do instead.
_TL_HINTS = {
    "return_cache_object": "run_with_cache always returns an ActivationCache",
    "reset_hooks_end": "hooks given to a run are always removed when it ends; use model.hooks() to keep them",
    "clear_contexts": "hooks given to a run are always removed when it ends",
}
# The processor keywords from_pretrained passes on to AutoProcessor, so a pinned revision pins both.
_PROCESSOR_LOADING = ("revision", "token", "cache_dir", "local_files_only", "proxies", "force_download",
                      "code_revision")


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


class HookedMLLM(TLCompatMixin):
    """A multimodal LLM with TransformerLens-style hook points, on nnsight.

    Attributes:
        hf_model: The wrapped Hugging Face model.
        processor: Its processor (None if unknown; then pass HF tensors).
        nnsight: The ``nnsight.NNsight`` wrapper every run goes through.
        adapter: The :class:`~hooked_mllm.architectures.Adapter` of its family.
        cfg: Its sizes (:class:`~hooked_mllm.config.MLLMConfig`).
    """

    def __init__(self, hf_model: torch.nn.Module, processor: Any = None, adapter: Adapter | None = None) -> None:
        refuse_tensor_parallel(model=hf_model)
        self.hf_model = hf_model.eval()
        self.processor = processor
        self.adapter = adapter.for_config(hf_model.config) if adapter is not None else adapter_for(hf_model)
        self.cfg = MLLMConfig.from_model(hf_model, self.adapter)
        self.nnsight = MLLMEnvoy(hf_model)
        self.nnsight.attach(self.to_batch, self._pad_id)
        self.hook_points = HookPoints.build(
            self.adapter,
            n_layers=self.cfg.n_layers,
            n_heads=self.cfg.n_heads,
            n_kv_heads=self.cfg.n_kv_heads,
            vision_layers=self.cfg.vision_n_layers,
            vision_heads=self.cfg.vision_n_heads,
            cross_layers=self.adapter.cross_layers(hf_model.config, self.cfg.n_layers),
            vision_layers_read=self.adapter.vision_layers_read(hf_model.config, self.cfg.vision_n_layers, hf_model),
        )
        self._context: list[_runner.HookFn] = []
        self._state = _RunState()
        self._guard = _runner.RunGuard()
        self._trace_reads: list[tuple[str, Tensor, int]] = []  # computed values handed out in model.trace

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: Any = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        **hf_kwargs: Any,
    ) -> HookedMLLM:
        """Load model and processor with the HF Auto classes and wrap them.

        ``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``proxies``,
        ``force_download`` and ``code_revision`` among ``hf_kwargs`` go to the processor too,
        so a pinned revision pins the processor (and its remote code) with the weights. A
        checkpoint whose remote code registers only ``AutoModelForCausalLM`` (Molmo) loads
        through that class.

        Examples:
            >>> model = HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-llava"))  # doctest: +SKIP
        """
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

        refuse_tensor_parallel(hf_kwargs)
        kwargs: dict[str, Any] = dict(hf_kwargs, trust_remote_code=trust_remote_code)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        try:
            hf_model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
        except ValueError as error:  # remote code registered only as a causal LM (Molmo's MolmoForCausalLM)
            if "Unrecognized configuration class" not in str(error):
                raise
            hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        if device is not None and device_map is None:
            hf_model = hf_model.to(device)
        try:
            loading = {k: hf_kwargs[k] for k in _PROCESSOR_LOADING if k in hf_kwargs}
            processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **loading)
        except (OSError, ValueError, TypeError) as error:
            logger.warning("No processor loaded from %s (%s); pass HF tensors to run methods.", name_or_path, error)
            processor = None
        return cls(hf_model, processor)

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
        point = self.hook_points.resolve(name)
        check_invoke_point(self.nnsight, point)
        return HookPointHandle(self.nnsight, point, self._trace_reads)

    def _bind(self, fwd_hooks: Iterable[HookSpec], kind: str = "fwd_hooks") -> list[_runner.HookFn]:
        bound = []
        for spec in fwd_hooks:
            if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
                raise TypeError(f"{kind} takes (name_or_filter, fn) pairs, e.g. "
                                "[('blocks.0.hook_resid_post', fn)]")
            target, fn = spec
            for point in self.hook_points.select(target):
                bound.append(_runner.HookFn(point, fn))
        return bound

    # -- inputs ----------------------------------------------------------------------

    def prepare(self, *, images: Any = None, prompts: str | Sequence[str], chat_template: bool = True,
                padding_side: str = "left", **processor_kwargs: Any) -> MultimodalBatch:
        """Encode images and prompts into one :class:`~hooked_mllm.inputs.MultimodalBatch`.

        See :func:`hooked_mllm.inputs.prepare`.
        """
        return prepare(self.processor, images=images, prompts=prompts, chat_template=chat_template,
                       padding_side=padding_side, image_token_id=self.cfg.image_token_id,
                       adapter=self.adapter, config=self.hf_model.config, **processor_kwargs)

    def to_batch(self, inputs: Any = None, **hf_kwargs: Any) -> MultimodalBatch:
        """A :class:`MultimodalBatch` from a batch, a dict of HF tensors, HF keywords, or text.

        A dict or keywords may hold every key the model's processor returns; an unknown
        key is an error naming it (and the closest known one). A string or a list of
        strings is a text-only batch (:meth:`text_batch`).
        """
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            if hf_kwargs:
                raise ValueError(f"Pass either text or HF input tensors, not both (got text and "
                                 f"{', '.join(sorted(hf_kwargs))}).")
            return self.text_batch(inputs)
        if isinstance(inputs, MultimodalBatch):
            if hf_kwargs:
                raise ValueError(
                    "Pass either a MultimodalBatch or HF input tensors, not both (got a batch and "
                    f"{', '.join(sorted(hf_kwargs))}).")
            return inputs
        if inputs is not None and not isinstance(inputs, dict) and not hasattr(inputs, "keys"):
            raise TypeError(f"Inputs must be a MultimodalBatch (model.prepare(...)) or HF tensors; got "
                            f"{type(inputs).__name__}.")
        tensors = dict(inputs or {}, **hf_kwargs)
        self._check_keywords("to_batch", tensors, ())
        tokenizer = getattr(self.processor, "tokenizer", None)
        return MultimodalBatch.from_hf(tensors, image_token_id=self.cfg.image_token_id, adapter=self.adapter,
                                       config=self.hf_model.config, tokenizer=tokenizer,
                                       image_token_counts=self._token_counts(tensors))

    def _token_counts(self, tensors: dict) -> list[int] | None:
        """Each image's token count as the processor computes it, from the HF tensors (None if unknown):
        from ``image_sizes`` where given, else from ``pixel_values`` of one resized image per entry."""
        sizes = tensors.get("image_sizes")
        if isinstance(sizes, Tensor) and sizes.dim() == 2:
            return processor_token_counts(self.processor, sizes.tolist())
        pixels = tensors.get("pixel_values")
        one_per_image = "pixel_values" not in dict(self.adapter.inputs.split) and self.adapter.tokens.grids is None
        if isinstance(pixels, Tensor) and pixels.dim() == 4 and one_per_image:
            return processor_token_counts(self.processor, [tuple(pixels.shape[-2:])] * pixels.shape[0])
        return None

    @functools.cached_property
    def _input_names(self) -> frozenset[str]:
        """The named inputs of the HF model's forward (every key its processor returns)."""
        params = inspect.signature(self.hf_model.forward).parameters
        return frozenset(n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))

    def _check_keywords(self, method: str, keywords: dict, own: Sequence[str]) -> None:
        """Raise ``TypeError`` for a keyword that is neither ``method``'s own nor an HF input or option."""
        allowed = self._input_names | _HF_OPTIONS
        for key in keywords:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, [*own, *sorted(allowed)], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            extra = f" ({_TL_HINTS[key]})" if key in _TL_HINTS else ""
            raise TypeError(
                f"{method}() got an unknown argument {key!r}{hint}{extra} It takes "
                f"{', '.join(own) + ' and ' if own else ''}the model's HF inputs "
                f"({', '.join(sorted(self._input_names))}).")

    def _batch_and_options(self, method: str, inputs: Any, hf_kwargs: dict,
                           own: Sequence[str]) -> tuple[MultimodalBatch, dict]:
        """Check ``hf_kwargs``; tensors make the batch, other values (``output_attentions=True``,
        ``vision_feature_layer=-2``...) are options for the HF call."""
        self._check_keywords(method, hf_kwargs, own)
        options = {k: v for k, v in hf_kwargs.items() if not isinstance(v, Tensor)}
        tensors = {k: v for k, v in hf_kwargs.items() if isinstance(v, Tensor)}
        return self.to_batch(inputs, **tensors), options

    @property
    def device(self) -> torch.device:
        return execution_device(self.hf_model)

    # -- running ---------------------------------------------------------------------

    def _run(self, batch: MultimodalBatch, hooks: list[_runner.HookFn], fn: Any = "__call__",
             every_step: bool = False, grad: bool = False, what: str = "run", bwd: Sequence[_runner.HookFn] = (),
             **call_kwargs: Any) -> Any:
        self._runnable(batch, [hook.point for hook in [*hooks, *bwd]])
        with self._guard(what):
            mediators = _runner.build_mediators(self.nnsight, hooks, self.hook_points.order,
                                                batch=lambda: self._state.batch, every_step=every_step)
            mediators += _grad_hooks.build_mediators(self.nnsight, bwd, batch=lambda: self._state.batch)
            eager = self._eager_configs([*hooks, *bwd, *self._context])
            kwargs = dict(batch.to(self.device).inputs, **call_kwargs)
            previous, self._state.batch = self._state.batch, batch
            try:
                with torch.set_grad_enabled(grad), _runner.eager_attention(eager):
                    return _runner.interleave(self.nnsight, fn, mediators, kwargs)
            finally:
                self._state.batch = previous

    def _eager_configs(self, hooks: list[_runner.HookFn]) -> list[Any]:
        streams = {hook.point.stream for hook in hooks if hook.point.needs_eager}
        configs = []
        if "lm" in streams:
            configs.append(self.adapter.text_cfg(self.hf_model.config))
        if "vision" in streams and self.adapter.vision_cfg(self.hf_model.config) is not None:
            configs.append(self.adapter.vision_cfg(self.hf_model.config))
        return configs

    def forward(self, inputs: Any = None, *, return_type: str | None = "logits", grad: bool = False,
                loss_per_token: bool = False, **hf_kwargs: Any) -> Any:
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

    def run_with_hooks(self, inputs: Any = None, *, fwd_hooks: Iterable[HookSpec] = (),
                       bwd_hooks: Iterable[HookSpec] = (), return_type: str | None = "logits", grad: bool = False,
                       **hf_kwargs: Any) -> Float[Tensor, "batch pos vocab"] | Any:
        """Run once with hook functions ``fn(activation, hook) -> replacement | None``.

        Args:
            inputs: A :class:`MultimodalBatch`, or pass HF tensors as keywords.
            fwd_hooks: ``(name_or_filter, fn)`` pairs; a filter is a list of names or a
                predicate over names. Several functions on one point run in order.
            bwd_hooks: ``(name_or_filter, fn)`` pairs of backward hooks ``fn(grad, hook)``,
                called when the returned output is differentiated (``loss.backward()``) with
                the gradient w.r.t. the point's value (after the forward hooks); a returned
                tensor replaces that gradient. They belong to this run's graph
                (:mod:`hooked_mllm._grad_hooks`); autograd is on for the run.
            return_type: ``"logits"``, ``"output"`` (the HF output object), ``"loss"``
                (:meth:`lm_loss`), ``"both"`` (``(logits, loss)``) or None.
            grad: Keep autograd on (for gradients through the run).

        Examples:
            >>> def zero(act, hook):
            ...     return torch.zeros_like(act)
            >>> logits = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_mlp_out", zero)])  # doctest: +SKIP
        """
        self._check_return_type(return_type)
        batch, options = self._batch_and_options("run_with_hooks", inputs, hf_kwargs,
                                                 ("inputs", "fwd_hooks", "bwd_hooks", "return_type", "grad"))
        backward = self._bind(bwd_hooks, "bwd_hooks")
        output = self._run(batch, self._bind(fwd_hooks), grad=grad or bool(backward), what="run_with_hooks",
                           bwd=backward, **options)
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
            positions: Keep only these sequence positions of LM activations ("image",
                "text", "last", an int, a slice, a mask or a ``positions`` selector); each
                row must select the same number. Patterns are selected on the query axis.
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
        batch, options = self._batch_and_options(
            "run_with_cache", inputs, hf_kwargs,
            ("inputs", "names_filter", "positions", "device", "dtype", "fwd_hooks", "grad", "remove_batch_dim",
             "incl_bwd", "return_type"))
        self._check_return_type(return_type)
        if incl_bwd and return_type != "loss":
            raise ValueError(f"incl_bwd=True needs a scalar output to call backward() on, got return_type="
                             f"{return_type!r}; pass return_type='loss'.")
        store: dict[str, Tensor] = {}
        index = None
        if positions is not None:
            index = _positions.gather_index(_positions.resolve(positions, batch)).to(self.device)
        chosen = self._runnable(batch, self.hook_points.select(names_filter), names_filter)
        versions: dict[str, int] = {}
        clone: set[str] = set()
        for attempt in range(2):
            hooks = self._bind(fwd_hooks)
            for point in chosen:
                hooks.append(_runner.HookFn(point, _cache_fn(store, index, device, dtype, grad, versions, clone)))
            grads: dict[str, Tensor] = {}
            backward = [_runner.HookFn(point, _grad_cache_fn(grads, index, device, dtype)) for point in chosen
                        if incl_bwd]
            output = self._run(batch, hooks, grad=grad or incl_bwd, what="run_with_cache", bwd=backward, **options)
            # A model that edits a value in place after the hook read it (Molmo adds the image features
            # into its embedding output) leaves a stale cache entry: run again, copying those entries.
            stale = {name for name, version in versions.items() if store[name]._version != version}
            if not stale or attempt:
                break
            clone |= stale
            store.clear()
            versions.clear()
        result = self._returned(output, batch, return_type)
        if incl_bwd:
            result.backward()
            store.update({f"{name}_grad": value for name, value in grads.items()})
        cache = ActivationCache(store, self.readout(), batch=batch, positions=None if index is None else index.cpu())
        if remove_batch_dim:
            cache.remove_batch_dim()
        return result, cache

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = ()) -> Iterator[HookedMLLM]:
        """Keep hook functions active for every run inside the block, generation included.

        They are nnsight edits for the block's duration, so a ``model.trace`` inside the
        block sees them too; they are removed on exit, also when something raises.

        Examples:
            >>> with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):  # doctest: +SKIP
            ...     out = model.generate(batch, max_new_tokens=5)
        """
        bound = self._bind(fwd_hooks)
        mediators = _runner.build_mediators(self.nnsight, bound, self.hook_points.order,
                                            batch=lambda: self._state.batch, every_step=True)
        self._context = self._context + bound
        try:
            with _runner.installed(self.nnsight, mediators):
                yield self
        finally:
            self._context = [hook for hook in self._context if hook not in bound]

    def generate(self, inputs: Any = None, *, max_new_tokens: int = 16, fwd_hooks: Iterable[HookSpec] = (),
                 do_sample: bool = False, **generate_kwargs: Any) -> GenerationOutput:
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
        tensors = {k: generate_kwargs.pop(k) for k in list(generate_kwargs)
                   if k in self._input_names and isinstance(generate_kwargs[k], Tensor)}
        fn = functools.partial(self.hf_model.generate, max_new_tokens=max_new_tokens, do_sample=do_sample,
                               **generate_kwargs)
        tracer = self.trace(inputs, fn=fn, **tensors)
        try:  # `with model.generate(...) as tracer:` traces generation (nnsight's test: the caller's frame)
            tracer.capture()
            if fwd_hooks:
                raise ValueError("A traced generate takes no fwd_hooks: write to hook points inside the block, "
                                 "or wrap it in `with model.hooks(fwd_hooks=...)`.")
            return tracer
        except WithBlockNotFoundError:
            pass
        batch = self.to_batch(inputs, **tensors)
        sequences = self._run(batch, self._bind(fwd_hooks), fn=fn, every_step=True, what="generate")
        if not isinstance(sequences, Tensor):
            sequences = sequences.sequences
        sequences = sequences.cpu()
        new = sequences[:, batch.shape[1]:]
        tokenizer = getattr(self.processor, "tokenizer", None)
        text = tokenizer.batch_decode(new, skip_special_tokens=True) if tokenizer is not None else None
        return GenerationOutput(sequences, new, text)

    def trace(self, inputs: Any = None, *, eager_attention: bool | None = None, fn: Any = None,
              **hf_kwargs: Any) -> Any:
        """nnsight's ``trace`` over the same inputs (a batch, text or HF tensors), or, given none, over
        the inputs of its ``tracer.invoke(...)`` blocks batched into one forward (:mod:`hooked_mllm._tracing`).

        ``eager_attention``: run under eager attention (patterns); None does so when the block
        names ``hook_pattern``. ``fn``: what to run instead of the forward (``generate`` uses it).

        Examples:
            >>> with model.trace(batch):                                                 # doctest: +SKIP
            ...     h = model.hook_point("blocks.0.hook_resid_post").output.save()
            ...     model.hook_point("blocks.1.hook_mlp_out").output[:] = 0
        """
        self._trace_reads.clear()
        tracer_cls = habit_tracer(_runner.guarded_tracer(self._guard, quiet=bool(self._context),
                                                         after=self._check_trace_reads),
                                  self._attention_configs, eager_attention)
        extra = {} if fn is None else {"fn": fn}
        if inputs is None and not any(isinstance(v, Tensor) for v in hf_kwargs.values()):  # invokes give inputs
            self._check_keywords("trace", hf_kwargs, ("inputs", "eager_attention"))
            return self.nnsight.trace(tracer_cls=tracer_cls, **extra, **hf_kwargs)
        batch, options = self._batch_and_options("trace", inputs, hf_kwargs, ("inputs", "eager_attention"))
        return self.nnsight.trace(tracer_cls=tracer_cls, **extra, **batch.to(self.device).inputs, **options)

    def _check_trace_reads(self) -> None:
        """Refuse, after a trace, in-place edits of computed values that could not reach the model."""
        edited = sorted({name for name, value, version in self._trace_reads if value._version != version})
        self._trace_reads.clear()
        if edited:
            raise ValueError(
                f"An in-place edit of {', '.join(edited)} inside model.trace had no effect: there the trace hands "
                "out a computed value (a sum or a layer-scaled output), not the model's own tensor. Assign instead: "
                "`point.output = new_value` (or edit in place inside a hook function of run_with_hooks).")

    # -- weights (W_Q ... W_U: hooked_mllm._tl_compat) ------------------------------

    def final_norm(self) -> torch.nn.Module:
        """The language model's final norm module."""
        return self.adapter.module(self.hf_model, self.adapter.modules.final_norm)

    def readout(self) -> CacheReadout:
        """What a cache's helpers read of this model (layer count, ``W_O``, ``W_U``, norms, hook names),
        as a frozen :class:`~hooked_mllm.readout.CacheReadout` of views of the weights (no copies).

        Built once and reused until a parameter is replaced or moved (new storage); in-place weight
        edits show through the views."""
        key = tuple((id(p), p.data_ptr()) for p in self.hf_model.parameters())
        memo = self.__dict__.get("_readout_memo")
        if memo is None or memo[0] != key:
            memo = self.__dict__["_readout_memo"] = (key, CacheReadout.from_model(self))
        return memo[1]

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedMLLM({c.model_class}: {c.n_layers} layers, d_model={c.d_model}, "
                f"vision {c.vision_n_layers} layers, {len(self.hook_points)} hook points)")


class HookPointHandle:
    """A hook point inside a user's ``model.trace``: read or assign ``.output``.

    ``.output`` is the hook point's value (whether the module's input or output holds
    it), with heads split out for per-head points; assigning it replaces the value with a
    tensor of exactly its shape, on its device, floating point (another float precision
    is cast), refusing read-only points and writes through a zero layer scale, all
    checked by :func:`hooked_mllm._hook_io.write` as in ``run_with_hooks``, naming the point.
    """

    def __init__(self, nn: NNsight, point: HookPoint, reads: list[tuple[str, Tensor, int]] | None = None) -> None:
        self.point = point
        self._io = _hook_io.bind(nn, point)
        self.envoy = self._io.envoy
        self._reading: _hook_io.Reading | None = None
        self._reads = reads  # where computed values are recorded, to refuse in-place edits of them afterwards

    @property
    def output(self) -> Tensor:
        self._reading = _hook_io.read(self._io)
        act = self._reading.act
        computed = self._io.base_envoy is not None or self._io.scale is not None
        if computed and self._reads is not None:
            self._reads.append((self.point.name, act, act._version))
        return act

    @output.setter
    def output(self, new: Tensor) -> None:
        _hook_io.check_writable(self.point, "A trace write")  # refused before waiting for a value
        reading = self._reading if self._reading is not None else _hook_io.read(self._io)
        self._reading = None  # the write goes back into the value read, once
        if self._reads is not None:  # an assignment honours any in-place edit of the value read
            self._reads[:] = [r for r in self._reads if r[1] is not reading.act]
        _hook_io.write(self._io, reading, new, "A trace write")

    value = output
