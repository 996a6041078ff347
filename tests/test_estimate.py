"""model.estimate / estimate_cache: the shapes and bytes of a cache before running it, against real caches;
geometry presets built on the meta device, against their published numbers."""

from __future__ import annotations

import math

import pytest
import torch

from hooked_mllm import HookedMLLM, estimate_cache, geometry
from hooked_mllm.testing import (
    random_image,
    tiny_gemma3,
    tiny_idefics2,
    tiny_llava,
    tiny_llava_onevision,
    tiny_processor,
    tiny_qwen2_vl,
    tiny_qwen2_vl_processor,
)


def _actual(cache) -> tuple[dict[str, tuple[int, ...]], int]:
    shapes = {name: tuple(cache[name].shape) for name in cache.keys()}
    return shapes, sum(cache[name].numel() * cache[name].element_size() for name in cache.keys())


def _models():
    yield "llava", HookedMLLM.from_hf(tiny_llava(), tiny_processor())
    yield "qwen2_vl", HookedMLLM.from_hf(tiny_qwen2_vl(), tiny_qwen2_vl_processor())
    yield "llava_onevision", HookedMLLM.from_hf(*tiny_llava_onevision())


@pytest.mark.parametrize("positions", [None, "image", "last", slice(0, 5)])
def test_estimate_equals_the_cache_of_a_real_run(positions):
    for family, model in _models():
        batch = model.prepare(
            images=[random_image(0, 48), random_image(1, 40)],
            prompts=["what color is the circle ?", "what ?"],
        )
        _, cache = model.run_with_cache(batch, positions=positions)
        est = estimate_cache(model, batch, positions=positions)
        shapes, nbytes = _actual(cache)
        assert est.shapes == shapes, family
        assert est.nbytes == nbytes, family


def test_estimate_on_video_and_mixed_batches_equals_the_cache():
    """The tower runs on the videos too (after the images on a mixed batch): its points' rows count both."""
    rng = torch.Generator().manual_seed(0)
    clip = (torch.rand(4, 16, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
    for family, model in list(_models())[1:]:
        for images in ([None, None], [random_image(0, 48), None]):
            batch = model.prepare(images=images, videos=[clip, clip], prompts=["what ?", "how many"])
            _, cache = model.run_with_cache(batch)
            est = estimate_cache(model, batch)
            assert est.shapes == _actual(cache)[0], (family, images)


def test_estimate_follows_names_filter_and_dtype():
    model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
    batch = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
    names = ["blocks.2.attn.hook_pattern", "blocks.0.mlp.hook_post", "projector.hook_out", "hook_logits"]
    _, cache = model.run_with_cache(batch, names_filter=names, dtype=torch.float16)
    est = estimate_cache(model, batch, names_filter=names, dtype=torch.float16)
    assert est.shapes == _actual(cache)[0] and est.nbytes == _actual(cache)[1]
    assert est.dtype == torch.float16 and set(est.shapes) == set(names)
    pred = lambda name: name.endswith("hook_resid_post")  # noqa: E731
    _, cache = model.run_with_cache(batch, names_filter=pred)
    assert estimate_cache(model, batch, names_filter=pred).nbytes == _actual(cache)[1]


def test_other_families_language_model_points_and_a_clear_refusal_for_their_tower():
    lm = lambda name: not name.startswith(("vision", "projector"))  # noqa: E731
    for hf, processor in (tiny_idefics2(), tiny_gemma3()):
        model = HookedMLLM.from_hf(hf, processor)
        batch = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
        _, cache = model.run_with_cache(batch, names_filter=lm, positions="image")
        est = estimate_cache(model, batch, names_filter=lm, positions="image")
        assert est.shapes == _actual(cache)[0] and est.nbytes == _actual(cache)[1]
        with pytest.raises(ValueError, match="does not know the vision tower's shapes"):
            estimate_cache(model, batch, names_filter="vision.blocks.0.hook_resid_post")


TUPLE_BUILDERS = [
    "tiny_gemma3",
    "tiny_idefics2",
    "tiny_idefics3",
    "tiny_internvl",
    "tiny_llava_next",
    "tiny_llava_next_video",
    "tiny_mistral3",
    "tiny_mllama",
    "tiny_molmo2",
    "tiny_paligemma",
    "tiny_pixtral",
    "tiny_qwen3_vl",
    "tiny_smolvlm",
]


@pytest.mark.parametrize("builder", TUPLE_BUILDERS)
def test_language_model_points_of_every_family(builder):
    import hooked_mllm.testing as testing

    model = HookedMLLM.from_hf(*getattr(testing, builder)())
    batch = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
    lm = lambda n: not n.startswith(("vision", "projector")) and ".cross_attn.hook_" not in n  # noqa: E731
    _, cache = model.run_with_cache(batch, names_filter=lm)
    est = estimate_cache(model, batch, names_filter=lm)
    assert est.shapes == _actual(cache)[0] and est.nbytes == _actual(cache)[1]
    if builder == "tiny_mllama":  # its pattern runs over the vision states, not the sequence: refused
        cross = [n for n in model.hook_names() if ".cross_attn.hook_pattern" in n]
        with pytest.raises(ValueError, match="does not know the shape of"):
            estimate_cache(model, batch, names_filter=cross[0])


def test_hf_tensors_with_a_count_of_positions():
    model = HookedMLLM.from_hf(tiny_llava(), tiny_processor())
    batch = model.prepare(images=[random_image(0)], prompts=["what color is the circle ?"])
    meta = {key: torch.empty(value.shape, device="meta") for key, value in batch.inputs.items()}
    assert estimate_cache(model, meta).shapes == estimate_cache(model, batch).shapes
    assert (
        estimate_cache(model, meta, positions=1).shapes
        == estimate_cache(model, batch, positions="last").shapes
    )
    with pytest.raises(ValueError, match="needs a prepared batch"):
        estimate_cache(model, meta, positions="image")
    with pytest.raises(ValueError, match="must be a count of positions"):
        estimate_cache(model, meta, positions=10_000)
    text_only = {key: meta[key] for key in ("input_ids", "attention_mask")}
    assert all(not n.startswith("vision") for n in estimate_cache(model, text_only).shapes)
    with pytest.raises(ValueError, match="does not run on a text-only input"):
        estimate_cache(model, text_only, names_filter="vision.blocks.0.hook_resid_post")


# -- geometry presets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, p in geometry.PRESETS.items() if p.model_class is not None])
def test_presets_build_on_meta_with_their_published_sizes(name):
    preset = geometry.PRESETS[name]
    model = geometry.build(name)
    text = preset.config["text_config"]
    assert all(p.device.type == "meta" for p in model.hf_model.parameters())
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_mlp, model.cfg.d_vocab) == (
        text["num_hidden_layers"],
        text["hidden_size"],
        text["num_attention_heads"],
        text["intermediate_size"],
        text["vocab_size"],
    )
    assert model.cfg.n_kv_heads == text["num_key_value_heads"]
    # every LM layer has the same hook points, and each appears once per layer
    per_layer = [n for n in model.hook_names("lm") if n.startswith("blocks.0.")]
    for layer in range(model.cfg.n_layers):
        assert sum(n.startswith(f"blocks.{layer}.") for n in model.hook_names("lm")) == len(per_layer)
    # the residual stream of every layer: layers x positions x d_model bf16 values
    batch = geometry.prepare(model, name, (640, 480))
    est = estimate_cache(
        model, batch, names_filter=lambda n: n.startswith("blocks.") and n.endswith("resid_post")
    )
    assert est.nbytes == model.cfg.n_layers * batch.input_ids.shape[1] * model.cfg.d_model * 2


def test_image_tokens_through_the_real_processor_settings():
    llava = geometry.build("llava-1.5-7b")
    for size in ((336, 336), (1024, 512)):
        assert int(geometry.prepare(llava, "llava-1.5-7b", size).image_mask.sum()) == (336 // 14) ** 2
    qwen = geometry.build("qwen2-vl-7b")
    for width, height in ((640, 480), (1280, 960), (224, 224)):
        # Qwen2-VL's smart resize: each side to a multiple of 28 (14 px patches, 2x2 merge), pixels in range
        h, w = round(height / 28) * 28, round(width / 28) * 28
        assert 3136 <= h * w <= 12845056
        tokens = int(geometry.prepare(qwen, "qwen2-vl-7b", (width, height)).image_mask.sum())
        assert tokens == (h // 28) * (w // 28)
    idefics = geometry.build("idefics2-8b")
    assert int(geometry.prepare(idefics, "idefics2-8b", (800, 600)).image_mask.sum()) == 64


def test_preset_errors_are_clear():
    with pytest.raises(ValueError, match="not buildable"):
        geometry.build("molmo-7b-d")
    with pytest.raises(ValueError, match="Unknown preset 'llava-9b'; known: llava-1.5-7b"):
        geometry.build("llava-9b")
    assert math.prod(geometry.build("llava-1.5-7b", n_layers=2).hf_model.lm_head.weight.shape) == 32064 * 4096
