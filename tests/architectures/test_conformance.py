"""Conformance: every registered adapter, on a tiny random model of its family, keeps the core guarantees.

Each check compares with an independent computation: HF's ``output_hidden_states``,
``output_attentions``, plain forward and ``generate``, a torch forward hook, and the image
geometry the family's own processor produced. Families and their tiny models are in
:mod:`families` (each shrunk from a named real checkpoint's config).
"""

from __future__ import annotations

import pytest
import torch
from transformers import BatchFeature

from hooked_mllm import HookedMLLM, positions
from hooked_mllm.architectures import registered_adapters
from hooked_mllm.testing.conformance import read_only_refusals, unreached_writes

from .families import FAMILIES, Family

BY_NAME = {family.adapter: family for family in FAMILIES}


@pytest.fixture(scope="module", params=[f.adapter for f in FAMILIES])
def family(request) -> Family:
    return BY_NAME[request.param]


_MODELS: dict[str, HookedMLLM] = {}


@pytest.fixture(scope="module")
def model(family) -> HookedMLLM:
    if family.adapter not in _MODELS:
        hf_model, processor = family.build()
        _MODELS[family.adapter] = HookedMLLM.from_hf(hf_model, processor)
    return _MODELS[family.adapter]


@pytest.fixture(scope="module")
def batch(model, family):
    return model.prepare(images=family.images, prompts=family.prompts)


def hf(model, batch, **kw):
    with torch.no_grad():
        return model.hf_model(**batch.inputs, **kw)


def test_every_verified_adapter_is_in_the_suite():
    layouts = [layout for a in registered_adapters().values() for layout in (a, *a.variants)]
    names = {a.name for a in layouts if a.about.verified}
    assert names <= set(BY_NAME), f"adapters without a conformance family: {sorted(names - set(BY_NAME))}"


def test_adapter_chosen_and_every_hook_fires(model, family, batch):
    assert model.adapter.name == family.adapter
    _, cache = model.run_with_cache(batch)
    assert set(cache.keys()) == set(model.hook_names())


def test_resid_post_and_logits_equal_hf(model, batch):
    n = model.cfg.n_layers
    logits, cache = model.run_with_cache(
        batch,
        names_filter=lambda name: name.endswith("hook_resid_post") or name == "ln_final.hook_normalized",
    )
    ref = hf(model, batch, output_hidden_states=True)
    keep = ~batch.pad_mask
    lm = [i for i in range(n)]
    for layer in lm[:-1]:
        torch.testing.assert_close(cache["resid_post", layer][keep], ref.hidden_states[layer + 1][keep])
    last = (
        "ln_final.hook_normalized"
        if model.adapter.modules.hidden_states_normed
        else f"blocks.{n - 1}.hook_resid_post"
    )
    torch.testing.assert_close(cache[last][keep], ref.hidden_states[n][keep])
    captured = {}
    layer = model.adapter.module(model.hf_model, f"{model.adapter.modules.lm_layers}.{n - 1}")
    handle = layer.register_forward_hook(lambda mod, args, out: captured.setdefault("out", out))
    try:
        hf(model, batch)
    finally:
        handle.remove()
    out = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    torch.testing.assert_close(cache["resid_post", n - 1][keep], out[keep])
    torch.testing.assert_close(logits[keep], ref.logits[keep])


def _added_between_layers(model, family, batch) -> dict[int, torch.Tensor]:
    """What the model adds to the residual after LM layer k, outside the layers (Qwen3-VL's DeepStack).

    Read independently of the hooks: the outputs of the k-th module of the list at
    ``family.extra["between_layers"]``, captured by torch forward hooks and placed at the image positions.
    """
    path = family.extra.get("between_layers")
    if path is None:
        return {}
    outputs: dict[int, torch.Tensor] = {}
    modules = list(model.adapter.module(model.hf_model, path))
    handles = [
        m.register_forward_hook(lambda mod, args, out, k=k: outputs.__setitem__(k, out))
        for k, m in enumerate(modules)
    ]
    try:
        hf(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(outputs) == list(range(len(modules))) and len(modules) < model.cfg.n_layers
    added = {}
    for k, out in outputs.items():
        full = torch.zeros(*batch.shape, out.shape[-1], dtype=out.dtype)
        full[batch.image_mask] = out
        assert float(out.abs().max()) > 0
        added[k] = full
    return added


def test_residual_identities(model, family, batch):
    _, cache = model.run_with_cache(
        batch, names_filter=lambda n: "resid" in n or n.endswith(("attn_out", "mlp_out"))
    )
    cross = model.adapter.cross_layers(model.hf_model.config)
    between = _added_between_layers(model, family, batch)
    for prefix, n_layers in (("", model.cfg.n_layers), ("vision.", model.cfg.vision_n_layers)):
        for layer in range(n_layers):
            b = f"{prefix}blocks.{layer}."
            if not prefix and layer in cross:  # gated cross-attention: the residual adds tanh(gate) * output
                module = model.adapter.module(model.hf_model, f"{model.adapter.modules.lm_layers}.{layer}")
                g_attn, g_mlp = (
                    getattr(module, name).detach().tanh() for name in model.adapter.modules.cross.gates
                )
                rows = family.extra["row_mask"](batch)[..., None].to(
                    g_mlp.dtype
                )  # text positions that see an image
                assert 0 < float(g_attn.abs()) and 0 < float(g_mlp.abs()) and bool(rows.any())
                torch.testing.assert_close(
                    cache[b + "hook_resid_pre"] + g_attn * cache[b + "hook_cross_attn_out"],
                    cache[b + "hook_resid_mid"],
                )
                torch.testing.assert_close(
                    cache[b + "hook_resid_mid"] + g_mlp * rows * cache[b + "hook_mlp_out"],
                    cache[b + "hook_resid_post"],
                )
                assert b + "hook_attn_out" not in model.hook_points
            else:
                torch.testing.assert_close(
                    cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"], cache[b + "hook_resid_mid"]
                )
                torch.testing.assert_close(
                    cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"], cache[b + "hook_resid_post"]
                )
            if layer + 1 < n_layers:
                added = between.get(layer, 0.0) if not prefix else 0.0
                torch.testing.assert_close(
                    cache[b + "hook_resid_post"] + added, cache[f"{prefix}blocks.{layer + 1}.hook_resid_pre"]
                )


def test_patterns_equal_hf_eager_attentions(model, family, batch):
    if not family.hf_patterns:
        pytest.skip(f"{family.adapter}: HF returns no LM attentions")
    _, cache = model.run_with_cache(
        batch, names_filter=lambda n: n.startswith("blocks.") and n.endswith("pattern")
    )
    ref = hf(model, batch, output_attentions=True)
    attentions = ref.attentions if ref.attentions is not None else ref.language_model_outputs.attentions
    keep = ~batch.pad_mask
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        pattern = cache[name if name in model.hook_points else f"blocks.{layer}.cross_attn.hook_pattern"]
        assert pattern.shape[:2] == (len(batch), model.cfg.n_heads)
        torch.testing.assert_close(pattern, attentions[layer])
        torch.testing.assert_close(
            pattern.sum(-1)[keep.unsqueeze(1).expand(-1, pattern.shape[1], -1)],
            torch.ones(int(keep.sum()) * pattern.shape[1]),
        )


def test_image_geometry_matches_processor(model, family, batch):
    if batch.no_image_tokens is not None:  # cross-attention: image selectors refuse rather than guess
        for selector in ("image", positions.image(index=0), positions.image(rows=0)):
            with pytest.raises(ValueError, match="no image tokens"):
                positions.resolve(selector, batch)
    got = [(span.n_tokens, span.grid) for span in batch.images]
    assert got == family.geometry
    # LLaVA-NeXT's newline tokens are image tokens in no span
    assert int(batch.image_mask.sum()) == sum(n for n, _ in family.geometry) + family.extra.get("newlines", 0)
    for span in batch.images:
        assert bool(batch.image_mask[span.row, list(span.token_positions)].all())
        inside = int(batch.image_mask[span.row, span.start : span.end].sum())
        if family.extra.get("newlines") and span.positions is not None:  # a newline image token ends each row
            assert inside == span.n_tokens + span.grid[0] - 1
        else:
            assert inside == span.n_tokens
        if span.grid is not None:
            assert span.grid[0] * span.grid[1] == span.n_tokens


def test_projector_rows_are_the_image_positions(model, family, batch):
    if model.adapter.modules.projector is None:
        pytest.skip("no projector")
    if batch.no_image_tokens is not None:  # cross-attention: the projector's rows are the keys' inputs
        layer = min(model.adapter.cross_layers(model.hf_model.config))
        names = ["projector.hook_out", f"blocks.{layer}.cross_attn.hook_k"]
        _, cache = model.run_with_cache(batch, names_filter=names)
        modules = model.adapter.modules
        k_proj = model.adapter.module(model.hf_model, f"{modules.lm_layers}.{layer}.{modules.cross.block.k}")
        out = cache["projector.hook_out"]
        with torch.no_grad():
            keys = k_proj(out.reshape(-1, out.shape[-2], out.shape[-1]))  # one row per image tile
        torch.testing.assert_close(cache[names[1]].flatten(-2), keys)
        return
    _, cache = model.run_with_cache(
        batch, names_filter=["projector.hook_out", "blocks.0.hook_resid_pre", "hook_embed"]
    )
    if "base_tiles" in family.extra:  # anyres: each span starts with its whole-image tile
        out = cache["projector.hook_out"]
        bases = batch.images[:: family.extra.get("views", 1)]
        assert len(bases) == len(family.extra["base_tiles"])
        for span, tile in zip(bases, family.extra["base_tiles"]):
            placed = cache["resid_pre", 0][span.row, span.start : span.start + out.shape[1]]
            torch.testing.assert_close(placed, out[tile])
        return
    rows = cache["projector.hook_out"].flatten(0, -2)
    placed = cache["resid_pre", 0][batch.image_mask]
    if family.extra.get(
        "projector_added"
    ):  # Molmo2 adds the projector's rows to the image tokens' embeddings
        placed = placed - cache["hook_embed"][batch.image_mask]
    if not family.projector_raster:  # same rows, another order
        rows, placed = rows[rows[:, 0].argsort()], placed[placed[:, 0].argsort()]
    torch.testing.assert_close(placed, rows * family.extra.get("embed_scale", 1.0))


def _torch_hooks(module):
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in module.named_modules()}


def test_raising_hook_leaves_model_clean(model, batch):
    before = _torch_hooks(model.hf_model)
    clean = hf(model, batch).logits

    def boom(act, hook):
        raise RuntimeError("boom in hook")

    with pytest.raises(RuntimeError, match="boom in hook"):
        model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{model.cfg.n_layers - 1}.hook_mlp_out", boom)])
    assert _torch_hooks(model.hf_model) == before and model.nnsight._edits == []
    torch.testing.assert_close(model(batch), clean, rtol=0, atol=0)


def test_batched_rows_equal_single_rows(model, family, batch):
    if not family.split_rows:
        pytest.skip(f"{family.adapter}: inputs cannot be split per row")
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits, cache = model.run_with_cache(batch, names_filter=name)
    for row in range(len(batch)):
        alone = batch.row(row)
        assert [(s.n_tokens, s.grid) for s in alone.images] == [
            (s.n_tokens, s.grid) for s in batch.images_of(row)
        ]
        row_logits, row_cache = model.run_with_cache(alone, names_filter=name)
        keep = ~batch.pad_mask[row]
        torch.testing.assert_close(logits[row, keep], row_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache[name][row, keep], row_cache[name][0], atol=1e-5, rtol=1e-4)


def test_generate_equals_hf(model, batch):
    out = model.generate(batch, max_new_tokens=3)
    with torch.no_grad():
        ref = model.hf_model.generate(**batch.inputs, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(out.sequences, ref)


def test_apply_ln_to_stack_reproduces_the_final_norm(model, batch):
    """Scaling the full residual as a one-component stack gives the final norm's output."""
    n = model.cfg.n_layers
    _, cache = model.run_with_cache(
        batch, names_filter=[f"blocks.{n - 1}.hook_resid_post", "ln_final.hook_normalized"]
    )
    scaled = cache.apply_ln_to_stack(cache["resid_post", n - 1][None], layer=None)[0]
    keep = ~batch.pad_mask
    torch.testing.assert_close(scaled[keep], cache["ln_final.hook_normalized"][keep], atol=1e-4, rtol=1e-4)


def test_contradicting_image_geometry_degrades_to_unknown_grids(model, family, batch):
    """Geometry inputs that contradict the tokens keep the image positions, drop every grid, and warn."""
    if model.adapter.tokens.grids is None and model.adapter.tokens.views is None:
        pytest.skip("geometry is read from the tokens only")
    key = family.extra.get("geometry_key", "image_grid_thw")  # the input the adapter reads grids from
    inputs = dict(batch.inputs, **{key: batch.inputs[key].flip(0)})
    with pytest.warns(UserWarning, match="Image geometry unknown"):
        degraded = model.to_batch(inputs)
    assert torch.equal(degraded.image_mask, batch.image_mask)
    assert [s.grid for s in degraded.images] == [None] * len(degraded.images)
    if model.adapter.tokens.views is not None:  # views: each image's whole run is one gridless span again
        assert [s.n_tokens for s in degraded.images] == [int(m.sum()) for m in batch.image_mask]
        return
    missing = {k: v for k, v in batch.inputs.items() if k != key}
    with pytest.raises(ValueError, match="no image geometry"):
        model.to_batch(missing)


def _processor_outputs(model, family) -> BatchFeature:
    """The family's processor called directly, as a user would (chat template, left padding)."""
    processor = model.processor
    placeholder = getattr(processor, "image_token", "<image>")
    texts = []
    for prompt, images in zip(family.prompts, family.images):
        if getattr(processor, "chat_template", None) is None:
            texts.append(placeholder * len(images) + prompt)
        else:
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
            texts.append(
                processor.apply_chat_template(
                    [{"role": "user", "content": content}], add_generation_prompt=True
                )
            )
    images = (
        family.images if model.adapter.inputs.nested_images else [im for row in family.images for im in row]
    )
    processor.tokenizer.padding_side = "left"
    out = processor(images=images, text=texts, padding=True, return_tensors="pt")
    out.pop("labels", None)
    return out


def test_every_entry_point_takes_every_input_form(model, family, batch):
    """(prepare / HF keyword tensors / the processor's own output) x (forward, run_with_cache,
    run_with_hooks, generate, trace), each against HF's own forward and generate on the same tensors."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    direct = _processor_outputs(model, family)
    forms = {
        "prepare": ((batch,), {}, batch.inputs),
        "keywords": ((), dict(direct), dict(direct)),
        "processor": ((direct,), {}, dict(direct)),
    }
    refs: dict[int, tuple] = {}
    for form, (args, kwargs, tensors) in forms.items():
        key = (
            0
            if set(tensors) == set(batch.inputs)
            and all(torch.equal(v, batch.inputs[k]) for k, v in tensors.items())
            else 1
        )
        if key not in refs:
            with torch.no_grad():
                refs[key] = (
                    model.hf_model(**tensors).logits,
                    model.hf_model.generate(**tensors, max_new_tokens=2, do_sample=False),
                )
        ref, ref_gen = refs[key]
        keep = tensors["attention_mask"].bool()
        torch.testing.assert_close(model(*args, **kwargs)[keep], ref[keep], msg=f"forward({form})")
        logits, cache = model.run_with_cache(*args, names_filter=last, **kwargs)
        torch.testing.assert_close(logits[keep], ref[keep], msg=f"run_with_cache({form})")
        assert cache[last].shape[:2] == ref.shape[:2]
        seen = []
        hooked = model.run_with_hooks(
            *args,
            fwd_hooks=[(last, lambda act, hook: seen.append(hook.name))],  # noqa: B023 (runs at once)
            **kwargs,
        )
        torch.testing.assert_close(hooked[keep], ref[keep], msg=f"run_with_hooks({form})")
        assert seen == [last]
        out = model.generate(*args, max_new_tokens=2, **kwargs)
        torch.testing.assert_close(out.sequences, ref_gen.cpu(), msg=f"generate({form})")
        with model.trace(*args, **kwargs):
            traced = model.nnsight.output.save()
        torch.testing.assert_close(traced.logits[keep], ref[keep], msg=f"trace({form})")


def test_every_writable_point_takes_writes_and_read_only_points_refuse(model, family, batch):
    """A perturbation at each writable point, returned or made in place, reaches the logits (its
    gradient is non-zero); each kind of read-only point refuses both. On the first row (with its
    image) to keep the backward small."""
    one = batch.row(0) if family.split_rows else batch
    assert unreached_writes(model, one) == {"returned": [], "in_place": []}
    assert read_only_refusals(model, one) == {"returned": [], "in_place": []}
