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
  :class:`hooked_mllm._runtime.invokes.MLLMEnvoy` (nnsight's own model classes override them the
  same way). An overridden hook nnsight no longer calls would silently stop batching.

The same upgrades are met on purpose at run time: :data:`TESTED` names the releases of
transformers and nnsight the suite passed with (the lock file, ``requirements/lock.txt``, pins one
of them; ``tests/test_compat.py`` holds the two together), and :func:`check_tested_versions`
warns once, when a model is wrapped, if the installed release lies outside them.

Contents: :data:`PRIVATE_NAMES`, :func:`eager_attention`, :func:`wrapped_module`, :data:`TESTED`,
:class:`UntestedVersionWarning`, :func:`check_tested_versions`.

Examples:
    >>> with eager_attention([model.hf_model.config]):   # doctest: +SKIP
    ...     model.hf_model(**inputs, output_attentions=True)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
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


# The (major, minor) releases each upstream passed the whole suite with, oldest and newest; a patch
# release of a tested minor counts as tested. `make test-latest` meets a newer release on purpose.
TESTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "transformers": ((5, 24), (5, 25)),
    "nnsight": ((0, 8), (0, 8)),
}


class UntestedVersionWarning(UserWarning):
    """A dependency's installed release lies outside the ones hooked_mllm was tested with."""


def _minor(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a release string such as ``"5.25.0"`` or ``"5.26.0.dev0"``."""
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


# the first check's result in this process (a list, not functools.cache: the run path's code travels to
# nnsight's remote servers by value, and a cache wrapper would travel by reference to this package)
_CHECKED: list[tuple[str, ...]] = []


def check_tested_versions(recheck: bool = False) -> tuple[str, ...]:
    """Warn (once per process) for each dependency installed at an untested release.

    Called when a model is wrapped, not at import. The warning names the tested range and the
    installed release; results may still be right, but nothing has checked them.

    Args:
        recheck: Look at the installed releases again (and warn again) instead of returning the
            first check's result.

    Returns:
        The packages warned about (empty when every release is a tested one).

    Examples:
        >>> check_tested_versions()   # doctest: +SKIP
        ()
    """
    if _CHECKED and not recheck:
        return _CHECKED[0]
    untested = []
    for package, (oldest, newest) in TESTED.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not oldest <= _minor(installed) <= newest:
            tested = ".".join(map(str, oldest)) + " to " + ".".join(map(str, newest))
            warnings.warn(
                f"hooked_mllm was tested with {package} {tested}, and {installed} is installed: nothing has "
                f"checked this release yet. Install a tested one (pip install -c requirements/lock.txt ...) "
                f"or run `make test-latest` to check it.",
                UntestedVersionWarning,
                stacklevel=3,
            )
            untested.append(package)
    _CHECKED[:] = [tuple(untested)]
    return _CHECKED[0]
