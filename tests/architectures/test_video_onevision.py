"""LLaVA-OneVision video: each frame pooled 2x, frames one after the other, one newline after the
last. Every entry point against HF's own forward and generate, the geometry against HF's own
``get_video_features``, the newline against ``image_newline``, and the torch video processor
against HF's image processor."""

from __future__ import annotations

import math

import pytest
import torch

from hooked_mllm import HookedMLLM, positions
from hooked_mllm import testing as t
from hooked_mllm.patching import activation_patching, logit_diff
from hooked_mllm.testing.video import TorchLlavaOnevisionVideoProcessor

from . import test_video as shared
from .families import image
from .test_video import PROMPTS, array_video, check_every_entry_point, frames, hf, video_tokens

_MODEL: list[HookedMLLM] = []


@pytest.fixture(scope="module")
def model() -> HookedMLLM:
    if not _MODEL:
        _MODEL.append(HookedMLLM.from_hf(*t.tiny_llava_onevision(attn_implementation="eager")))
    return _MODEL[0]


@pytest.fixture(scope="module")
def videos():
    # 3 frames of 16x24 (PIL, resized to the tower's 16x16) and 3 frames of 16x16 (an array)
    return [frames(0, 3, 16, 24), array_video(1, 3, 16, 16)]


@pytest.fixture(scope="module")
def batch(model, videos):
    return model.prepare(videos=videos, prompts=PROMPTS)


def test_processor_frames_equal_the_image_processors_base_tile():
    """A 16x16 frame gives exactly the base tile HF's OneVision image processor gives for that picture."""
    _, processor = t.tiny_llava_onevision()
    still = image(3, 16, 16)
    video = processor.video_processor([[still, still]], return_tensors="pt")["pixel_values_videos"]
    ref = processor.image_processor(images=[still], return_tensors="pt")["pixel_values"]
    assert video.shape == (1, 2, 3, 16, 16)
    torch.testing.assert_close(video[0, 0], ref[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(video[0, 1], ref[0, 0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one frame count"):
        TorchLlavaOnevisionVideoProcessor(size=16)([array_video(0, 2, 16, 16), array_video(1, 3, 16, 16)])


def test_spans_are_the_pooled_frames_and_the_newline_is_left_out(model, batch):
    """frames * ceil(side / 2) ** 2 + 1 video tokens per row (side = image_size / patch_size = 4): the
    span covers all but the last, whose first-layer input is HF's image_newline."""
    config = model.hf_model.config.vision_config
    side = math.ceil(config.image_size // config.patch_size / 2)
    resid, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_pre")
    for span in batch.videos:
        tokens = video_tokens(batch, span.row)
        assert (span.time, span.grid, span.frames_per_step) == (3, (side, side), 1)
        assert len(tokens) == 3 * side * side + 1
        assert list(span.token_positions) == tokens[:-1]
        newline = cache["blocks.0.hook_resid_pre"][span.row, tokens[-1]]
        torch.testing.assert_close(newline, model.hf_model.model.image_newline.detach())
    assert batch.pad_mask[0].any() or batch.pad_mask[1].any()  # prompts of different lengths: left padding
    everything = positions.video().mask(batch)
    assert int(everything.sum()) == int(batch.video_mask.sum()) - 2  # the two newlines stay out of frames


def test_cache_video_equals_hfs_pooled_video_features(model, batch):
    """cache.video at the first layer's input, frame by frame, equals HF's get_video_features (tower,
    projector, 2x bilinear pooling) for each video, in the order asked, repeats kept."""
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_pre")
    with torch.no_grad():
        features = model.hf_model.model.get_video_features(
            batch.inputs["pixel_values_videos"],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        ).pooler_output
    got = cache.video("blocks.0.hook_resid_pre", frames=[2, 0, 2])
    for span in batch.videos:
        rows, cols = span.grid
        expected = features[span.index, :-1].reshape(span.time, rows, cols, -1)
        torch.testing.assert_close(got[span.row], expected[[2, 0, 2]], atol=1e-5, rtol=1e-4)


def test_logits_and_hidden_states_equal_hf(model, batch):
    shared.test_logits_and_hidden_states_equal_hf(model, batch)


def test_a_write_on_one_time_step_equals_a_torch_hook(model, batch):
    shared.test_a_write_on_video_tokens_equals_a_torch_hook(model, batch)


def test_every_entry_point_takes_every_input_form(model, batch, videos):
    check_every_entry_point(model, batch, videos)


def test_vision_tower_hooks_see_every_frame(model, batch):
    assert shared.check_tower_embed(model, batch).shape[0] == 2 * 3  # videos x frames


def test_rows_alone_and_a_batch_mixing_images_and_videos(model, batch, videos):
    shared.test_a_row_alone_equals_its_row_in_the_batch(model, batch)
    mixed = model.prepare(images=[image(0, 16, 24), None], videos=[None, videos[1]], prompts=PROMPTS)
    shared.check_mixed_batch(model, mixed)


def test_activation_patching_over_frames_equals_a_torch_patch(model, videos):
    clean = model.prepare(videos=[videos[1]], prompts=[PROMPTS[0]])
    corrupted = model.prepare(videos=[array_video(7, 3, 16, 16)], prompts=[PROMPTS[0]])
    metric = logit_diff(3, 4)
    result = activation_patching(model, clean, corrupted, metric, hook="resid_pre", layers=[1], over="frame")
    tokens = video_tokens(clean, 0)[:-1]
    assert result.units == [tokens[k * 4 : (k + 1) * 4] for k in range(3)]
    shared.check_frame_patching(model, clean, corrupted, metric, result)


def test_contradicting_video_inputs_keep_positions_and_refuse_frames(model, batch):
    """Two frames' worth of pixel values for three frames' tokens: positions kept, no frame geometry."""
    inputs = dict(batch.inputs, pixel_values_videos=batch.inputs["pixel_values_videos"][:, :2])
    with pytest.warns(UserWarning, match="Video geometry unknown"):
        degraded = model.to_batch(inputs)
    assert torch.equal(degraded.video_mask, batch.video_mask)
    assert {(s.time, s.grid) for s in degraded.videos} == {(None, None)}
    with pytest.raises(ValueError, match="no frame geometry"):
        positions.video(frames=0).mask(degraded)


def test_occlusion_map_per_frame_equals_occluding_that_frame_in_hfs_forward(model, videos):
    """occlusion_map(frames, image=t): each cell's drop in log p(answer) equals filling that cell's pixels of
    frame t (and no other frame) in pixel_values_videos and running HF's forward."""
    from hooked_mllm.mechanism import occlusion_map

    clip = model.prepare(videos=[videos[1]], prompts=[PROMPTS[0]])
    frames_batch = clip.frames_as_images()
    logits = hf(model, clip.inputs).logits[0, -1].float()
    answer = int(logits.argmax())
    clean = logits.log_softmax(-1)[answer]
    for step in (0, 2):
        got = occlusion_map(model, frames_batch, image=step, target=answer, batch_size=3)
        rows, cols = clip.videos[0].grid
        size = clip.inputs["pixel_values_videos"].shape[-1]
        expected = torch.empty(rows, cols)
        for r in range(rows):
            for c in range(cols):
                pixels = clip.inputs["pixel_values_videos"].clone()
                pixels[
                    0,
                    step,
                    :,
                    r * size // rows : (r + 1) * size // rows,
                    c * size // cols : (c + 1) * size // cols,
                ] = 0
                out = hf(model, dict(clip.inputs, pixel_values_videos=pixels)).logits[0, -1].float()
                expected[r, c] = clean - out.log_softmax(-1)[answer]
        torch.testing.assert_close(torch.as_tensor(got.values).float(), expected, atol=1e-5, rtol=1e-4)
        assert float(expected.abs().max()) > 0  # occluding the frame changes the answer's probability
