"""Toy processor round trip, image-token expansion, and a tiny training run that lowers the loss."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hooked_mllm.toy.data import encode, encode_dialogues, sample_dialogue
from hooked_mllm.toy.model import build_model, save_checkpoint
from hooked_mllm.toy.processor import NUM_IMAGE_TOKENS, build_processor, prompt_text
from hooked_mllm.toy.tokenizer import SPECIAL_TOKENS, VOCAB
from hooked_mllm.toy.training import META_FILE, Recipe, task_mix, train
from hooked_mllm.toy.world import PATCH_GRID, World


def test_tokenizer_covers_the_world():
    proc = build_processor()
    tok = proc.tokenizer
    assert list(VOCAB[: len(SPECIAL_TOKENS)]) == ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    for s in World(seed=2).sample(50):
        for text in [qa.question + " " + qa.answer for qa in s.questions] + [s.caption_colored]:
            ids = tok(text, add_special_tokens=False).input_ids
            assert tok.unk_token_id not in ids and len(ids) == len(text.split())
            assert tok.decode(ids) == text


def test_processor_expands_image_token_and_round_trips(tmp_path):
    proc = build_processor()
    save_checkpoint(build_model(seed=0, vision_layers=1, text_layers=1), proc, tmp_path / "ck")
    loaded = AutoProcessor.from_pretrained(tmp_path / "ck")
    assert type(loaded).__name__ == "LlavaProcessor"
    scene = World(seed=0).sample(1)[0]
    content = [{"type": "image"}, {"type": "text", "text": "how many objects ?"}]
    messages = [{"role": "user", "content": content}]
    text = loaded.apply_chat_template(messages, add_generation_prompt=True)
    assert text == prompt_text("how many objects ?") == "USER: <image> how many objects ? ASSISTANT:"
    batch = loaded(images=[scene.image], text=[text], return_tensors="pt")
    ids = batch["input_ids"][0]
    assert NUM_IMAGE_TOKENS == PATCH_GRID * PATCH_GRID == 36
    assert int((ids == loaded.image_token_id).sum()) == NUM_IMAGE_TOKENS
    assert loaded.tokenizer.decode(ids) == "<s> USER: " + "<image> " * 36 + "how many objects ? ASSISTANT:"
    assert batch["pixel_values"].shape == (1, 3, 48, 48)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "ck")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, ids.shape[0], len(VOCAB))


def test_labels_cover_only_the_answer():
    proc = build_processor()
    scenes = World(seed=0).sample(2)
    batch = encode(proc, [s.image for s in scenes], ["how many objects ?", "describe the image ."],
                   ["two", "a circle and a square"])  # fmt: skip
    tok = proc.tokenizer
    labelled = [tok.decode(row[row != -100]) for row in batch["labels"]]
    assert labelled == ["two </s>", "a circle and a square </s>"]
    assert batch["input_ids"][0, 0] == tok.pad_token_id, "left padding"


def test_dialogue_labels_cover_every_answer():
    import random

    proc = build_processor()
    scenes = World(seed=0).sample(3)
    dialogues = [sample_dialogue(s, random.Random(i), 3, caption_style="plain", p_caption=0.3)
                 for i, s in enumerate(scenes)]  # fmt: skip
    batch = encode_dialogues(proc, [s.image for s in scenes], dialogues)
    tok = proc.tokenizer
    for row, labels, dialogue in zip(batch["input_ids"], batch["labels"], dialogues):
        assert len({q for q, _ in dialogue}) == len(dialogue) == 3
        assert tok.decode(labels[labels != -100]) == " ".join(f"{a} </s>" for _, a in dialogue)
        text = tok.decode(row[row != tok.pad_token_id])
        assert text.count("USER:") == 3 and text.count("<image>") == NUM_IMAGE_TOKENS
    # The questions' own words, the markers and the image are never labelled.
    labelled = batch["labels"] != -100
    assert not (labelled & (batch["input_ids"] == proc.image_token_id)).any()
    assert not (labelled & (batch["input_ids"] == tok.convert_tokens_to_ids("ASSISTANT:"))).any()


def test_curriculum_order():
    recipe = Recipe(single_object_steps=2, stages=((3, (1, 0, 0, 0, 0)), (1, (1, 1, 0, 0, 0))),
                    qtype_weights=(1, 1, 1, 1, 2), p_caption=0.2)  # fmt: skip
    mix = [task_mix(recipe, step) for step in range(8)]
    assert mix[:2] == [(True, (1, 1, 1, 1, 2), 0.0)] * 2
    assert mix[2:5] == [(False, (1, 0, 0, 0, 0), 0.0)] * 3
    assert mix[5] == (False, (1, 1, 0, 0, 0), 0.0)
    assert mix[6:] == [(False, (1, 1, 1, 1, 2), 0.2)] * 2
    with pytest.raises(ValueError, match="one weight per type"):
        Recipe(stages=((3, (1, 0)),))
    with pytest.raises(ValueError, match="turns"):
        Recipe(turns=0)


def test_tiny_training_run_lowers_loss(tmp_path):
    torch.set_num_threads(1)
    result = train("toy-llava", seed=0, out=tmp_path / "tiny", steps=12, batch_size=16, lr=3e-3,
                   warmup=2, progress=False)  # fmt: skip
    losses = result.losses
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    meta = json.loads((tmp_path / "tiny" / META_FILE).read_text())
    assert meta["name"] == "toy-llava" and meta["caption_style"] == "plain" and meta["recipe"]["steps"] == 12
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory left behind"
    AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny")


def test_cli_train_and_eval(tmp_path, capsys):
    from hooked_mllm.toy.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "cli"
    assert main(["train", "--name", "toy-llava", "--out", str(out), "--steps", "2", "--batch-size", "4"]) == 0
    assert main(["eval", "--path", str(out), "--n", "3", "--show-errors", "1"]) == 0
    text = capsys.readouterr().out
    assert "toy eval: 3 scenes" in text and "caption" in text and "position" in text
