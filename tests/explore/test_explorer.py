"""The explorer's numbers and API (no browser): each panel equals the library tool it shows, bad input is one
clear line with a 400, and nothing but loopback is served by default."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from hooked_mllm import toy
from hooked_mllm.explore import Explorer, serve
from hooked_mllm.mechanism import head_scores, image_locations, logit_lens_map


@pytest.fixture(scope="module")
def model():
    return toy.load("toy-llava")


@pytest.fixture(scope="module")
def server(model):
    server = serve(Explorer(model), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _get(server, path):
    with urllib.request.urlopen(server.url + path, timeout=120) as response:
        return json.load(response)


def _post(server, body):
    request = urllib.request.Request(
        server.url + "api/ask", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_every_panel_is_the_library_tool_on_the_same_question(server, model):
    scene = toy.World(seed=7).scene(6)
    question = "what color is the triangle ?"
    status, found = _post(server, {"image": _data_uri(scene.image), "question": question})
    assert status == 200, found
    assert found["answer"].split()[0] == "blue"  # the toy world's ground truth
    batch = model.prepare(images=[scene.image], prompts=[question])
    scores = head_scores(model, batch).values[0]
    assert np.allclose(found["heads"]["values"], scores.numpy(), atol=1e-4)
    lens = logit_lens_map(model, batch)
    tokens = [[[str(t) for t in row] for row in layer] for layer in lens.tokens.tolist()]
    assert found["lens"]["tokens"] == tokens
    assert np.allclose(found["lens"]["probs"], lens.probs, atol=1e-3)
    triangle = next(o for o in scene.objects if o.shape == "triangle")
    rows, cols = found["grid"]
    peak_row, peak_col = found["baselines"]["every head"]["peak"]
    assert peak_row * cols + peak_col in triangle.patch_indices
    head = _get(server, f"api/head?id={found['id']}&layer=2&head=1")
    assert tuple(head["peak"]) == image_locations(model, batch, heads=[(2, 1)]).peak()
    assert head["score"] == pytest.approx(float(scores[2, 1]), abs=1e-4)
    assert "circuitsvis" in found["attention"]["html"].lower() or "<script" in found["attention"]["html"]


def test_a_scene_by_seed_and_index_and_a_cell_and_a_patching_sweep(server):
    scene = _get(server, "api/scene?seed=7&index=6")
    assert scene["image"].startswith("data:image/png;base64,") and scene["questions"]
    status, found = _post(server, {"scene": [7, 6], "question": scene["questions"][0]["question"]})
    assert status == 200
    cell = _get(server, f"api/cell?id={found['id']}&layer=2&row=5&col=1")
    assert len(cell["tokens"]) == 5 and cell["probs"] == sorted(cell["probs"], reverse=True)
    # the cell's top token is the lens grid's token at that layer and cell
    assert cell["tokens"][0] == found["lens"]["tokens"][2][5][1]
    patch = _get(server, f"api/patch?id={found['id']}&corruption=noise&layer=0")
    assert patch["clean"] > patch["corrupted"] and patch["image"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image": "data:image/png;base64,aGVsbG8=", "question": "what ?"}, "not an image"),
        ({"image": "not a data uri", "question": "what ?"}, "upload an image"),
        ({"scene": [7, 6], "question": "   "}, "Type a question"),
        ({"scene": [7, 6], "question": "x" * 501}, "at most 500"),
        ({"image": _data_uri(Image.new("RGB", (5000, 10))), "question": "what ?"}, "up to 4096 pixels"),
        ({"scene": [7, -1], "question": "what ?"}, "No scene"),
    ],
)
def test_bad_input_is_one_clear_line(server, body, message):
    status, found = _post(server, body)
    assert status == 400 and message in found["error"] and "\n" not in found["error"]


def test_unknown_ids_heads_and_cells_are_refused(server):
    with pytest.raises(urllib.error.HTTPError) as error:
        _get(server, "api/head?id=nope&layer=0&head=0")
    assert error.value.code == 400 and "ask the question again" in json.load(error.value)["error"]
    _, found = _post(server, {"scene": [7, 6], "question": "what color is the triangle ?"})
    for path, message in [
        (f"api/head?id={found['id']}&layer=99&head=0", "No head L99H0"),
        (f"api/cell?id={found['id']}&layer=0&row=9&col=0", "No cell (9, 0)"),
        (f"api/head?id={found['id']}&layer=x&head=0", "whole number"),
        (f"api/patch?id={found['id']}&corruption=acid", "Unknown corruption"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as error:
            _get(server, path)
        assert error.value.code == 400 and message in json.load(error.value)["error"]


def test_only_loopback_unless_asked(model):
    with pytest.raises(ValueError, match="loopback"):
        serve(Explorer(model), host="0.0.0.0", port=0)
