"""Splicing SAELens SAEs: each run equals the same SAE applied by a plain hook function (the SAE object's
own forward), the points inside it are read and written, the error term restores the unspliced outputs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_mllm import HookedMLLM, positions  # noqa: E402
from hooked_mllm.sae import SAE_HOOKS  # noqa: E402
from hooked_mllm.testing import random_image  # noqa: E402

from .helpers import random_sae  # noqa: E402

LM = "blocks.1.hook_resid_post"


def applied(sae):
    """A plain hook function applying the SAE's own forward: the independent reference."""
    return lambda act, hook: sae(act)


@pytest.fixture(autouse=True)
def clean(hooked):
    hooked.reset_saes()
    yield
    hooked.reset_saes()


@pytest.fixture
def sae(hooked):
    return random_sae(hooked.cfg.d_model, LM)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_spliced_run_equals_the_sae_applied_by_a_hook(hooked, batch, architecture):
    sae = random_sae(hooked.cfg.d_model, LM, architecture=architecture)
    reference = hooked.run_with_hooks(batch, fwd_hooks=[(LM, applied(sae))])
    plain = hooked(batch)
    spliced = hooked.run_with_saes(batch, saes=[sae])
    torch.testing.assert_close(spliced, reference)
    assert not torch.allclose(spliced, plain)
    hooked.add_sae(sae)
    torch.testing.assert_close(hooked(batch), reference)
    hooked.reset_saes()
    torch.testing.assert_close(hooked(batch), plain)


def test_cache_holds_the_points_inside_the_sae(hooked, batch, sae):
    _, clean_cache = hooked.run_with_cache(batch, names_filter=LM)
    # (every point: the patterns switch attention to eager, which changes padded positions)
    _, everything = hooked.run_with_cache_with_saes(batch, saes=[sae])
    assert {f"{LM}.{sub}" for sub in SAE_HOOKS} - set(everything) == {f"{LM}.hook_sae_error"}
    _, cache = hooked.run_with_cache_with_saes(batch, saes=[sae], names_filter=lambda n: n.startswith(LM))
    x = clean_cache[LM]
    torch.testing.assert_close(cache[f"{LM}.hook_sae_input"], x)
    acts = sae.encode(x)
    torch.testing.assert_close(cache[f"{LM}.hook_sae_acts_post"], acts)
    torch.testing.assert_close(cache[f"{LM}.hook_sae_recons"], sae.decode(acts))
    torch.testing.assert_close(cache[f"{LM}.hook_sae_output"], sae(x))
    torch.testing.assert_close(cache[LM], sae(x))  # the point itself holds what the model passes on
    assert f"{LM}.hook_sae_error" not in cache  # only with the error term
    _, some = hooked.run_with_cache_with_saes(
        batch, saes=[sae], names_filter=lambda n: n.endswith("hook_sae_acts_post")
    )
    assert list(some) == [f"{LM}.hook_sae_acts_post"]
    _, listed = hooked.run_with_cache_with_saes(
        batch, saes=[sae], names_filter=[f"{LM}.hook_sae_acts_pre", LM]
    )
    assert sorted(listed) == sorted([LM, f"{LM}.hook_sae_acts_pre"])


def test_error_term_gives_the_unspliced_outputs(hooked, batch, sae):
    plain = hooked(batch)
    sae.use_error_term = False
    logits, cache = hooked.run_with_cache_with_saes(
        batch, saes=[sae], use_error_term=True, names_filter=lambda n: n.startswith(LM)
    )
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    x = cache[f"{LM}.hook_sae_input"]
    torch.testing.assert_close(cache[f"{LM}.hook_sae_error"], x - sae.decode(sae.encode(x)))
    assert sae.use_error_term is False  # restored when the block ends
    # with the error term, an edit of the features still changes the output by exactly its decoded change
    double = [(f"{LM}.hook_sae_acts_post", lambda act, hook: 2 * act)]
    edited = hooked.run_with_saes(batch, saes=[sae], use_error_term=True, fwd_hooks=double)
    reference = hooked.run_with_hooks(
        batch, fwd_hooks=[(LM, lambda act, hook: act + sae.decode(sae.encode(act)) - sae.b_dec)]
    )
    torch.testing.assert_close(edited, reference, atol=1e-5, rtol=1e-5)


def test_writes_inside_the_sae_take_effect(hooked, batch, sae):
    zero = [(f"{LM}.hook_sae_acts_post", lambda act, hook: torch.zeros_like(act))]
    out = hooked.run_with_saes(batch, saes=[sae], fwd_hooks=zero)
    bias_only = hooked.run_with_hooks(
        batch, fwd_hooks=[(LM, lambda act, hook: sae.decode(0 * sae.encode(act)))]
    )
    torch.testing.assert_close(out, bias_only)
    assert not torch.allclose(out, hooked.run_with_saes(batch, saes=[sae]))

    def one_feature(act, hook):  # in place, returning None: the edit is what the SAE passes on
        act[..., 1:] = 0

    out = hooked.run_with_saes(batch, saes=[sae], fwd_hooks=[(f"{LM}.hook_sae_acts_post", one_feature)])
    kept = torch.zeros(sae.cfg.d_sae)
    kept[0] = 1
    reference = hooked.run_with_hooks(
        batch, fwd_hooks=[(LM, lambda act, hook: sae.decode(sae.encode(act) * kept))]
    )
    torch.testing.assert_close(out, reference)
    # a hook on the point itself runs after the SAE, on its output
    shift = [(LM, lambda act, hook: act + 1)]
    torch.testing.assert_close(
        hooked.run_with_saes(batch, saes=[sae], fwd_hooks=shift),
        hooked.run_with_hooks(batch, fwd_hooks=[(LM, lambda act, hook: sae(act) + 1)]),
    )


def test_hooks_inside_the_sae_during_generation(hooked, single, sae):
    steps = []

    def ablate(act, hook):
        steps.append((hook.name, hook.step, act.shape[1]))
        return torch.zeros_like(act)

    with hooked.saes([sae]):
        generated = hooked.generate(
            single, max_new_tokens=3, fwd_hooks=[(f"{LM}.hook_sae_acts_post", ablate)]
        )
    reference = hooked.generate(
        single, max_new_tokens=3, fwd_hooks=[(LM, lambda act, hook: sae.decode(0 * sae.encode(act)))]
    )
    assert torch.equal(generated.sequences, reference.sequences)
    assert [s[1] for s in steps] == [0, 1, 2]
    assert steps[0][2] == single.shape[1] and steps[1][2] == 1


def test_model_trace_and_hooks_blocks_see_the_splice(hooked, batch, sae):
    reference = hooked.run_with_hooks(batch, fwd_hooks=[(LM, applied(sae))])
    twice = hooked.run_with_hooks(batch, fwd_hooks=[(LM, lambda a, h: 2 * sae(a))])
    hooked.add_sae(sae)
    with hooked.trace(batch):
        logits = hooked.nnsight.output.logits.save()
    torch.testing.assert_close(logits, reference)
    with hooked.hooks(fwd_hooks=[(LM, lambda act, hook: act * 2)]):  # after the SAE, as every hook on LM
        doubled = hooked(batch)
    torch.testing.assert_close(doubled, twice)
    with hooked.trace(batch):  # the point itself is the SAE's output in a trace
        out = hooked.hook_point(LM).output.save()
    torch.testing.assert_close(
        out,
        hooked.run_with_cache(batch, names_filter=[LM, f"{LM}.hook_sae_output"])[1][f"{LM}.hook_sae_output"],
    )
    with pytest.raises(
        ValueError, match=r"inside a spliced SAE, which model.trace does not reach.*run_with_cache"
    ):
        hooked.hook_point(f"{LM}.hook_sae_acts_post")


@pytest.mark.parametrize(
    "name", ["vision.blocks.0.hook_resid_post", "projector.hook_out", "blocks.0.attn.hook_z"]
)
def test_vision_projector_and_per_head_points(hooked, batch, name):
    width = {"vision": hooked.cfg.vision_d_model, "projector": hooked.cfg.d_model}.get(name.split(".")[0])
    per_head = width is None
    d_in = hooked.cfg.n_heads * hooked.cfg.d_head if per_head else width
    sae = random_sae(d_in, name)

    def reference(act, hook):
        return sae(act.flatten(-2)).unflatten(-1, act.shape[-2:]) if per_head else sae(act)

    expected = hooked.run_with_hooks(batch, fwd_hooks=[(name, reference)])
    logits, cache = hooked.run_with_cache_with_saes(batch, saes=[sae], names_filter=lambda n: "hook_sae" in n)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, hooked(batch))
    assert cache[f"{name}.hook_sae_acts_post"].shape[-1] == sae.cfg.d_sae


@pytest.mark.parametrize("where", ["image", "text"])
def test_positions_restrict_the_sae(hooked, batch, sae, where):
    mask = positions.resolve(where, batch)

    def reference(act, hook):
        new = act.clone()
        new[mask] = sae(act[mask])
        return new

    expected = hooked.run_with_hooks(batch, fwd_hooks=[(LM, reference)])
    hooked.add_sae(sae, positions=where)
    logits, cache = hooked.run_with_cache(batch, names_filter=lambda n: n.startswith(LM))
    torch.testing.assert_close(logits, expected)
    assert cache[f"{LM}.hook_sae_acts_post"].shape == (int(mask.sum()), sae.cfg.d_sae)
    with pytest.raises(ValueError, match="positions"):
        hooked.run_with_cache(batch, names_filter=f"{LM}.hook_sae_acts_post", positions="last")


def test_saes_block_restores_what_it_replaced(hooked, batch):
    first, second = random_sae(hooked.cfg.d_model, LM, seed=1), random_sae(hooked.cfg.d_model, LM, seed=2)
    with_first = hooked.run_with_hooks(batch, fwd_hooks=[(LM, applied(first))])
    with_second = hooked.run_with_hooks(batch, fwd_hooks=[(LM, applied(second))])
    hooked.add_sae(first)
    with hooked.saes([second]):
        torch.testing.assert_close(hooked(batch), with_second)
    assert hooked.acts_to_saes == {LM: first}
    torch.testing.assert_close(hooked(batch), with_first)
    hooked.reset_saes(LM)
    assert hooked.acts_to_saes == {}
    # a replaced SAE comes back as it was spliced: with its error term
    plain = hooked(batch)
    hooked.add_sae(first, use_error_term=True)
    with hooked.saes([second]):
        pass
    torch.testing.assert_close(hooked(batch), plain, atol=1e-5, rtol=1e-5)
    assert first.use_error_term is True
    hooked.reset_saes()
    assert first.use_error_term is False


def test_bad_input_is_refused_clearly(hooked, batch, sae):
    with pytest.raises(TypeError, match="sae_lens.SAE"):
        hooked.add_sae(torch.nn.Linear(2, 2))
    with pytest.raises(Exception, match="blocks.9"):
        hooked.add_sae(sae, hook_name="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="read-only"):
        hooked.add_sae(random_sae(8, "blocks.0.attn.hook_pattern"))
    with pytest.raises(ValueError, match="sequence axis"):
        hooked.add_sae(
            random_sae(hooked.cfg.vision_d_model, "vision.blocks.0.hook_resid_post"), positions="image"
        )
    with pytest.raises(ValueError, match="d_in=7"):
        hooked.run_with_saes(batch, saes=[random_sae(7, LM)])
    with pytest.raises(ValueError, match="No SAE is spliced"):
        hooked.reset_saes("blocks.0.hook_resid_post")
    hooked.add_sae(sae)
    with pytest.raises(ValueError, match="model.hooks"):
        with hooked.hooks(fwd_hooks=[(f"{LM}.hook_sae_acts_post", lambda a, h: None)]):
            hooked(batch)
    with pytest.raises(ValueError, match="shape"):
        hooked.run_with_hooks(batch, fwd_hooks=[(f"{LM}.hook_sae_acts_post", lambda a, h: a[..., :3])])
    with pytest.raises(ValueError, match="forward hooks"):
        hooked.run_with_hooks(batch, bwd_hooks=[(f"{LM}.hook_sae_acts_post", lambda a, h: None)])


def test_text_only_model(tmp_path):
    from hooked_mllm import toy

    model = HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-lm"))
    sae = random_sae(model.cfg.d_model, "blocks.2.hook_mlp_out")
    batch = model.to_batch("the red circle is")
    expected = model.run_with_hooks(batch, fwd_hooks=[("blocks.2.hook_mlp_out", applied(sae))])
    torch.testing.assert_close(model.run_with_saes(batch, saes=[sae]), expected)
    assert random_image(0) is not None


def test_a_vision_sae_stays_out_of_a_text_only_run(hooked, sae):
    hooked.add_sae(random_sae(hooked.cfg.vision_d_model, "vision.blocks.0.hook_resid_post"))
    hooked.add_sae(sae)
    text = hooked.prepare(prompts=["what color is the circle ?"])
    _, cache = hooked.run_with_cache(text, names_filter=lambda n: "hook_sae" in n)
    assert sorted(cache) == sorted(f"{LM}.{sub}" for sub in SAE_HOOKS if sub != "hook_sae_error")
    with pytest.raises(ValueError, match="text-only"):
        hooked.run_with_cache(text, names_filter="vision.blocks.0.hook_resid_post.hook_sae_acts_post")
