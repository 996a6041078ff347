"""Family-specific layouts: non-contiguous image spans (Mistral 3, Pixtral), cross-attention layers
(Mllama), Molmo2's split inputs, added projector rows and token layouts, and the hook paths of the
unverified Molmo adapter on a module tree of its published layout."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from hooked_mllm import HookedMLLM, positions
from hooked_mllm.architectures import registered_adapters
from hooked_mllm.hook_points import HookNameError, HookPoints
from hooked_mllm.inputs import ImageSpan, prepare

from .families import FAMILIES

BY_NAME = {family.adapter: family for family in FAMILIES}


@pytest.fixture(scope="module", params=["mistral3", "pixtral"])
def pixtral_tower(request):
    """A model with a Pixtral tower and rows of [IMG] tokens: Mistral 3 or Pixtral (on LLaVA)."""
    family = BY_NAME[request.param]
    hf_model, processor = family.build()
    model = HookedMLLM.from_hf(hf_model, processor)
    return model, model.prepare(images=family.images, prompts=family.prompts)


def test_image_span_positions_skip_row_breaks(pixtral_tower):
    model, batch = pixtral_tower
    for span in batch.images:
        tokens = [batch.tokens[span.row][p] for p in range(span.start, span.end)]
        rows, cols = span.grid
        assert tokens.count("[IMG_BREAK]") == rows - 1 and batch.tokens[span.row][span.end] == "[IMG_END]"
        assert [batch.tokens[span.row][p] for p in span.token_positions] == ["[IMG]"] * (rows * cols)
        assert list(span.token_positions) == [
            p for p in range(span.start, span.end) if tokens[p - span.start] == "[IMG]"
        ]


def test_grid_selectors_and_cache_use_the_image_positions(pixtral_tower):
    model, batch = pixtral_tower
    span = batch.images_of(1)[0]  # 4 x 3 grid
    mask = positions.image(index=0, rows=1, cols=slice(1, 3)).mask(batch)
    assert mask[1].nonzero().flatten().tolist() == [span.token_positions[4], span.token_positions[5]]
    assert not mask[1, [p for p in range(span.start, span.end) if p not in span.token_positions]].any()
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_pre")
    pieces = cache.image("blocks.0.hook_resid_pre")  # grids differ per row: a list
    assert [tuple(p.shape[:1]) for p in pieces] == [(6,), (12,)]
    torch.testing.assert_close(pieces[1][4], cache["resid_pre", 0][1, span.token_positions[4]])
    alone = batch.row(1)
    shifted = alone.images[0]
    offset = span.start - shifted.start
    assert shifted.positions == tuple(p - offset for p in span.positions) and shifted.grid == span.grid


def test_mismatched_rows_degrade_to_unknown_grids_with_a_warning(pixtral_tower):
    model, batch = pixtral_tower
    inputs = dict(batch.inputs, image_sizes=batch.inputs["image_sizes"].flip(-1))  # transposed sizes
    with pytest.warns(UserWarning, match="Image geometry unknown.*rows x cols"):
        degraded = model.to_batch(inputs)
    assert torch.equal(degraded.image_mask, batch.image_mask)
    assert all(span.grid is None for span in degraded.images)
    assert [s.positions for s in degraded.images] == [s.positions for s in batch.images]


def test_span_positions_example():
    span = ImageSpan(row=0, index=0, start=2, end=9, grid=(2, 3), positions=(2, 3, 4, 6, 7, 8))
    assert span.n_tokens == 6 and span.shifted(2).positions == (0, 1, 2, 4, 5, 6)
    assert list(ImageSpan(row=0, index=0, start=2, end=5, grid=None).token_positions) == [2, 3, 4]


def test_cross_attention_layers_are_named_and_refused_clearly():
    family = BY_NAME["mllama"]
    hf_model, processor = family.build()
    model = HookedMLLM.from_hf(hf_model, processor)
    names = model.hook_names()
    assert "blocks.1.hook_cross_attn_out" in names and "blocks.1.cross_attn.hook_pattern" in names
    assert "blocks.0.hook_attn_out" in names and "blocks.1.hook_attn_out" not in names
    with pytest.raises(HookNameError, match="cross-attention layer"):
        model.hook_points.resolve("blocks.1.hook_attn_out")
    assert not model.hook_points.resolve("blocks.1.hook_resid_mid").writable
    batch = model.prepare(images=family.images, prompts=family.prompts)
    _, cache = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="no image tokens"):
        cache.image("blocks.1.hook_resid_post")


class _Tree(nn.Module):
    """A module tree with allenai/Molmo-7B-D-0924's remote-code layout (names only, tiny sizes)."""

    def __init__(self, d: int = 8, n_layers: int = 2):
        super().__init__()

        def block():
            return nn.ModuleDict(
                dict(
                    attn_norm=nn.LayerNorm(d),
                    att_proj=nn.Linear(d, 3 * d),
                    attn_out=nn.Linear(d, d),
                    ff_norm=nn.LayerNorm(d),
                    ff_proj=nn.Linear(d, 4 * d),
                    ff_out=nn.Linear(2 * d, d),
                )
            )

        def resblock():
            return nn.ModuleDict(
                dict(
                    attention_norm=nn.LayerNorm(d),
                    ffn_norm=nn.LayerNorm(d),
                    attention=nn.ModuleDict({n: nn.Linear(d, d) for n in ("wq", "wk", "wv", "wo")}),
                    feed_forward=nn.ModuleDict(dict(w1=nn.Linear(d, 2 * d), w2=nn.Linear(2 * d, d))),
                )
            )

        transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(16, d),
                ln_f=nn.LayerNorm(d),
                ff_out=nn.Linear(d, 16),
                blocks=nn.ModuleList([block() for _ in range(n_layers)]),
            )
        )
        vit = nn.ModuleDict(
            dict(
                patch_embedding=nn.Linear(12, d),
                pre_ln=nn.LayerNorm(d),
                transformer=nn.ModuleDict(dict(resblocks=nn.ModuleList([resblock(), resblock()]))),
            )
        )
        vision = nn.ModuleDict(
            dict(
                image_vit=vit,
                image_pooling_2d=nn.ModuleDict({"wq": nn.Linear(d, d)}),
                image_projector=nn.ModuleDict({"w1": nn.Linear(d, d)}),
            )
        )
        self.model = nn.ModuleDict(dict(transformer=transformer, vision_backbone=vision))
        self.config = type("MolmoConfig", (), {"model_type": "molmo"})()


def test_molmo_adapter_paths_exist_in_its_published_layout():
    adapter = {a.name: a for a in registered_adapters().values()}["molmo"]
    assert not adapter.about.verified and adapter.about.checked_by == "benchmarks/molmo_remote_check.py"
    assert (Path(__file__).parents[2] / adapter.about.checked_by).is_file()
    tree = _Tree()
    adapter.validate(tree)
    points = HookPoints.build(adapter, n_layers=2, n_heads=2, n_kv_heads=2, vision_layers=2, vision_heads=2)
    for point in points:
        for site in (point.site, point.base):
            if site is not None:
                tree.get_submodule(site.path)
    assert "blocks.1.hook_attn_out" in points and "blocks.1.attn.hook_pattern" not in points


@pytest.fixture(scope="module")
def molmo2():
    family = BY_NAME["molmo2"]
    hf_model, processor = family.build()
    model = HookedMLLM.from_hf(hf_model, processor)
    return model, family, model.prepare(images=family.images, prompts=family.prompts)


def test_molmo2_row_inputs_equal_the_processor_on_that_row(molmo2):
    model, family, batch = molmo2
    for row in range(len(batch)):
        alone = model.prepare(images=family.images[row : row + 1], prompts=family.prompts[row : row + 1])
        split = batch.row(row)
        assert split.inputs.keys() == alone.inputs.keys()
        for key, value in alone.inputs.items():
            torch.testing.assert_close(split.inputs[key], value, rtol=0, atol=0, msg=key)
    # the processor's own batch of the same row twice: its pooling indices are in whichever index space
    # this transformers uses (whole batch up to 5.24, per image from 5.25), and the repeat must match it
    for row in range(len(batch)):  # one image (the space is the installed model's) and two images
        twice = batch.row(row).repeat(2)
        both = model.prepare(
            images=family.images[row : row + 1] * 2, prompts=family.prompts[row : row + 1] * 2
        )
        for key, value in both.inputs.items():
            torch.testing.assert_close(twice.inputs[key], value, rtol=0, atol=0, msg=key)
    logits = model(twice)
    torch.testing.assert_close(logits[1], logits[0])


def _per_image_to_whole_batch(inputs: dict) -> torch.Tensor:
    """Molmo2 pooling indices with each image offset by the patches of the images before it (<= 5.24)."""
    grids, crops = inputs["image_grids"], inputs["image_num_crops"]
    tokens = (grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3]).tolist()
    patches = crops * inputs["pixel_values"].shape[1]
    offsets = (patches.cumsum(0) - patches).repeat_interleave(torch.tensor(tokens))
    pooling = inputs["image_token_pooling"]
    return torch.where(pooling >= 0, pooling + offsets[:, None], pooling)


def test_molmo2_row_split_keeps_either_index_space(molmo2):
    """Whole-batch indices (transformers <= 5.24) and per-image ones (>= 5.25): each split keeps its space.

    Both layouts are built by hand from the processor's output, so both are checked under any
    transformers: a row of two images (and that row repeated) split from either must equal the
    per-image indices of that row, converted to the whole-batch space where that was the space given.
    (One image reads the same in both spaces; the test above checks it against the processor.)
    """
    model, _, batch = molmo2
    pooling = batch.inputs["image_token_pooling"]
    grids = batch.inputs["image_grids"]
    second = pooling[int(grids[0, 0] * grids[0, 1] + grids[0, 2] * grids[0, 3]) :]
    if second[second >= 0].min() > 0:  # this processor gives whole-batch indices: take the offsets off
        pooling = 2 * pooling - _per_image_to_whole_batch(batch.inputs)
    per_image = replace(batch, inputs=dict(batch.inputs, image_token_pooling=pooling))
    whole = replace(
        batch, inputs=dict(batch.inputs, image_token_pooling=_per_image_to_whole_batch(per_image.inputs))
    )
    assert not whole.inputs["image_token_pooling"].equal(pooling)  # the two spaces differ on this batch
    for row in [r for r, n in enumerate(batch.images_per_row) if n > 2]:  # two spans per image
        for times in (1, 2):
            own = per_image.row(row).repeat(times).inputs  # per-image indices need no re-basing
            own_pooling = torch.cat([per_image.row(row).inputs["image_token_pooling"]] * times)
            torch.testing.assert_close(own["image_token_pooling"], own_pooling, rtol=0, atol=0)
            split = whole.row(row).repeat(times).inputs
            expected = _per_image_to_whole_batch(dict(own, image_token_pooling=own_pooling))
            torch.testing.assert_close(split["image_token_pooling"], expected, rtol=0, atol=0)


def test_molmo2_projector_hook_writes_through_its_model_output(molmo2):
    model, _, batch = molmo2
    clean = model(batch)
    same = model.run_with_hooks(batch, fwd_hooks=[("projector.hook_out", lambda act, hook: act.clone())])
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    zeroed = model.run_with_hooks(
        batch, fwd_hooks=[("projector.hook_out", lambda act, hook: torch.zeros_like(act))]
    )
    inputs = {
        k: v for k, v in batch.inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    with torch.no_grad():  # no image features at all: the <im_patch> positions keep their embeddings
        ref = model.hf_model(**inputs).logits
    torch.testing.assert_close(zeroed, ref)
    assert not torch.allclose(zeroed, clean)


def test_molmo2_spans_with_and_without_column_tokens(molmo2):
    model, family, batch = molmo2
    processor = model.processor
    expected = [(span.n_tokens, span.grid) for span in batch.images]
    assert all(span.positions is None for span in batch.images[::2])  # low-res views: one run each
    assert all(span.positions is not None for span in batch.images[1::2])  # high-res rows end in <im_col>
    for flags in ({"use_single_crop_col_tokens": None}, {"image_use_col_tokens": False}):
        variant = type(processor)(
            image_processor=processor.image_processor,
            tokenizer=processor.tokenizer,
            video_processor=None,
            chat_template=processor.chat_template,
            **flags,
        )
        other = prepare(
            variant,
            images=family.images,
            prompts=family.prompts,
            image_token_id=model.cfg.image_token_id,
            adapter=model.adapter,
            config=model.hf_model.config,
        )
        assert [(span.n_tokens, span.grid) for span in other.images] == expected
        with_cols = flags.get("image_use_col_tokens", True)
        assert all((span.positions is not None) == with_cols for span in other.images)


def test_molmo2_pixels_and_post_norm_refusal(molmo2):
    import copy

    import numpy as np

    model, family, batch = molmo2
    pixels = np.asarray(family.images[1][0], dtype=np.float32) / 255  # 20x20: one crop, no resize anywhere
    patches = (
        torch.from_numpy((pixels - 0.5) / 0.5).reshape(5, 4, 5, 4, 3).permute(0, 2, 1, 3, 4).reshape(25, 48)
    )
    row = batch.row(1).inputs["pixel_values"]
    torch.testing.assert_close(row[0], patches)  # low-res view
    torch.testing.assert_close(row[1], patches)  # the single high-res crop
    config = copy.deepcopy(model.hf_model.config)
    config.text_config.norm_after = True
    with pytest.raises(ValueError, match="norm_after"):
        model.adapter.for_config(config)


@pytest.mark.skipif(
    not os.environ.get("MOLMO_REMOTE_CODE"),
    reason="set MOLMO_REMOTE_CODE to a folder holding Molmo's modeling_molmo.py and config_molmo.py",
)
def test_molmo_adapter_against_its_remote_code():
    """benchmarks/molmo_remote_check.py on the remote code the user holds (never part of this repository)."""
    import importlib.util

    path = Path(__file__).parents[2] / "benchmarks" / "molmo_remote_check.py"
    spec = importlib.util.spec_from_file_location("molmo_remote_check", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(os.environ["MOLMO_REMOTE_CODE"]) == 0
