"""What a remote model trusts about its server: the host's scheme, how long it waits, what it unpickles.

Purpose:
    nnsight's remote backend connects to any ``http://`` host, waits for the server forever, and
    loads the server's answer with ``torch.load(weights_only=False)``, so a hostile or compromised
    server can run code on the client. A remote :class:`~hooked_mllm.HookedMLLM` goes through
    :func:`guarded_backend` instead: plain ``http://`` is refused unless the user opts in
    (``Remote(host, allow_http=True)``), connecting and every wait for the server are bounded
    (``connect_timeout`` / ``receive_timeout``, a ``TimeoutError`` naming the host), and answers are
    unpickled by :func:`load_result`, which builds only tensors, plain containers and transformers'
    output and cache classes, refusing any other global before it is called.

Connections:
    :func:`hooked_mllm._runtime.remote.load` builds the nnsight model as :func:`guarded_model_class`, whose
    backend is a :func:`guarded_backend`; ``HookedMLLM.from_pretrained(remote=...)`` checks the host
    with :meth:`Remote.of`. ``remote="local"`` (the in-process simulation) is unchanged.

Contents:
    :class:`Remote`, :func:`load_result`, :func:`guarded_backend`, :func:`guarded_model_class`.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Any

#: Builtins and containers a result may hold (torch's own weights-only list adds tensors and dtypes).
_PLAIN = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch", "device"),
}


@dataclass(frozen=True)
class Remote:
    """A remote host and how far to trust it: ``HookedMLLM.from_pretrained(..., remote=Remote(...))``.

    ``remote=True`` and ``remote="https://..."`` mean ``Remote(None)`` and ``Remote("https://...")``
    with these defaults.

    Args:
        host: The server's URL (``https://...``), or None for NDIF (nnsight's ``CONFIG.API.HOST``).
        allow_http: Accept a plain ``http://`` host (requests, API key and results travel
            unencrypted; use only on a network you trust).
        connect_timeout: Seconds to wait to connect to the host.
        receive_timeout: Seconds to wait for each message from the host (a status update, a
            response, a chunk of the result); None waits forever.
        trust_server: Unpickle the server's results with nnsight's unrestricted ``torch.load``
            (which runs whatever code the payload names); by default only tensors, containers
            and transformers' outputs are loaded.

    Examples:
        >>> model = HookedMLLM.from_pretrained(                               # doctest: +SKIP
        ...     "llava-hf/llava-1.5-7b-hf", remote=Remote("http://10.0.0.5:8000", allow_http=True))
    """

    host: str | None = None
    allow_http: bool = False
    connect_timeout: float = 10.0
    receive_timeout: float | None = 600.0
    trust_server: bool = False

    @classmethod
    def of(cls, remote: Any) -> Remote:
        """``remote`` (``True``, a host URL or a :class:`Remote`) as a checked :class:`Remote`.

        Raises:
            ValueError: The host is not an ``https://`` URL (``http://`` needs ``allow_http=True``),
                or a timeout is not a positive number.
        """
        settings = remote if isinstance(remote, Remote) else cls(None if remote is True else remote)
        settings.check()
        return settings

    def url(self) -> str:
        """The host's URL (NDIF's configured host when ``host`` is None)."""
        if self.host is not None:
            return self.host.rstrip("/")
        from nnsight import CONFIG

        return str(CONFIG.API.HOST).rstrip("/")

    def check(self) -> None:
        """Refuse a host that is not ``https://`` (unless ``allow_http``) and timeouts that are not > 0."""
        host = self.url()
        if not isinstance(host, str) or not host.startswith(("https://", "http://")):
            raise ValueError(f"remote host {host!r} is not a URL; give one starting with https://")
        if host.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"remote host {host} is plain http://: requests, your API key and results would travel "
                "unencrypted. Use https://, or opt in with remote=hooked_mllm.Remote(host, allow_http=True) "
                "on a network you trust (see docs/security.md)."
            )
        for name in ("connect_timeout", "receive_timeout"):
            value = getattr(self, name)
            if value is None and name == "receive_timeout":
                continue
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Remote({name}={value!r}): give a number of seconds > 0")


class _Refused(pickle.UnpicklingError):
    pass


def _allowed(module: str, name: str) -> Any:
    """The global ``module.name`` if a server's result may hold it, else None (nothing is imported)."""
    import importlib

    from torch._weights_only_unpickler import _get_allowed_globals

    torch_allowed = _get_allowed_globals()  # what torch.load(weights_only=True) builds: tensors, dtypes
    if f"{module}.{name}" in torch_allowed:
        return torch_allowed[f"{module}.{name}"]
    if (module, name) in _PLAIN:
        return getattr(importlib.import_module(module), name, None)
    if not module.startswith("transformers.") or module not in sys.modules:
        return None
    found = getattr(sys.modules[module], name, None)
    from transformers.cache_utils import Cache
    from transformers.utils import ModelOutput

    bases: tuple[type, ...] = (ModelOutput, Cache)
    layer = getattr(sys.modules["transformers.cache_utils"], "CacheLayerMixin", None)
    if isinstance(layer, type):
        bases += (layer,)
    return found if isinstance(found, type) and issubclass(found, bases) else None


class _Unpickler(pickle.Unpickler):
    """Builds only the globals :func:`_allowed` lets through; anything else is refused before it runs."""

    host = "the remote host"

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise _Refused(
                f"{self.host} sent a result holding {module}.{name}, which is not loaded from a server "
                "(only tensors, containers and transformers outputs are); nothing in it was run. For a "
                "server you trust, pass remote=hooked_mllm.Remote(host, trust_server=True)."
            )
        return found


def load_result(content: bytes, host: str = "the remote host") -> Any:
    """A server's ``torch.save`` bytes loaded with the restricted unpickler (onto the CPU).

    Args:
        content: The (decompressed) bytes the server sent.
        host: Named in the error.

    Raises:
        pickle.UnpicklingError: The payload names a global that is not allowed (nothing was called).

    Examples:
        >>> saves = load_result(blob, host="https://ndif.example")   # doctest: +SKIP
    """
    import types

    import torch

    unpickler = type("_HostUnpickler", (_Unpickler,), {"host": host})
    module = types.SimpleNamespace(Unpickler=unpickler, load=pickle.load, __name__="pickle")
    return torch.load(io.BytesIO(content), map_location="cpu", weights_only=False, pickle_module=module)


def _timeout(host: str, what: str, seconds: float | None) -> TimeoutError:
    return TimeoutError(
        f"remote host {host} did not {what} within {seconds} s; check the host, or raise the limit with "
        "remote=hooked_mllm.Remote(host, connect_timeout=..., receive_timeout=...)"
    )


@functools.cache
def _backend_class() -> type:
    from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
    from nnsight.schema.response import ResponseModel, Status

    class GuardedBackend(RemoteBackend):
        """nnsight's blocking ``RemoteBackend`` with bounded waits and restricted unpickling."""

        def __init__(self, model_key: str, settings: Remote, **kwargs: Any) -> None:
            super().__init__(model_key, host=settings.url(), **kwargs)
            self.settings = settings

        def finalize(self, content: bytes) -> Any:
            if self.settings.trust_server:
                return super().finalize(content)
            if self.compress:
                import zstandard as zstd

                content = zstd.ZstdDecompressor().decompress(content)
            return load_result(content, self.host)

        def parse(self, message: str | bytes) -> Any:
            if isinstance(message, (bytes, bytearray)) and not self.settings.trust_server:
                return ResponseModel(**load_result(bytes(message), self.host))
            return ResponseModel.model_validate_json(message)

        def _http(self) -> Any:
            import httpx

            s = self.settings
            return httpx.Client(timeout=httpx.Timeout(s.receive_timeout, connect=s.connect_timeout))

        def _post(self, request: Any, blob: bytes) -> Any:
            import httpx
            from nnsight.intervention.backends import remote as nnsight_remote

            headers = {
                "ndif-timestamp": repr(time.time()),
                "nnsight-version": nnsight_remote._NNSIGHT_VERSION,
                "python-version": sys.version,
            }
            if self.api_key:
                headers["ndif-api-key"] = self.api_key
            try:
                with self._http() as client:
                    response = client.post(
                        f"{self.host}/request",
                        data={"data": request.metadata()},
                        files={"blob": ("request", blob, "application/octet-stream")},
                        headers=headers,
                    )
                response.raise_for_status()
            except httpx.TimeoutException as error:
                raise _timeout(self.host, "answer the request", self.settings.receive_timeout) from error
            except httpx.HTTPError as error:
                raise RemoteError(f"Failed to send request to {self.host}: {error}") from error
            return ResponseModel.model_validate_json(response.text)

        def download_result(self, url: Any) -> Any:
            import httpx

            if isinstance(url, (bytes, bytearray)):
                return self.finalize(bytes(url))
            if not url:
                return None
            buffer = io.BytesIO()
            try:
                with self._http() as client, client.stream("GET", url) as response:
                    response.raise_for_status()
                    for chunk in response.iter_bytes(chunk_size=128 * 1024):
                        buffer.write(chunk)
            except httpx.TimeoutException as error:
                raise _timeout(self.host, "send the result", self.settings.receive_timeout) from error
            return self.finalize(buffer.getvalue())

        def request(self, request: Any, tracer: Any) -> Any:
            import websocket

            blob = self._serialize(tracer)
            s = self.settings
            try:
                connection = websocket.create_connection(
                    f"{self.ws_host}/subscribe",
                    header={"ndif-api-key": self.api_key} if self.api_key else None,
                    timeout=s.connect_timeout,
                )
            except (websocket.WebSocketTimeoutException, TimeoutError) as error:
                raise _timeout(self.host, "accept the connection", s.connect_timeout) from error
            try:
                connection.settimeout(s.receive_timeout)
                try:
                    request.session_id = json.loads(connection.recv())["session_id"]
                except websocket.WebSocketTimeoutException as error:
                    raise _timeout(self.host, "send a session id", s.receive_timeout) from error
                self.send(request, blob)
                return self._wait(connection)
            finally:
                connection.close()

        def _wait(self, connection: Any) -> Any:
            """Status updates until COMPLETED, each at most receive_timeout after the last."""
            import websocket

            limit = self.settings.receive_timeout
            tick = 0.1 if self.display.enabled else limit
            connection.settimeout(tick if limit is None else min(tick or limit, limit))
            last = time.monotonic()
            while True:
                try:
                    message = connection.recv()
                except websocket.WebSocketTimeoutException as error:
                    if limit is not None and time.monotonic() - last >= limit:
                        raise _timeout(self.host, "send a status update", limit) from error
                    self.display.refresh()
                    continue
                last = time.monotonic()
                response = self.parse(message)
                result = self.handle(response)
                if response.status == Status.COMPLETED:
                    return result

    return GuardedBackend


def guarded_backend(model_key: str, settings: Remote, **kwargs: Any) -> Any:
    """nnsight's ``RemoteBackend`` for ``settings``: bounded waits, restricted unpickling.

    Examples:
        >>> backend = guarded_backend(envoy.to_model_key(), Remote("https://ndif.example"))  # doctest: +SKIP
    """
    return _backend_class()(model_key, settings, **kwargs)


@functools.cache
def guarded_model_class() -> type:
    """nnsight's ``TransformersModel`` whose remote runs use :func:`guarded_backend` (same remote key).

    Examples:
        >>> envoy = guarded_model_class()(repo_id, task="image-text-to-text")  # doctest: +SKIP
    """
    from nnsight import TransformersModel

    class GuardedTransformersModel(TransformersModel):
        def _remoteable_class(self) -> type:
            return TransformersModel  # the key the server knows

        def __reduce_ex__(self, protocol: Any) -> Any:  # a request carries a plain TransformersModel
            _, _, *rest = super().__reduce_ex__(protocol)
            return (object.__new__, (TransformersModel,), *rest)

        def _remote_backend(self, remote: Any, blocking: bool, job_id: Any, verbose: bool) -> Any:
            if remote == "local":
                return super()._remote_backend(remote, blocking, job_id, verbose)
            if not blocking:
                raise ValueError("a remote HookedMLLM runs blocking requests only (blocking=True)")
            return guarded_backend(
                self.to_model_key(),
                Remote.of(remote),
                env=self._remoteable_get_env(),
                job_id=job_id,
                verbose=verbose,
            )

    return GuardedTransformersModel
