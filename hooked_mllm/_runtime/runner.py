"""Hook functions as nnsight interventions: the one mechanism behind every run.

Each hook point that has work to do (caching or user hook functions) becomes one
nnsight *edit* (``envoy.edit()``, nnsight's public API for interventions replayed on
every run) whose body reads the hook point's value, calls the functions in order, and
writes a replacement back, both through :mod:`hooked_mllm._runtime.hook_io` (the same reads,
writes and checks as ``model.hook_point(...).output`` in a trace). The edits are stored
on a copy of the wrapped model made for one run (or for one ``model.trace`` inside a
``model.hooks()`` block), so nnsight interleaves them with the forward pass, with
``generate`` and with a user's own ``model.trace`` alike, and the model's own envoy is
never changed. Nothing here registers a torch hook.

Contents: :class:`HookFn` (a bound hook), :func:`bodies` (one intervention per hook
point), :func:`edited` (a copy of the envoy carrying them), :func:`interleave` (one run),
:class:`RunGuard`, :func:`guarded_tracer`. What must stay private is in
:mod:`hooked_mllm._runtime.nnsight_private`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from nnsight import Envoy
from nnsight.intervention.tracer import InterleavingTracer

from ..hook_points import HookContext, HookPoint, HookPoints
from . import hook_io

NEVER_REACHED = r".*was never reached.*"


HookFunction = Callable[[torch.Tensor, HookContext], "torch.Tensor | None"]
Body = Callable[[Any], None]  # one intervention: body(tracer), run inside an nnsight worker


@dataclass(frozen=True)
class HookFn:
    """One hook function bound to one hook point (``by_filter``: chosen by a predicate, not by name)."""

    point: HookPoint
    fn: HookFunction
    by_filter: bool = False


def bind(points: HookPoints, specs: Iterable[Any], kind: str = "fwd_hooks") -> list[HookFn]:
    """``(name_or_filter, fn)`` pairs as one :class:`HookFn` per selected hook point, in the order given.

    Examples:
        >>> hooks = bind(model.hook_points, [("blocks.0.hook_resid_post", fn)])  # doctest: +SKIP
    """
    bound: list[HookFn] = []
    for spec in specs:
        if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
            raise TypeError(
                f"{kind} takes (name_or_filter, fn) pairs, e.g. [('blocks.0.hook_resid_post', fn)]"
            )
        target, fn = spec
        bound.extend(HookFn(point, fn, callable(target)) for point in points.select(target))
    return bound


def tower_calls(point: HookPoint, batch: Any) -> int:
    """How many times ``point``'s module runs in one forward of ``batch``.

    2 for a vision-tower or projector point on a batch holding both images and videos (HF's Qwen2-VL,
    Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision forwards run the tower on the images, then again on the
    videos), else 1.

    Examples:
        >>> tower_calls(model.hook_points.resolve("vision.hook_embed"), mixed_batch)  # doctest: +SKIP
        2
    """
    mixed = bool(getattr(batch, "images", None)) and bool(getattr(batch, "videos", None))
    return 2 if point.stream != "lm" and mixed else 1


def step_and_call(occurrence: int, calls: int) -> tuple[int, int]:
    """``(hook.step, hook.call)`` of a hook point's ``occurrence``-th run (nnsight's per-module count)
    when its module runs ``calls`` times per forward: the first ``calls`` runs are the prompt forward's
    calls (step 0), each later run one generation step (call 0).

    Examples:
        >>> step_and_call(1, 2), step_and_call(3, 1)
        ((0, 1), (3, 0))
    """
    if occurrence < calls:
        return 0, occurrence
    return occurrence - calls + 1, 0


def _body(
    nn: Envoy, point: HookPoint, fns: list[HookFunction], batch: Any, ctx: dict, every_step: bool
) -> Body:
    access: list[hook_io.Access] = []  # bound on first use, against the envoy that runs it

    def visit(occurrence: int, run_batch: Any, calls: int) -> None:
        if not access:
            access.append(hook_io.bind(nn, point))
        io = access[0]
        reading = hook_io.read(io)
        act = reading.act
        step, call = step_and_call(occurrence, calls)
        hook = HookContext(point.name, point, run_batch, step, ctx, call=call, calls=calls)
        original, version = act, act._version  # in-place edits bump the version counter
        changed = False
        for fn in fns:
            new = fn(act, hook)
            if new is None or new is act:  # an observation that hands its input back writes nothing
                continue
            hook_io.check(point, new, act, f"Hook function {getattr(fn, '__name__', fn)!r}")
            act, changed = new, True
        if original._version != version and not changed:
            if not point.writable:
                reason = hook_io.read_only_reason(point)
                raise ValueError(
                    f"{point.name} is read-only{reason}: a hook function edited it in place, "
                    "which would have no effect; read it without changing it."
                )
            if reading.base is not None or io.scale is not None:  # act was computed from the site: write back
                changed = True
        if changed:
            hook_io.write(io, reading, act, "A hook function")

    def body(tracer: Any) -> None:
        run_batch = batch() if callable(batch) else batch
        calls = tower_calls(point, run_batch)
        if every_step:
            for occurrence in tracer.iter[:]:
                visit(occurrence, run_batch, calls)
        elif calls == 1:
            visit(0, run_batch, calls)
        else:  # the tower runs once on the images, then on the videos: each call is one occurrence
            for occurrence in tracer.iter[0:calls]:
                visit(occurrence, run_batch, calls)

    return body


def bodies(
    nn: Envoy, hooks: list[HookFn], order: Callable[[str], int], batch: Any = None, every_step: bool = False
) -> list[Body]:
    """One intervention per hook point, its functions applied in the given order.

    Args:
        nn: The nnsight wrapper of the HF model.
        hooks: The bound hook functions; several on one point run in list order.
        order: Forward-order rank of a hook name (interventions are sorted by it).
        batch: The batch being run (or a callable returning it at run time).
        every_step: Fire at every occurrence (generation) rather than once per module call of the
            prompt forward (:func:`tower_calls`: twice for tower points on a batch mixing images and videos).

    Returns:
        Callables ``body(tracer)`` to run inside an nnsight worker (an edit or an invoke).
    """
    grouped: dict[str, tuple[HookPoint, list[HookFunction]]] = {}
    for hook in hooks:
        grouped.setdefault(hook.point.name, (hook.point, []))[1].append(hook.fn)
    ctx: dict = {}
    return [_body(nn, *grouped[name], batch, ctx, every_step) for name in sorted(grouped, key=order)]


def edited(nn: Envoy, interventions: list[Body]) -> Envoy:
    """A copy of ``nn`` whose runs apply ``interventions`` (after ``nn``'s own edits).

    Uses nnsight's public ``edit()``: the first intervention is stored on a fresh copy
    (``inplace=False`` leaves ``nn`` untouched), the rest on that copy. With no
    interventions, ``nn`` itself.
    """
    if not interventions:
        return nn
    first, *rest = interventions
    with nn.edit() as (tracer, copy):
        first(tracer)
    for body in rest:
        with copy.edit(inplace=True) as tracer:
            body(tracer)
    return copy


def interleave(nn: Envoy, fn: Any, kwargs: dict) -> Any:
    """Run ``fn(**kwargs)`` on the wrapped model with its edits.

    It goes through nnsight's one-shot ``trace(trace=False)``.
    """
    with warnings.catch_warnings():
        # An open per-step loop ends when generation stops; nnsight reports that as a
        # warning by design. It is the expected end of every generation here.
        warnings.filterwarnings("ignore", message=NEVER_REACHED)
        return nn.trace(fn=fn, trace=False, **kwargs)


def grad_mode(grad: bool, what: str) -> Any:
    """``torch.set_grad_enabled(grad)`` for one run, refusing ``grad=True`` inside ``torch.inference_mode()``.

    Inference mode cannot be left from inside, so a run asked for gradients there would build no
    graph and hand back tensors without them.

    Raises:
        RuntimeError: ``grad`` inside ``torch.inference_mode()``.

    Examples:
        >>> with grad_mode(True, "run_with_cache"):
        ...     torch.is_grad_enabled()
        True
    """
    if grad and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what} was asked for gradients (grad=True, backward hooks or attribution) inside "
            "torch.inference_mode(), where autograd cannot be turned back on; call it outside the "
            "inference_mode block (torch.no_grad() is fine: the run turns gradients on itself)."
        )
    return torch.set_grad_enabled(grad)


class RunGuard:
    """One run at a time per HF model: a re-entrant call or a second thread gets a clear error.

    nnsight installs a run's interventions on the model's shared module tree, so two runs
    of one model cannot overlap, whichever wrapper starts them: :meth:`of` gives every
    ``HookedMLLM`` of one HF model the same guard. A run method called from inside one of the
    model's own hook functions (same thread, run in progress; through this wrapper or another
    wrapper of the same HF model), a call of the raw HF model from there, and a run or raw call
    started by another thread while one is in progress each raise a ``RuntimeError``; nothing
    waits or interleaves.
    """

    def __init__(self, module: torch.nn.Module | None = None) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._module = weakref.ref(module) if module is not None else None
        self._depth = 0  # calls of the HF model's forward in progress during a run

    @classmethod
    def of(cls, module: torch.nn.Module) -> RunGuard:
        """The guard shared by every wrapper of ``module`` (kept on the module, outside its state dict)."""
        guard = module.__dict__.setdefault(_ATTRIBUTE, cls(module))  # atomic: one guard per module
        if not isinstance(guard, RunGuard) or guard._module is None or guard._module() is not module:
            guard = cls(module)  # a copy of another model carried that model's guard
            module.__dict__[_ATTRIBUTE] = guard
        return guard

    def __reduce__(self) -> tuple:
        return (RunGuard, ())  # a copied or pickled model gets a fresh guard (no lock travels)

    def __deepcopy__(self, memo: dict) -> RunGuard:
        return RunGuard()

    def _nested(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{what} was called while this model is running, from inside one of its own hook "
            "functions (or a trace body). Runs of one model cannot nest, through this HookedMLLM, another "
            "HookedMLLM of the same HF model, or the HF model itself: compute what the hook needs beforehand "
            "(e.g. with run_with_cache) and read it in the hook, or load a second copy of the model."
        )

    def _other_thread(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{what}: another thread is running this model. A HookedMLLM runs one forward at a time (its "
            "hooks live on the shared module tree, shared by every HookedMLLM of one HF model); give each "
            "thread its own copy of the model, or serialise the calls with a lock."
        )

    def _enter_forward(self, *_: Any) -> None:
        if self._depth:
            what = "The HF model's forward"
            raise self._nested(what) if self._owner == threading.get_ident() else self._other_thread(what)
        self._depth += 1

    def _exit_forward(self, *_: Any) -> None:
        self._depth = max(0, self._depth - 1)

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            if self._owner == threading.get_ident():
                raise self._nested(what)
            raise self._other_thread(what)
        self._owner = threading.get_ident()
        module = self._module() if self._module is not None else None
        handles = []
        if module is not None:  # a second call of the raw model while it runs is refused, not interleaved
            handles = [
                module.register_forward_pre_hook(self._enter_forward),
                module.register_forward_hook(self._exit_forward, always_call=True),
            ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._depth = 0
            self._owner = None
            self._lock.release()


_ATTRIBUTE = "_hooked_mllm_run_guard"


def guarded_tracer(guard: RunGuard, quiet: bool = False, after: Callable[[], None] | None = None) -> type:
    """nnsight's tracer class (the quiet one if ``quiet``) whose run holds ``guard``.

    ``after`` runs once the traced forward has finished without an error (checks of what
    the trace body did, e.g. in-place edits that could not take effect).
    """
    base = QuietTracer if quiet else InterleavingTracer

    class GuardedTracer(base):  # type: ignore[valid-type, misc]
        def __exit__(self, *exc: Any) -> bool:
            with guard("model.trace"):
                result = super().__exit__(*exc)
            if after is not None:  # reached only when the traced run raised nothing
                after()
            return result

    return GuardedTracer


class QuietTracer(InterleavingTracer):
    """nnsight's tracer, minus the expected end-of-loop warning of ``model.hooks()`` edits."""

    def __exit__(self, *exc: Any) -> bool:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NEVER_REACHED)
            return super().__exit__(*exc)
