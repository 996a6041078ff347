"""LLaVA-NeXT-Video: each frame pooled by the vision resampler (average, stride 2), frames one after the
other, no newline. Every entry point against HF's own forward and generate, the geometry against HF's own
``get_video_features``, images against LLaVA-NeXT's anyres rules (the conformance suite), and the torch
video processor against HF's CLIP image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from hooked_mllm import HookedMLLM, positions
from hooked_mllm import testing as t
from hooked_mllm.patching import activation_patching, logit_diff
from hooked_mllm.testing.video import TorchLlavaNextVideoVideoProcessor

from . import test_video as shared
from .families import image
from .test_video import PROMPTS, array_video, check_every_entry_point, frames, hf, video_tokens

_MODEL: list[HookedMLLM] = []


@pytest.fixture(scope="module")
def model() -> HookedMLLM:
    if not _MODEL:
        _MODEL.append(HookedMLLM.from_hf(*t.tiny_llava_next_video(attn_implementation="eager")))
    return _MODEL[0]


@pytest.fixture(scope="module")
def videos():
    # 3 frames of 16x24 (PIL; the shortest edge is already 16, the centre 16x16 is kept) and 3 frames of
    # 20x20 (an array, resized to 16x16)
    return [frames(0, 3, 16, 24), array_video(1, 3, 20, 20)]


@pytest.fixture(scope="module")
def batch(model, videos):
    return model.prepare(videos=videos, prompts=PROMPTS)


def test_processor_frames_are_hfs_clip_crop_of_the_picture():
    """A 16x24 frame (no resize: its shortest edge is the tower's size) gives exactly the centre crop HF's
    CLIP image processor gives for that picture; a 20x30 frame is resized to 16x24 first."""
    still = image(3, 16, 24)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    video = TorchLlavaNextVideoVideoProcessor(size=16)([[still, still]], return_tensors="pt")
    ref = clip(images=[still], return_tensors="pt")["pixel_values"]
    assert video["pixel_values_videos"].shape == (1, 2, 3, 16, 16)
    torch.testing.assert_close(video["pixel_values_videos"][0, 0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(video["pixel_values_videos"][0, 1], ref[0], atol=1e-5, rtol=0)
    big = np.array(image(4, 20, 30))
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(big).permute(2, 0, 1)[None].float(), size=(16, 24), mode="bicubic", antialias=True
    )
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    expected = (resized[0, :, :, 4:20] / 255.0 - mean) / std
    got = TorchLlavaNextVideoVideoProcessor(size=16)([big[None]])["pixel_values_videos"][0, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="LLaVA-NeXT-Video stacks the videos"):
        TorchLlavaNextVideoVideoProcessor(size=16)([array_video(0, 2, 16, 16), array_video(1, 3, 16, 16)])


def test_spans_are_the_pooled_frames_with_no_newline(model, batch):
    """frames * (side // stride) ** 2 video tokens per row (side = image_size / patch_size = 4, stride 2),
    every one of them in the span."""
    config = model.hf_model.config
    side = config.vision_config.image_size // config.vision_config.patch_size // config.spatial_pool_stride
    for span in batch.videos:
        tokens = video_tokens(batch, span.row)
        assert (span.time, span.grid, span.frames_per_step) == (3, (side, side), 1)
        assert list(span.token_positions) == tokens and len(tokens) == 3 * side * side
    assert batch.pad_mask[0].any() or batch.pad_mask[1].any()  # prompts of different lengths: left padding
    assert int(positions.video().mask(batch).sum()) == int(batch.video_mask.sum())


def test_cache_video_equals_hfs_pooled_video_features(model, batch):
    """cache.video at the first layer's input, frame by frame, equals HF's get_video_features (tower,
    resampler, projector) for each video, in the order asked, repeats kept."""
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_pre")
    with torch.no_grad():
        features = model.hf_model.model.get_video_features(
            batch.inputs["pixel_values_videos"],
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ).pooler_output
    got = cache.video("blocks.0.hook_resid_pre", frames=[2, 0, 2])
    for span in batch.videos:
        rows, cols = span.grid
        expected = features[span.index].reshape(span.time, rows, cols, -1)
        torch.testing.assert_close(got[span.row], expected[[2, 0, 2]], atol=1e-5, rtol=1e-4)


def test_logits_and_hidden_states_equal_hf(model, batch):
    shared.test_logits_and_hidden_states_equal_hf(model, batch)


def test_a_write_on_one_time_step_equals_a_torch_hook(model, batch):
    shared.test_a_write_on_video_tokens_equals_a_torch_hook(model, batch)


def test_every_entry_point_takes_every_input_form(model, batch, videos):
    check_every_entry_point(model, batch, videos)


def test_vision_tower_and_projector_hooks_see_every_frame(model, batch):
    """The tower's embedding sees every frame (CLS included); the projector's input is the resampler's
    pooled map, [videos * frames, (side // 2) ** 2, d_vision], as HF's own modules see them."""
    names = ["vision.hook_embed", "projector.hook_in"]
    _, cache = model.run_with_cache(batch, names_filter=names)
    captured = {}
    embed = model.adapter.module(model.hf_model, model.adapter.modules.vision_embed)
    resampler = model.hf_model.model.vision_resampler
    handles = [
        embed.register_forward_hook(lambda m, i, o: captured.setdefault("embed", o)),
        resampler.register_forward_hook(lambda m, i, o: captured.setdefault("pooled", o)),
    ]
    try:
        hf(model, batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert cache["vision.hook_embed"].shape[:2] == (2 * 3, 4 * 4 + 1)  # videos x frames, patches + CLS
    torch.testing.assert_close(cache["vision.hook_embed"], captured["embed"])
    assert cache["projector.hook_in"].shape[:2] == (2 * 3, 2 * 2)
    torch.testing.assert_close(cache["projector.hook_in"], captured["pooled"])


def test_rows_alone_and_a_batch_mixing_images_and_videos(model, batch, videos):
    shared.test_a_row_alone_equals_its_row_in_the_batch(model, batch)
    mixed = model.prepare(images=[image(0, 16, 32), None], videos=[None, videos[1]], prompts=PROMPTS)
    assert [len(mixed.images_of(r)) for r in range(2)] == [2, 0]  # anyres: base view and tiles
    shared.check_mixed_batch(model, mixed)


def test_activation_patching_over_frames_equals_a_torch_patch(model, videos):
    clean = model.prepare(videos=[videos[1]], prompts=[PROMPTS[0]])
    corrupted = model.prepare(videos=[array_video(7, 3, 16, 16)], prompts=[PROMPTS[0]])
    metric = logit_diff(3, 4)
    result = activation_patching(model, clean, corrupted, metric, hook="resid_pre", layers=[1], over="frame")
    tokens = video_tokens(clean, 0)
    assert result.units == [tokens[k * 4 : (k + 1) * 4] for k in range(3)]
    shared.check_frame_patching(model, clean, corrupted, metric, result)
