"""Backward hooks and ``incl_bwd`` on TransformerLens 4.3's ``TransformerBridge`` and on ``HookedMLLM``.

Both wrap one tiny random LLaVA checkpoint (as tests/test_tl_parity.py does). One known
difference: the bridge's ``hook_resid_mid`` sits on the second norm's input only, so its
gradient misses the residual path; ours is the gradient w.r.t. the residual stream itself
(checked against plain autograd in tests/test_backward_hooks.py), i.e. the bridge's plus
``hook_resid_post``'s.
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

pytest.importorskip("transformer_lens")
import tl_bridge  # noqa: E402

# The bridge's own notice that hooked norms take its python path (rounding-scale differences).
pytestmark = pytest.mark.filterwarnings("ignore:Backward hooks on hook_scale/hook_normalized:UserWarning")
ATOL, RTOL = 1e-6, 1e-4
PROMPT = "what color is the circle ?"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-bwd")
    tiny_llava("llama", seed=11).save_pretrained(path)
    tiny_processor().save_pretrained(path)
    ours = HookedMLLM.from_pretrained(str(path))
    return ours, tl_bridge.load_bridge(str(path), tokenizer=ours.processor.tokenizer)


def test_incl_bwd_on_a_text_prompt(pair):
    ours, bridge = pair
    with tl_bridge._quiet():
        loss_b, theirs = bridge.run_with_cache(ours.to_tokens(PROMPT), return_type="loss", incl_bwd=True)
    bridge.zero_grad(set_to_none=True)
    loss, mine = ours.run_with_cache(PROMPT, return_type="loss", incl_bwd=True)
    ours.hf_model.zero_grad(set_to_none=True)
    torch.testing.assert_close(loss, loss_b)
    grads = [name for name in mine if name.endswith("_grad")]
    assert len(grads) == len([name for name in mine if not name.endswith("_grad")])  # every LM point
    shared = [name for name in grads if name in theirs]
    assert len(shared) >= 10 * ours.cfg.n_layers
    for name in shared:
        expected = theirs[name]
        if "hook_resid_mid" in name:
            expected = expected + theirs[name.replace("resid_mid", "resid_post")]
        torch.testing.assert_close(mine[name], expected, atol=ATOL, rtol=RTOL, msg=name)


def test_bwd_hooks_on_an_image_batch(pair):
    ours, bridge = pair
    batch = ours.prepare(
        images=[random_image(5), random_image(6)],
        prompts=["what color is the circle ?", "is there a red square ?"],
    )
    keep = ~batch.pad_mask
    weights = torch.randn(
        batch.input_ids.shape + (ours.cfg.d_vocab,), generator=torch.Generator().manual_seed(0)
    )
    weights = weights * keep[..., None]
    names = [
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_z",
        "blocks.2.attn.hook_v",
        "blocks.1.attn.hook_pattern",
        "blocks.0.mlp.hook_post",
        "ln_final.hook_normalized",
        "blocks.2.hook_attn_out",
    ]

    def run(model, **inputs):
        got = {}

        def keeper(name):  # the bridge's hook.name is its canonical name (blocks.0.hook_out)
            return lambda grad, hook: got.setdefault(name, grad.detach().clone())

        hooks = [(name, keeper(name)) for name in names]
        if model is bridge:
            with tl_bridge._quiet():
                logits = bridge.run_with_hooks(
                    batch.input_ids, bwd_hooks=hooks, reset_hooks_end=False, **inputs
                )
            try:
                (logits * weights).sum().backward()
            finally:
                bridge.reset_hooks()
                bridge.zero_grad(set_to_none=True)
        else:
            (ours.run_with_hooks(batch, bwd_hooks=hooks) * weights).sum().backward()
            ours.hf_model.zero_grad(set_to_none=True)
        return got

    theirs = run(bridge, pixel_values=batch.inputs["pixel_values"], attention_mask=batch.attention_mask)
    mine = run(ours)
    assert set(mine) == set(theirs) == set(names)
    for name in names:
        a, b = mine[name], theirs[name]
        assert a.shape == b.shape, name
        if name.endswith("hook_pattern"):
            rows = keep[:, None, :, None] & keep[:, None, None, :]
            a, b = a * rows, b * rows
        else:
            shape = keep.shape + (1,) * (a.dim() - 2)
            a, b = a * keep.view(shape), b * keep.view(shape)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=RTOL, msg=name)
