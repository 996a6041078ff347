"""Core guarantees of HookedMLLM on tiny random LLaVA models (Llama and Qwen2 LMs).

Every number is checked against an independent computation: HF's own
``output_hidden_states`` / ``output_attentions`` / ``generate``, the vision tower's own
hidden states, ``get_image_features``, or a plain torch forward hook.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM, HookNameError
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def hf_forward(model, batch, **kw):
    with torch.no_grad():
        return model.hf_model(**batch.inputs, **kw)


def valid(batch):
    return ~batch.pad_mask


def test_resid_post_equals_hf_hidden_states(hooked, batch):
    logits, cache = hooked.run_with_cache(
        batch, names_filter=lambda n: n.endswith("resid_post") or n == "ln_final.hook_normalized"
    )
    ref = hf_forward(hooked, batch, output_hidden_states=True)
    keep = valid(batch)
    n = hooked.cfg.n_layers
    for layer in range(n - 1):
        torch.testing.assert_close(cache["resid_post", layer][keep], ref.hidden_states[layer + 1][keep])
    # transformers 5 reports the last hidden state after the final norm.
    torch.testing.assert_close(cache["ln_final.hook_normalized"][keep], ref.hidden_states[n][keep])
    captured = {}
    handle = hooked.hf_model.model.language_model.layers[n - 1].register_forward_hook(
        lambda mod, args, out: captured.setdefault("out", out)
    )
    try:
        hf_forward(hooked, batch)
    finally:
        handle.remove()
    torch.testing.assert_close(cache["resid_post", n - 1][keep], captured["out"][keep])
    torch.testing.assert_close(logits[keep], ref.logits[keep])


def test_residual_identities(hooked, batch):
    _, cache = hooked.run_with_cache(batch)
    for layer in range(hooked.cfg.n_layers):
        torch.testing.assert_close(
            cache["resid_pre", layer] + cache["attn_out", layer], cache["resid_mid", layer]
        )
        torch.testing.assert_close(
            cache["resid_mid", layer] + cache["mlp_out", layer], cache["resid_post", layer]
        )
        if layer + 1 < hooked.cfg.n_layers:
            torch.testing.assert_close(cache["resid_post", layer], cache["resid_pre", layer + 1])
    for layer in range(hooked.cfg.vision_n_layers):
        v = f"vision.blocks.{layer}."
        torch.testing.assert_close(
            cache[v + "hook_resid_pre"] + cache[v + "hook_attn_out"], cache[v + "hook_resid_mid"]
        )
        torch.testing.assert_close(
            cache[v + "hook_resid_mid"] + cache[v + "hook_mlp_out"], cache[v + "hook_resid_post"]
        )


def test_patterns_equal_hf_eager_attentions(backbone):
    model = HookedMLLM.from_hf(tiny_llava(backbone, attn_implementation="eager"), tiny_processor())
    batch = model.prepare(images=[random_image(3)], prompts=["what color is the circle ?"])
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    ref = hf_forward(model, batch, output_attentions=True)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        assert pattern.shape == (1, model.cfg.n_heads, batch.shape[1], batch.shape[1])
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
        torch.testing.assert_close(pattern, ref.attentions[layer])


def test_patterns_switch_sdpa_model_to_eager_temporarily(hooked, single):
    impl = hooked.hf_model.config.text_config._attn_implementation
    _, cache = hooked.run_with_cache(single, names_filter="blocks.0.attn.hook_pattern")
    assert hooked.hf_model.config.text_config._attn_implementation == impl
    pattern = cache["pattern", 0]
    assert torch.triu(pattern[0, 0], diagonal=1).abs().max() == 0  # causal
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))


def test_vision_layers_and_projector_equal_hf(hooked, batch):
    _, cache = hooked.run_with_cache(batch, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    pixel_values = batch.inputs["pixel_values"]
    with torch.no_grad():
        tower = hooked.hf_model.model.vision_tower(pixel_values, output_hidden_states=True)
        features = hooked.hf_model.model.get_image_features(pixel_values=pixel_values).pooler_output
    for layer in range(hooked.cfg.vision_n_layers):
        torch.testing.assert_close(cache[f"vision.blocks.{layer}.hook_resid_pre"], tower.hidden_states[layer])
        torch.testing.assert_close(
            cache[f"vision.blocks.{layer}.hook_resid_post"], tower.hidden_states[layer + 1]
        )
    projected = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
    torch.testing.assert_close(cache["projector.hook_out"].reshape(projected.shape), projected)
    # The projector's rows are what sits at the image positions of the LM's input.
    _, lm = hooked.run_with_cache(batch, names_filter="blocks.0.hook_resid_pre")
    torch.testing.assert_close(
        lm["resid_pre", 0][batch.image_mask], cache["projector.hook_out"].flatten(0, 1)
    )


def test_head_views_match_projections(hooked, single):
    _, cache = hooked.run_with_cache(
        single,
        names_filter=lambda n: (
            ".attn.hook_" in n
            and "vision" not in n
            and "pattern" not in n
            or n.endswith("ln1.hook_normalized")
        ),
    )
    cfg = hooked.cfg
    attn = hooked.hf_model.model.language_model.layers[1].self_attn
    x = cache["blocks.1.ln1.hook_normalized"]
    with torch.no_grad():
        torch.testing.assert_close(cache["q", 1], attn.q_proj(x).view(1, -1, cfg.n_heads, cfg.d_head))
        torch.testing.assert_close(cache["k", 1], attn.k_proj(x).view(1, -1, cfg.n_kv_heads, cfg.d_head))
        torch.testing.assert_close(cache["v", 1], attn.v_proj(x).view(1, -1, cfg.n_kv_heads, cfg.d_head))
    assert cache["z", 1].shape == (1, single.shape[1], cfg.n_heads, cfg.d_head)


def test_identity_hook_and_zero_ablation_match_torch_hook(hooked, batch):
    clean = hf_forward(hooked, batch).logits
    seen = []

    def identity(act, hook):
        seen.append((hook.name, hook.layer()))
        return act

    logits = hooked.run_with_hooks(
        batch, fwd_hooks=[(lambda n: n.startswith("blocks.") and n.endswith("hook_resid_post"), identity)]
    )
    torch.testing.assert_close(logits, clean, rtol=0, atol=0)
    assert seen == [(f"blocks.{l}.hook_resid_post", l) for l in range(hooked.cfg.n_layers)]

    ablated = hooked.run_with_hooks(
        batch, fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, h: torch.zeros_like(a))]
    )
    mlp = hooked.hf_model.model.language_model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        expected = hf_forward(hooked, batch).logits
    finally:
        handle.remove()
    torch.testing.assert_close(ablated, expected)
    assert not torch.allclose(ablated, clean)


def _torch_hooks(module):
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in module.named_modules()}


def test_raising_hook_leaves_model_clean(hooked, batch):
    before = _torch_hooks(hooked.hf_model)
    clean = hf_forward(hooked, batch).logits

    def boom(act, hook):
        raise RuntimeError("boom in hook")

    with pytest.raises(RuntimeError, match="boom in hook"):
        hooked.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    with pytest.raises(RuntimeError, match="boom in hook"):
        with hooked.hooks(fwd_hooks=[("blocks.1.hook_attn_out", boom)]):
            hooked(batch)
    assert _torch_hooks(hooked.hf_model) == before
    assert hooked.nnsight._edits == []
    torch.testing.assert_close(hooked(batch), clean, rtol=0, atol=0)


def test_writes_through_derived_and_head_views(hooked, single):
    clean = hooked(single)
    _, cache = hooked.run_with_cache(single, names_filter=["blocks.1.hook_resid_mid", "blocks.1.attn.hook_z"])
    # Writing resid_mid = resid_mid changes nothing; writing a new value is seen downstream.
    same = hooked.run_with_hooks(single, fwd_hooks=[("blocks.1.hook_resid_mid", lambda a, h: a.clone())])
    torch.testing.assert_close(same, clean)
    target = cache["blocks.1.hook_resid_mid"] * 2
    seen = {}
    hooked.run_with_hooks(
        single,
        fwd_hooks=[
            ("blocks.1.hook_resid_mid", lambda a, h: target),
            ("blocks.1.ln2.hook_normalized", lambda a, h: seen.setdefault("ln2", a)),
        ],
    )
    norm = hooked.hf_model.model.language_model.layers[1].post_attention_layernorm
    with torch.no_grad():
        torch.testing.assert_close(seen["ln2"], norm(target), atol=1e-5, rtol=1e-4)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    out = hooked.run_with_hooks(single, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    o_proj = hooked.hf_model.model.language_model.layers[1].self_attn.o_proj
    d_head = hooked.cfg.d_head

    def pre(mod, args):
        x = args[0].clone()
        x[..., :d_head] = 0
        return (x,)

    handle = o_proj.register_forward_pre_hook(pre)
    try:
        expected = hf_forward(hooked, single).logits
    finally:
        handle.remove()
    torch.testing.assert_close(out, expected)


def test_batched_rows_equal_single_rows(hooked, batch):
    logits, cache = hooked.run_with_cache(batch, names_filter="blocks.2.hook_resid_post")
    for row in range(len(batch)):
        alone = batch.row(row)
        row_logits, row_cache = hooked.run_with_cache(alone, names_filter="blocks.2.hook_resid_post")
        keep = ~batch.pad_mask[row]
        torch.testing.assert_close(logits[row, keep], row_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            cache["resid_post", 2][row, keep], row_cache["resid_post", 2][0], atol=1e-5, rtol=1e-4
        )


def test_cache_positions_image_only(hooked, batch):
    _, full = hooked.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    _, part = hooked.run_with_cache(batch, names_filter="blocks.1.hook_resid_post", positions="image")
    act = part["resid_post", 1]
    assert act.shape == (2, 16, hooked.cfg.d_model)
    torch.testing.assert_close(act.flatten(0, 1), full["resid_post", 1][batch.image_mask])
    grid = part.image("blocks.1.hook_resid_post")
    assert grid.shape == (2, 4, 4, hooked.cfg.d_model)
    span = batch.images_of(1)[0]
    torch.testing.assert_close(grid[1, 1, 2], full["resid_post", 1][1, span.start + 1 * 4 + 2])
    _, last = hooked.run_with_cache(batch, names_filter="blocks.1.hook_resid_post", positions="last")
    torch.testing.assert_close(last["resid_post", 1][:, 0], full["resid_post", 1][:, -1])
    text = full.text("blocks.1.hook_resid_post")
    assert isinstance(text, list) and text[0].shape[0] == int(batch.text_mask[0].sum())


def test_generate_matches_hf_and_steering_changes_it(hooked, batch):
    out = hooked.generate(batch, max_new_tokens=4)
    with torch.no_grad():
        ref = hooked.hf_model.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(out.sequences, ref)
    assert out.new_tokens.shape[1] <= 4 and len(out.text) == 2
    steps = []

    def steer(act, hook):
        steps.append((hook.step, act.shape[1]))
        return act + 50.0 * torch.ones_like(act)

    steered = hooked.generate(
        batch, max_new_tokens=4, fwd_hooks=[("blocks.0.hook_resid_post", steer)], min_new_tokens=4
    )
    assert not torch.equal(steered.new_tokens, out.new_tokens)
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    assert steps[0][1] == batch.shape[1] and all(n == 1 for _, n in steps[1:])


def test_hooks_context_applies_to_every_run_and_trace(hooked, single):
    clean = hooked(single)
    zero = ("blocks.0.hook_mlp_out", lambda a, h: torch.zeros_like(a))
    with hooked.hooks(fwd_hooks=[zero]):
        inside = hooked(single)
        expected = hooked.run_with_hooks(single, fwd_hooks=[zero])
        with hooked.trace(single):
            traced = hooked.nnsight.lm_head.output.save()
    torch.testing.assert_close(inside, expected)
    torch.testing.assert_close(traced, expected)
    torch.testing.assert_close(hooked(single), clean, rtol=0, atol=0)


def test_trace_passthrough_reads_and_edits(hooked, single):
    _, cache = hooked.run_with_cache(single, names_filter="blocks.1.hook_resid_post")
    with hooked.trace(single):
        resid = hooked.hook_point("blocks.1.hook_resid_post").output.save()
        hooked.hook_point("blocks.2.hook_mlp_out").output[:] = 0
        logits = hooked.nnsight.lm_head.output.save()
    torch.testing.assert_close(resid, cache["resid_post", 1])
    expected = hooked.run_with_hooks(
        single, fwd_hooks=[("blocks.2.hook_mlp_out", lambda a, h: torch.zeros_like(a))]
    )
    torch.testing.assert_close(logits, expected)


def test_hf_keyword_inputs(hooked, single):
    logits = hooked.run_with_hooks(
        input_ids=single.input_ids,
        pixel_values=single.inputs["pixel_values"],
        attention_mask=single.attention_mask,
    )
    torch.testing.assert_close(logits, hooked(single))


def test_hook_names_listed_and_resolvable(hooked):
    names = hooked.hook_names()
    n, v = hooked.cfg.n_layers, hooked.cfg.vision_n_layers
    for layer in range(n):
        for suffix in (
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
            "ln1.hook_normalized",
            "ln2.hook_normalized",
            "attn.hook_q",
            "attn.hook_k",
            "attn.hook_v",
            "attn.hook_z",
            "attn.hook_pattern",
            "mlp.hook_post",
        ):
            assert f"blocks.{layer}.{suffix}" in names
    for extra in (
        "hook_embed",
        "ln_final.hook_normalized",
        "hook_logits",
        "vision.hook_embed",
        "projector.hook_in",
        "projector.hook_out",
        f"vision.blocks.{v - 1}.attn.hook_pattern",
    ):
        assert extra in names
    assert len(hooked.hook_names("vision")) + len(hooked.hook_names("lm")) + 2 == len(names)


def test_errors_are_clear(hooked, single):
    with pytest.raises(HookNameError, match=r"blocks\.1\.hook_resid_post"):
        hooked.run_with_hooks(single, fwd_hooks=[("blocks.1.hook_resid_pots", lambda a, h: None)])
    with pytest.raises(HookNameError, match="layer 7 does not exist"):
        hooked.run_with_cache(single, names_filter="blocks.7.hook_resid_post")
    with pytest.raises(HookNameError, match="no such site"):
        hooked.hook_point("blocks.0.hook_cross_attn_out")
    with pytest.raises(HookNameError, match="matched no hook point"):
        hooked.run_with_cache(single, names_filter=lambda n: "nothing" in n)
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out.*\(1, 2\).*\(1, \d+, 64\)"):
        hooked.run_with_hooks(single, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, h: torch.zeros(1, 2))])
    with pytest.raises(ValueError, match="read-only"):  # a replacement; handing `a` back writes nothing
        hooked.run_with_hooks(single, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, h: a * 1)])
    image = random_image(0)
    with pytest.raises(ValueError, match="1 image placeholder.*2 image"):
        hooked.prepare(images=[[image, image]], prompts=["USER : <image> what ?"], chat_template=False)
    with pytest.raises(ValueError, match="2 images .*1 runs of image tokens"):
        hooked.to_batch(
            input_ids=single.input_ids, pixel_values=torch.cat([single.inputs["pixel_values"]] * 2)
        )
