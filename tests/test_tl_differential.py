"""Differential tests: the same weights in TransformerLens and in ``HookedMLLM``, every mirrored cache method.

One tiny random LLaVA checkpoint per language model (Llama with grouped-query attention; Qwen2,
with attention biases), its norm weights randomised so that a forgotten or doubled norm weight
shows, is booted three ways:

* ``ours``: ``HookedMLLM.from_pretrained``, run text-only;
* ``raw``: TransformerLens 4.3's ``TransformerBridge`` on the unprocessed weights (as
  tests/test_tl_parity.py boots it);
* ``folded``: the same bridge after ``enable_compatibility_mode(fold_ln=True)`` without
  centring, i.e. HookedTransformer's default processing: its norm weights are folded into
  the next linear layer, so its ``apply_ln_to_stack`` divides by the norm's scale only.

Both caches come from one text-only batch (no padding); every ``ActivationCache`` method
TransformerLens has is compared over a grid of its arguments. Where we differ on purpose the
test says how (docs/parity.md has the table).
"""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.testing import tiny_llava, tiny_processor

pytest.importorskip("transformer_lens")
import tl_bridge  # noqa: E402

ATOL, RTOL = 2e-5, 1e-4
PROMPTS = ["what color is the circle ?", "is there a red square ?"]  # one length: no padding
POS_SLICES = [None, -1, 0, slice(1, 4), (1, 4), (0, None, 2), [3, 1, 3], torch.tensor([5, 0])]


def close(a, b, what=""):
    assert a.shape == b.shape, (what, a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def models(tmp_path_factory, request):
    path = tmp_path_factory.mktemp(f"tiny-llava-differential-{request.param}")
    model = tiny_llava(request.param, seed=11)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # random norm weights: a dropped or doubled weight shows
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    model.save_pretrained(path)
    tiny_processor().save_pretrained(path)
    ours = HookedMLLM.from_pretrained(str(path))
    tokenizer = ours.processor.tokenizer
    raw = tl_bridge.load_bridge(str(path), tokenizer=tokenizer)
    folded = tl_bridge.load_bridge(str(path), tokenizer=tokenizer)
    with tl_bridge._quiet():
        folded.enable_compatibility_mode(
            disable_warnings=True,
            fold_ln=True,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
        )
    return ours, raw, folded


@pytest.fixture(scope="module")
def caches(models):
    ours, raw, folded = models
    batch = ours.text_batch(PROMPTS)
    assert not batch.pad_mask.any()
    _, mine = ours.run_with_cache(batch)

    def theirs(bridge):
        return tl_bridge.bridge_run_with_cache(
            bridge, None, input_ids=batch.input_ids, attention_mask=batch.attention_mask
        )[1]

    return mine, theirs(raw), theirs(folded)


def ln_weight(cache, kind, layer=None):
    """The weight of one of our norms (``ln1``/``ln2`` of a layer, or ``ln_final``), from the model."""
    readout = cache.readout
    norm = readout.ln_final if kind == "ln_final" else getattr(readout, kind)[layer]
    return norm.weight + norm.offset


# -- stacks without a norm: the same numbers and labels as the bridge ---------------------------


@pytest.mark.parametrize("pos_slice", POS_SLICES, ids=repr)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"layer": -1},
        {"layer": 0},
        {"layer": 1},
        {"layer": 3},
        {"layer": 1, "incl_mid": True},
        {"layer": 2, "mlp_input": True},
        {"layer": 2, "incl_mid": True, "mlp_input": True},
        {"incl_mid": True},
    ],
    ids=repr,
)
def test_accumulated_resid(caches, kwargs, pos_slice):
    mine, raw, _ = caches
    (a, la), (b, lb) = (
        c.accumulated_resid(pos_slice=pos_slice, return_labels=True, **kwargs) for c in (mine, raw)
    )
    assert la == lb
    close(a, b, str(kwargs))


def test_accumulated_resid_labels_include_the_layer_asked(caches):
    mine, _, _ = caches
    stack, labels = mine.accumulated_resid(layer=2, return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre"]
    close(stack[-1], mine["resid_pre", 2])


@pytest.mark.parametrize("pos_slice", POS_SLICES[:5], ids=repr)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"layer": 0},
        {"layer": 2},
        {"mode": "attn"},
        {"mode": "mlp", "incl_embeds": False},
        {"layer": 1, "mlp_input": True},
        {"layer": 2, "mlp_input": True, "mode": "attn"},
        {"layer": 2, "mlp_input": True, "mode": "mlp"},
    ],
    ids=repr,
)
def test_decompose_resid(caches, kwargs, pos_slice):
    mine, raw, _ = caches
    (a, la), (b, lb) = (
        c.decompose_resid(pos_slice=pos_slice, return_labels=True, **kwargs) for c in (mine, raw)
    )
    assert la == lb
    close(a, b, str(kwargs))


def test_decompose_resid_arguments_in_transformer_lens_order(caches):
    mine, raw, _ = caches
    close(mine.decompose_resid(1, True, "attn"), raw.decompose_resid(1, True, "attn"))


@pytest.mark.parametrize("pos_slice", POS_SLICES, ids=repr)
@pytest.mark.parametrize("layer", [-1, 0, 1, 3])
def test_stack_head_results(caches, layer, pos_slice):
    mine, raw, _ = caches
    (a, la), (b, lb) = (
        c.stack_head_results(layer, return_labels=True, pos_slice=pos_slice) for c in (mine, raw)
    )
    assert la == lb
    close(a, b, f"layer {layer}")
    if layer != 0:  # TransformerLens' remainder at layer 0 is the *last* resid_post (layer - 1 = -1)
        (a, la), (b, lb) = (
            c.stack_head_results(layer, return_labels=True, incl_remainder=True, pos_slice=pos_slice)
            for c in (mine, raw)
        )
        assert la == lb
        close(a, b, f"layer {layer} remainder")


def test_stack_head_results_at_layer_zero(caches):
    mine, _, _ = caches
    for pos_slice in (None, -1, [2, 2]):
        empty = mine.stack_head_results(layer=0, pos_slice=pos_slice)
        resid = mine._pos(mine["resid_pre", 0], pos_slice)
        assert empty.shape == (0, *resid.shape)
        stack, labels = mine.stack_head_results(
            layer=0, pos_slice=pos_slice, incl_remainder=True, return_labels=True
        )
        assert labels == ["remainder"]
        close(stack[0], resid)  # what layer 0 reads: the embeddings


@pytest.mark.parametrize(
    "args",
    [
        ("q", -1, "attn"),
        ("k", 2, "attn"),
        ("pre", -1, "mlp"),
        ("post", 1, "mlp"),
        ("pattern", -1),
        ("z",),
        ("resid_post",),
        ("normalized", 2, "ln1"),
    ],
    ids=repr,
)
def test_stack_activation(caches, args):
    mine, raw, _ = caches
    a = mine.stack_activation(*args)
    if args[0] == "normalized":  # ours: the norm module's output (weight applied); the bridge's: before it
        layer = args[1]
        weights = torch.stack([ln_weight(mine, "ln1", l) for l in range(layer)])[:, None, None]
        close(a, raw.stack_activation(*args) * weights)
    else:
        close(a, raw.stack_activation(*args), str(args))
    layers = a.shape[0]
    key = (args[0],) if len(args) < 3 else (args[0], args[2])
    close(a, torch.stack([mine[(key[0], l, *key[1:])] for l in range(layers)]))


@pytest.mark.parametrize("pos_slice", [None, -1, (1, 3), [4, 0, 4]], ids=repr)
@pytest.mark.parametrize("neuron_slice", [None, 3, [7, 2, 7], (0, 10, 3), slice(5, 9)], ids=repr)
def test_neuron_results(caches, pos_slice, neuron_slice):
    mine, raw, _ = caches
    close(
        mine.get_neuron_results(1, neuron_slice=neuron_slice, pos_slice=pos_slice),
        raw.get_neuron_results(1, neuron_slice=neuron_slice, pos_slice=pos_slice),
    )
    for kwargs in (
        {"layer": 2},
        {"layer": 1, "incl_remainder": True},
        {"layer": 2, "mlp_input": True, "incl_remainder": True},
    ):
        (a, la), (b, lb) = (
            c.stack_neuron_results(
                neuron_slice=neuron_slice, pos_slice=pos_slice, return_labels=True, **kwargs
            )
            for c in (mine, raw)
        )
        assert la == lb, kwargs
        close(a, b, str(kwargs))


@pytest.mark.parametrize("pos_slice", [None, -1, [3, 1, 3]], ids=repr)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"layer": 0}, {"layer": 2, "mlp_input": True}, {"expand_neurons": False}, {"layer": -1}],
    ids=repr,
)
def test_full_resid_decomposition(caches, kwargs, pos_slice):
    mine, raw, _ = caches
    (a, la), (b, lb) = (
        c.get_full_resid_decomposition(pos_slice=pos_slice, return_labels=True, **kwargs) for c in (mine, raw)
    )
    assert la == lb
    close(a, b, str(kwargs))


def test_head_results_and_batch_dims(caches, models):
    mine, raw, _ = caches
    mine.compute_head_results()
    raw.compute_head_results()
    for layer in range(models[0].cfg.n_layers):
        close(mine["result", layer], raw["result", layer])
    for batch_slice in (1, slice(0, 1), [1, 0]):
        a, b = mine.apply_slice_to_batch_dim(batch_slice), raw.apply_slice_to_batch_dim(batch_slice)
        assert a.has_batch_dim == b.has_batch_dim
        close(a["z", 1], b["z", 1])
        close(a.decompose_resid(pos_slice=-1), b.decompose_resid(pos_slice=-1))
    a, b = mine.apply_slice_to_batch_dim(slice(1, 2)), raw.apply_slice_to_batch_dim(slice(1, 2))
    a.remove_batch_dim(), b.remove_batch_dim()
    assert a.has_batch_dim is b.has_batch_dim is False
    close(a["pattern", 0], b["pattern", 0])
    close(a.accumulated_resid(pos_slice=[2, 0]), b.accumulated_resid(pos_slice=[2, 0]))


# -- norms: the logit lens, the final norm, a layer's norm --------------------------------------


@pytest.mark.parametrize("pos_slice", [None, -1, [3, 1]], ids=repr)
def test_logit_lens_recomputes_the_final_norm_per_layer(models, caches, pos_slice):
    ours, raw, _ = models
    mine, theirs, _ = caches
    a = mine.accumulated_resid(apply_ln=True, pos_slice=pos_slice, incl_mid=True)
    close(a, theirs.accumulated_resid(apply_ln=True, pos_slice=pos_slice, incl_mid=True))
    final_norm = ours.adapter.module(ours.hf_model, ours.adapter.modules.final_norm)
    with torch.no_grad():  # independently: the model's own final norm on each residual
        expected = torch.stack(
            [final_norm(x) for x in mine.accumulated_resid(pos_slice=pos_slice, incl_mid=True)]
        )
    close(a, expected)
    close(
        mine.apply_ln_to_stack(mine.accumulated_resid(), recompute_ln=True),
        mine.accumulated_resid(apply_ln=True),
    )


def test_logit_lens_top_token_at_layer_zero(models, caches):
    """The logit lens of the embeddings: probabilities from the final norm on the embeddings themselves."""
    ours, _, _ = models
    mine, raw, _ = caches
    lens = mine.accumulated_resid(apply_ln=True)[0] @ ours.W_U
    theirs = raw.accumulated_resid(apply_ln=True)[0] @ ours.W_U
    close(lens.softmax(-1), theirs.softmax(-1))


@pytest.mark.parametrize("pos_slice", [None, -1, [3, 1, 3]], ids=repr)
@pytest.mark.parametrize(
    "kwargs, norm",
    [
        ({}, ("ln_final",)),
        ({"layer": -1}, ("ln_final",)),
        ({"layer": 3}, ("ln_final",)),
        ({"layer": 1}, ("ln1", 1)),
        ({"layer": 2, "mlp_input": True}, ("ln2", 2)),
        ({"layer": 0}, ("ln1", 0)),
    ],
    ids=repr,
)
def test_apply_ln_to_stack_is_the_folded_peer_times_the_norm_weight(caches, kwargs, norm, pos_slice):
    """Unfolded weights: our scaled components times ``W_U`` (or the next layer's unfolded weights) give
    what the folded peer's scaled components give with its folded weights, so ours carry the norm weight."""
    mine, raw, folded = caches
    stack = mine.decompose_resid(pos_slice=pos_slice)
    weight = ln_weight(mine, *norm)
    for peer in (raw, folded):  # neither multiplies by the weight (the folded one has it in W_U / W_Q...)
        close(
            mine.apply_ln_to_stack(stack, pos_slice=pos_slice, **kwargs),
            peer.apply_ln_to_stack(stack, pos_slice=pos_slice, **kwargs) * weight,
        )


def test_apply_ln_to_stack_batch_slice(caches):
    mine, raw, _ = caches
    stack = mine.decompose_resid()
    weight = ln_weight(mine, "ln_final")
    for batch_slice in (1, [1, 0], slice(1, 2)):
        close(
            mine.apply_ln_to_stack(stack, batch_slice=batch_slice),
            raw.apply_ln_to_stack(stack, batch_slice=batch_slice) * weight,
        )


def test_apply_ln_to_stack_arguments_in_transformer_lens_order(caches):
    mine, _, _ = caches
    stack = mine.decompose_resid(2, True)
    close(mine.apply_ln_to_stack(stack, 2, True), mine.apply_ln_to_stack(stack, layer=2, mlp_input=True))


@pytest.mark.parametrize(
    "tokens, incorrect",
    [
        (torch.tensor([5, 9]), None),
        (torch.tensor([5, 9]), torch.tensor([7, 8])),
        (7, 12),
        (torch.tensor([[5, 6, 7, 8, 9, 10, 11]] * 2), torch.tensor([[1, 2, 3, 4, 5, 6, 7]] * 2)),
    ],
    ids=["batch", "batch-diff", "int-diff", "batch-pos-diff"],
)
def test_logit_attrs_match_the_folded_peer(caches, tokens, incorrect):
    mine, _, folded = caches
    for pos_slice in (None, -1) if torch.as_tensor(tokens).dim() < 2 else (None,):
        a = mine.logit_attrs(
            mine.decompose_resid(pos_slice=pos_slice), tokens, incorrect, pos_slice=pos_slice
        )
        b = folded.logit_attrs(
            folded.decompose_resid(pos_slice=pos_slice), tokens, incorrect, pos_slice=pos_slice
        )
        close(a, b)


def test_logit_attrs_sum_to_the_logits(models, caches):
    ours, _, _ = models
    mine, _, _ = caches
    tokens = torch.tensor([5, 9])
    attrs = mine.logit_attrs(mine.decompose_resid(pos_slice=-1), tokens, pos_slice=-1)
    close(attrs.sum(0), mine["logits"][torch.arange(2), -1, tokens], "sum of components")


def test_logit_attrs_refuse_tokens_of_another_shape(caches):
    mine, raw, _ = caches
    stack = mine.decompose_resid()
    for tokens, incorrect in [
        (torch.tensor([5, 9]), torch.tensor(3)),
        (torch.tensor([5, 9]), torch.tensor([[3, 4]])),
        (5, torch.tensor([3, 4])),
    ]:
        with pytest.raises(ValueError, match="same shape"):
            raw.logit_attrs(stack, tokens, incorrect)
        with pytest.raises(ValueError, match="same shape"):
            mine.logit_attrs(stack, tokens, incorrect)


def test_bad_selections_are_refused(caches):
    mine, _, _ = caches
    for bad in (0.5, "last", [[0, 1]], True, torch.tensor([True, False])):
        with pytest.raises(ValueError, match="pos_slice takes"):
            mine.accumulated_resid(pos_slice=bad)
    for layer in (5, -6):
        with pytest.raises(ValueError, match="layer must be in"):
            mine.accumulated_resid(layer=layer)
    with pytest.raises(ValueError, match="mlp_input"):
        mine.decompose_resid(mlp_input=True)


# -- model habits: the same calls on both -------------------------------------------------------


def test_model_of_token_ids(models):
    ours, raw, _ = models
    tokens = ours.to_tokens(PROMPTS)
    with torch.no_grad(), tl_bridge._quiet():
        expected = raw(tokens)
    close(ours(tokens), expected)
    close(ours(tokens[0]), expected[:1])
    logits, cache = ours.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    close(logits, ours(PROMPTS))
    close(cache["resid_post", 1], ours.run_with_cache(PROMPTS)[1]["resid_post", 1])
    with pytest.raises(ValueError, match="image placeholder"):
        ours(torch.tensor([[1, ours.cfg.image_token_id]]))


def test_token_helpers_match(models):
    ours, raw, _ = models
    for token in (5, 9, torch.tensor(7)):
        assert ours.to_single_str_token(token) == raw.to_single_str_token(int(token))
    for tokens in ("red", 7, torch.tensor([5, 9]), torch.tensor([[5, 9, 5], [1, 2, 3]])):
        close(ours.tokens_to_residual_directions(tokens), raw.tokens_to_residual_directions(tokens))
    text = "is the red square red ?"
    for mode in ("first", "last"):
        for source in (text, ours.to_tokens(text)):
            assert ours.get_token_position("red", source, mode=mode) == raw.get_token_position(
                "red", source, mode=mode
            )
    with pytest.raises(ValueError, match="does not occur"):
        ours.get_token_position("blue", text)
    assert ours.to_str_tokens(PROMPTS) == raw.to_str_tokens(PROMPTS)
    long = "red " * (ours.cfg.n_ctx + 5)  # past the context: truncate cuts to n_ctx, as TransformerLens does
    for truncate in (True, False):
        for side in ("left", "right"):
            expected = raw.to_tokens([long, "red"], truncate=truncate, padding_side=side)
            assert (
                ours.to_tokens([long, "red"], truncate=truncate, padding_side=side).tolist()
                == expected.tolist()
            )
    assert ours.to_tokens(long).shape[1] == ours.cfg.n_ctx
    with pytest.raises(ValueError, match="padding_side"):
        ours.to_tokens("red", padding_side="middle")
    for keyword in ("prepend_bos", "padding_side"):  # on a run: refused, pointing to to_tokens
        with pytest.raises(TypeError, match=rf"{keyword}.*to_tokens"):
            ours("red", **{keyword: False})
    assert ours.cfg.n_ctx == raw.cfg.n_ctx and ours.cfg.default_prepend_bos == raw.cfg.default_prepend_bos


def test_utils_get_act_name():
    from transformer_lens.utilities.components_utils import get_act_name

    from hooked_mllm import utils

    for args in [("resid_post", 1), ("q", 0, "attn"), ("pre", 2), ("normalized", 1, "ln2"), ("embed",)]:
        assert utils.get_act_name(*args) == get_act_name(*args)


def test_generate_takes_transformer_lens_keywords(models):
    ours, _, _ = models
    plain = ours.generate(PROMPTS[0], max_new_tokens=3)
    mapped = ours.generate(
        PROMPTS[0], max_new_tokens=3, verbose=False, use_past_kv_cache=False, stop_at_eos=True
    )
    assert torch.equal(plain.sequences, mapped.sequences)
    for key, value in (("stop_at_eos", False), ("return_type", "str"), ("prepend_bos", False)):
        with pytest.raises(TypeError, match=f"TransformerLens' {key}"):
            ours.generate(PROMPTS[0], max_new_tokens=2, **{key: value})


def test_run_with_cache_pos_slice_points_to_positions(models):
    ours, _, _ = models
    with pytest.raises(TypeError, match="positions="):
        ours.run_with_cache(PROMPTS[0], pos_slice=-1)


def test_add_hook_and_reset_hooks_match(models):
    ours, raw, _ = models
    tokens = ours.to_tokens(PROMPTS)

    def plus(act, hook):
        return act + 1.0

    def twice(act, hook):
        return act * 2.0

    def both(model):
        with torch.no_grad(), tl_bridge._quiet():
            return model(tokens)

    plain = both(ours)
    try:
        for model in (ours, raw):
            model.add_hook("blocks.0.hook_resid_post", plus, is_permanent=True)
            model.add_hook("blocks.0.hook_resid_post", twice)  # after plus: (x + 1) * 2
        hooked = both(ours)
        close(hooked, both(raw))
        for model in (ours, raw):
            model.reset_hooks()  # plus stays
        kept = both(ours)
        close(kept, both(raw))
        assert not torch.allclose(hooked, plain) and not torch.allclose(kept, hooked)
        for model in (ours, raw):
            model.reset_hooks(including_permanent=True)
        close(both(ours), both(raw))
        close(both(ours), ours.run_with_hooks(tokens))
    finally:
        for model in (ours, raw):
            model.reset_hooks(including_permanent=True)
    with pytest.raises(ValueError, match="prepend"):
        ours.add_hook("blocks.0.hook_resid_post", plus, prepend=True)
    with pytest.raises(ValueError, match="bwd_hooks"):
        ours.add_hook("blocks.0.hook_resid_post", plus, dir="bwd")


@pytest.mark.parametrize("form", ["tensor", "1-tuple"])
def test_backward_hook_replacing_the_gradient(models, form):
    ours, raw, _ = models
    batch = ours.text_batch(PROMPTS)

    def run(model, replace):
        seen = {}

        def scale(grad, hook):
            new = grad * 3.0
            return (new,) if form == "1-tuple" else new

        def keep(grad, hook):
            seen["grad"] = grad.detach().clone()

        hooks = [("blocks.0.hook_resid_post", keep)]
        if replace:
            hooks.insert(0, ("blocks.1.hook_resid_post", scale))
        if model is raw:
            with tl_bridge._quiet():
                logits = raw.run_with_hooks(batch.input_ids, bwd_hooks=hooks, reset_hooks_end=False)
            try:
                logits.sum().backward()
            finally:
                raw.reset_hooks()
                raw.zero_grad(set_to_none=True)
        else:
            ours.run_with_hooks(batch, bwd_hooks=hooks).sum().backward()
            ours.hf_model.zero_grad(set_to_none=True)
        return seen["grad"]

    mine = run(ours, True)
    close(mine, run(raw, True))
    assert not torch.allclose(mine, run(ours, False))


def test_factored_circuits_match(models):
    ours, raw, _ = models
    for name in ("OV", "QK"):
        a, b = getattr(ours, name), getattr(raw, name)
        assert type(a) is type(b) and a.shape == b.shape, name
        close(a.A, b.A, name)
        close(a.B, b.B, name)
        close(a[1, 2].AB, b[1, 2].AB, name)


# -- Gemma 3: norms as x * (1 + weight), sandwich norms, a scaled embedding -----------------------


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from hooked_mllm.testing import tiny_gemma3

    path = tmp_path_factory.mktemp("tiny-gemma3-differential")
    model, processor = tiny_gemma3(seed=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # Gemma scales by (1 + weight): random offsets around zero
                param.copy_(torch.rand(param.shape, generator=generator) - 0.5)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    ours = HookedMLLM.from_pretrained(str(path))
    raw = tl_bridge.load_bridge(str(path), tokenizer=ours.processor.tokenizer)
    batch = ours.text_batch(PROMPTS)
    _, mine = ours.run_with_cache(batch)
    _, theirs = tl_bridge.bridge_run_with_cache(
        raw, None, input_ids=batch.input_ids, attention_mask=batch.attention_mask
    )
    return ours, mine, theirs


@pytest.mark.parametrize("pos_slice", [None, -1, [3, 0, 3]], ids=repr)
def test_gemma_stacks_and_logit_lens(gemma, pos_slice):
    ours, mine, theirs = gemma
    n = ours.cfg.n_layers
    for kwargs in (
        {},
        {"layer": 1},
        {"incl_mid": True},
        {"apply_ln": True},
        {"apply_ln": True, "incl_mid": True},
    ):
        (a, la), (b, lb) = (
            c.accumulated_resid(pos_slice=pos_slice, return_labels=True, **kwargs) for c in (mine, theirs)
        )
        assert la == lb
        close(a, b, f"accumulated_resid {kwargs}")
    for kwargs in ({}, {"layer": 1}, {"layer": 1, "mlp_input": True}):
        (a, la), (b, lb) = (
            c.decompose_resid(pos_slice=pos_slice, return_labels=True, **kwargs) for c in (mine, theirs)
        )
        assert la == lb
        close(a, b, f"decompose_resid {kwargs}")
    close(mine.stack_head_results(n, pos_slice=pos_slice), theirs.stack_head_results(n, pos_slice=pos_slice))
    stack = mine.decompose_resid(pos_slice=pos_slice)
    close(
        mine.apply_ln_to_stack(stack, pos_slice=pos_slice),
        theirs.apply_ln_to_stack(stack, pos_slice=pos_slice) * ln_weight(mine, "ln_final"),
        "apply_ln_to_stack (1 + weight)",
    )
    close(mine["logits"], theirs["unembed.hook_out"], "logits")
