"""Layer-scale hook points (InternVL's vision blocks), config-dependent layouts (PaliGemma, LLaVA),
processors without a chat template, and the raster order of pixel-shuffled tiles (Idefics3,
SmolVLM, InternVL), checked against plain HF runs and by perturbing single patches."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.architectures.llava import LLAVA, LLAVA_PIXTRAL
from hooked_mllm.architectures.paligemma import PALIGEMMA

from .families import FAMILIES

BY_NAME = {family.adapter: family for family in FAMILIES}


@pytest.fixture(scope="module")
def internvl():
    family = BY_NAME["internvl"]
    model = HookedMLLM.from_hf(*family.build())
    return model, model.prepare(images=family.images[:1], prompts=family.prompts[:1])


def test_layer_scaled_attn_out_writes_back_through_the_scale(internvl):
    model, batch = internvl
    layer = model.adapter.module(model.hf_model, f"{model.adapter.modules.vision_layers}.0")
    lambda_1 = layer.lambda_1.detach().clone()
    assert float(lambda_1.std()) > 0  # per-channel scales, not all equal
    clean = model(batch)
    same = model.run_with_hooks(
        batch, fwd_hooks=[("vision.blocks.0.hook_attn_out", lambda act, hook: act.clone())]
    )
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    zeroed = model.run_with_hooks(
        batch, fwd_hooks=[("vision.blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act))]
    )
    with torch.no_grad():
        layer.lambda_1.zero_()
        try:
            ref = model.hf_model(**batch.inputs).logits
        finally:
            layer.lambda_1.copy_(lambda_1)
    assert not torch.allclose(zeroed, clean)
    torch.testing.assert_close(zeroed, ref)


def test_write_through_a_zero_layer_scale_is_refused(internvl):
    model, batch = internvl
    layer = model.adapter.module(model.hf_model, f"{model.adapter.modules.vision_layers}.0")
    saved = layer.lambda_1.detach().clone()
    clean = model(batch)
    try:
        with torch.no_grad():
            layer.lambda_1[0] = 0.0
        with pytest.raises(ValueError, match="zero entries"):
            model.run_with_hooks(
                batch, fwd_hooks=[("vision.blocks.0.hook_attn_out", lambda act, hook: act + 1)]
            )
    finally:
        with torch.no_grad():
            layer.lambda_1.copy_(saved)
    torch.testing.assert_close(model(batch), clean, rtol=0, atol=0)  # no edit left installed


def test_layer_scaled_point_reads_the_same_in_trace(internvl):
    model, batch = internvl
    _, cache = model.run_with_cache(batch, names_filter="vision.blocks.1.hook_mlp_out")
    with model.trace(batch):
        value = model.hook_point("vision.blocks.1.hook_mlp_out").output.save()
    torch.testing.assert_close(value, cache["vision.blocks.1.hook_mlp_out"])


def test_paligemma_layout_follows_the_text_backbone():
    for _version, name, sandwich in (("1", "paligemma", False), ("2", "paligemma2", True)):
        family = BY_NAME[name]
        model = HookedMLLM.from_hf(*family.build())
        assert model.adapter.name == name and (model.adapter.modules.block.attn_out is not None) == sandwich
        assert model.adapter.modules.block.norm_offset == 1.0
        # the registered adapter given explicitly is specialized the same way
        assert HookedMLLM(model.hf_model, model.processor, adapter=PALIGEMMA).adapter.name == name
    config = model.hf_model.config
    config.text_config.model_type = "llama"
    try:
        with pytest.raises(ValueError, match="'llama' text backbone"):
            PALIGEMMA.for_config(config)
    finally:
        config.text_config.model_type = "gemma2"


def test_llava_layout_follows_the_vision_tower():
    model = HookedMLLM.from_hf(*BY_NAME["pixtral"].build())
    assert model.adapter is LLAVA_PIXTRAL and model.adapter.tokens.row_break == "[IMG_BREAK]"
    assert "vision.blocks.1.attn.hook_pattern" in model.hook_names()
    # the registered adapter given explicitly is specialized the same way; a CLIP tower keeps it
    assert HookedMLLM(model.hf_model, model.processor, adapter=LLAVA).adapter is LLAVA_PIXTRAL
    clip = BY_NAME["llava"].build()[0].config
    assert LLAVA.for_config(clip) is LLAVA and LLAVA_PIXTRAL in LLAVA.variants


def test_prepare_without_chat_template_puts_images_first():
    family = BY_NAME["paligemma2"]
    model = HookedMLLM.from_hf(*family.build())
    assert model.processor.chat_template is None
    batch = model.prepare(images=family.images[:1], prompts=family.prompts[:1])
    tokens = batch.tokens[0]
    assert tokens[:16] == ("<image>",) * 16 and tokens[16] == "<s>"
    assert " ".join(tokens[17:]) == family.prompts[0]
    assert "labels" not in batch.inputs and "token_type_ids" in batch.inputs


@pytest.mark.parametrize(
    "name, side, shuffle, cls", [("idefics3", 8, 2, 0), ("smolvlm", 16, 4, 0), ("internvl", 8, 2, 1)]
)
def test_pixel_shuffle_keeps_raster_order(name, side, shuffle, cls):
    """A change to one vision patch of tile 0 moves exactly the token of its s x s block, row-major."""
    family = BY_NAME[name]
    model = HookedMLLM.from_hf(*family.build())
    batch = model.prepare(images=family.images[:1], prompts=family.prompts[:1])
    last = f"vision.blocks.{model.cfg.vision_n_layers - 1}.hook_resid_post"
    _, clean = model.run_with_cache(batch, names_filter="projector.hook_out")
    out_side = side // shuffle
    for r, c in ((side - 3, 2), (1, side - 1)):

        def bump(act, hook, r=r, c=c):
            act = act.clone()
            act[0, cls + r * side + c] += 10 * act[0].abs().max()
            return act

        with model.hooks(fwd_hooks=[(last, bump)]):
            _, moved = model.run_with_cache(batch, names_filter="projector.hook_out")
        changed = (moved["projector.hook_out"] - clean["projector.hook_out"]).abs().amax(-1) > 0
        expected = torch.zeros_like(changed)
        expected[0, (r // shuffle) * out_side + c // shuffle] = True
        assert torch.equal(changed, expected), (r, c, changed.nonzero().tolist())
