"""What a remote model trusts about its server (hooked_mllm._runtime.remote_host).

Plain ``http://`` is refused unless opted in; a server that accepts and never answers, or answers the
websocket handshake and then says nothing, ends in a ``TimeoutError`` naming the host (local socket
servers on 127.0.0.1 that stop by themselves); a result whose pickle would call code is refused before
anything runs, while tensors and transformers outputs load as they were saved.
"""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from hooked_mllm import HookedMLLM, Remote
from hooked_mllm._runtime.remote_host import guarded_backend, load_result
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def _pwn(path: str) -> str:
    """What a hostile payload calls while it is unpickled (here: writes a marker file)."""
    Path(path).write_text("ran")
    return "pwned"


class _Hostile:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_pwn, (self.path,))


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=4)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-llava")
    tiny_llava("llama").save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return str(path)


def test_plain_http_is_refused_unless_opted_in(checkpoint):
    with pytest.raises(ValueError, match=r"plain http://.*allow_http=True"):
        HookedMLLM.from_pretrained(checkpoint, remote="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="plain http://"):
        HookedMLLM.from_pretrained(checkpoint, remote=Remote("http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="not a URL"):
        HookedMLLM.from_pretrained(checkpoint, remote="ftp://127.0.0.1:9")
    with pytest.raises(ValueError, match="receive_timeout"):
        Remote.of(Remote("https://example.org", receive_timeout=0))
    model = HookedMLLM.from_pretrained(checkpoint, remote=Remote("http://127.0.0.1:9", allow_http=True))
    assert model.remote == Remote("http://127.0.0.1:9", allow_http=True)
    assert Remote.of("https://example.org/") == Remote("https://example.org/")


def _serve(handshake: bool, port: int, stop: threading.Event, seconds: float = 8.0) -> threading.Thread:
    """A server on 127.0.0.1 that accepts, optionally completes the websocket handshake, then never
    sends anything; it closes everything once ``stop`` is set, or after ``seconds``."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    server.settimeout(0.1)
    held: list[socket.socket] = []

    def run() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            if handshake:
                request = conn.recv(65536).decode()
                key = next(
                    line.split(":", 1)[1].strip()
                    for line in request.split("\r\n")
                    if line.lower().startswith("sec-websocket-key")
                )
                accept = base64.b64encode(
                    hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
                ).decode()
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                )
        for conn in held:
            conn.close()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("handshake", "what"), [(False, "accept the connection"), (True, "send a session id")]
)
def test_a_server_that_never_answers_times_out_naming_the_host(checkpoint, monkeypatch, handshake, what):
    import nnsight.modeling.huggingface as hf

    monkeypatch.setitem(hf._ID_CACHE, checkpoint, "org/tiny-llava")  # the key a Hub id would give
    server = socket.socket()  # reserve a port now; the silent server listens on it from just before the run
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    host = f"http://127.0.0.1:{port}"
    model = HookedMLLM.from_pretrained(
        checkpoint, remote=Remote(host, allow_http=True, connect_timeout=0.5, receive_timeout=0.5)
    )
    batch = model.prepare(images=[random_image(0, 32)], prompts=["what color is the circle ?"])
    stop = threading.Event()
    thread = _serve(handshake, port, stop)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"remote host {host} did not {what} within 0.5 s"):
        model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post")
    assert time.monotonic() - start < 10.0  # 0.5 s limits, with room for a loaded machine
    stop.set()
    thread.join(15)
    assert not thread.is_alive()


def test_status_updates_that_stop_coming_time_out():
    import websocket

    class Silent:
        def settimeout(self, seconds):
            self.seconds = seconds

        def recv(self):
            time.sleep(self.seconds)
            raise websocket.WebSocketTimeoutException("timed out")

    backend = guarded_backend('{"repo_id": "org/x"}', Remote("https://quiet.example", receive_timeout=0.3))
    start = time.monotonic()
    with pytest.raises(
        TimeoutError, match=r"remote host https://quiet\.example did not send a status update"
    ):
        backend._wait(Silent())
    assert 0.3 <= time.monotonic() - start < 2.0


def test_a_hostile_result_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    blob = _saved({"result": _Hostile(marker)})
    with pytest.raises(pickle.UnpicklingError, match=r"https://evil\.example sent a result holding .*_pwn"):
        load_result(blob, host="https://evil.example")
    backend = guarded_backend('{"repo_id": "org/x"}', Remote("https://evil.example"))
    backend.compress = False
    with pytest.raises(pickle.UnpicklingError, match="nothing in it was run"):
        backend.finalize(blob)
    response = _saved({"id": "1", "status": "COMPLETED", "description": "", "data": _Hostile(marker)})
    with pytest.raises(pickle.UnpicklingError):
        backend.parse(response)
    assert not marker.exists()
    # the same bytes loaded the way nnsight loads them run the payload: the test payload is live
    assert torch.load(io.BytesIO(blob), weights_only=False)["result"] == "pwned"
    assert marker.exists()


def test_a_result_of_tensors_and_transformers_outputs_loads_as_saved():
    model = tiny_llava("llama").eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        output = model(input_ids=ids)
    saves = {
        "result": output,
        "kept": {"blocks.0.hook_resid_post": torch.randn(1, 4, 8, dtype=torch.bfloat16)},
        "generated": torch.tensor([[5, 6]]),
        "shape": torch.Size([2, 3]),
    }
    blob = _saved(saves)
    loaded = load_result(blob)
    from nnsight.intervention.backends.remote import RemoteBackend

    theirs, ours = (
        RemoteBackend("key", host="https://x.example"),
        guarded_backend("key", Remote("https://x.example")),
    )
    theirs.compress = ours.compress = False
    for name, value in ours.finalize(blob).items():  # what nnsight's own backend loads, value for value
        other = theirs.finalize(blob)[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other)
        elif name == "result":
            assert torch.equal(value.logits, other.logits) and type(value) is type(other)
        else:
            assert str(value) == str(other)
    assert type(loaded["result"]) is type(output)
    assert torch.equal(loaded["result"].logits, output.logits)
    assert type(loaded["result"].past_key_values) is type(output.past_key_values)
    assert torch.equal(loaded["kept"]["blocks.0.hook_resid_post"], saves["kept"]["blocks.0.hook_resid_post"])
    assert torch.equal(loaded["generated"], saves["generated"]) and loaded["shape"] == saves["shape"]
