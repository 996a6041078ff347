"""Frame by frame: location maps per time step (``batch.frames_as_images``) against the model's own
patterns and logits, and attention-view labels ``vid0[t r c]`` against the span arithmetic.

Qwen3-VL, whose time steps are separate runs (a timestamp before each), so a frame's positions are
not an offset of the video's first token."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm import testing as t
from hooked_mllm.mechanism import attention_map, image_locations, lens_location_map
from hooked_mllm.viz import token_labels
from hooked_mllm.viz.attention import part_positions

from .families import image
from .test_video import PROMPTS, array_video, video_tokens

_MODEL: list[HookedMLLM] = []


@pytest.fixture(scope="module")
def model() -> HookedMLLM:
    if not _MODEL:
        _MODEL.append(HookedMLLM.from_hf(*t.tiny_qwen3_vl(attn_implementation="eager")))
    return _MODEL[0]


@pytest.fixture(scope="module")
def batch(model):
    return model.prepare(videos=[array_video(0, 6, 16, 24)], prompts=[PROMPTS[0]])


def test_frames_as_images_makes_each_time_step_an_image(model, batch):
    frames = batch.frames_as_images()
    span = batch.videos[0]
    tokens = video_tokens(batch, 0)
    rows, cols = span.grid
    assert span.time == 3 and len(frames.images) == 3 and frames.images_per_row == (3,)
    for k, frame in enumerate(frames.images):
        assert list(frame.token_positions) == tokens[k * rows * cols : (k + 1) * rows * cols]
        assert frame.grid == span.grid
    assert frames.image_mask[0].nonzero().flatten().tolist() == tokens
    assert torch.equal(frames.input_ids, batch.input_ids) and frames.videos == batch.videos
    mixed = model.prepare(
        images=[image(0, 16, 16), None], videos=[None, array_video(1, 2, 16, 16)], prompts=PROMPTS
    )
    with pytest.raises(ValueError, match="without images"):
        mixed.frames_as_images()
    with pytest.raises(ValueError, match="No row of this batch holds a video 1"):
        batch.frames_as_images(video=1)


def test_attention_map_per_frame_equals_the_patterns(model, batch):
    """attention_map(frames, image=t): the mean over layers and heads of the last token's attention to
    time step t's tokens, read from run_with_cache's patterns on the untouched batch."""
    frames = batch.frames_as_images()
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(batch, names_filter=names)
    last = int(batch.last_positions()[0])
    mean = torch.stack([cache[name][0, :, last] for name in names]).mean(dim=(0, 1))  # [pos]
    tokens = video_tokens(batch, 0)
    rows, cols = batch.videos[0].grid
    for step in range(batch.videos[0].time):
        where = tokens[step * rows * cols : (step + 1) * rows * cols]
        got = attention_map(model, frames, image=step)
        assert got.positions == tuple(where)
        expected = mean[where].reshape(rows, cols).double().numpy()
        assert got.values == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_lens_map_per_frame_at_the_last_layer_is_the_softmax_of_the_logits(model, batch):
    frames = batch.frames_as_images()
    logits = model(batch)[0]
    target = int(logits[-1].argmax())
    probs = logits.float().softmax(-1)[:, target]
    rows, cols = batch.videos[0].grid
    maps = [lens_location_map(model, frames, image=step) for step in range(batch.videos[0].time)]
    for step, got in enumerate(maps):
        expected = probs[list(batch.videos[0].frame_positions(step))].reshape(rows, cols).double().numpy()
        assert got.values == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert image_locations(model, frames, image=2).positions == tuple(batch.videos[0].frame_positions(2))


def test_attention_labels_name_video_cells_by_time_row_and_column(model, batch):
    labels = token_labels(batch, 0)
    span = batch.videos[0]
    rows, cols = span.grid
    tokens = video_tokens(batch, 0)
    for k, position in enumerate(tokens):
        step, rest = divmod(k, rows * cols)
        assert labels[position] == f"vid0[t{step} r{rest // cols}c{rest % cols}]"
    assert sum(label.startswith("vid0[") for label in labels) == len(tokens)
    assert part_positions(batch, 0, "video") == tokens
    text = part_positions(batch, 0, "text")
    assert not set(text) & set(tokens) and len(text) + len(tokens) == int((~batch.pad_mask[0]).sum())
