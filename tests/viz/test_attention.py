"""circuitsvis attention views: the right numbers, the right labels, offline HTML."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
from pathlib import Path

import circuitsvis
import numpy as np
import pytest
import torch
from PIL import Image

from hooked_mllm.hook_points import HookNameError
from hooked_mllm.viz import Report, attention_heads, attention_patterns, patch_strip, token_labels
from hooked_mllm.viz.attention import AttentionView, circuitsvis_bundle


def props_of(view_html: str) -> dict:
    call = re.search(r'CircuitsVis\.render\("[^"]+", CircuitsVis\.\w+, (\{.*\})\);</script>', view_html, re.S)
    return json.loads(call.group(1))


def test_labels_name_image_tokens_by_cell_and_padding(run):
    model, batch, _, _, _ = run
    for row in range(2):
        labels = token_labels(batch, row)
        (span,) = batch.images_of(row)
        rows, cols = span.grid
        for k, position in enumerate(span.token_positions):
            assert labels[position] == f"img0[r{k // cols}c{k % cols}]"
        text = (~batch.image_mask[row] & ~batch.pad_mask[row]).nonzero().flatten().tolist()
        assert [labels[p] for p in text] == [batch.tokens[row][p] for p in text]
    padded = batch.pad_mask[1].nonzero().flatten().tolist()
    assert padded and all(token_labels(batch, 1)[p] == "<pad>" for p in padded)


def test_view_shows_hf_attention_of_the_chosen_positions(run):
    model, batch, cache, _, _ = run
    with torch.no_grad():
        ref = model.hf_model(**batch.inputs, output_attentions=True).attentions
    for part in ("all", "image", "text"):
        view = attention_heads(cache, 1, row=1, part=part)
        keep = ~batch.pad_mask[1]
        keep &= {"all": keep, "image": batch.image_mask[1], "text": ~batch.image_mask[1]}[part]
        pos = keep.nonzero().flatten()
        expected = ref[1][1][:, pos][:, :, pos]
        got = torch.tensor(view.props["attention"])
        torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0)
        labels = view.props["tokens"]
        assert len(labels) == len(pos)
        assert all(lab.startswith("img0[") for lab in labels) == (part == "image")
        assert not any(lab.startswith("img0[") for lab in labels) or part != "text"
        assert view.props["attentionHeadNames"] == [f"L1H{h}" for h in range(model.cfg.n_heads)]


def test_heads_and_positions_select(run):
    _, batch, cache, _, _ = run
    view = attention_patterns(cache, 0, heads=[2], positions=[0, 3, 5])
    assert np.array(view.props["attention"]).shape == (1, 3, 3)
    torch.testing.assert_close(
        torch.tensor(view.props["attention"][0]),
        cache["pattern", 0][0, 2][[0, 3, 5]][:, [0, 3, 5]].float(),
        atol=1e-5,
        rtol=0,
    )
    assert view.element == "AttentionPatterns"


def test_raw_pattern_with_tokens(run):
    _, _, cache, _, _ = run
    pattern = cache["pattern", 0][0]
    view = attention_heads(pattern, tokens=[str(i) for i in range(pattern.shape[-1])])
    assert view.props["tokens"][:2] == ["0", "1"]
    with pytest.raises(ValueError, match="tokens="):
        attention_heads(pattern)
    with pytest.raises(ValueError, match="labels for a pattern"):
        attention_heads(pattern, tokens=["a", "b"])


def test_refusals(run, eager_model):
    _, batch, cache, _, _ = run
    with pytest.raises(ValueError, match="part must be one of"):
        attention_heads(cache, 0, part="pixels")
    with pytest.raises(HookNameError, match="not cached|not a hook"):
        attention_heads(cache, 7)
    _, partial = eager_model.run_with_cache(
        batch, names_filter="blocks.0.attn.hook_pattern", positions="last"
    )
    with pytest.raises(ValueError, match="only some positions"):
        attention_heads(partial, 0)


def test_html_is_offline_and_inlines_the_installed_bundle(run, tmp_path):
    _, _, cache, _, images = run
    view = attention_heads(cache, 0, image=images[0])
    page = view.to_html()
    bundle = (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
    assert bundle[:2000] in page and circuitsvis_bundle() in page
    assert "unpkg" not in page and "cdn." not in page.lower().replace("dist/cdn", "")
    assert not re.search(r"<script[^>]+src=", page) and "sourceMappingURL" not in page
    assert page.count("</script>") == 2  # bundle + the render call: no "</s>" token closed a script early
    assert '"\\u003c/s\\u003e"' in view.fragment() or "</s>" not in json.dumps(view.props)
    path = view.save(tmp_path / "views" / "attention.html")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert path.read_text(encoding="utf-8") == page.replace(view.element_id, view.element_id)
    assert [p.name for p in path.parent.iterdir()] == ["attention.html"]
    assert view._repr_html_().count("var CircuitsVis") == 1


def test_patch_strip_tiles_are_the_image_patches():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    html = patch_strip(image, (4, 4), size=16)
    tiles = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(tiles) == 16 and "r3c1" in html
    tile = np.asarray(Image.open(io.BytesIO(base64.b64decode(tiles[4 * 3 + 1]))))
    expected = np.asarray(image.crop((8, 24, 16, 32)).resize((16, 16), Image.NEAREST))
    np.testing.assert_array_equal(tile, expected)
    with pytest.raises(ValueError, match="labels"):
        patch_strip(image, (4, 4), labels=["a"])


HOSTILE = [
    "<!--<script>",
    "</script><script>document.body.setAttribute('data-pwned','script')</script>",
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
    "]]>\u2028\u2029&amp;'\"",
]


def test_hostile_tokens_stay_data_inside_the_script():
    pattern = torch.softmax(torch.randn(2, len(HOSTILE), len(HOSTILE)), -1)
    view = attention_heads(pattern, tokens=HOSTILE)
    fragment = view.fragment()
    script = fragment[fragment.index("<script>") + len("<script>") : fragment.rindex("</script>")]
    for forbidden in ("<", ">", "&", "\u2028", "\u2029"):
        assert forbidden not in script, forbidden
    assert fragment.count("<script>") == 1 and fragment.count("</script>") == 1
    assert props_of(fragment)["tokens"] == HOSTILE  # the values reach circuitsvis unchanged
    page = view.to_html()
    assert page.count("</script>") == 2 and "<!--" not in page.replace(circuitsvis_bundle(), "")
    report = Report(HOSTILE[1]).text(HOSTILE[0]).section(HOSTILE[2], HOSTILE[3]).attention(view).render()
    outside = report.replace(circuitsvis_bundle(), "").replace(script, "")
    assert "<script>document" not in outside and "<img src=x" not in outside and "<!--" not in outside


def test_a_view_refuses_an_unknown_element():
    with pytest.raises(ValueError, match="element must be one of"):
        AttentionView(element="alert(1);AttentionHeads", props={})
