"""The private names of nnsight and transformers that hooked_mllm relies on, in one place.

Everything else goes through public API: nnsight's ``Envoy.edit`` / ``trace`` (with
``trace=False`` for a one-shot run, ``tracer_cls`` for our tracer), ``tracer.iter``,
``Envoy.get`` and the module fallthrough. What has no public counterpart is here, and
``tests/test_compat.py`` asserts each name exists, so an nnsight or transformers upgrade
that removes one fails there, loudly, rather than somewhere in a run:

* ``PretrainedConfig._attn_implementation`` (transformers): switching the text or vision
  sub-config of one stream to eager attention for one run (attention patterns exist
  only in eager attention). ``PreTrainedModel.set_attn_implementation`` works on whole
  models and validates kernels on every call, and models whose remote code does not
  follow HF's AttentionInterface refuse it.
* ``Envoy._module`` (nnsight): the module an nnsight model wrapper built (on the meta
  device, for remote execution); nnsight offers no public accessor.
* ``Envoy._batch_size`` and ``Envoy._batch`` (nnsight): the hooks through which an envoy
  sizes one ``tracer.invoke(...)`` input and batches several into one forward; overridden by
  :class:`hooked_mllm._tracing.MLLMEnvoy` (nnsight's own model classes override them the
  same way). An overridden hook nnsight no longer calls would silently stop batching.

Contents: :data:`PRIVATE_NAMES`, :func:`eager_attention`, :func:`wrapped_module`.

Examples:
    >>> with eager_attention([model.hf_model.config]):   # doctest: +SKIP
    ...     model.hf_model(**inputs, output_attentions=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# (owner, attribute) pairs this module relies on; tests/test_compat.py checks each.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("transformers.PretrainedConfig", "_attn_implementation"),
    ("nnsight.Envoy", "_module"),
    ("nnsight.Envoy", "_batch_size"),
    ("nnsight.Envoy", "_batch"),
)


@contextlib.contextmanager
def eager_attention(configs: list[Any]) -> Iterator[None]:
    """Switch the given (sub-)configs to eager attention for the block, then restore."""
    saved = [(config, config._attn_implementation) for config in configs]
    try:
        for config, _ in saved:
            config._attn_implementation = "eager"
        yield
    finally:
        for config, impl in saved:
            config._attn_implementation = impl


def wrapped_module(envoy: Any) -> torch.nn.Module:
    """The ``torch.nn.Module`` an nnsight envoy (or model wrapper) wraps."""
    return envoy._module
