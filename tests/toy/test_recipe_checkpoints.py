"""The checkpoints of the LLaVA recipe (``toy-lm``, ``toy-llava-deep``, ``toy-llava-deep-ft``) meet their
targets on scenes never seen in training (docs/toy.md, "LLaVA's recipe on the toy world"): quality, image
tokens that read as words under a lens, and a visual-QA mechanism that reuses the text model's.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from hooked_mllm import toy
from hooked_mllm.toy.data import encode_text
from hooked_mllm.toy.evaluation import evaluate, evaluate_text
from hooked_mllm.toy.science import image_token_readout
from hooked_mllm.toy.world import World

SEED = 4321  # never used in training (training worlds use seeds >= 10000)
N_SCENES = 200
VLMS = ("toy-llava-deep", "toy-llava-deep-ft")


@pytest.fixture(scope="module", params=VLMS)
def vlm(request):
    torch.set_num_threads(1)
    path = toy.checkpoint_dir(request.param)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    return request.param, model, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def text_lm():
    path = toy.checkpoint_dir("toy-lm")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return lm, AutoTokenizer.from_pretrained(path)


def test_shapes_of_the_recipe_models(vlm, text_lm):
    """Six LM layers with tied input/output embeddings, in the VLMs and in the text LM they started from."""
    _, model, _ = vlm
    lm, _ = text_lm
    for m in (model, lm):
        assert m.config.get_text_config().num_hidden_layers >= 6
        assert m.get_input_embeddings().weight.data_ptr() == m.get_output_embeddings().weight.data_ptr()
    assert type(lm).__name__ == "LlamaForCausalLM"


def test_text_lm_answers_textual_questions(text_lm):
    """toy-lm: >= 97 % on every question type, the scene given in words (textual QA)."""
    lm, tokenizer = text_lm
    report = evaluate_text(lm, seed=SEED, n=N_SCENES, tokenizer=tokenizer, progress=False)
    for qtype in ("color", "shape", "count", "position", "exist"):
        assert report.accuracy[qtype] >= 0.97, report.format()


def test_vlm_quality_targets(vlm):
    """Every question type >= 97 % and exact captions >= 90 %."""
    name, model, processor = vlm
    style = "colored" if name.endswith("-ft") else "plain"
    report = evaluate(
        model, seed=SEED, n=N_SCENES, processor=processor, questions_per_type=1, caption_style=style,
        progress=False,
    )  # fmt: skip
    assert all(acc >= 0.97 for acc in report.accuracy.values()), report.format()
    assert report.caption_exact >= 0.90, report.format()


def test_image_tokens_read_as_words(vlm):
    """At some layer, under the logit or the embedding lens, an object's image tokens name its colour for
    >= 80 % of objects and its shape for >= 60 % (>= 200 objects of unseen scenes), by the mean vector and per
    patch."""
    _, model, processor = vlm
    rows = image_token_readout(model, processor, seed=SEED, n_scenes=110)
    assert rows[0].n_objects >= 200
    assert max(r.color_mean for r in rows) >= 0.80
    assert max(r.shape_mean for r in rows) >= 0.60
    assert max(r.color_patch for r in rows) >= 0.80
    assert max(r.shape_patch for r in rows) >= 0.60
    untrained = image_token_readout(toy.build_model(seed=1).eval(), processor, seed=SEED, n_scenes=20)
    assert max(r.color_mean for r in untrained) < 0.80  # the test can fail: chance is 1 in 5


def test_toy_load_wraps_the_text_lm(text_lm):
    """``toy.load("toy-lm")`` gives hook points on the text LM: text-only runs equal the HF LM's own
    logits."""
    lm, tokenizer = text_lm
    model = toy.load("toy-lm")
    scene = World(seed=SEED).scene(3)
    batch = encode_text(tokenizer, [scene], ["how many objects ?"])
    expected = lm(**batch).logits
    logits, cache = model.run_with_cache(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        names_filter="blocks.4.hook_resid_post",
    )
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    hidden = lm(**batch, output_hidden_states=True).hidden_states[5]  # [6] is after the final norm
    torch.testing.assert_close(cache["blocks.4.hook_resid_post"], hidden, atol=1e-5, rtol=1e-5)


def test_visual_qa_reuses_the_text_mechanism():
    """The seed finding on the toy: for colour and shape questions, the heads that raise the right answer in
    visual QA (toy-llava-deep, image) are those of textual QA (toy-lm, the scene in words): the best VQA head
    is among the three best TQA heads, and the two [layer, head] maps correlate (> 0.5)."""
    from hooked_mllm.toy.heads import answer_heads, compare

    vlm, text = toy.load("toy-llava-deep"), toy.load("toy-lm")
    for qtype in ("color", "shape"):
        vqa = answer_heads(vlm, qtype, mode="image", seed=SEED, n=40)
        tqa = answer_heads(text, qtype, mode="text", seed=SEED, n=40)
        assert vqa.top(1)[0] in tqa.top(3), (qtype, vqa.top(3), tqa.top(3))
        assert compare(vqa, tqa) > 0.5, (qtype, compare(vqa, tqa))
