"""VQA against textual QA head scores (``hooked_mllm.toy.heads``) on the shipped toy and a tiny text LM."""

from __future__ import annotations

import json

import pytest
import torch

from hooked_mllm import toy
from hooked_mllm.mechanism import head_scores
from hooked_mllm.toy.data import encode, encode_text
from hooked_mllm.toy.heads import AnswerHeads, answer_heads, compare, format_comparison, load_for_heads
from hooked_mllm.toy.recipe import build_text_lm
from hooked_mllm.toy.tokenizer import build_tokenizer
from hooked_mllm.toy.world import World


@pytest.fixture(scope="module")
def vlm():
    return toy.load("toy-llava")


def test_answer_heads_is_the_mean_of_head_scores_for_the_right_answer(vlm):
    heads = answer_heads(vlm, "color", seed=11, n=12, batch_size=5)
    items = [(s, qa) for s in World(seed=11).sample(12) for qa in s.questions_of("color")]
    assert heads.n == len(items) and heads.mode == "image" and heads.qtype == "color"
    batch = encode(vlm.processor, [s.image for s, _ in items], [qa.question for _, qa in items])
    direct = head_scores(vlm, dict(batch), target=[qa.answer for _, qa in items]).values.mean(0)
    torch.testing.assert_close(heads.values, direct, atol=1e-5, rtol=1e-4)
    assert heads.layer_share().sum().item() == pytest.approx(1.0)
    assert heads.top(1)[0] == divmod(int(heads.values.argmax()), heads.values.shape[1])


def test_text_lm_runs_inside_a_llava_with_its_own_logits(tmp_path):
    lm = build_text_lm(0, text_layers=2, text_hidden=32, text_heads=2, text_intermediate=64)
    lm.save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "toy_meta.json").write_text(json.dumps({"kind": "text"}))
    wrapped = load_for_heads(tmp_path)
    scenes = World(seed=2).sample(3)
    batch = encode_text(build_tokenizer(), scenes, ["how many objects ?"] * 3)
    expected = lm(**batch).logits
    torch.testing.assert_close(wrapped(dict(batch)), expected, atol=1e-5, rtol=1e-4)
    text = answer_heads(wrapped, "shape", mode="text", seed=2, n=6)
    assert text.mode == "text" and tuple(text.values.shape) == (2, 2) and torch.isfinite(text.values).all()


def test_compare_and_errors(vlm):
    a = AnswerHeads("image", "color", torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 3)
    b = AnswerHeads("text", "color", torch.tensor([[2.0, 0.0], [0.0, 4.0]]), 3)
    assert compare(a, b) == pytest.approx(1.0)
    assert "correlation of the head maps +1.00" in format_comparison([(a, b)])
    with pytest.raises(ValueError, match="differ in shape"):
        compare(a, AnswerHeads("text", "color", torch.zeros(3, 2), 1))
    with pytest.raises(ValueError, match="mode must be"):
        answer_heads(vlm, "color", mode="video")
