"""The toy video model's processor and construction: what the processor makes is what the OneVision model
reads (pixels, 28 video tokens, labels on answers), and the untrained model is toy-llava-deep's tower and
projector pooled cell by cell (checked against the still model's own image features)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hooked_mllm.toy.processor import build_processor, prompt_text
from hooked_mllm.toy.tokenizer import VOCAB, build_tokenizer
from hooked_mllm.toy.video import VideoWorld, cell_token
from hooked_mllm.toy.video_model import VideoRecipe, build_video_model, encode_clips, sample_video_qa
from hooked_mllm.toy.video_processor import VIDEO_VOCAB, build_video_processor, video_prompt


@pytest.fixture(scope="module")
def processor():
    return build_video_processor()


@pytest.fixture(scope="module")
def clips():
    return VideoWorld(seed=11).sample(3)


def test_the_tokenizer_keeps_every_toy_id_and_adds_the_video_words(processor):
    tok, still = processor.tokenizer, build_tokenizer()
    assert [tok.convert_tokens_to_ids(w) for w in VOCAB] == [still.convert_tokens_to_ids(w) for w in VOCAB]
    assert [tok.convert_tokens_to_ids(w) for w in VIDEO_VOCAB] == list(range(len(VIDEO_VOCAB)))
    assert tok("<video><video> which object moved ?").input_ids[1:3] == [processor.video_token_id] * 2
    with pytest.raises(ValueError, match="video token"):
        build_tokenizer(VOCAB, video_token="<video>")


def test_processor_output_is_what_the_model_reads(processor, clips):
    rng = random.Random(0)
    dialogues = [sample_video_qa(c, rng, VideoRecipe(turns=2)) for c in clips]
    batch = encode_clips(processor, clips, dialogues)
    ids, labels = batch["input_ids"], batch["labels"]
    video = processor.video_token_id
    assert ((ids == video).sum(1) == len(clips[0].frames) * 9 + 1).all()  # 3 frames x 3 x 3 cells + newline
    expected = np.stack([np.stack([np.asarray(f) for f in c.frames]) for c in clips]) / 255.0
    got = batch["pixel_values_videos"].permute(0, 1, 3, 4, 2).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)  # mean 0, std 1, no resize: black stays 0
    tok = processor.tokenizer
    for row, dialogue in enumerate(dialogues):
        answers = " ".join(f"{a} </s>" for _, a in dialogue)
        assert tok.decode(labels[row][labels[row] != -100]) == answers
        text = tok.decode(ids[row][batch["attention_mask"][row] == 1])
        assert text.replace("<video> ", "").startswith("<s> USER: " + dialogue[0][0])
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "which object moved ?"}]}
    ]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == video_prompt(
        "which object moved ?"
    )
    plain = encode_clips(processor, clips[:1], ["which object moved ?"])
    assert "labels" not in plain and tok.decode(plain["input_ids"][0]).endswith("moved ? ASSISTANT:")


def test_untrained_video_model_pools_the_deep_models_patch_features_per_cell(processor, clips):
    """Frame t's token for cell (r, c) is the mean of toy-llava-deep's four projected patch features of that
    cell (bilinear 2x pooling of a 6 x 6 map), frame after frame; the newline follows; the LM is the deep
    model's on the old vocabulary."""
    from transformers import LlavaForConditionalGeneration

    from hooked_mllm.toy.model import checkpoint_dir

    model = build_video_model()
    deep = LlavaForConditionalGeneration.from_pretrained(
        checkpoint_dir("toy-llava-deep"), dtype=torch.float32
    )
    still = build_processor()
    clip = clips[0]
    pixels = encode_clips(processor, [clip], ["which object moved ?"])["pixel_values_videos"]
    with torch.no_grad():
        video = model.model.get_video_features(
            pixels, vision_feature_layer=-1, vision_feature_select_strategy="default"
        ).pooler_output[0]
        assert video.shape == (len(clip.frames) * 9 + 1, 128)
        for t, frame in enumerate(clip.frames):
            image = still(images=[frame], text=[prompt_text("q")], return_tensors="pt")["pixel_values"]
            patches = deep.model.get_image_features(
                pixel_values=image, vision_feature_layer=-1, vision_feature_select_strategy="default"
            ).pooler_output
            patches = torch.cat(list(patches)).reshape(6, 6, -1)
            for r in range(3):
                for c in range(3):
                    cell = patches[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(4, -1).mean(0)
                    torch.testing.assert_close(video[cell_token(t, (r, c))], cell, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(video[-1], model.model.image_newline)
        ids = build_tokenizer()(
            ["USER: what color is the circle ? ASSISTANT:"], return_tensors="pt"
        ).input_ids
        ours = model(input_ids=ids).logits[..., : len(VOCAB)]
        torch.testing.assert_close(ours, deep(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_the_cli_trains_and_scores_a_video_checkpoint(tmp_path, capsys):
    import json

    from hooked_mllm.cli import main

    out = tmp_path / "toy-video"
    assert (
        main(["toy", "train", "--name", "toy-video", "--steps", "2", "--batch-size", "2", "--out", str(out)])
        == 0
    )
    meta = json.loads((out / "toy_meta.json").read_text())
    assert meta["kind"] == "video" and meta["recipe"]["steps"] == 2 and meta["recipe"]["batch_size"] == 2
    capsys.readouterr()
    assert main(["toy", "eval", "--path", str(out), "--n", "2", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "2 clips, video world seed 3" in printed
    rows = [line.split()[0] for line in printed.splitlines()[1:] if "%" in line]
    assert rows[:3] == ["first", "last", "moved"]
