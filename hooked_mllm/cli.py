"""The ``hooked-mllm`` command line: ``demo``, ``hooks``, ``explore``, concepts and the toy's commands.

Each subcommand has ``--help`` (defaults shown). Building the parser imports neither torch nor
transformers, so ``--help`` is instant; each command imports what it needs when it runs. A user
error (a bad option value, a missing file, an unknown hook name) prints one line and exits 2;
``--debug`` shows the traceback instead. The CLI prints (library modules log instead).

Example::

    hooked-mllm hooks --model toy:toy-llava
    hooked-mllm demo --out reports/demo
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(out=args.out, seed=args.seed, model_name=args.model)
    print(f"Report written to {report}")
    return 0


def _cmd_hooks(args: argparse.Namespace) -> int:
    from .reference import hook_reference_markdown

    model = load_model(args.model, device="cpu" if args.model.startswith(("toy:", "tiny:")) else None)
    if args.markdown:
        sys.stdout.write(hook_reference_markdown(model))
    else:
        sys.stdout.write("\n".join(model.hook_names()) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hooked-mllm`` (cheap: imports no model code)."""
    parser = Parser(prog="hooked-mllm", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the main job on the embedded toy model and write a report",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--out", default="reports/demo", help="directory for the HTML report")
    demo.add_argument(
        "--seed", type=int, default=0, help="world seed of the scenes shown (below 10000: unseen)"
    )
    demo.add_argument("--model", default=None, help="toy checkpoint name (default: toy-llava-deep)")
    demo.set_defaults(func=_cmd_demo)
    hooks = sub.add_parser("hooks", help="list a model's hook points", formatter_class=HelpFormatter)
    hooks.add_argument(
        "--model",
        default="tiny:llava",
        help="toy:<name> (a shipped toy checkpoint), tiny:llava (a tiny random LLaVA), "
        "a checkpoint folder or a hub id",
    )
    hooks.add_argument(
        "--markdown", action="store_true", help="print the reference table (docs/hook_points.md)"
    )
    hooks.set_defaults(func=_cmd_hooks)
    from .concepts.cli import add_subparsers as add_concepts
    from .explore.cli import add_subparser as add_explore
    from .sae.cli import add_subparsers as add_sae
    from .toy.cli import add_subparsers as add_toy

    add_concepts(sub)
    add_explore(sub)
    add_sae(sub)
    add_toy(
        sub.add_parser(
            "toy",
            help="the toy world's model: train, evaluate or read out a checkpoint",
            formatter_class=HelpFormatter,
        )
    )
    for action in sub.choices.values():
        _show_defaults(action)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    for action in parser._actions:  # nested sub-commands (``toy train``) get the same formatter
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is one a user causes (shown as one line): :data:`USER_ERRORS`, a busy feature
    store, an unreadable safetensors file."""
    if isinstance(error, USER_ERRORS):
        return True
    store = sys.modules.get("hooked_mllm.concepts._store")
    if store is not None and isinstance(error, store.StoreBusyError):
        return True
    return type(error).__name__ == "SafetensorError"


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its lines joined), or its type's name when it has none."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hooked-mllm`` script.

    A leading ``--`` is dropped: ``torchrun ... -m hooked_mllm.cli -- extract --n 8 ...`` keeps
    torchrun from reading our options as abbreviations of its own (``--n``, ``--start``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        if args.debug or not is_user_error(error):
            raise
        message = one_line(error)
        print(f"hooked-mllm {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
