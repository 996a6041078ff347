"""LLaVA-NeXT / OneVision anyres images: two gridded views per image, checked against HF.

Each image's run of image tokens is the base tile (a square grid), then the stitched,
unpadded high-resolution tiles with one ``image_newline`` token after each row. The
checks read HF's own packed features (``get_image_features(...).pooler_output``, which
holds the newline rows) and its eager attention weights through plain forward hooks
(:class:`mechanism.test_reference.Reference`), never the library's geometry.

Images: a 20x32 image picks the 32x32 pinpoint (2x2 tiles, an 8x8 map) and unpads to 6x8;
a 32x32 image keeps 8x8. OneVision with ``vision_aspect_ratio="anyres_max_1"`` pools maps of
more than one tile's patches (6x8 -> 3x4, 8x8 -> 4x4).
"""

from __future__ import annotations

import pytest
import torch
from architectures.families import image

from hooked_mllm import HookedMLLM
from hooked_mllm import testing as t
from hooked_mllm.mechanism import attention_map, head_scores, image_locations
from mechanism.test_reference import Reference, close

PROMPTS = ["what color is the circle ?", "how many objects"]
IMAGES = [[image(0, 20, 32)], [image(1, 32, 32)]]
CASES = {
    "llava_next": (lambda: t.tiny_llava_next(attn_implementation="eager"), None, [(6, 8), (8, 8)]),
    "llava_onevision": (lambda: t.tiny_llava_onevision(attn_implementation="eager"), None, [(6, 8), (8, 8)]),
    "onevision_pooled": (
        lambda: t.tiny_llava_onevision(attn_implementation="eager"),
        "anyres_max_1",
        [(3, 4), (4, 4)],
    ),
}
_BUILT: dict = {}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name = request.param
    if name not in _BUILT:
        build, aspect, grids = CASES[name]
        hf_model, processor = build()
        if aspect is not None:
            hf_model.config.vision_aspect_ratio = aspect
            processor.vision_aspect_ratio = aspect
        model = HookedMLLM.from_hf(hf_model, processor)
        batch = model.prepare(images=IMAGES, prompts=PROMPTS)
        with torch.no_grad():
            extra = (
                {"batch_num_images": batch.inputs["batch_num_images"]}
                if "batch_num_images" in batch.inputs
                else {}
            )
            packed = hf_model.model.get_image_features(
                pixel_values=batch.inputs["pixel_values"], image_sizes=batch.inputs["image_sizes"], **extra
            ).pooler_output
        _BUILT[name] = (model, batch, list(packed), grids)
    return _BUILT[name]


def _hf_layout(model, feats):
    """HF's packed features of one image: base rows, high-res rows (newlines dropped), and the grid
    read from where HF put the newline rows."""
    newline = model.hf_model.model.image_newline.detach()
    is_newline = (feats == newline).all(-1)
    side = model.hf_model.config.vision_config.image_size // model.hf_model.config.vision_config.patch_size
    assert not is_newline[: side * side].any()
    ends = is_newline[side * side :].nonzero().flatten()
    rows, width = len(ends), int(ends[0]) + 1  # every row: cols features, then the newline
    assert ends.tolist() == [r * width + width - 1 for r in range(rows)]
    high = feats[side * side :][~is_newline[side * side :]]
    return feats[: side * side], high, (side, side), (rows, width - 1)


def test_views_hold_hfs_features_and_skip_the_newlines(case):
    model, batch, packed, grids = case
    _, cache = model.run_with_cache(batch, names_filter=["blocks.0.hook_resid_pre"])
    resid = cache["resid_pre", 0]
    newline = model.hf_model.model.image_newline.detach()
    assert batch.images_per_row == (2, 2)
    for row, feats in enumerate(packed):
        base, high, base_grid, high_grid = _hf_layout(model, feats)
        span_base, span_high = batch.images_of(row)
        assert (span_base.grid, span_high.grid) == (base_grid, high_grid) and high_grid == grids[row]
        close(resid[row, list(span_base.token_positions)], base, atol=0)
        close(resid[row, list(span_high.token_positions)], high, atol=0)
        # the image tokens in no span are exactly the newline rows
        in_spans = set(span_base.token_positions) | set(span_high.token_positions)
        rest = [p for p in batch.image_mask[row].nonzero().flatten().tolist() if p not in in_spans]
        assert len(rest) == high_grid[0]
        close(resid[row, rest], newline.expand(len(rest), -1), atol=0)
        # cache.image reshapes each view row-major onto its grid
        close(cache.image("blocks.0.hook_resid_pre", 0)[row], base.reshape(*base_grid, -1), atol=0)
        one = batch.row(row)  # a row alone: its pixel_values / image_sizes follow its two views
        assert torch.equal(one.inputs["image_sizes"], batch.inputs["image_sizes"][row : row + 1])
        _, row_cache = model.run_with_cache(one, names_filter=["blocks.0.hook_resid_pre"])
        close(row_cache.image("blocks.0.hook_resid_pre", 1)[0], high.reshape(*high_grid, -1), atol=1e-6)


def test_maps_on_both_views_equal_a_direct_computation(case):
    model, batch, _, grids = case
    ref = Reference(model.hf_model, batch.inputs, model.cfg.image_token_id, grids[0])
    scores = head_scores(model, batch)
    for row in range(len(batch)):
        top = scores.top(1, row=row)[0]
        x = ref.got["pre"][top[0]][row, ref.T]
        c = ref.contributions(top[0], row)[top[1]]
        for view, span in enumerate(batch.images_of(row)):
            where = list(span.token_positions)
            attn = attention_map(model, batch, row=row, image=view)
            direct = torch.stack([ref.got["attn"][l][row, :, ref.T, where] for l in range(len(ref.layers))])
            assert attn.shape == span.grid and attn.positions == tuple(where)
            close(attn.values, direct.mean((0, 1)).reshape(span.grid))
            m = image_locations(model, batch, heads="top", row=row, image=view)
            assert m.shape == span.grid and m.extra["heads"] == [top]
            close(m.values, (ref.lp(x + c[where], row) - ref.lp(x, row)).reshape(span.grid))


def test_unverifiable_geometry_keeps_one_gridless_span_per_image():
    model, batch, _, _ = _BUILT.get("llava_next") or (None, None, None, None)
    if model is None:
        hf_model, processor = t.tiny_llava_next(attn_implementation="eager")
        model = HookedMLLM.from_hf(hf_model, processor)
        batch = model.prepare(images=IMAGES, prompts=PROMPTS)
    wrong = dict(batch.inputs, image_sizes=batch.inputs["image_sizes"].flip(0))
    with pytest.warns(UserWarning, match="Image geometry unknown"):
        degraded = model.to_batch(wrong)
    assert [s.grid for s in degraded.images] == [None, None] and degraded.images_per_row == (1, 1)
    assert [s.n_tokens for s in degraded.images] == batch.image_mask.sum(1).tolist()
    assert torch.equal(degraded.row(1).inputs["pixel_values"], batch.inputs["pixel_values"][1:2])
    with pytest.raises(ValueError, match="no patch grid"):
        image_locations(model, degraded)
