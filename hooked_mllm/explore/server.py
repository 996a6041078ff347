"""The explorer's web server: a page and a small JSON API on the loopback address, with the standard library.

Purpose:
    ``hooked-mllm explore`` serves one page (:mod:`._page`) and answers its requests with the
    numbers :class:`~.analysis.Explorer` computes. Nothing is fetched from elsewhere: the page's
    script and style are inline, images are ``data:`` URIs, the circuitsvis view carries its own
    bundle and is shown in a sandboxed ``iframe``. Bad input (not an image, an empty question, an
    image too large, a body too long) is answered ``400`` with one line the page shows.

Routes:
    ``GET /`` the page; ``GET /api/scene?seed=&index=`` a toy scene (image and its questions);
    ``POST /api/ask`` (JSON ``{"question", "image"}``: a ``data:`` URI, or ``"scene": [seed, index]``);
    ``GET /api/head?id=&layer=&head=``; ``GET /api/cell?id=&layer=&row=&col=``;
    ``GET /api/patch?id=&corruption=&layer=``.

Examples:
    >>> server = serve(Explorer(toy.load("toy-llava")), port=0)       # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
    >>> server.url                                                     # doctest: +SKIP
    'http://127.0.0.1:41235/'
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from PIL import Image, UnidentifiedImageError

from ._page import PAGE
from .analysis import Explorer

logger = logging.getLogger(__name__)

#: Longest request body accepted (bytes): an image as a data URI plus the question.
MAX_BODY = 24 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def decode_image(data_uri: Any) -> Image.Image:
    """A PIL image from a ``data:image/...;base64,`` URI, or a ValueError saying what was wrong."""
    if not isinstance(data_uri, str) or not data_uri.startswith("data:") or ";base64," not in data_uri:
        raise ValueError("Choose a scene or upload an image file (PNG, JPEG, ...).")
    try:
        raw = base64.b64decode(data_uri.split(";base64,", 1)[1], validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"That file is not an image this explorer can read ({type(error).__name__})."
        ) from None
    return image


def _int(query: dict[str, list[str]], name: str, default: int | None = None) -> int:
    values = query.get(name)
    if not values:
        if default is None:
            raise ValueError(f"Missing parameter {name!r}.")
        return default
    try:
        return int(values[0])
    except ValueError:
        raise ValueError(f"Parameter {name!r} must be a whole number, not {values[0]!r}.") from None


def _scene(seed: int, index: int) -> Any:
    from .. import toy

    if not (0 <= index < 100_000 and 0 <= seed < 2**31):
        raise ValueError(f"No scene {index} of world {seed}: use a seed and an index from 0.")
    return toy.World(seed=seed).scene(index)


class Handler(BaseHTTPRequestHandler):
    """Routes a request to the explorer; every answer is JSON except the page itself."""

    explorer: Explorer
    server_version = "hooked-mllm-explore"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        logger.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _answer(self, compute: Any) -> None:
        try:
            self._json(compute())
        except (ValueError, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            self._json({"error": str(message)}, HTTPStatus.BAD_REQUEST)
        except Exception as error:  # the page shows one line; the log keeps the traceback
            logger.exception("explorer request failed")
            self._json(
                {"error": f"The model failed: {type(error).__name__}: {error}"},
                HTTPStatus.INTERNAL_SERVER_ERROR,
            )

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        query = parse_qs(url.query)
        explorer = self.explorer
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/api/scene":

            def scene() -> dict[str, Any]:
                from ..viz._html import png_data_uri

                found = _scene(_int(query, "seed", 7), _int(query, "index", 0))
                questions = [{"question": q.question, "answer": q.answer} for q in found.questions]
                return {"image": png_data_uri(found.image), "questions": questions}

            self._answer(scene)
        elif url.path == "/api/head":
            self._answer(
                lambda: explorer.head(query.get("id", [""])[0], _int(query, "layer"), _int(query, "head"))
            )
        elif url.path == "/api/cell":
            self._answer(
                lambda: explorer.cell(
                    query.get("id", [""])[0], _int(query, "layer"), _int(query, "row"), _int(query, "col")
                )
            )
        elif url.path == "/api/patch":
            self._answer(
                lambda: explorer.patching(
                    query.get("id", [""])[0], query.get("corruption", ["noise"])[0], _int(query, "layer", 0)
                )
            )
        else:
            self._json({"error": f"No page {url.path!r}."}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if urlparse(self.path).path != "/api/ask":
            self._json({"error": f"No page {self.path!r}."}, HTTPStatus.NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(
                {"error": f"The upload is {length:,} bytes; at most {MAX_BODY:,} are taken."},
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
            return

        def ask() -> dict[str, Any]:
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                raise ValueError("The request is not JSON.") from None
            if not isinstance(body, dict):
                raise ValueError("The request must be a JSON object.")
            if body.get("scene") is not None:
                seed, index = body["scene"]
                image = _scene(int(seed), int(index)).image
            else:
                image = decode_image(body.get("image"))
            return self.explorer.ask(image, body.get("question", ""))

        self._answer(ask)


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its URL (``server.url``)."""

    daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}/"


def serve(
    explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False
) -> ExplorerServer:
    """A server for ``explorer`` bound to ``host:port`` (``port=0``: any free port); not started.

    Args:
        explorer: What answers the page.
        host: The address to listen on; only loopback unless ``allow_remote`` (the page runs the model
            for whoever reaches it).
        port: The port, 0 for any free one.

    Raises:
        ValueError: ``host`` is not a loopback address and ``allow_remote`` is False.
    """
    if host not in LOOPBACK and not allow_remote:
        raise ValueError(
            f"The explorer listens on the loopback address only (127.0.0.1); {host!r} would let others on "
            "the network run the model. Pass --allow-remote to do it anyway."
        )
    handler = type("BoundHandler", (Handler,), {"explorer": explorer})
    return ExplorerServer((host, port), handler)


def run(
    model: Any,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_remote: bool = False,
    on_start: Callable[[str], Any] | None = None,
) -> None:
    """Serve the explorer for ``model`` until interrupted (Ctrl-C).

    Args:
        model: A :class:`~hooked_mllm.HookedMLLM`.
        host: Listen address; loopback only unless ``allow_remote``.
        port: The port (0: any free one).
        on_start: Called with the page's URL once the server listens (default: logged).

    Examples:
        >>> run(toy.load("toy-llava"))                            # doctest: +SKIP
    """
    server = serve(Explorer(model), host=host, port=port, allow_remote=allow_remote)
    (on_start or (lambda url: logger.warning("explorer at %s (Ctrl-C stops it)", url)))(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
