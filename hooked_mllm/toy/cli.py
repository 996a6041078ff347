"""Command line for the toy model: ``hooked-mllm toy train`` and ``hooked-mllm toy eval``.

Purpose:
    Rebuild and score the shipped toy checkpoints from a shell. The package CLI (``hooked_mllm.cli``) mounts
    this with :func:`add_subparsers`; :func:`cli_train` / :func:`cli_eval` / :func:`main` run it stand-alone.

Contents:
    :func:`add_subparsers`, :func:`cli_train`, :func:`cli_eval`, :func:`main`.

Examples::

    hooked-mllm toy train --name toy-llava --seed 0 --out /tmp/toy-llava
    hooked-mllm toy eval --name toy-llava --seed 123 --n 1000
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from hooked_mllm.toy.names import CHECKPOINTS, STAGE_NAMES, VIDEO_NAMES

__all__ = ["add_subparsers", "cli_eval", "cli_train", "main"]


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from hooked_mllm.toy.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v is not None}
    args.out = args.out or str(Path("toy-checkpoints") / args.name)
    if args.name in VIDEO_NAMES:
        from hooked_mllm.toy.video_model import train_video

        steps = {"steps": args.steps} if args.steps is not None else {}
        result = train_video(args.out, seed=args.seed, deep=args.init_dir, **steps, **overrides)
        loss = result.final_loss
        print(f"saved {args.name} to {result.out} in {result.seconds:.0f} s (final loss {loss:.4f})")
        return 0
    if args.name in STAGE_NAMES:
        from hooked_mllm.toy.recipe import train_stage

        result = train_stage(
            args.name, seed=args.seed, out=args.out, steps=args.steps, init_dir=args.init_dir, **overrides
        )
        print(
            f"saved {args.name} to {result.out} in {result.seconds:.0f} s (final loss "
            f"{result.final_loss:.4f})"
        )
        return 0
    result = train(
        args.name, seed=args.seed, out=args.out, steps=args.steps, init_dir=args.init_dir, **overrides
    )
    print(f"saved {args.name} to {result.out} in {result.seconds:.0f} s (final loss {result.final_loss:.4f})")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from hooked_mllm.toy.evaluation import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    from hooked_mllm.toy.model import checkpoint_kind

    target = args.path or args.name
    if checkpoint_kind(target) == "video":
        from hooked_mllm.toy.video_eval import evaluate_video

        video = evaluate_video(target, seed=args.seed, n=args.n)
        print(video.format())
        for qtype, question, expected, got in video.errors[: args.show_errors]:
            print(f"  wrong [{qtype}] {question!r}: expected {expected!r}, got {got!r}")
        return 0
    if checkpoint_kind(target) == "text":
        from hooked_mllm.toy.evaluation import evaluate_text

        report = evaluate_text(target, seed=args.seed, n=args.n)
    else:
        report = evaluate(target, seed=args.seed, n=args.n, caption_style=args.caption_style)
    print(report.format())
    for qtype, question, expected, got in report.errors[: args.show_errors]:
        print(f"  wrong [{qtype}] {question!r}: expected {expected!r}, got {got!r}")
    return 0


def _run_science(args: argparse.Namespace) -> int:
    import torch

    from hooked_mllm.toy.model import CHECKPOINTS, checkpoint_dir
    from hooked_mllm.toy.science import science_report

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.path:
        checkpoints = {p: p for p in args.path}
    else:
        recipe_made = [n for n in CHECKPOINTS if n not in ("toy-llava", "toy-llava-ft", *VIDEO_NAMES)]
        names = args.name or recipe_made or list(CHECKPOINTS)
        checkpoints = {n: str(checkpoint_dir(n)) for n in names}
    sections = tuple(args.section) if args.section else None
    print(science_report(checkpoints, seed=args.seed, n=args.n, sections=sections))
    return 0


def add_subparsers(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``train``, ``eval`` and ``science`` sub-commands to ``parser`` (e.g. the ``toy`` parser of the
    package CLI).

    Each sub-command stores its handler in ``args.func``; call ``args.func(args)``.
    """
    from hooked_mllm._cli_common import count, index, positive

    sub = parser.add_subparsers(dest="toy_command", required=True, metavar="COMMAND")
    tr = sub.add_parser("train", help="train a toy checkpoint from scratch (or fine-tune, for toy-llava-ft)")
    tr.add_argument(
        "--name",
        choices=tuple(dict.fromkeys(CHECKPOINTS + STAGE_NAMES + VIDEO_NAMES)),
        default="toy-llava",
        help=f"checkpoint to train; the LLaVA-recipe stages run in the order {', '.join(STAGE_NAMES)}; "
        "toy-video starts from toy-llava-deep (--init-dir: its folder)",
    )
    tr.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of the data order")
    tr.add_argument(
        "--out",
        default=None,
        help="output directory (default: toy-checkpoints/NAME in the current "
        "directory; the checkpoints shipped inside the package are never overwritten unless named)",
    )
    tr.add_argument("--steps", type=count, default=None, help="override the recipe's number of steps")
    tr.add_argument("--lr", type=positive, default=None, help="override the recipe's peak learning rate")
    tr.add_argument("--batch-size", type=count, default=None, help="override the recipe's batch size")
    tr.add_argument("--init-dir", default=None, help="checkpoint to start from (fine-tunes, recipe stages)")
    tr.add_argument("--threads", type=count, default=None, help="torch threads (default: torch's choice)")
    tr.set_defaults(func=_run_train)
    ev = sub.add_parser("eval", help="score a toy checkpoint on fresh scenes with greedy generation")
    ev.add_argument("--name", choices=CHECKPOINTS, default="toy-llava", help="shipped checkpoint to score")
    ev.add_argument("--path", default=None, help="checkpoint directory (overrides --name)")
    ev.add_argument("--seed", type=int, default=123, help="world seed of the scenes (< 10000: unseen)")
    ev.add_argument("--n", type=count, default=1000, help="number of scenes")
    ev.add_argument(
        "--caption-style",
        choices=("plain", "colored"),
        default=None,
        help="expected captions (default: the checkpoint's own style)",
    )
    ev.add_argument("--show-errors", type=index, default=5, help="how many wrong answers to print")
    ev.add_argument("--threads", type=count, default=None, help="torch threads (default: torch's choice)")
    ev.set_defaults(func=_run_eval)
    sc = sub.add_parser("science", help="quality, textual QA and lens read-outs of image tokens")
    sc.add_argument(
        "--name",
        action="append",
        choices=[n for n in CHECKPOINTS if n not in VIDEO_NAMES],
        help="checkpoint (repeatable)",
    )
    sc.add_argument("--path", action="append", help="checkpoint directory (repeatable; overrides --name)")
    sc.add_argument("--seed", type=int, default=123, help="world seed of the scenes (< 10000: unseen)")
    sc.add_argument("--n", type=count, default=200, help="number of scenes")
    sc.add_argument("--section", action="append", help="only these report sections (repeatable)")
    sc.add_argument("--threads", type=count, default=None, help="torch threads (default: torch's choice)")
    sc.set_defaults(func=_run_science)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m hooked_mllm.toy.cli train|eval ...``."""
    from hooked_mllm._cli_common import Parser

    top = Parser(prog="hooked-mllm toy", description=(__doc__ or "").split("\n")[0])
    parser = add_subparsers(top)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


def cli_train(argv: Sequence[str] | None = None) -> int:
    """``hooked-mllm toy train`` with ``argv`` the arguments after ``train``."""
    return main(["train", *(argv or [])])


def cli_eval(argv: Sequence[str] | None = None) -> int:
    """``hooked-mllm toy eval`` with ``argv`` the arguments after ``eval``."""
    return main(["eval", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
