"""The adapter's typed groups and split rules: clear errors on bad construction, and rules that cut
hand-written tensors where an independent slice says they should."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hooked_mllm.architectures import (
    LLAVA,
    Adapter,
    BlockLayout,
    InputLayout,
    ModuleLayout,
    TokenLayout,
    registered_adapters,
)
from hooked_mllm.architectures.split import (
    Computed,
    Patches,
    PerImage,
    PerRow,
    PerVideo,
    Shared,
    Tiles,
    Tokens,
    rule_for,
)
from hooked_mllm.inputs import MultimodalBatch

IMAGE = 9
PATHS = dict(lm_layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head")


def _batch(split=(), pixel_values=None, **extra) -> MultimodalBatch:
    """Two rows: row 0 holds one image of 2 tokens (left-padded by one), row 1 two images of 3 and 1
    tokens.
    """
    ids = torch.tensor([[0, 5, IMAGE, IMAGE, 6, 7], [IMAGE, IMAGE, IMAGE, 8, IMAGE, 6]])
    inputs = {"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]), **extra}
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    batch = MultimodalBatch.from_hf(inputs, image_token_id=IMAGE, adapter=None)
    return replace(batch, input_split=InputLayout(split=split).split)


@pytest.mark.parametrize(
    ("split", "error", "message"),
    [
        ({"pixel_values": "tiles"}, ValueError, r"the string 'tiles'; rules are typed: use Tiles\(\)"),
        ({"pixel_values": "patches:image_grid_thw"}, ValueError, r"use Patches\('image_grid_thw'\)"),
        ({"pixel_values": "rows"}, ValueError, r"use one of Tokens\(\), PerImage\(\)"),
        ({"pixel_values": lambda batch, rows: batch}, TypeError, r"wrap a function .* in Computed"),
        ((("pixel_values", Tiles()), ("pixel_values", PerRow())), ValueError, "names 'pixel_values' twice"),
        ((("pixel_values",),), ValueError, r"\(key, rule\) pairs"),
    ],
)
def test_bad_split_rules_are_refused_saying_what_to_write(split, error, message):
    with pytest.raises(error, match=message):
        InputLayout(split=split)


def test_bad_groups_are_refused_at_construction():
    with pytest.raises(ValueError, match="Patches needs the key"):
        Patches("")
    with pytest.raises(TypeError, match="Computed needs a function"):
        Computed("tiles")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vision_layers and vision_block together"):
        ModuleLayout(**PATHS, vision_layers="model.vision.layers")
    with pytest.raises(ValueError, match="ModuleLayout.final_norm must be a dotted module path"):
        ModuleLayout(**{**PATHS, "final_norm": ""})
    with pytest.raises(TypeError, match="TokenLayout.grid must be a function"):
        TokenLayout(grid="square")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"write \('LlavaConfig',\)"):
        Adapter(name="x", config_classes="LlavaConfig", modules=ModuleLayout(**PATHS))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Adapter.inputs takes InputLayout"):
        Adapter(name="x", config_classes=("C",), modules=ModuleLayout(**PATHS), inputs=(("k", Tiles()),))
    with pytest.raises(TypeError):  # groups are built by keyword
        ModuleLayout("model.layers", "model.embed_tokens", "model.norm", "lm_head")  # type: ignore[misc]
    with pytest.raises(TypeError):
        BlockLayout("self_attn")  # type: ignore[misc]


def test_every_registered_split_is_typed():
    for adapter in registered_adapters().values():
        for layout in (adapter, *adapter.variants):
            assert all(
                isinstance(rule, (Tokens, PerImage, PerVideo, PerRow, Patches, Tiles, Shared, Computed))
                for _, rule in layout.inputs.split
            ), layout.name


def test_default_rules():
    assert [
        type(rule_for(key, {}))
        for key in ("input_ids", "token_type_ids", "pixel_values", "image_sizes", "other")
    ] == [Tokens, Tokens, PerImage, PerImage, Shared]
    assert rule_for("pixel_values", {"pixel_values": Tiles()}) == Tiles()


def test_rules_cut_each_row_as_an_independent_slice_does():
    pixels = torch.arange(3 * 2).reshape(3, 2)  # one entry per image: row 0 has image 0, row 1 images 1 and 2
    per_row = torch.arange(2 * 5).reshape(2, 5)
    thw = torch.tensor([[1, 2, 2], [1, 1, 3], [1, 2, 1]])  # 4, 3 and 2 patches
    patches = torch.arange(9 * 2).reshape(9, 2)
    tiles = torch.arange(12).reshape(12, 1)  # 6 image tokens in all: 2 tiles per token
    batch = _batch(
        pixel_values=pixels,
        crops=per_row,
        thw=thw,
        packed=patches,
        tiles=tiles,
        split={"crops": PerRow(), "packed": Patches("thw"), "tiles": Tiles()},
    )
    assert batch.images_per_row == (1, 2)
    row0, row1 = batch.row(0), batch.row(1)
    assert row0.input_ids.tolist() == [[5, IMAGE, IMAGE, 6, 7]]  # padding removed
    assert row0.inputs["pixel_values"].equal(pixels[:1]) and row1.inputs["pixel_values"].equal(pixels[1:])
    assert row0.inputs["crops"].equal(per_row[:1]) and row1.inputs["crops"].equal(per_row[1:])
    assert row0.inputs["packed"].equal(patches[:4]) and row1.inputs["packed"].equal(patches[4:])
    assert row0.inputs["tiles"].equal(tiles[:4]) and row1.inputs["tiles"].equal(tiles[4:])
    assert row1.inputs["thw"].equal(thw)  # not listed, not a known key: shared
    assert Tokens().take(batch, "input_ids", [1, 1]).equal(batch.input_ids[[1, 1]])
    assert PerImage().take(batch, "pixel_values", [1, 0]).equal(pixels[[1, 2, 0]])


def test_computed_rules_give_the_rows_tensors_in_row_and_repeat():
    seen = []

    def take(batch, rows):
        seen.append(list(rows))
        return torch.tensor(rows)

    one = _batch(split={"special": Computed(take)}, special=torch.zeros(1)).row(1)
    assert one.inputs["special"].tolist() == [1]
    assert one.repeat(3).inputs["special"].tolist() == [0, 0, 0] and seen == [[1], [0, 0, 0]]


def test_pixel_values_per_span_refuses_an_image_without_its_placeholder():
    ids = torch.tensor([[5, IMAGE, IMAGE, 6]])
    inputs = {
        "input_ids": ids,
        "pixel_values": torch.zeros(2, 3, 4, 4),
    }  # two images, one run of image tokens
    assert LLAVA.inputs.pixel_values_per_span
    with pytest.raises(ValueError, match=r"2 images \(pixel_values\) but 1 runs of image tokens"):
        MultimodalBatch.from_hf(inputs, image_token_id=IMAGE, adapter=LLAVA)
    lenient = replace(LLAVA, inputs=replace(LLAVA.inputs, pixel_values_per_span=False))
    assert len(MultimodalBatch.from_hf(inputs, image_token_id=IMAGE, adapter=lenient).images) == 1
