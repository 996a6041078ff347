"""What the ``hooked-mllm`` subcommands share: the parser class, argument types, model loading.

Imported by :mod:`hooked_mllm.cli` and by each package's own ``cli`` module (concepts, explore, SAE,
toy), which :mod:`hooked_mllm.cli` gathers; keeping these here keeps those imports one way.
Importing it loads neither torch nor transformers.

Examples:
    >>> count("3")
    3
"""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

#: Exceptions that mean the user asked for something that cannot be done (a bad value, a missing file or
#: checkpoint, a missing optional package): shown as one line.
USER_ERRORS = (ValueError, KeyError, OSError, ImportError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (when it has one) after its help text."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), naming ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, test: Any, want: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not {want}")
        return value

    return parse


#: Argument types refused at parse time: a count (an int >= 1), an index (an int >= 0), a finite float,
#: a positive finite float.
count = _number(int, lambda v: v >= 1, "a whole number >= 1")
index = _number(int, lambda v: v >= 0, "a whole number >= 0")
finite = _number(float, math.isfinite, "a finite number")
positive = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def load_model(spec: str, dtype: str | None = None, device: str | None = None) -> Any:
    """A :class:`~hooked_mllm.HookedMLLM` from a CLI model spec.

    ``toy:<name>`` is a shipped toy checkpoint, ``tiny:llava`` a tiny random LLaVA (from
    :mod:`hooked_mllm.testing`), anything else a local checkpoint path or a hub id.
    ``dtype``: ``float32``, ``float16``, ``bfloat16`` or ``auto``.
    """
    from .model import HookedMLLM

    if spec == "tiny:llava":
        from .testing import tiny_llava, tiny_processor

        model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
    elif spec.startswith("toy:"):
        from . import toy

        model = toy.load(spec[4:])
    else:
        check_device(device)
        return HookedMLLM.from_pretrained(spec, dtype=torch_dtype(dtype), device=device)
    check_device(device)
    if dtype not in (None, "auto") or device:
        model.hf_model.to(device=device, dtype=torch_dtype(dtype) if dtype not in (None, "auto") else None)
    return model


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that is not a torch device or is not present here (None passes).

    Raises:
        ValueError: Saying what was wrong and which devices exist here.

    Examples:
        >>> check_device("cuda:7")   # doctest: +SKIP
        ValueError: --device cuda:7: this machine has 1 CUDA device (cuda:0)
    """
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(
                f"--device {device}: no CUDA device here (torch {torch.__version__}); use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def torch_dtype(name: str | None) -> Any:
    """``"bfloat16"`` -> ``torch.bfloat16`` (None stays None); errors list the valid names."""
    if name is None:
        return None
    names = ("float32", "float16", "bfloat16", "auto")
    if name not in names:
        raise ValueError(f"Unknown dtype {name!r}; use one of {', '.join(names)}")
    import torch

    return "auto" if name == "auto" else getattr(torch, name)
