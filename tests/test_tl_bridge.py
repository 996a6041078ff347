"""TransformerLens ``TransformerBridge`` on a tiny local LLaVA matches HF, offline.

Verifies tests/tl_bridge.py independently of hooked_mllm: the bridge's per-layer
``hook_resid_post`` (and attn/mlp/pattern hooks) against the same checkpoint run by
plain HF ``LlavaForConditionalGeneration`` with eager attention.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("transformer_lens")
pytest.importorskip("tokenizers")

try:  # tests/ may or may not be a package depending on how pytest imports it
    from tests import tl_bridge
except ImportError:  # pragma: no cover - rootdir-relative import mode
    import tl_bridge  # type: ignore[no-redef]

ATOL = 1e-5
RTOL = 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tl_bridge.save_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="module")
def hf_ref(ckpt):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(ckpt, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def bridge(ckpt):
    return tl_bridge.load_bridge(ckpt, device="cpu")


def _inputs(batch=2, seq=24, left_pad=0, seed=1):
    cfg = tl_bridge.tiny_llava_config()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, cfg.image_token_id, (batch, seq), generator=g)
    start = left_pad + 2
    ids[:, start : start + cfg.image_seq_length] = cfg.image_token_id
    mask = torch.ones(batch, seq, dtype=torch.long)
    if left_pad:
        ids[-1, :left_pad] = 0  # pad token
        mask[-1, :left_pad] = 0
    pixel_values = torch.randn(batch, 3, 32, 32, generator=g)
    return ids, pixel_values, mask


def _hf_forward(hf, ids, pv, mask):
    """HF hidden states, attentions, and the raw (un-normed) output of the last layer."""
    raw = {}
    handle = hf.model.language_model.layers[-1].register_forward_hook(
        lambda _m, _i, out: raw.__setitem__("last", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = hf(
                input_ids=ids,
                pixel_values=pv,
                attention_mask=mask,
                output_hidden_states=True,
                output_attentions=True,
            )
    finally:
        handle.remove()
    return out, raw["last"]


def test_boot_is_offline_eager_float32_and_unfolded(bridge, hf_ref):
    model = bridge.original_model
    assert bridge.cfg.n_layers == hf_ref.config.text_config.num_hidden_layers
    assert bridge.cfg.d_model == hf_ref.config.text_config.hidden_size
    assert model.config.text_config._attn_implementation == "eager"
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Weights are not processed (no LN folding / centering): identical to the checkpoint,
    # once the bridge's wrapper segment ("._original_component") is stripped from keys.
    bridged = {re.sub(r"\._original_component", "", k): v for k, v in model.state_dict().items()}
    for key, ref in hf_ref.state_dict().items():
        assert key in bridged, key
        assert torch.equal(bridged[key], ref), key


@pytest.mark.parametrize("left_pad", [0, 3])
def test_resid_post_matches_hf_hidden_states(bridge, hf_ref, left_pad):
    ids, pv, mask = _inputs(left_pad=left_pad)
    out, last_raw = _hf_forward(hf_ref, ids, pv, mask)
    resid = tl_bridge.bridge_resid_post(bridge, ids, pv, mask)
    n_layers = hf_ref.config.text_config.num_hidden_layers
    assert len(resid) == n_layers == len(out.hidden_states) - 1
    keep = mask.bool()  # compare attended positions only (padding slots are don't-care)
    for layer in range(n_layers - 1):
        assert resid[layer].shape == out.hidden_states[layer + 1].shape
        torch.testing.assert_close(
            resid[layer][keep], out.hidden_states[layer + 1][keep], atol=ATOL, rtol=RTOL
        )
    # transformers 5: hidden_states[-1] is after the final norm; the raw last block output
    # is what the bridge calls blocks.{L-1}.hook_resid_post.
    torch.testing.assert_close(resid[-1][keep], last_raw[keep], atol=ATOL, rtol=RTOL)


def test_named_hooks_match_hf(bridge, hf_ref):
    ids, pv, mask = _inputs(left_pad=0)
    out, _ = _hf_forward(hf_ref, ids, pv, mask)
    n_layers = bridge.cfg.n_layers
    logits, cache = tl_bridge.bridge_run_with_cache(
        bridge, None, input_ids=ids, pixel_values=pv, attention_mask=mask
    )
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], out.hidden_states[0])
    torch.testing.assert_close(cache["ln_final.hook_normalized"], out.hidden_states[-1], atol=ATOL, rtol=RTOL)
    for layer in range(n_layers):
        name = lambda kind: tl_bridge.hook_name(kind, layer)  # noqa: E731, B023 (used in this iteration)
        torch.testing.assert_close(cache[name("pattern")], out.attentions[layer], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(
            cache[name("resid_pre")] + cache[name("attn_out")], cache[name("resid_mid")]
        )
        torch.testing.assert_close(
            cache[name("resid_mid")] + cache[name("mlp_out")], cache[name("resid_post")]
        )
    # names_filter restricts what is cached
    _, small = tl_bridge.bridge_run_with_cache(
        bridge,
        lambda n: n.endswith("hook_resid_post") and n.startswith("blocks."),
        input_ids=ids,
        pixel_values=pv,
        attention_mask=mask,
    )
    assert sorted(small.keys()) == sorted(
        tl_bridge.hook_name("resid_post", layer) for layer in range(n_layers)
    )


def test_bridge_on_preloaded_hf_model(ckpt, hf_ref):
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(ckpt).eval()  # default sdpa
    bridge = tl_bridge.load_bridge(ckpt, hf_model=hf)
    assert bridge.original_model is hf  # wrapped in place ...
    assert hf.config.text_config._attn_implementation == "eager"  # ... and switched to eager
    ids, pv, mask = _inputs()
    out, _ = _hf_forward(hf_ref, ids, pv, mask)
    resid = tl_bridge.bridge_resid_post(bridge, ids, pv, mask)
    torch.testing.assert_close(resid[0], out.hidden_states[1], atol=ATOL, rtol=RTOL)


def test_boot_without_tokenizer_files(tmp_path):
    ckpt = tl_bridge.save_tiny_llava(tmp_path, seed=0, with_tokenizer=False)
    bridge = tl_bridge.load_bridge(ckpt)  # tiny in-memory tokenizer is supplied
    ids, pv, mask = _inputs(batch=1)
    resid = tl_bridge.bridge_resid_post(bridge, ids, pv, mask)
    assert [tuple(r.shape) for r in resid] == [(1, ids.shape[1], bridge.cfg.d_model)] * 3
