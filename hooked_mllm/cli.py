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
import sys
from collections.abc import Sequence

from ._cli_common import (
    USER_ERRORS,
    HelpFormatter,
    Parser,
    check_device,
    count,
    finite,
    index,
    load_model,
    positive,
    torch_dtype,
)

__all__ = [
    "USER_ERRORS",
    "HelpFormatter",
    "Parser",
    "build_parser",
    "check_device",
    "count",
    "finite",
    "index",
    "load_model",
    "main",
    "positive",
    "torch_dtype",
]


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
