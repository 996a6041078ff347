"""Every write check, and every kind of write, through both paths that write hook points:
``run_with_hooks`` (a hook function's return value) and ``model.trace`` (assigning
``model.hook_point(name).output``). Both go through ``hooked_mllm._runtime.hook_io``; these tests pin
that they refuse the same writes with the same errors and that accepted writes take the same
effect, checked against plain torch hooks or edited weights on a tiny random InternVL (its
vision blocks have layer scales)."""

from __future__ import annotations

import re

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_internvl

PATHS = ("run_with_hooks", "trace")


@pytest.fixture(scope="module")
def internvl():
    model = HookedMLLM.from_hf(*tiny_internvl(attn_implementation="eager"))
    batch = model.prepare(images=[random_image(0, 16)], prompts=["what color is the circle ?"])
    return model, batch


def write(model, batch, path, name, make):
    """Logits after replacing ``name``'s value by ``make(value)`` through ``path``."""
    if path == "run_with_hooks":
        return model.run_with_hooks(batch, fwd_hooks=[(name, lambda act, hook: make(act))])
    with model.trace(batch):
        point = model.hook_point(name)
        point.output = make(point.output)
        output = model.nnsight.output.save()
    return output.logits


def hf_logits(model, batch, hooks=()):
    """Plain HF logits with plain torch hooks ``(module, kind, fn)`` installed for the call."""
    handles = []
    try:
        for module, kind, fn in hooks:
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(register(fn))
        with torch.no_grad():
            return model.hf_model(**batch.inputs).logits
    finally:
        for handle in handles:
            handle.remove()


def module(model, name):
    return model.hf_model.get_submodule(model.hook_points.resolve(name).site.path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        (
            "blocks.0.attn.hook_pattern",
            lambda act: act.clone(),
            r"blocks\.0\.attn\.hook_pattern is read-only",
        ),
        (
            "blocks.0.hook_mlp_out",
            lambda act: act[0],
            r"on blocks\.0\.hook_mlp_out returned shape \(\d+, 64\)",
        ),
        (
            "blocks.0.hook_mlp_out",
            lambda act: torch.zeros(act.shape[-1]),  # broadcastable is not enough
            r"on blocks\.0\.hook_mlp_out returned shape \(64,\), but the activation has shape \(1, \d+, 64\)",
        ),
        (
            "blocks.0.hook_mlp_out",
            lambda act: act.long(),
            r"on blocks\.0\.hook_mlp_out returned dtype torch\.int64",
        ),
        (
            "blocks.0.hook_mlp_out",
            lambda act: act > 0,
            r"on blocks\.0\.hook_mlp_out returned dtype torch\.bool",
        ),
        (
            "blocks.0.hook_mlp_out",
            lambda act: torch.zeros(act.shape, device="meta"),
            r"on blocks\.0\.hook_mlp_out returned a tensor on meta, but the activation is on cpu",
        ),
        ("blocks.0.hook_mlp_out", lambda act: 3.0, r"on blocks\.0\.hook_mlp_out returned float"),
        (
            "blocks.0.attn.hook_z",
            lambda act: act.flatten(-2),  # per-head points take per-head values
            r"on blocks\.0\.attn\.hook_z returned shape \(1, \d+, 64\), "
            r"but the activation has shape \(1, \d+, 4, 16\)",
        ),
        (
            "vision.blocks.0.hook_resid_mid",
            lambda act: act[..., :-1],
            r"on vision\.blocks\.0\.hook_resid_mid returned shape",
        ),
    ],
)
def test_refused_writes_name_the_point_on_both_paths(internvl, path, name, make, match):
    model, batch = internvl
    clean = hf_logits(model, batch)
    with pytest.raises(ValueError, match=match):
        write(model, batch, path, name, make)
    torch.testing.assert_close(model(batch), clean, rtol=0, atol=0)  # nothing left installed


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["vision.blocks.0.hook_attn_out", "vision.blocks.0.hook_resid_mid"])
def test_writes_through_a_zero_layer_scale_are_refused_on_both_paths(internvl, path, name):
    model, batch = internvl
    layer = model.hf_model.get_submodule(f"{model.adapter.modules.vision_layers}.0")
    saved = layer.lambda_1.detach().clone()
    try:
        with torch.no_grad():
            layer.lambda_1[0] = 0.0
        with pytest.raises(ValueError, match=rf"Cannot write {name}: .*lambda_1.*zero entries"):
            write(model, batch, path, name, lambda act: act + 1)
    finally:
        with torch.no_grad():
            layer.lambda_1.copy_(saved)
    torch.testing.assert_close(model(batch), hf_logits(model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_a_plain_write_matches_a_torch_hook(internvl, path):
    model, batch = internvl
    ref = hf_logits(
        model,
        batch,
        [(module(model, "blocks.0.hook_mlp_out"), "post", lambda mod, args, out: torch.zeros_like(out))],
    )
    torch.testing.assert_close(write(model, batch, path, "blocks.0.hook_mlp_out", torch.zeros_like), ref)


@pytest.mark.parametrize("path", PATHS)
def test_a_per_head_write_matches_a_torch_hook(internvl, path):
    model, batch = internvl

    def zero_head_1(act):
        act = act.clone()
        act[..., 1, :] = 0
        return act

    def ref_hook(mod, args):
        z = args[0].clone()
        z[..., 16:32] = 0  # head 1 of 4, d_head 16
        return (z,)

    ref = hf_logits(model, batch, [(module(model, "blocks.0.attn.hook_z"), "pre", ref_hook)])
    torch.testing.assert_close(write(model, batch, path, "blocks.0.attn.hook_z", zero_head_1), ref)


@pytest.mark.parametrize("path", PATHS)
def test_a_write_through_a_layer_scale_matches_zeroed_weights(internvl, path):
    model, batch = internvl
    layer = model.hf_model.get_submodule(f"{model.adapter.modules.vision_layers}.0")
    saved = layer.lambda_1.detach().clone()
    try:
        with torch.no_grad():
            layer.lambda_1.zero_()
        ref = hf_logits(model, batch)
    finally:
        with torch.no_grad():
            layer.lambda_1.copy_(saved)
    zeroed = write(model, batch, path, "vision.blocks.0.hook_attn_out", torch.zeros_like)
    assert not torch.allclose(zeroed, hf_logits(model, batch))
    torch.testing.assert_close(zeroed, ref)


@pytest.mark.parametrize("path", PATHS)
def test_a_write_of_a_sum_with_a_layer_scale_matches_a_torch_hook(internvl, path):
    """vision ``hook_resid_mid`` = block input + attention output * lambda_1: writing ``2 * value``
    is the attention output ``(2 * value - input) / lambda_1``."""
    model, batch = internvl
    layer = model.hf_model.get_submodule(f"{model.adapter.modules.vision_layers}.0")
    seen = {}

    def keep_input(mod, args):
        seen["input"] = args[0]

    def doubled(mod, args, out):
        resid_mid = seen["input"] + out[0] * layer.lambda_1
        return (((2 * resid_mid - seen["input"]) / layer.lambda_1),) + tuple(out[1:])

    ref = hf_logits(model, batch, [(layer, "pre", keep_input), (layer.attention, "post", doubled)])
    got = write(model, batch, path, "vision.blocks.0.hook_resid_mid", lambda act: 2 * act)
    assert not torch.allclose(got, hf_logits(model, batch))
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("path", PATHS)
def test_another_float_precision_is_cast_to_the_activation_dtype(internvl, path):
    model, batch = internvl
    halved = write(model, batch, "run_with_hooks", "blocks.0.hook_mlp_out", lambda act: act * 0.5)
    as_double = write(model, batch, path, "blocks.0.hook_mlp_out", lambda act: (act * 0.5).double())
    assert as_double.dtype == halved.dtype
    torch.testing.assert_close(as_double, halved, rtol=0, atol=0)


def test_both_paths_read_the_same_values(internvl):
    model, batch = internvl
    names = [
        "blocks.0.hook_mlp_out",
        "blocks.0.attn.hook_z",
        "blocks.0.hook_resid_mid",
        "vision.blocks.0.hook_attn_out",
        "vision.blocks.0.hook_resid_mid",
        "blocks.1.attn.hook_pattern",
    ]
    _, cache = model.run_with_cache(batch, names_filter=names)
    for name in names:
        with model.trace(batch):
            value = model.hook_point(name).output.save()
        torch.testing.assert_close(value, cache[name], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_mid", "vision.blocks.0.hook_attn_out"])
def test_trace_refuses_in_place_edits_of_computed_values(internvl, name):
    """A sum / layer-scaled point's ``.output`` inside a trace is a computed tensor: editing it in place could
    not reach the model, so the trace refuses it afterwards; assigning the edited tensor takes effect."""
    model, batch = internvl
    clean = hf_logits(model, batch)
    with pytest.raises(
        ValueError, match=rf"in-place edit of {re.escape(name)} inside model.trace had no effect"
    ):
        with model.trace(batch):
            model.hook_point(name).output[:] = 0
    with model.trace(batch):
        point = model.hook_point(name)
        value = point.output
        value[:] = 0
        point.output = value
        output = model.nnsight.output.save()
    assert (output.logits - clean).abs().max() > 1e-4
    assert torch.equal(output.logits, write(model, batch, "run_with_hooks", name, torch.zeros_like))


def test_trace_in_place_edit_of_a_module_tensor_takes_effect(internvl):
    model, batch = internvl
    with model.trace(batch):
        model.hook_point("blocks.0.hook_mlp_out").output[:] = 0
        output = model.nnsight.output.save()
    assert torch.equal(
        output.logits, write(model, batch, "run_with_hooks", "blocks.0.hook_mlp_out", torch.zeros_like)
    )
