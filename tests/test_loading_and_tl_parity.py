"""Loading through the HF Auto classes, and naming parity with TransformerLens' bridge."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava")
    tiny_llava("llama", seed=5).save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return str(path)


def test_from_pretrained_loads_model_and_processor(checkpoint):
    model = HookedMLLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    assert model.processor is not None and model.cfg.n_layers == 3
    assert model.hf_model.config.text_config._attn_implementation == "eager"
    batch = model.prepare(images=[random_image(4)], prompts=["what color is the square ?"])
    with torch.no_grad():
        ref = model.hf_model(**batch.inputs).logits
    torch.testing.assert_close(model(batch), ref)


def test_resid_post_matches_transformer_lens_bridge(checkpoint):
    pytest.importorskip("transformer_lens")
    import tl_bridge

    ours = HookedMLLM.from_pretrained(checkpoint)
    batch = ours.prepare(
        images=[random_image(5), random_image(6)],
        prompts=["what color is the circle ?", "is there a red square ?"],
    )
    _, cache = ours.run_with_cache(
        batch, names_filter=lambda n: n.startswith("blocks.") and n.endswith("resid_post")
    )
    bridge = tl_bridge.load_bridge(checkpoint, tokenizer=ours.processor.tokenizer)
    theirs = tl_bridge.bridge_resid_post(
        bridge, batch.input_ids, batch.inputs["pixel_values"], batch.attention_mask
    )
    keep = ~batch.pad_mask
    assert len(theirs) == ours.cfg.n_layers
    for layer, resid in enumerate(theirs):
        torch.testing.assert_close(cache["resid_post", layer][keep], resid[keep], atol=1e-5, rtol=1e-4)
