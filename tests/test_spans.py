"""Span finding on hand-written id tensors: no processor, tokenizer or model.

Ids: 9 is the image token, 5 a row separator (Pixtral's ``[IMG_BREAK]``), 0 padding, other
small numbers text.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm.batch import MultimodalBatch
from hooked_mllm.inputs import ImageSpan
from hooked_mllm.inputs import MultimodalBatch as FromInputs
from hooked_mllm.spans import find_image_spans

IMG, BREAK, PAD = 9, 5, 0


def mask(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows).eq(IMG)


def where(spans) -> list[tuple[int, int, int, tuple[int, int] | None]]:
    return [(s.row, s.start, s.end, s.grid) for s in spans]


def test_public_names_still_importable_from_inputs():
    assert FromInputs is MultimodalBatch and ImageSpan.__module__ == "hooked_mllm.spans"


def test_one_run_per_image_with_its_grid():
    ids = [[1, 9, 9, 9, 9, 2, 3]]
    spans, per_row = find_image_spans(mask(*ids), image_grid=lambda n: (2, n // 2))
    assert where(spans) == [(0, 1, 5, (2, 2))] and per_row == (1,)
    assert spans[0].positions is None and list(spans[0].token_positions) == [1, 2, 3, 4]


def test_several_images_over_several_rows():
    ids = [[9, 9, 1, 9, 9, 9, 9, 2], [1, 1, 1, 1, 1, 1, 1, 1], [1, 9, 9, 9, 9, 9, 9, 1]]
    spans, per_row = find_image_spans(mask(*ids))
    assert where(spans) == [(0, 0, 2, None), (0, 3, 7, None), (2, 1, 7, None)]
    assert per_row == (2, 0, 1) and [s.index for s in spans] == [0, 1, 2]


def test_touching_images_are_cut_by_their_token_counts():
    ids = [[1, 9, 9, 9, 9, 9, 9, 2]]
    spans, per_row = find_image_spans(mask(*ids), token_counts=[2, 4], image_grid=lambda n: (1, n))
    assert where(spans) == [(0, 1, 3, (1, 2)), (0, 3, 7, (1, 4))] and per_row == (2,)
    # Counts that do not add up to the run leave it whole rather than guess.
    spans, _ = find_image_spans(mask(*ids), token_counts=[2, 3])
    assert where(spans) == [(0, 1, 7, None)]


def test_grids_from_the_image_inputs_are_checked_against_the_runs():
    ids = [[9, 9, 9, 9, 1, 9, 9, 9, 9, 9, 9]]
    spans, _ = find_image_spans(mask(*ids), grids=[(2, 2), (2, 3)])
    assert [s.grid for s in spans] == [(2, 2), (2, 3)]
    with pytest.warns(UserWarning, match="Image geometry unknown"):
        spans, _ = find_image_spans(mask(*ids), grids=[(2, 2), (3, 3)])
    assert [s.grid for s in spans] == [None, None] and where(spans)[1][1:3] == (5, 11)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_is_never_an_image_token(side):
    # The pad id equals the image id here, so only the attention mask tells them apart.
    body = [1, 9, 9, 9, 9, 2]
    pad = [IMG, IMG]
    ids = torch.tensor([pad + body if side == "left" else body + pad, [3] * 8])
    attention = torch.ones_like(ids)
    if side == "left":
        attention[0, :2] = 0
    else:
        attention[0, -2:] = 0
    batch = MultimodalBatch.from_hf({"input_ids": ids, "attention_mask": attention}, image_token_id=IMG)
    offset = 2 if side == "left" else 0
    assert where(batch.images) == [(0, 1 + offset, 5 + offset, None)] and batch.images_per_row == (1, 0)
    assert int(batch.pad_mask.sum()) == 2 and not bool((batch.pad_mask & batch.image_mask).any())
    row = batch.row(0)  # padding removed: the span moves left with it
    assert where(row.images) == [(0, 1, 5, None)] and row.input_ids.tolist() == [body]


def test_row_breaks_join_the_rows_of_one_image():
    ids = torch.tensor([[1, 9, 9, 9, 5, 9, 9, 9, 5, 9, 9, 9, 2, 5, 9, 9, 3]])
    spans, per_row = find_image_spans(ids.eq(IMG), ids=ids, row_break=BREAK)
    assert where(spans) == [(0, 1, 12, (3, 3)), (0, 14, 16, (1, 2))] and per_row == (2,)
    assert spans[0].positions == (1, 2, 3, 5, 6, 7, 9, 10, 11)
    # Without the separator id the rows are separate images.
    assert len(find_image_spans(ids.eq(IMG))[0]) == 4


def test_views_of_one_image_become_spans():
    ids = [[1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 2]]
    views = [(10, [((0, 1, 2, 3), (2, 2)), ((4, 5, 6, 7, 8, 9), (2, 3))])]
    spans, per_row = find_image_spans(mask(*ids), views=views)
    assert where(spans) == [(0, 1, 5, (2, 2)), (0, 5, 11, (2, 3))] and per_row == (2,)
    # A view whose tokens are not contiguous lists its positions.
    gappy = [(10, [((0, 2, 4, 6), (2, 2))])]
    spans, _ = find_image_spans(mask(*ids), views=gappy)
    assert spans[0].positions == (1, 3, 5, 7)
    with pytest.warns(UserWarning, match="Image geometry unknown"):
        spans, _ = find_image_spans(mask(*ids), views=[(8, views[0][1])])
    assert where(spans) == [(0, 1, 11, None)]


def test_no_image_tokens():
    spans, per_row = find_image_spans(mask([1, 2, 3], [4, 5, 6]))
    assert spans == () and per_row == (0, 0)
