"""The ``hooked-mllm`` command line: ``demo``, ``hooks`` and the toy world's commands.

Each subcommand has ``--help``. The CLI prints (library modules log instead).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(out=args.out, seed=args.seed, model_name=args.model)
    print(f"Report written to {report}")
    return 0


def _cmd_hooks(args: argparse.Namespace) -> int:
    from .model import HookedMLLM
    from .reference import hook_reference_markdown
    from .testing import tiny_llava, tiny_processor

    model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
    if args.markdown:
        sys.stdout.write(hook_reference_markdown(model))
    else:
        sys.stdout.write("\n".join(model.hook_names()) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hooked-mllm``."""
    parser = argparse.ArgumentParser(prog="hooked-mllm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the embedded toy model and write a report")
    demo.add_argument("--out", default="reports/demo", help="directory for the HTML report")
    demo.add_argument("--seed", type=int, default=0, help="seed of the scenes drawn")
    demo.add_argument("--model", default=None, help="toy checkpoint name (default: toy-llava if shipped)")
    demo.set_defaults(func=_cmd_demo)
    hooks = sub.add_parser("hooks", help="list the hook points of the LLaVA adapter")
    hooks.add_argument("--markdown", action="store_true", help="print the reference table (docs/hook_points.md)")
    hooks.set_defaults(func=_cmd_hooks)
    from .concepts.cli import add_subparsers as add_concepts

    add_concepts(sub)
    try:
        from .toy.cli import add_subparsers as add_toy
    except ImportError:
        add_toy = None
    if add_toy is not None:
        add_toy(sub.add_parser("toy", help="the toy world's model: train or evaluate a checkpoint"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hooked-mllm`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
