"""Text-only runs (``model("a prompt")``) against the bare HF model on the same ids."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import (
    tiny_llava,
    tiny_mllama,
    tiny_processor,
    tiny_qwen2_vl,
    tiny_qwen2_vl_processor,
)

PROMPTS = ["what color is the circle ?", "how many"]


def _hf_logits(model, batch):
    with torch.no_grad():
        return model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


@pytest.fixture(scope="module")
def llava():
    return HookedMLLM.from_hf(tiny_llava("llama", seed=4), tiny_processor())


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_text_batch_matches_hf(llava, padding_side):
    batch = llava.text_batch(PROMPTS, padding_side=padding_side)
    keep = ~batch.pad_mask
    for row, prompt in enumerate(PROMPTS):  # the ids are to_tokens' (BOS first), padded on the side asked
        torch.testing.assert_close(batch.input_ids[row][keep[row]], llava.to_tokens(prompt)[0])
    assert bool(keep[1, -1] if padding_side == "left" else keep[1, 0]) and not bool(keep.all())
    assert not batch.image_mask.any()
    expected = _hf_logits(llava, batch)
    if padding_side == "left":  # model(text) pads as model.prepare does
        torch.testing.assert_close(llava(PROMPTS), expected)
    torch.testing.assert_close(llava.run_with_hooks(batch), expected)


def test_text_run_with_cache_and_generate(llava):
    logits, cache = llava.run_with_cache(PROMPTS[0])
    batch = llava.text_batch(PROMPTS[0])
    torch.testing.assert_close(logits, _hf_logits(llava, batch))
    assert cache.batch.input_ids.shape == batch.input_ids.shape
    assert all(
        not name.startswith(("vision.", "projector.")) for name in cache
    )  # no image: no vision tower run
    with torch.no_grad():
        hf = llava.hf_model(input_ids=batch.input_ids, output_hidden_states=True)
    torch.testing.assert_close(cache["resid_post", 0], hf.hidden_states[1])
    out = llava.generate(PROMPTS[0], max_new_tokens=3)
    expected = llava.hf_model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=3, do_sample=False
    )
    assert torch.equal(out.sequences, expected)


def test_text_only_errors(llava):
    with pytest.raises(ValueError, match="text-only run has no image"):
        llava("<image> what is this")
    with pytest.raises(ValueError, match="does not run on a text-only input"):
        llava.run_with_cache(PROMPTS[0], names_filter="vision.blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="does not run on a text-only input"):
        llava.run_with_hooks(PROMPTS[0], fwd_hooks=[("projector.hook_out", lambda act, hook: None)])
    with pytest.raises(ValueError, match="either text or HF input tensors"):
        llava("a prompt", input_ids=torch.tensor([[1, 2]]))
    bare = HookedMLLM.from_hf(llava.hf_model)
    with pytest.raises(ValueError, match="no tokenizer"):
        bare("a prompt")


@pytest.mark.parametrize("build", ["qwen2_vl", "mllama"])
def test_other_families_run_text_only(build):
    if build == "qwen2_vl":
        model = HookedMLLM.from_hf(tiny_qwen2_vl(), tiny_qwen2_vl_processor())
    else:
        hf, processor = tiny_mllama()
        model = HookedMLLM.from_hf(hf, processor)
    batch = model.text_batch(PROMPTS)
    torch.testing.assert_close(model(PROMPTS), _hf_logits(model, batch))
