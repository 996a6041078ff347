"""Molmo2 video: one time step per frame, each frame resized to one crop and pooled, the frames
written with the image token between a timestamp and frame markers. Every entry point against
HF's own forward and generate, the geometry against HF's own ``get_video_features``, row splits
against the processor, the torch video processor against HF's image processor, and the refusals
(a batch mixing images and videos, which HF's forward refuses too)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hooked_mllm import HookedMLLM, positions
from hooked_mllm import testing as t
from hooked_mllm.cache import ActivationCache
from hooked_mllm.patching import activation_patching, logit_diff

from . import test_video as shared
from .families import image
from .test_video import PROMPTS, array_video, check_every_entry_point, frames, hf, video_tokens

_MODEL: list[HookedMLLM] = []


@pytest.fixture(scope="module")
def model() -> HookedMLLM:
    if not _MODEL:
        _MODEL.append(HookedMLLM.from_hf(*t.tiny_molmo2(attn_implementation="eager")))
    return _MODEL[0]


@pytest.fixture(scope="module")
def videos():
    # 4 frames of 16x24 (PIL, resized to the 20x20 crop) and 3 frames of 20x20 (an array, no resize)
    return [frames(0, 4, 16, 24), array_video(1, 3, 20, 20)]


@pytest.fixture(scope="module")
def batch(model, videos):
    return model.prepare(videos=videos, prompts=PROMPTS)


def _tokens(model, *names: str) -> list[int]:
    return model.processor.tokenizer.convert_tokens_to_ids(list(names))


# -- the torch video processor ------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(20, 20), (16, 24)])
def test_video_frames_equal_the_image_processors_low_resolution_crop(height, width):
    """Each frame of a still clip gives exactly the low-resolution crop and its pooling windows that
    HF's Molmo2 image processor gives for that picture (the same resize, normalization, patches and
    pooling), the pooling indices of frame k offset by k frames of patches."""
    _, processor = t.tiny_molmo2()
    video_processor = processor.video_processor
    still = image(3, height, width)
    out = video_processor([[still, still, still]], return_tensors="pt", do_sample_frames=False)
    pool = list(video_processor.pooling_size)
    reference = t.molmo2_image_processor(
        size=dict(processor.image_processor.size),
        patch_size=processor.image_processor.patch_size,
        overlap_margins=[1, 1],
        pooling_size=pool,
    )(still, return_tensors="pt")
    rows, cols = reference["image_grids"][0, :2].tolist()
    assert out["video_grids"].tolist() == [[3, rows, cols]]
    patches = reference["pixel_values"].shape[1]
    for k in range(3):
        torch.testing.assert_close(
            out["pixel_values_videos"][k], reference["pixel_values"][0], atol=1e-6, rtol=0
        )
        low_res = reference["image_token_pooling"][: rows * cols]
        expected = torch.where(low_res >= 0, low_res + k * patches, low_res)
        assert torch.equal(out["video_token_pooling"][k * rows * cols : (k + 1) * rows * cols], expected)


# -- geometry -----------------------------------------------------------------------------


def test_spans_are_one_time_step_per_frame_between_timestamps_and_markers(model, batch):
    """Each video: one time step per frame (frames_per_step 1), each frame's pooled grid (5x5 patches,
    3x3 windows: 2x2), its <im_patch> tokens one run per frame between <frame_start> and <frame_end>,
    a timestamp between frames; neither markers nor timestamps are video or image tokens."""
    start, end, patch = _tokens(model, "<frame_start>", "<frame_end>", "<im_patch>")
    assert [(s.time, s.grid, s.frames_per_step) for s in batch.videos] == [(4, (2, 2), 1), (3, (2, 2), 1)]
    assert batch.videos_per_row == (1, 1) and not batch.images and not batch.image_mask.any()
    assert batch.inputs["video_grids"].tolist() == [[4, 2, 2], [3, 2, 2]]
    assert torch.equal(batch.video_mask, batch.input_ids.eq(patch) & ~batch.pad_mask)
    for span in batch.videos:
        ids = batch.input_ids[span.row]
        assert list(span.token_positions) == video_tokens(batch, span.row)
        steps = [span.frame_positions(k) for k in range(span.time)]
        for step in steps:
            assert step == list(range(step[0], step[0] + 4))
            assert ids[step[0] - 1] == start and ids[step[-1] + 1] == end
        for before, after in zip(steps, steps[1:]):
            between = list(range(before[-1] + 2, after[0] - 1))  # the timestamp's tokens
            assert between and not (batch.video_mask | batch.image_mask)[span.row, between].any()
        # every frame's tokens, markers included, are multimodal tokens (they attend to each other
        # bidirectionally, across frames); the timestamps are text
        types = batch.inputs["mm_token_type_ids"][span.row]
        assert all(types[step[0] - 1 : step[-1] + 2].eq(1).all() for step in steps)
        assert int(types.sum()) == span.time * (4 + 2)
    assert (
        not (batch.text_mask & batch.video_mask).any() and not (batch.special_mask & batch.video_mask).any()
    )
    assert batch.pad_mask[1].any()  # three frames and a shorter prompt: left padding


def test_column_tokens_inside_frames_are_left_out_of_the_spans(model, videos):
    """With ``video_use_col_tokens`` each frame row ends in <im_col>: the spans keep their time steps
    and grids and list the <im_patch> positions only; logits still equal HF's."""
    processor = model.processor
    with_cols = type(processor)(
        image_processor=processor.image_processor,
        video_processor=processor.video_processor,
        tokenizer=processor.tokenizer,
        chat_template=processor.chat_template,
        use_single_crop_col_tokens=False,
        video_use_col_tokens=True,
    )
    cols = HookedMLLM.from_hf(model.hf_model, with_cols)
    batch = cols.prepare(videos=videos, prompts=PROMPTS)
    (col,) = _tokens(model, "<im_col>")
    assert int(batch.input_ids.eq(col).sum()) == (4 + 3) * 2  # one per frame row
    assert [(s.time, s.grid) for s in batch.videos] == [(4, (2, 2)), (3, (2, 2))]
    for span in batch.videos:
        assert list(span.token_positions) == video_tokens(batch, span.row)
        ids = batch.input_ids[span.row]
        for k in range(span.time):
            step = span.frame_positions(k)
            assert step[2] - step[1] == 2 and ids[step[1] + 1] == col and ids[step[3] + 1] == col
    keep = ~batch.pad_mask
    torch.testing.assert_close(cols(batch)[keep], hf(cols, batch.inputs).logits[keep])


def test_cache_video_equals_hfs_video_features(model, batch):
    """cache.video at the first layer's input less the <im_patch> embedding (Molmo2 adds the features
    to it) equals HF's get_video_features for each video, frames in the order asked, repeats kept."""
    _, cache = model.run_with_cache(batch, names_filter=["hook_embed", "blocks.0.hook_resid_pre"])
    with torch.no_grad():
        features = model.hf_model.model.get_video_features(
            batch.inputs["pixel_values_videos"],
            batch.inputs["video_token_pooling"],
            batch.inputs["video_grids"],
        ).pooler_output
    order = [2, 0, 2]
    got = cache.video("blocks.0.hook_resid_pre", frames=order)
    embed = cache.video("hook_embed", frames=order)
    for span in batch.videos:
        rows, cols = span.grid
        expected = features[span.index].reshape(span.time, rows, cols, -1)[order]
        torch.testing.assert_close(got[span.row] - embed[span.row], expected, atol=1e-5, rtol=1e-4)
    projected = model.run_with_cache(batch, names_filter="projector.hook_out")[1]["projector.hook_out"]
    torch.testing.assert_close(projected, torch.cat(features), atol=1e-6, rtol=0)


def test_contradicting_video_geometry_keeps_positions_and_refuses_frames(model, batch):
    inputs = dict(batch.inputs, video_grids=batch.inputs["video_grids"].flip(0))
    with pytest.warns(UserWarning, match="Video geometry unknown"):
        degraded = model.to_batch(inputs)
    assert torch.equal(degraded.video_mask, batch.video_mask)
    assert {(s.time, s.grid) for s in degraded.videos} == {(None, None)}
    with pytest.raises(ValueError, match="no frame geometry"):
        positions.video(frames=0).mask(degraded)
    missing = {k: v for k, v in batch.inputs.items() if k != "video_grids"}
    with pytest.raises(ValueError, match="no video geometry"):
        model.to_batch(missing)


# -- against HF ---------------------------------------------------------------------------


def test_logits_and_hidden_states_equal_hf(model, batch):
    shared.test_logits_and_hidden_states_equal_hf(model, batch)


def test_a_write_on_one_time_step_equals_a_torch_hook(model, batch):
    shared.test_a_write_on_video_tokens_equals_a_torch_hook(model, batch)


def test_every_entry_point_takes_every_input_form(model, batch, videos):
    check_every_entry_point(model, batch, videos)


def test_vision_tower_hooks_see_every_frame(model, batch):
    """The tower runs each frame as one crop: vision.hook_embed is HF's patch embedding, one row per frame."""
    assert shared.check_tower_embed(model, batch).shape[:2] == (4 + 3, 25)  # frames x patches


# -- rows ---------------------------------------------------------------------------------


def test_a_row_alone_and_repeated_equals_its_row_in_the_batch(model, batch):
    shared.test_a_row_alone_equals_its_row_in_the_batch(model, batch)


def test_row_inputs_equal_the_processor_on_that_row(model, videos, batch):
    """batch.row(i) holds exactly the processor's tensors for row i alone, and row(i).repeat(2) the
    processor's for that row twice (pooling indices, frames, grids)."""
    for row in range(2):
        alone = model.prepare(videos=videos[row : row + 1], prompts=PROMPTS[row : row + 1])
        split = batch.row(row)
        assert split.inputs.keys() == alone.inputs.keys()
        for key, value in alone.inputs.items():
            torch.testing.assert_close(split.inputs[key], value, rtol=0, atol=0, msg=key)
        twice = model.prepare(videos=videos[row : row + 1] * 2, prompts=PROMPTS[row : row + 1] * 2)
        repeated = split.repeat(2)
        for key, value in twice.inputs.items():
            torch.testing.assert_close(repeated.inputs[key], value, rtol=0, atol=0, msg=key)


def _per_video_to_whole_batch(inputs: dict) -> torch.Tensor:
    """Video pooling indices with each video offset by the patches of the videos before it."""
    grids = inputs["video_grids"]
    patches = grids[:, 0] * inputs["pixel_values_videos"].shape[1]
    offsets = (patches.cumsum(0) - patches).repeat_interleave(grids.prod(-1))
    pooling = inputs["video_token_pooling"]
    return torch.where(pooling >= 0, pooling + offsets[:, None], pooling)


def test_row_split_keeps_either_pooling_index_space(model, batch):
    """Per-video indices (transformers >= 5.25) and whole-batch ones (built by hand): the split rule
    taking rows in any order, repeats included, keeps the space it was given, as for image pooling
    (molmo2.py). (One video alone reads the same in both; the test above checks rows alone and
    repeated against the processor.)"""
    from hooked_mllm.architectures.split import rule_for

    rules = dict(batch.input_split)
    per_video = batch.inputs["video_token_pooling"]
    whole = replace(
        batch, inputs=dict(batch.inputs, video_token_pooling=_per_video_to_whole_batch(batch.inputs))
    )
    assert not whole.inputs["video_token_pooling"].equal(per_video)  # the spaces differ on this batch
    pieces = [per_video[:16], per_video[16:]]  # 4 and 3 frames of 2x2 tokens, each from its own 0
    for rows in ([1, 0], [0, 1, 1], [1], [0]):
        taken = {key: rule_for(key, rules).take(batch, key, rows) for key in batch.inputs if "video" in key}
        assert torch.equal(taken["video_token_pooling"], torch.cat([pieces[r] for r in rows]))
        got = rule_for("video_token_pooling", rules).take(whole, "video_token_pooling", rows)
        assert torch.equal(got, _per_video_to_whole_batch(taken))


def test_a_text_row_beside_a_video_row(model, videos):
    """A batch with a video in one row and none in the other: the text row alone carries no video
    input at all, and each row alone equals its row in the batch (and HF)."""
    batch = model.prepare(videos=[videos[0], None], prompts=PROMPTS)
    assert batch.videos_per_row == (1, 0)
    logits = model(batch)
    keep = ~batch.pad_mask
    torch.testing.assert_close(logits[keep], hf(model, batch.inputs).logits[keep])
    text = batch.row(1)
    assert set(text.inputs) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    for row in range(2):
        torch.testing.assert_close(model(batch.row(row))[0], logits[row, keep[row]], atol=1e-5, rtol=1e-4)


def test_a_batch_mixing_images_and_videos_is_refused_as_hf_refuses_it(model, videos):
    """Molmo2 writes images and video frames with one token and HF's forward takes pixel_values or
    pixel_values_videos, not both: such a batch is refused with a clear error (HF raises too)."""
    with pytest.raises(ValueError, match=r"both images \(pixel_values\) and videos.*separate batches"):
        model.prepare(images=[image(0, 20, 20), None], videos=[None, videos[1]], prompts=PROMPTS)
    images = model.prepare(images=[image(0, 20, 20)], prompts=PROMPTS[:1]).inputs
    video = model.prepare(videos=videos[1:], prompts=PROMPTS[:1]).inputs
    both = dict(video, **{k: v for k, v in images.items() if k.startswith(("pixel", "image"))})
    with pytest.raises(ValueError, match="provided at the same time"):
        hf(model, both)
    with pytest.raises(ValueError, match="separate batches"):
        model(both)


# -- selectors and cache.video ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_video_selectors_pick_the_cells_index_arithmetic_gives(batch, data):
    """Cells (t, r, c) at token (t * rows + r) * cols + c of the row's video tokens; time steps each
    rows * cols tokens; both checked on every row (4 and 3 frames of 2x2)."""
    cells = data.draw(
        st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 1)), max_size=6)
    )
    if any(a >= b for a, b in zip(cells, cells[1:])):
        with pytest.raises(ValueError, match="sequence order"):
            positions.video(cells=cells)
    else:
        expected = torch.zeros_like(batch.pad_mask)
        for span in batch.videos:
            for t_, r, c in cells:
                expected[span.row, video_tokens(batch, span.row)[(t_ * 2 + r) * 2 + c]] = True
        assert torch.equal(positions.video(cells=cells).mask(batch), expected)
    steps = data.draw(st.lists(st.integers(-4, 3), max_size=3))
    expected = torch.zeros_like(batch.pad_mask)
    problem = None  # each row's time steps are its own (4, then 3): the first row that cannot take them
    for span in batch.videos:
        if any(not -span.time <= s < span.time for s in steps):
            problem = problem or IndexError
            continue
        normal = [s % span.time for s in steps]
        if any(a >= b for a, b in zip(normal, normal[1:])):
            problem = problem or ValueError
        for s in normal:
            expected[span.row, video_tokens(batch, span.row)[s * 4 : (s + 1) * 4]] = True
    if problem is not None:
        with pytest.raises(problem):
            positions.video(frames=steps).mask(batch)
    else:
        assert torch.equal(positions.video(frames=steps).mask(batch), expected)


def test_cache_video_gathers_frames_in_the_order_given_and_a_saved_cache_keeps_them(model, batch, tmp_path):
    name = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=name)
    assert isinstance(cache.video(name), list)  # 4 and 3 time steps: one tensor per row
    per_row = cache.video(name, frames=[2, 0, 2])  # the same shape for both rows: one tensor
    assert per_row.shape == (2, 3, 2, 2, model.cfg.d_model)
    for span, got in zip(batch.videos, per_row):
        whole = cache[name][span.row, video_tokens(batch, span.row)].reshape(span.time, 2, 2, -1)
        torch.testing.assert_close(got, whole[[2, 0, 2]])
        torch.testing.assert_close(
            got[0, 1, 0], cache[name][span.row, video_tokens(batch, span.row)[(2 * 2 + 1) * 2]]
        )
    assert int(positions.video(frames=[0]).mask(batch).sum()) == 2 * 4
    assert not positions.resolve("image", batch).any()
    with pytest.raises(IndexError, match="out of range"):
        positions.video(cells=[(0, 2, 0)]).mask(batch)
    one = batch.row(1)
    _, cache1 = model.run_with_cache(one, names_filter=name)
    assert cache1.video(name).shape == (1, 3, 2, 2, model.cfg.d_model)
    with pytest.raises(IndexError):
        cache1.video(name, frames=[3])
    cache1.save(tmp_path / "v.cache")
    loaded = ActivationCache.load(tmp_path / "v.cache")
    assert loaded.batch.videos == cache1.batch.videos
    torch.testing.assert_close(loaded.video(name), cache1.video(name))


# -- patching over frames -----------------------------------------------------------------


def test_activation_patching_over_frames_equals_a_torch_patch(model, videos):
    """Each frame's patched metric equals HF's forward on the corrupted clip with a plain torch
    pre-hook writing the clean clip's layer-1 input at that frame's positions."""
    clean = model.prepare(videos=[videos[1]], prompts=[PROMPTS[0]])
    corrupted = model.prepare(videos=[array_video(7, 3, 20, 20)], prompts=[PROMPTS[0]])
    metric = logit_diff(3, 4)
    result = activation_patching(model, clean, corrupted, metric, hook="resid_pre", layers=[1], over="frame")
    tokens = video_tokens(clean, 0)
    assert result.labels == ["vid0[t0]", "vid0[t1]", "vid0[t2]"]
    assert result.units == [tokens[k * 4 : (k + 1) * 4] for k in range(3)]
    shared.check_frame_patching(model, clean, corrupted, metric, result)


def test_frames_as_images_stand_each_frame_as_one_image(model, batch):
    """Each frame of row 0's video stands as one image on its own grid, at the frame's positions; a
    location map per frame reads those positions (one LocationMap of the frame's grid each)."""
    from hooked_mllm.mechanism import image_locations

    alone = batch.row(0)
    as_images = alone.frames_as_images()
    span = alone.videos[0]
    assert as_images.images_per_row == (span.time,)
    for k, frame in enumerate(as_images.images):
        assert list(frame.token_positions) == span.frame_positions(k) and frame.grid == span.grid
    assert torch.equal(positions.resolve("image", as_images), alone.video_mask)
    assert image_locations(model, as_images, image=span.time - 1).values.shape == span.grid
