"""The shipped ``toy-video`` (a LLaVA-OneVision) loads in HookedMLLM, answers clips it never saw well above
chance, its per-frame attention maps are scored as an independent count from the model's own attention
patterns says, and patching frames finds the frame a question names (docs/video.md, "A toy video world")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_mllm import HookedMLLM, toy
from hooked_mllm.toy.video import VideoWorld
from hooked_mllm.toy.video_eval import evaluate_video, frame_patching, video_pointing
from hooked_mllm.toy.world import World

SEED = 4321  # never used in training (training clips come from VideoWorld(20000 + seed))


@pytest.fixture(scope="module")
def model() -> HookedMLLM:
    torch.set_num_threads(1)
    return toy.load("toy-video")


def test_it_loads_as_a_onevision_model_with_one_token_per_cell(model):
    clip = VideoWorld(seed=SEED).clip(0)
    batch = model.prepare(videos=[list(clip.frames)], prompts=["which object moved ?"])
    (span,) = batch.videos
    assert type(model.hf_model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert (span.time, span.grid, span.frames_per_step) == (3, (3, 3), 1)
    assert int(batch.video_mask.sum()) == 3 * 9 + 1
    assert toy.checkpoint_dir("toy-video").joinpath("toy_meta.json").is_file()
    # an image (never trained on) still gets the token count the model computes: its two 6 x 6 views
    scene = World(seed=SEED).scene(0)
    still = model.prepare(images=[scene.image], prompts=["how many objects ?"])
    assert [s.grid for s in still.images] == [(6, 6), (6, 6)]
    with torch.no_grad():
        torch.testing.assert_close(model(still), model.hf_model(**still.inputs).logits)


def test_it_answers_unseen_clips_well_above_chance(model):
    """Thresholds well below the measured accuracy (docs/video.md: 100 % on every type, 300 clips)."""
    report = evaluate_video(model, seed=SEED, n=60)
    for row in ("first", "last", "first, moving", "last, moving"):
        assert report.accuracy[row] >= 0.9, report.format()
        assert report.chance[row] == pytest.approx(1 / 9)
    assert report.accuracy["moved"] >= 0.9 and report.accuracy["moved"] > report.chance["moved"] + 0.2
    assert report.counts["moved"] == 60 and report.counts["first"] == report.counts["last"]


def _attention_values(model, clip, qa) -> np.ndarray:
    """Mean over layers and heads of the last position's attention to each frame's tokens, ``[time, 3, 3]``,
    read from run_with_cache's patterns of the video batch itself."""
    batch = model.prepare(videos=[list(clip.frames)], prompts=[qa.question])
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(batch, names_filter=names)
    last = int(batch.last_positions()[0])
    mean = torch.stack([cache[name][0, :, last] for name in names]).mean(dim=(0, 1))
    span = batch.videos[0]
    return np.stack(
        [mean[list(span.frame_positions(t))].reshape(3, 3).double().numpy() for t in range(span.time)]
    )


def test_pointing_scores_equal_an_independent_count_on_the_attention_maps(model):
    clips = VideoWorld(seed=SEED + 1).sample(3)
    result = video_pointing(model, clips, methods=["attention"], batch_size=4)
    joint, frame, count = [], [], 0
    for clip in clips:
        for qa in clip.questions:
            values = _attention_values(model, clip, qa)
            t, r, c = np.unravel_index(int(values.argmax()), values.shape)
            joint.append((int(t), int(r), int(c)) in qa.evidence)
            if len(qa.evidence) == 1:
                frame.append(int(t) == qa.frame)
            count += 1
    scores = result.scores["attention"]
    assert result.counts["all"] == count
    assert scores["joint"]["all"] == pytest.approx(np.mean(joint))
    assert scores["frame"]["all"] == pytest.approx(np.mean(frame))
    assert scores["joint"]["all"] > result.chance["joint"]["all"] + 0.3  # the maps point (measured 0.8-0.9)


def test_patching_frames_finds_the_frame_the_question_names(model):
    result = frame_patching(model, VideoWorld(seed=SEED + 2).sample(3), layers=[0, model.cfg.n_layers - 1])
    assert set(result.restored) == {"first", "last"} and result.layers == [0, model.cfg.n_layers - 1]
    for qtype, named in (("first", 0), ("last", 2)):
        assert result.named_frame_wins[qtype] == 1.0
        first_layer = result.restored[qtype][0]
        assert first_layer[named] > 0.8
        assert all(abs(float(first_layer[t])) < 0.2 for t in range(3) if t != named)
