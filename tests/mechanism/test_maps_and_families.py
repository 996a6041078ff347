"""``LocationMap`` behaviour, every family with a grid, clear errors elsewhere, and the logit-lens views."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pytest
import torch
from architectures.families import FAMILIES
from architectures.test_conformance import _MODELS as CONFORMANCE_MODELS
from PIL import Image

from hooked_mllm import HookedMLLM
from hooked_mllm.lens import logit_lens
from hooked_mllm.mechanism import (
    LocationMap,
    attention_map,
    explain_positions,
    head_scores,
    image_locations,
    logit_lens_map,
)


def test_location_map_helpers():
    values = np.array([[0.0, 2.0, 1.0], [4.0, 3.0, -1.0]])
    m = LocationMap(values=values, method="demo", label="x")
    assert m.shape == (2, 3) and m.peak() == (1, 0) and m.peak_index() == 3
    norm = m.normalized().values
    assert norm.min() == 0.0 and norm.max() == 1.0 and np.allclose(norm, (values + 1) / 5)
    assert np.all(LocationMap(values=np.ones((2, 2)), method="flat").normalized().values == 0)
    up = m.upsample((30, 20))  # (width, height)
    assert up.shape == (20, 30) and up.min() >= 0 and up.max() <= 1
    # bicubic, not nearest: more distinct levels than cells, and the peak cell's centre stays bright
    assert len(np.unique(up.round(3))) > 6 and up[15, 5] > 0.8
    image = Image.new("RGB", (30, 20), (10, 200, 30))
    assert m.overlay(image, alpha=0.0).tobytes() == image.tobytes()
    over = m.overlay(image, alpha=0.5, cmap="viridis")
    assert over.size == (30, 20) and over.mode == "RGB" and over.tobytes() != image.tobytes()
    html = m._repr_html_()
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", html).group(1))
    assert Image.open(io.BytesIO(png)).size == (192, 192)
    with pytest.raises(ValueError, match=r"\[rows, cols\]"):
        LocationMap(values=np.zeros(4), method="bad")
    with pytest.raises(ValueError, match="alpha"):
        m.overlay(image, alpha=2)


_MODELS: dict = {}


def built(name: str):
    """(family, model, batch) of one conformance family, built once (shared with the conformance suite)."""
    if name not in _MODELS:
        family = next(f for f in FAMILIES if f.adapter == name)
        if name not in CONFORMANCE_MODELS:
            hf_model, processor = family.build()
            CONFORMANCE_MODELS[name] = HookedMLLM.from_hf(hf_model, processor)
        model = CONFORMANCE_MODELS[name]
        _MODELS[name] = (family, model, model.prepare(images=family.images, prompts=family.prompts))
    return _MODELS[name]


@pytest.fixture(scope="module", params=[f.adapter for f in FAMILIES])
def family_model(request):
    return built(request.param)


def test_every_family_with_a_grid_gets_maps_and_the_rest_a_clear_error(family_model):
    family, model, batch = family_model
    if family.adapter == "mllama":
        with pytest.raises(ValueError, match="cross-attention"):
            image_locations(model, batch)
        return
    grid = family.geometry[0][1]
    scores = head_scores(model, batch)
    assert scores.values.shape == (len(batch), model.cfg.n_layers, model.cfg.n_heads)
    assert torch.isfinite(scores.values).all()
    if grid is None:
        with pytest.raises(ValueError, match="no patch grid"):
            image_locations(model, batch)
        return
    for m in (image_locations(model, batch, heads="all"), attention_map(model, batch)):
        assert m.shape == grid and np.isfinite(m.values).all()
        assert m.positions == tuple(batch.images_of(0)[0].token_positions)
    assert image_locations(model, batch, heads=2, layers=-1).extra["heads"][0][0] == model.cfg.n_layers - 1


def test_bad_arguments_are_clear_errors():
    family, model, batch = built("llava")
    with pytest.raises(ValueError, match="heads must be"):
        image_locations(model, batch, heads="best")
    with pytest.raises(ValueError, match="layers must"):
        image_locations(model, batch, layers=[7])
    with pytest.raises(ValueError, match="out of range"):
        image_locations(model, batch, image=3)
    with pytest.raises(ValueError, match="targets"):
        head_scores(model, batch, target=[1, 2, 3])


@pytest.mark.parametrize("name", ["llava", "paligemma2"])
def test_explain_positions_and_logit_lens_map(name):
    family, model, batch = built(name)
    single = batch.row(1)
    span = single.images_of(0)[0]
    cells = list(span.token_positions)
    ex = explain_positions(model, batch, [(0, 0), cells[5]], layer=1, head=0, row=1, k=3)
    _, cache = model.run_with_cache(single, names_filter="blocks.1.hook_resid_pre")
    for entry, pos in zip(ex.positions, [cells[0], cells[5]]):
        assert entry.position == pos and entry.cell == divmod(cells.index(pos), span.grid[1])
        lens = logit_lens(model, cache["resid_pre", 1][0, pos]).float().softmax(-1)
        top = lens.topk(3)
        names = model.processor.tokenizer.convert_ids_to_tokens(top.indices.tolist())
        assert [t for t, _ in entry.parts["resid_pre"]] == names
        assert np.allclose([p for _, p in entry.parts["resid_pre"]], top.values.tolist(), atol=1e-5)
    assert "L1H0 -> T" in ex.table()
    lm = logit_lens_map(model, batch, row=1)
    _, cache = model.run_with_cache(single, names_filter=lambda n: n.endswith("hook_resid_post"))
    probs = logit_lens(model, cache["resid_post", 0][0, cells]).float().softmax(-1)
    assert lm.tokens.shape == (model.cfg.n_layers, *span.grid)
    assert np.allclose(lm.probs[0].reshape(-1), probs.max(-1).values.numpy(), atol=1e-5)
    token = next(iter(lm.token_probs))
    assert lm.map(token, layer=0).shape == span.grid
    with pytest.raises(ValueError, match="not requested"):
        lm.map("nonexistent-token")


def test_logit_lens_applies_the_final_soft_cap():
    family, model, batch = built("paligemma2")
    last = model.cfg.n_layers - 1
    logits, cache = model.run_with_cache(batch, names_filter=f"blocks.{last}.hook_resid_post")
    lens = logit_lens(model, cache["resid_post", last])
    assert torch.allclose(lens.float(), logits.float(), atol=1e-4)
    assert lens.abs().max() <= 30.0  # the tiny model's cap


def test_patching_sweep_over_cells_gives_a_location_map():
    from hooked_mllm.patching import activation_patching, logit_diff
    from hooked_mllm.testing import image_pair

    family, model, batch = built("llava")
    clean, corrupted = image_pair(model, (0, 1))
    result = activation_patching(model, clean, corrupted, logit_diff(5, 6), layers=[0, 1], over="cell")
    m = result.location_map(layer=1)
    assert m.shape == (4, 4) and m.method == "activation_patching"
    assert np.allclose(m.values, result.normalized()[1].numpy())
    assert m.overlay(Image.new("RGB", (32, 32))).size == (32, 32)
    with pytest.raises(ValueError, match="not patched"):
        result.location_map(layer=2)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_rows_equal_single_rows(side):
    family, model, _ = built("llava")
    batch = model.prepare(images=family.images, prompts=family.prompts, padding_side=side)
    scores = head_scores(model, batch)
    maps = image_locations(model, batch, heads="all", row=None)
    for b in range(len(batch)):
        single = batch.row(b)
        assert torch.allclose(head_scores(model, single).values[0], scores.values[b], atol=1e-5)
        assert np.allclose(image_locations(model, single, heads="all").values, maps[b].values, atol=1e-5)


def test_models_without_value_projections_are_refused():
    from dataclasses import replace

    family, model, batch = built("llava")
    modules = model.adapter.modules
    adapter = replace(model.adapter, modules=replace(modules, block=replace(modules.block, v=None)))
    fused = HookedMLLM(model.hf_model, model.processor, adapter=adapter)
    with pytest.raises(ValueError, match="hook_v"):
        head_scores(fused, batch)


def test_frozen_logit_lens_map_agrees_at_the_last_layer():
    family, model, batch = built("llava")
    last = model.cfg.n_layers - 1
    own = logit_lens_map(model, batch, layers=[0, last])
    frozen = logit_lens_map(model, batch, layers=[0, last], frozen=True)
    assert np.allclose(own.probs[1], frozen.probs[1], atol=1e-5)  # the final residual's own scale
    assert not np.allclose(own.probs[0], frozen.probs[0], atol=1e-3)  # elsewhere the frozen scale differs


def test_markdown_tables_show_tokens_as_text():
    """Tokens such as <image>, </s> or a|b reach a markdown table as text: no tag, no cell break."""
    from hooked_mllm.mechanism.explain import (
        PARTS,
        ExplainedPosition,
        LensMap,
        PositionExplanation,
        markdown_text,
    )

    hostile = ["<image>", "</s>", "a|b", "<script>alert(1)</script>", "**x**", "`y`", "line\nbreak"]
    for token in hostile:
        cell = markdown_text(token)
        assert not set(cell) & set("<>|`*\n")
        assert html.unescape(cell) == token.replace("\n", " ")
    parts = {part: [(token, 0.5)] for part, token in zip(PARTS, hostile[1:])}
    explanation = PositionExplanation(
        layer=1, head=0, target="x", positions=(ExplainedPosition(3, (0, 1), hostile[0], parts),)
    )
    row = explanation.table().splitlines()[-1]
    assert row.count("|") == 3 + len(PARTS) + 1  # every cell where it belongs
    assert "&#60;image&#62;" in row and "<" not in row
    grid = np.array([[["<image>", "a|b"]]], dtype=object)
    lens = LensMap(layers=(0,), tokens=grid, probs=np.ones((1, 1, 2)), positions=(1, 2))
    assert lens.table(0).splitlines()[-1] == "| &#60;image&#62; | a&#124;b |"


def test_a_target_past_the_tokenizer_is_named_by_its_id():
    """The LM head can be wider than the tokenizer (LLaVA-1.5: 32064 rows, 32002 tokens)."""
    from hooked_mllm.mechanism import capture
    from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

    processor = tiny_processor()
    hf_model = tiny_llava()
    hf_model.resize_token_embeddings(len(processor.tokenizer) + 8)  # 8 head rows no token names
    model = HookedMLLM.from_hf(hf_model, processor)
    batch = model.prepare(images=[random_image(0)], prompts=["what color ?"])
    beyond = model.cfg.d_vocab - 1
    assert processor.tokenizer.convert_ids_to_tokens([beyond]) == [None]
    run = capture(model, batch, target=[beyond])
    assert run.target_tokens() == [f"<id {beyond}>"]
