"""The run machinery behind every :class:`~hooked_mllm.HookedMLLM` run, in the order a run meets it.

1. ``loading``: a HF model and its processor for ``from_pretrained`` (a tensor-parallel request is
   refused before anything loads).
2. ``keywords``: which keywords a run method takes besides its own (the HF inputs and options).
3. ``plan``: what a run may do: the hook points a batch reaches (text-only runs skip the vision
   tower), the attention configs switched to eager where patterns are read, the pad id of invokes.
4. ``backend``: where runs go, chosen once when the model is built (here, or remote). ``runner``:
   hook functions as nnsight edits on a copy of the envoy, one intervention per hook
   point, interleaved with the forward pass or ``generate``; ``hook_io`` reads a hook point's value
   and writes a replacement back (the one place, also behind ``model.hook_point(...).output``).
5. ``caching`` (the caching run and the hook functions that fill an ``ActivationCache``) and
   ``backward`` (backward hooks as tensor hooks on the run's graph).
6. ``invokes``: several ``tracer.invoke(...)`` inputs batched into one forward, traced generation,
   eager attention in a trace that reads patterns.
7. ``remote`` / ``remote_host``: the same runs shipped through nnsight's remote backend, and what a
   remote model trusts about its server.
8. ``offload``: weights read as real tensors when accelerate has offloaded them;
   ``nnsight_private``: the private nnsight and transformers names relied on, checked by a test.

What may import what: modules here import each other, :mod:`hooked_mllm.hook_points`,
:mod:`hooked_mllm.hook_kinds` and :mod:`hooked_mllm.tl_names` (hook points
and their names), :mod:`hooked_mllm.inputs` / :mod:`hooked_mllm.batch` (batches) and
:mod:`hooked_mllm.architectures` (adapters), and nothing else of ``hooked_mllm``: the model, caches
and analyses sit above (``tests/test_layout.py`` holds this rule).
"""
