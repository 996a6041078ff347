"""Auto-discovery on image-text-to-text families that have no adapter, and its self-check.

Three families of the installed transformers with different block shapes, as tiny random
models: Aya Vision (Cohere 2 LM: attention and MLP in parallel off one norm), GLM-4V (sandwich
norms named ``post_self_attn_layernorm`` / ``post_mlp_layernorm``, fused gate-and-up projection)
and GOT-OCR 2 (a Qwen2 LM behind a SAM-style tower). Each is checked against HF's own hidden
states and logits, and every writable LM point must take writes; a deliberately mis-mapped
layout must be refused by the self-check, naming the identity and the size of the error.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers as tf

from hooked_mllm import HookedMLLM
from hooked_mllm.architectures import adapter_for, discover, registered_adapters
from hooked_mllm.architectures.discover import verify_adapter
from hooked_mllm.testing.conformance import unreached_writes

TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
SIGLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=16,
    patch_size=4,
    model_type="siglip_vision_model",
)


def _build(config, cls):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # random norm weights, so a norm mapped to the wrong place cannot look right
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.uniform_(0.5, 1.5)
    return model


def aya_vision():
    config = tf.AyaVisionConfig(
        vision_config=SIGLIP,
        text_config=dict(TEXT, model_type="cohere2"),
        image_token_index=5,
        downsample_factor=2,
    )
    return _build(config, tf.AyaVisionForConditionalGeneration)


def glm4v():
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}
    config = tf.Glm4vConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            out_hidden_size=32,
            patch_size=4,
            spatial_merge_size=2,
            image_size=16,
        ),
        text_config=dict(TEXT, rope_parameters=rope),
        image_token_id=5,
        video_token_id=6,
        image_start_token_id=7,
        image_end_token_id=8,
        video_start_token_id=9,
        video_end_token_id=10,
    )
    return _build(config, tf.Glm4vForConditionalGeneration)


def got_ocr2():
    vision = dict(
        hidden_size=16,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=4,
        mlp_dim=32,
        window_size=2,
        global_attn_indexes=[1],
    )
    config = tf.GotOcr2Config(
        vision_config=vision, text_config=dict(TEXT, model_type="qwen2"), image_token_index=5
    )
    return _build(config, tf.GotOcr2ForConditionalGeneration)


FAMILIES = {"aya_vision": aya_vision, "glm4v": glm4v, "got_ocr2": got_ocr2}
IDS = torch.tensor([[11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25, 26, 27, 28]])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def discovered(request):
    hf_model = FAMILIES[request.param]()
    assert type(hf_model.config).__name__ not in registered_adapters()
    return request.param, hf_model, adapter_for(hf_model)


def test_layout_is_recognised_by_structure(discovered):
    name, _, adapter = discovered
    block = adapter.modules.block
    assert adapter.name == "discovered" and not adapter.about.verified
    if name == "aya_vision":  # one norm, attention and MLP in parallel
        assert block.ln2 is None and block.attn_out is None and block.mlp_out is None
    elif name == "glm4v":  # sandwich norms under their own names, fused gate and up
        assert (block.ln2, block.attn_out, block.mlp_out) == (
            "post_attention_layernorm",
            "post_self_attn_layernorm",
            "post_mlp_layernorm",
        )
        assert block.mlp_pre == "mlp.gate_up_proj"
    else:
        assert (block.ln2, block.attn_out, block.mlp_out) == ("post_attention_layernorm", None, None)


def test_discovered_model_equals_hf_and_keeps_the_identities(discovered):
    _, hf_model, adapter = discovered
    model = HookedMLLM(hf_model, None, adapter=adapter)
    names = [n for n in model.hook_names("lm")]
    logits, cache = model.run_with_cache(input_ids=IDS, names_filter=names)
    with torch.no_grad():
        ref = hf_model(input_ids=IDS, output_hidden_states=True)
    torch.testing.assert_close(logits, ref.logits)
    n = model.cfg.n_layers
    for layer in range(n):
        torch.testing.assert_close(
            cache["resid_pre", layer] + cache["attn_out", layer], cache["resid_mid", layer]
        )
        torch.testing.assert_close(
            cache["resid_mid", layer] + cache["mlp_out", layer], cache["resid_post", layer]
        )
        if layer + 1 < n:
            torch.testing.assert_close(cache["resid_post", layer], ref.hidden_states[layer + 1])
    last = (
        "ln_final.hook_normalized"
        if adapter.modules.hidden_states_normed
        else f"blocks.{n - 1}.hook_resid_post"
    )
    torch.testing.assert_close(cache[last], ref.hidden_states[n])
    batch = model.to_batch(input_ids=IDS)
    assert unreached_writes(model, batch, names=names) == {"returned": [], "in_place": []}


@pytest.mark.parametrize(
    ("family", "wrong", "identity"),
    [
        ("glm4v", dict(attn_out=None, mlp_out=None), r"resid_pre \+ attn_out = resid_mid"),
        (
            "glm4v",
            dict(ln1="post_attention_layernorm", ln2="input_layernorm"),
            "ln1 output = the attention's input",
        ),
        ("aya_vision", dict(ln2="input_layernorm"), r"resid_pre \+ attn_out = resid_mid"),
        ("got_ocr2", dict(mlp_out="post_attention_layernorm"), r"resid_mid \+ mlp_out = resid_post"),
    ],
)
def test_a_mis_mapped_layout_is_refused_naming_the_identity(family, wrong, identity):
    hf_model = FAMILIES[family]()
    adapter = discover(hf_model)
    bad = replace(adapter, modules=replace(adapter.modules, block=replace(adapter.modules.block, **wrong)))
    with pytest.raises(
        ValueError, match=rf"failed its self-check: {identity}[^;]* does not hold at LM layer 0 \(off by "
    ):
        verify_adapter(hf_model, bad)


def test_discovery_without_the_probe_would_have_mis_mapped_silently():
    hf_model = glm4v()
    unverified = discover(hf_model, verify=False)  # the names alone miss the sandwich norms
    assert unverified.modules.block.attn_out is None
    with pytest.raises(ValueError, match="failed its self-check"):
        verify_adapter(hf_model, unverified)


def test_refusal_names_the_sub_module_it_could_not_recognise():
    hf_model = got_ocr2()
    for layer in hf_model.model.language_model.layers:
        layer.mixer = layer.self_attn  # attention under an unknown name
        del layer.self_attn
    with pytest.raises(
        ValueError,
        match=r"model\.language_model\.layers\.0 \(Qwen2DecoderLayer\): no attention "
        r"sub-module .* mixer \(Qwen2Attention\)",
    ):
        discover(hf_model)


@pytest.mark.parametrize("adapter_name", ["llava", "gemma3", "internvl", "idefics3"])
def test_self_check_covers_the_vision_tower_when_given_images(adapter_name):
    """With a batch holding images the vision blocks' identities are checked too (layer scales,
    post-norm-free ViTs); swapping the vision norms is caught at vision layer 0."""
    from .families import FAMILIES as REGISTERED

    family = next(f for f in REGISTERED if f.adapter == adapter_name)
    hf_model, processor = family.build()
    batch = HookedMLLM.from_hf(hf_model, processor).prepare(
        images=family.images[:1], prompts=family.prompts[:1]
    )
    adapter = discover(hf_model)
    checked = verify_adapter(hf_model, adapter, batch.inputs)
    assert checked.modules.hidden_states_normed == adapter.modules.hidden_states_normed
    vision = adapter.modules.vision_block
    swapped_block = replace(vision, ln1=vision.ln2, ln2=vision.ln1)
    swapped = replace(adapter, modules=replace(adapter.modules, vision_block=swapped_block))
    with pytest.raises(
        ValueError, match=r"ln1 output = the attention's input does not hold at vision layer 0"
    ):
        verify_adapter(hf_model, swapped, batch.inputs)
    verify_adapter(hf_model, swapped)  # the text-only probe does not run the tower: nothing to catch there
