"""Differential test against SAELens itself: the same SAE spliced at the same hook of the same weights, in
SAELens' ``HookedSAETransformer`` (TransformerLens' ``HookedTransformer`` built from the toy LM's HF weights)
and in a text-only ``HookedMLLM``: logits and every ``hook_sae_*`` cache value agree."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_mllm import HookedMLLM, toy  # noqa: E402
from hooked_mllm.sae import SAE_HOOKS  # noqa: E402

from .helpers import random_sae  # noqa: E402

PROMPTS = ["the red circle is left of the blue square", "a green triangle"]


@pytest.fixture(scope="module")
def pair():
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    ours = HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-lm"))
    hf = ours.hf_model.config
    cfg = HookedTransformerConfig(
        d_model=hf.hidden_size,
        d_head=hf.head_dim,
        n_heads=hf.num_attention_heads,
        n_key_value_heads=hf.num_key_value_heads,
        d_mlp=hf.intermediate_size,
        n_layers=hf.num_hidden_layers,
        n_ctx=hf.max_position_embeddings,
        d_vocab=hf.vocab_size,
        eps=hf.rms_norm_eps,
        act_fn=hf.hidden_act,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=hf.head_dim,
        rotary_base=hf.rope_parameters["rope_theta"],
        rotary_adjacent_pairs=False,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        dtype=torch.float32,
        device="cpu",
    )
    theirs = HookedSAETransformer(cfg)
    theirs.load_and_process_state_dict(
        convert_llama_weights(ours.hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return ours, theirs.eval()


def tokens(ours):
    # one row at a time: TransformerLens' HookedTransformer takes no attention mask for padding
    return [ours.to_batch(prompt) for prompt in PROMPTS]


def test_the_two_models_agree_without_an_sae(pair):
    ours, theirs = pair
    for batch in tokens(ours):
        torch.testing.assert_close(ours(batch), theirs(batch.inputs["input_ids"]), atol=1e-4, rtol=1e-4)


CASES = [
    ("blocks.2.hook_resid_post", False, "standard"),
    ("blocks.2.hook_resid_post", True, "standard"),
    ("blocks.4.hook_mlp_out", False, "topk"),
    ("blocks.4.hook_mlp_out", True, "jumprelu"),
    ("blocks.1.attn.hook_z", False, "standard"),
    ("blocks.1.attn.hook_z", True, "topk"),
]


@pytest.mark.parametrize(("hook", "use_error_term", "architecture"), CASES)
def test_spliced_sae_matches_hooked_sae_transformer(pair, hook, use_error_term, architecture):
    ours, theirs = pair
    width = ours.cfg.n_heads * ours.cfg.d_head if hook.endswith("hook_z") else ours.cfg.d_model
    sae = random_sae(width, hook, d_sae=96, seed=3, architecture=architecture)
    if hook.endswith("hook_z"):
        sae.turn_on_forward_pass_hook_z_reshaping()
    inside = [f"{hook}.{sub}" for sub in SAE_HOOKS if use_error_term or sub != "hook_sae_error"]
    for batch in tokens(ours):
        ids = batch.inputs["input_ids"]
        theirs_logits, theirs_cache = theirs.run_with_cache_with_saes(
            ids, saes=[sae], use_error_term=use_error_term, names_filter=lambda n: "hook_sae" in n
        )
        ours_logits, ours_cache = ours.run_with_cache_with_saes(
            batch, saes=[sae], use_error_term=use_error_term, names_filter=lambda n: "hook_sae" in n
        )
        torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-4, rtol=1e-4)
        assert sorted(ours_cache) == sorted(theirs_cache.keys()) == sorted(inside)
        for name in inside:
            torch.testing.assert_close(ours_cache[name], theirs_cache[name], atol=1e-4, rtol=1e-4)
        if not use_error_term:
            assert not torch.allclose(ours_logits, ours(batch), atol=1e-3)


def test_a_feature_edit_matches(pair):
    ours, theirs = pair
    hook = "blocks.3.hook_resid_post"
    sae = random_sae(ours.cfg.d_model, hook, d_sae=64, seed=5)

    def boost(act, hook):
        act = act.clone()
        act[..., 7] += 3.0
        return act

    for batch in tokens(ours):
        name = f"{hook}.hook_sae_acts_post"
        with theirs.saes(saes=[sae], use_error_term=True):
            theirs_logits = theirs.run_with_hooks(batch.inputs["input_ids"], fwd_hooks=[(name, boost)])
        ours_logits = ours.run_with_saes(batch, saes=[sae], use_error_term=True, fwd_hooks=[(name, boost)])
        torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(ours_logits, ours(batch), atol=1e-3)
