"""The mechanism toolkit against an independent plain-torch computation on tiny random models.

The reference below reads the Hugging Face model only through ``register_forward_hook`` /
``register_forward_pre_hook`` (no hooked_mllm code): layer inputs, eager attention weights,
``v_proj`` / ``o_proj`` outputs and the final norm's input at the last position, then computes
the paper's quantities by hand. Three families: LLaVA with a Llama LM (grouped-query
attention: 4 query heads on 2 key/value heads), Qwen2-VL (a non-LLaVA family with a merged
2x3 grid and value biases) and PaliGemma 2 (Gemma 2: post-attention norms, ``1 + weight``
RMSNorm, final logit soft-capping).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from architectures.families import image

from hooked_mllm import HookedMLLM
from hooked_mllm import testing as t
from hooked_mllm.lens import logit_lens
from hooked_mllm.mechanism import (
    attention_map,
    capture,
    gradient_map,
    head_contributions,
    head_scores,
    image_locations,
    layer_scores,
    occlusion_map,
    relevancy_map,
)

PROMPTS = ["what color is the circle ?", "how many objects"]
CASES = {
    "llava": (
        lambda: (t.tiny_llava("llama", attn_implementation="eager", n_layers=2), t.tiny_processor()),
        [image(0, 32, 32), image(1, 32, 32)],
        (4, 4),
    ),
    "qwen2_vl": (
        lambda: (t.tiny_qwen2_vl("2", attn_implementation="eager"), t.tiny_qwen2_vl_processor()),
        [image(0, 16, 24), image(1, 16, 24)],
        (2, 3),
    ),
    "paligemma2": (
        lambda: t.tiny_paligemma("2", attn_implementation="eager"),
        [image(0, 16, 16), image(1, 16, 16)],
        (4, 4),
    ),
}
ATOL = 1e-5


class Reference:
    """Plain torch: hooks on the HF modules, the paper's formulas by hand."""

    def __init__(self, hf_model, inputs, image_token_id: int, grid: tuple[int, int]):
        lm = hf_model.model.language_model
        self.hf, self.lm, self.grid = hf_model, lm, grid
        self.layers = list(lm.layers)
        text = hf_model.config.get_text_config()
        self.n_heads, self.n_kv = text.num_attention_heads, text.num_key_value_heads
        self.d_head = getattr(text, "head_dim", None) or text.hidden_size // self.n_heads
        self.gemma = text.model_type.startswith("gemma")
        self.cap = getattr(text, "final_logit_softcapping", None)
        got: dict = {"pre": {}, "attn": {}, "v": {}, "o": {}, "attn_out": {}, "mlp_out": {}}
        handles = []

        def pre_hook(i):
            def fn(module, args, kwargs):
                got["pre"][i] = (args[0] if args else kwargs["hidden_states"]).detach()

            return fn

        def out_hook(key, i, index=None):
            def fn(module, args, output):
                got[key][i] = (output if index is None else output[index]).detach()

            return fn

        for i, layer in enumerate(self.layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(out_hook("attn", i, 1)))
            handles.append(layer.self_attn.v_proj.register_forward_hook(out_hook("v", i)))
            handles.append(layer.self_attn.o_proj.register_forward_hook(out_hook("o", i)))
            attn_out = layer.post_attention_layernorm if self.gemma else layer.self_attn
            handles.append(attn_out.register_forward_hook(out_hook("attn_out", i, None if self.gemma else 0)))
            mlp_out = layer.post_feedforward_layernorm if self.gemma else layer.mlp
            handles.append(mlp_out.register_forward_hook(out_hook("mlp_out", i)))
        final_hook = lm.norm.register_forward_pre_hook(
            lambda m, args: got.__setitem__("final", args[0].detach())
        )
        handles.append(final_hook)
        try:
            with torch.no_grad():
                self.logits = hf_model(**inputs).logits
        finally:
            for h in handles:
                h.remove()
        self.got = got
        self.ids = inputs["input_ids"]
        self.image = self.ids.eq(image_token_id)
        self.T = self.ids.shape[1] - 1  # left padding: every row ends at the last position
        self.y = self.logits[:, self.T].argmax(-1)

    def lp(self, z, b):
        """log p(y | z) with the final RMSNorm's scale frozen at row b's final residual at T."""
        final = self.got["final"][b, self.T]
        weight = self.lm.norm.weight + (1.0 if self.gemma else 0.0)
        eps = self.lm.norm.eps if self.gemma else self.lm.norm.variance_epsilon
        x = z / torch.sqrt(final.pow(2).mean() + eps) * weight
        logits = x @ self.hf.lm_head.weight.T
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits.log_softmax(-1)[..., self.y[b]]

    def contributions(self, l, b):
        """[head, pos, d] attn[T, j] * v_j @ W_O[h], through Gemma's post-attention norm at T's scale."""
        attn = self.got["attn"][l][b, :, self.T]  # [head, pos]
        v = self.got["v"][l][b].view(-1, self.n_kv, self.d_head)  # [pos, kv, dh]
        w = self.layers[l].self_attn.o_proj.weight  # [d, head * dh]
        out = []
        for h in range(self.n_heads):
            v_h = v[:, h // (self.n_heads // self.n_kv)]
            w_h = w[:, h * self.d_head : (h + 1) * self.d_head]
            out.append(attn[h, :, None] * (v_h @ w_h.T))
        c = torch.stack(out)
        if self.gemma:
            norm = self.layers[l].post_attention_layernorm
            o_t = self.got["o"][l][b, self.T]
            c = c / torch.sqrt(o_t.pow(2).mean() + norm.eps) * (1 + norm.weight)
        return c

    def head_scores(self, b):
        rows = []
        for l in range(len(self.layers)):
            x = self.got["pre"][l][b, self.T]
            rows.append(self.lp(x + self.contributions(l, b).sum(1), b) - self.lp(x, b))
        return torch.stack(rows)

    def location_map(self, l, h, b):
        x = self.got["pre"][l][b, self.T]
        where = self.image[b].nonzero().flatten()
        c = self.contributions(l, b)[h, where]
        return (self.lp(x + c, b) - self.lp(x, b)).reshape(self.grid)

    def attention_map(self, b):
        where = self.image[b].nonzero().flatten()
        stack = torch.stack([self.got["attn"][l][b, :, self.T, where] for l in range(len(self.layers))])
        return stack.mean((0, 1)).reshape(self.grid)


_BUILT: dict = {}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name = request.param
    if name not in _BUILT:
        build, images, grid = CASES[name]
        hf_model, processor = build()
        model = HookedMLLM.from_hf(hf_model, processor)
        batch = model.prepare(images=[[im] for im in images], prompts=PROMPTS)
        ref = Reference(hf_model, batch.inputs, model.cfg.image_token_id, grid)
        _BUILT[name] = (model, batch, ref, grid)
    return _BUILT[name]


def close(a, b, atol=ATOL):
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()


def test_contributions_equal_reference_and_sum_to_head_outputs(case):
    model, batch, ref, _ = case
    c = head_contributions(model, batch)  # [layer, head, batch, pos, d]
    for l in range(len(ref.layers)):
        for b in range(len(batch)):
            close(c[l, :, b], ref.contributions(l, b))
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith(("hook_z", "hook_attn_out")))
    run = capture(model, batch)
    for l in range(len(ref.layers)):
        z_t = cache["z", l][:, -1]  # [batch, head, d_head]
        heads = torch.einsum("bhd,hdm->bhm", z_t, model.W_O(l).detach())
        close(run._raw(l, None, None).sum(2), heads)  # summed over positions: each head's cached output
        close(c[l].sum((0, 2)), cache["attn_out", l][:, -1])  # and over heads: the attention output at T


def test_head_scores_equal_reference(case):
    model, batch, ref, _ = case
    scores = head_scores(model, batch)
    assert scores.target.tolist() == ref.y.tolist()
    for b in range(len(batch)):
        close(scores.values[b], ref.head_scores(b))


def test_location_maps_and_attention_baseline_equal_reference(case):
    model, batch, ref, grid = case
    scores = head_scores(model, batch)
    for b in range(len(batch)):
        top = scores.top(1, row=b)[0]
        m = image_locations(model, batch, heads="top", row=b)
        assert m.shape == grid and m.extra["heads"] == [top]
        close(m.values, ref.location_map(*top, b))
        pair = [(len(ref.layers) - 1, 1), (0, 0)]
        summed = image_locations(model, batch, heads=pair, row=b)
        close(summed.values, ref.location_map(*pair[0], b) + ref.location_map(*pair[1], b))
        close(attention_map(model, batch, row=b).values, ref.attention_map(b))


def test_layer_scores_equal_reference(case):
    model, batch, ref, _ = case
    scores = layer_scores(model, batch)
    for b in range(len(batch)):
        for l in range(len(ref.layers)):
            x = ref.got["pre"][l][b, ref.T]
            a = ref.got["attn_out"][l][b, ref.T]
            m = ref.got["mlp_out"][l][b, ref.T]
            close(scores.attn[b, l], ref.lp(x + a, b) - ref.lp(x, b))
            close(scores.mlp[b, l], ref.lp(x + a + m, b) - ref.lp(x + a, b))


def test_frozen_readout_of_the_final_residual_is_the_model(case):
    model, batch, ref, _ = case
    run = capture(model, batch)
    final_lp = ref.logits[:, ref.T].log_softmax(-1).gather(1, ref.y[:, None])[:, 0]
    close(torch.stack([run.log_prob(run.final[b], b) for b in range(len(batch))]), final_lp)
    close(logit_lens(model, run.final), ref.logits[:, ref.T], atol=1e-4)  # soft cap included
    close(logit_lens(model, run.final, scale_from=run.final), ref.logits[:, ref.T], atol=1e-4)


def test_gradient_baselines_equal_reference():
    model, batch, ref, grid = _BUILT.get("llava") or _build("llava")
    hf = model.hf_model
    grabbed = {}

    def keep_attn(module, args, output):
        output[1].retain_grad()
        grabbed.setdefault("attn", []).append(output[1])

    def keep_embed(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x.retain_grad()
        grabbed["embed"] = x

    handles = [layer.self_attn.register_forward_hook(keep_attn) for layer in ref.layers]
    handles.append(ref.layers[0].register_forward_pre_hook(keep_embed, with_kwargs=True))
    try:
        logits = hf(**batch.inputs).logits
        logits[:, ref.T].gather(1, ref.y[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
        hf.zero_grad(set_to_none=True)
    seq = logits.shape[1]
    for b in range(len(batch)):
        where = ref.image[b].nonzero().flatten()
        r = torch.eye(seq)
        for a in grabbed["attn"]:
            r = r + (a.grad[b] * a[b]).clamp(min=0).mean(0).detach() @ r
        close(relevancy_map(model, batch, row=b).values, r[ref.T, where].reshape(grid))
        x = grabbed["embed"]
        ixg = (x.grad[b] * x[b]).sum(-1)[where].detach()
        close(gradient_map(model, batch, row=b).values, ixg.reshape(grid))


def test_occlusion_equals_reference_for_some_cells():
    model, batch, ref, grid = _BUILT.get("llava") or _build("llava")
    m = occlusion_map(model, batch, row=1)
    pixels = batch.inputs["pixel_values"]
    clean = ref.logits[1, ref.T].log_softmax(-1)[ref.y[1]]
    for cell in (0, 5, 15):
        r, c = divmod(cell, grid[1])
        single = {k: v[1:2].clone() for k, v in batch.inputs.items()}
        step = pixels.shape[-1] // grid[1]
        single["pixel_values"][0, :, r * step : (r + 1) * step, c * step : (c + 1) * step] = 0
        with torch.no_grad():
            out = model.hf_model(**single).logits[0, -1].log_softmax(-1)[ref.y[1]]
        assert abs(m.values[r, c] - float(clean - out)) < 1e-4


def _build(name):
    build, images, grid = CASES[name]
    hf_model, processor = build()
    model = HookedMLLM.from_hf(hf_model, processor)
    batch = model.prepare(images=[[im] for im in images], prompts=PROMPTS)
    _BUILT[name] = (model, batch, Reference(hf_model, batch.inputs, model.cfg.image_token_id, grid), grid)
    return _BUILT[name]
