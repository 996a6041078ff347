"""``hooked-mllm explore``: its options and what it runs (the parser imports no torch).

Example::

    hooked-mllm explore                        # the toy LLaVA at http://127.0.0.1:8765/
    hooked-mllm explore --model toy:toy-llava-deep --port 0
"""

from __future__ import annotations

import argparse
from typing import Any


def port_number(text: str) -> int:
    """A TCP port from the command line (0: any free port), refused at parse time otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {port}")
    return port


def _cmd_explore(args: argparse.Namespace) -> int:
    from .._cli_common import load_model
    from .server import run

    def announce(url: str) -> None:
        print(f"Explorer at {url} (Ctrl-C stops it)", flush=True)

    model = load_model(args.model)
    run(model, host=args.host, port=args.port, allow_remote=args.allow_remote, on_start=announce)
    return 0


def add_subparser(sub: Any) -> argparse.ArgumentParser:
    """Add ``explore`` to the CLI's sub-commands."""
    parser = sub.add_parser(
        "explore",
        help="a local web page: ask about an image, click through layers, heads and image cells",
    )
    parser.add_argument(
        "--model",
        default="toy:toy-llava",
        help="toy:<name> (a shipped toy checkpoint), tiny:llava, a checkpoint folder or a hub id",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback only by default)")
    parser.add_argument("--port", type=port_number, default=8765, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a non-loopback address: anyone who reaches it can run the model",
    )
    parser.set_defaults(func=_cmd_explore)
    return parser
