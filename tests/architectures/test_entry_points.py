"""Everyday entry points that must work, or fail with an error naming the real cause.

Each test is a regression test for a defect seen on HF-style tiny models and inputs: touching
image placeholders, config lists past the model's layers, geometry that cannot be read, writes
that were accepted and had no effect, selectors past the last image, re-entrant and concurrent
runs, unknown keywords, replacement tensors of the wrong dtype / device / shape, empty prompts,
and the processor not pinned with the weights. Numbers are checked against HF's own forward.
"""

from __future__ import annotations

import threading

import pytest
import torch

from hooked_mllm import HookedMLLM, positions
from hooked_mllm import testing as t

from .families import FAMILIES, image

BY_NAME = {family.adapter: family for family in FAMILIES}


def hf_logits(model, inputs):
    with torch.no_grad():
        return model.hf_model(**inputs).logits


@pytest.fixture(scope="module")
def llava():
    return HookedMLLM.from_hf(t.tiny_llava("llama", n_layers=2), t.tiny_processor())


@pytest.fixture(scope="module")
def llava_batch(llava):
    return llava.prepare(images=[image(0, 32, 32)], prompts=["what color is the circle ?"])


# -- touching placeholders ---------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["llava", "llava_next", "paligemma"])
def test_touching_image_placeholders_are_split_by_the_processors_counts(adapter):
    hf_model, processor = BY_NAME[adapter].build()
    model = HookedMLLM.from_hf(hf_model, processor)
    images = [[image(0, 32, 32), image(1, 16, 32)]]
    placeholder = getattr(processor, "image_token", "<image>")
    batch = model.prepare(images=images, prompts=[placeholder * 2 + " what"], chat_template=False)
    counts = processor._get_num_multimodal_tokens(image_sizes=[[32, 32], [16, 32]])["num_image_tokens"]
    views = 2 if adapter == "llava_next" else 1  # anyres: a base view and a high-resolution view per image
    spans = batch.images
    if views == 2:  # each image's run: its two views plus one newline token per high-resolution row
        spans = [
            (a.start, b.end, a.n_tokens + b.n_tokens + b.grid[0]) for a, b in zip(spans[::2], spans[1::2])
        ]
        assert [n for _, _, n in spans] == counts and len(counts) == 2
        assert spans[0][1] + 1 == spans[1][0]  # they touch (the last row's newline token between)
    else:
        assert [span.n_tokens for span in spans] == counts and len(counts) == 2
        assert batch.images[0].end == batch.images[1].start  # they touch
    assert batch.images_per_row == (2 * views,)
    again = model.to_batch(dict(batch.inputs))  # the HF tensors alone give the same split
    assert [(s.start, s.end, s.grid) for s in again.images] == [
        (s.start, s.end, s.grid) for s in batch.images
    ]
    mask = positions.resolve(positions.image(views), batch)
    assert mask.sum() == batch.images[views].n_tokens and bool(mask[0, batch.images[views].start])
    torch.testing.assert_close(model(batch), hf_logits(model, batch.inputs))


# -- Mllama: cross-attention layers listed past the model's layers ------------------------


def test_mllama_cross_attention_layers_past_the_model_are_ignored_as_hf_does():
    hf_model, processor = t.tiny_mllama(n_layers=3, cross_layers=(1, 8, 13))
    model = HookedMLLM.from_hf(hf_model, processor)
    assert model.adapter.cross_layers(hf_model.config, model.cfg.n_layers) == frozenset({1})
    assert "blocks.1.hook_cross_attn_out" in model.hook_names()
    family = BY_NAME["mllama"]
    batch = model.prepare(images=family.images, prompts=family.prompts)
    torch.testing.assert_close(model(batch), hf_logits(model, batch.inputs))


# -- Molmo2: one contiguous run instead of the processor's row layout ----------------------


def test_molmo2_one_contiguous_run_per_image_keeps_positions_and_grids():
    hf_model, processor = t.tiny_molmo2()
    model = HookedMLLM.from_hf(hf_model, processor)
    batch = model.prepare(images=[image(0, 20, 32)], prompts=["what"])
    tok = processor.tokenizer
    patch = tok.convert_tokens_to_ids("<im_patch>")
    layout = {
        tok.convert_tokens_to_ids(x) for x in ("<im_col>", "<im_start>", "<im_end>", "<low_res_im_start>")
    }
    ids = batch.inputs["input_ids"][0]
    keep = torch.tensor([int(i) not in layout for i in ids])
    first = int(ids.eq(patch).nonzero()[0])
    keep[:first] = True  # only the layout tokens between the patches go: the patches become one run
    keep[int(ids.eq(patch).nonzero()[-1]) :] = True
    inputs = {
        k: (v[:, keep] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
        for k, v in batch.inputs.items()
    }
    assert int(inputs["input_ids"].eq(patch).sum()) == 21
    runs = torch.diff(inputs["input_ids"][0].eq(patch).int()).abs().sum()
    assert int(runs) == 2  # one run: it starts and ends once
    flat = model.to_batch(inputs)
    assert [(s.n_tokens, s.grid) for s in flat.images] == [(9, (3, 3)), (12, (3, 4))]
    torch.testing.assert_close(model(flat), hf_logits(model, inputs))
    _, cache = model.run_with_cache(flat, names_filter="blocks.0.hook_resid_post", positions="image")
    assert cache["blocks.0.hook_resid_post"].shape[1] == 21


# -- writes that must take effect ---------------------------------------------------------


def _bump_in_place(act, hook):
    act[:, -1] += 1.0


def _bump_returned(act, hook):
    out = act.clone()
    out[:, -1] += 1.0
    return out


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"])
def test_in_place_edit_of_a_derived_point_takes_effect(llava, llava_batch, name):
    clean = llava(llava_batch)
    in_place = llava.run_with_hooks(llava_batch, fwd_hooks=[(name, _bump_in_place)])
    returned = llava.run_with_hooks(llava_batch, fwd_hooks=[(name, _bump_returned)])
    assert not torch.equal(in_place, clean)
    torch.testing.assert_close(in_place, returned)


def test_in_place_edit_of_a_layer_scaled_point_takes_effect():
    hf_model, processor = t.tiny_internvl()
    model = HookedMLLM.from_hf(hf_model, processor)
    batch = model.prepare(images=[image(0, 16, 16)], prompts=["what"])
    name = "vision.blocks.0.hook_attn_out"
    assert model.hook_points.resolve(name).scale is not None
    clean = model(batch)
    in_place = model.run_with_hooks(batch, fwd_hooks=[(name, _bump_in_place)])
    assert not torch.equal(in_place, clean)
    torch.testing.assert_close(in_place, model.run_with_hooks(batch, fwd_hooks=[(name, _bump_returned)]))


def test_vision_layers_the_projector_never_reads_refuse_writes(llava, llava_batch):
    assert llava.hf_model.config.vision_feature_layer == -2
    last = llava.cfg.vision_n_layers - 1
    for name in (f"vision.blocks.{last}.hook_resid_pre", f"vision.blocks.{last}.hook_mlp_out"):
        point = llava.hook_points.resolve(name)
        assert not point.writable and "vision_feature_layer" in point.read_only
        for fn in (_bump_returned, _bump_in_place):
            with pytest.raises(ValueError, match="read-only.*hook_resid_post instead"):
                llava.run_with_hooks(llava_batch, fwd_hooks=[(name, fn)])
    _, cache = llava.run_with_cache(
        llava_batch, names_filter=f"vision.blocks.{last}.hook_resid_pre"
    )  # still read
    feature = f"vision.blocks.{last - 1}.hook_resid_post"
    assert not torch.equal(
        llava.run_with_hooks(llava_batch, fwd_hooks=[(feature, _bump_returned)]), llava(llava_batch)
    )


def test_in_place_edit_of_a_read_only_point_is_refused(llava, llava_batch):
    def edit(act, hook):
        act.mul_(2)

    with pytest.raises(ValueError, match="blocks.0.attn.hook_pattern is read-only.*in place"):
        llava.run_with_hooks(llava_batch, fwd_hooks=[("blocks.0.attn.hook_pattern", edit)])


# -- selectors, keywords, return values ---------------------------------------------------


def test_image_index_past_the_last_image_raises(llava, llava_batch):
    assert positions.resolve(positions.image(0), llava_batch).sum() == 16
    assert positions.resolve(positions.image(-1), llava_batch).sum() == 16
    for index in (1, 5, -2):
        with pytest.raises(IndexError, match="1 image span"):
            positions.resolve(positions.image(index), llava_batch)


@pytest.mark.parametrize(
    ("method", "wrong", "right"),
    [
        ("run_with_cache", "name_filter", "names_filter"),
        ("run_with_cache", "fwd_hook", "fwd_hooks"),
        ("run_with_hooks", "fwd_hook", "fwd_hooks"),
        ("run_with_hooks", "retrun_type", "return_type"),
        ("forward", "pixel_value", "pixel_values"),
        ("trace", "input_id", "input_ids"),
    ],
)
def test_unknown_keywords_name_the_closest_known_one(llava, llava_batch, method, wrong, right):
    with pytest.raises(TypeError, match=f"unknown argument '{wrong}'; did you mean '{right}'"):
        getattr(llava, method)(llava_batch, **{wrong: lambda name: True})


def test_transformer_lens_only_keywords_say_what_to_do(llava, llava_batch):
    with pytest.raises(
        TypeError, match="unknown argument 'return_cache_object'.*always returns an ActivationCache"
    ):
        llava.run_with_cache(llava_batch, return_cache_object=False)


def test_hf_options_pass_with_a_batch(llava, llava_batch):
    out = llava.run_with_hooks(llava_batch, return_type="output", output_hidden_states=True)
    with torch.no_grad():
        ref = llava.hf_model(**llava_batch.inputs, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda act: act.long(),
            "returned dtype torch.int64.*blocks.0.hook_mlp_out|blocks.0.hook_mlp_out.*dtype torch.int64",
        ),
        (lambda act: act > 0, "dtype torch.bool"),
        (lambda act: torch.zeros(act.shape, device="meta"), "on meta, but the activation is on cpu"),
        (lambda act: act[0], r"returned shape \(\d+, \d+\)"),
        (lambda act: 3.0, "returned float"),
    ],
)
def test_hook_return_values_are_checked_naming_the_hook(llava, llava_batch, make, match):
    with pytest.raises(ValueError, match=match) as error:
        llava.run_with_hooks(llava_batch, fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: make(act))])
    assert "blocks.0.hook_mlp_out" in str(error.value)


def test_trace_writes_are_checked_for_exact_shape(llava, llava_batch):
    with pytest.raises(ValueError, match=r"A trace write on blocks.0.hook_mlp_out returned shape \(32,\)"):
        with llava.trace(llava_batch):
            point = llava.hook_point("blocks.0.hook_mlp_out")
            point.output = torch.zeros(32)  # broadcastable, but not the activation's shape
    with llava.trace(llava_batch):
        point = llava.hook_point("blocks.0.hook_mlp_out")
        point.output = torch.zeros_like(point.output)
        logits = llava.nnsight.output.save()
    zeroed = llava.run_with_hooks(
        llava_batch, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, h: torch.zeros_like(a))]
    )
    torch.testing.assert_close(logits.logits, zeroed)


# -- re-entrancy and threads --------------------------------------------------------------


def test_calling_the_model_from_its_own_hook_is_a_clear_error(llava, llava_batch):
    def nested(act, hook):
        llava(llava_batch)

    with pytest.raises(RuntimeError, match="from inside one of its own hook functions"):
        llava.run_with_hooks(llava_batch, fwd_hooks=[("blocks.0.hook_resid_post", nested)])
    torch.testing.assert_close(llava(llava_batch), hf_logits(llava, llava_batch.inputs))  # usable afterwards


def test_a_second_thread_gets_a_clear_error_while_a_run_is_in_progress(llava, llava_batch):
    started, release, errors = threading.Event(), threading.Event(), []

    def wait(act, hook):
        started.set()
        release.wait(timeout=30)

    def first():
        llava.run_with_hooks(llava_batch, fwd_hooks=[("blocks.0.hook_resid_post", wait)])

    worker = threading.Thread(target=first)
    worker.start()
    try:
        assert started.wait(timeout=30)
        for call in (lambda: llava(llava_batch), lambda: llava.generate(llava_batch, max_new_tokens=1)):
            try:
                call()
            except RuntimeError as error:
                errors.append(str(error))
    finally:
        release.set()
        worker.join()
    assert len(errors) == 2 and all("another thread is running this model" in e for e in errors)
    torch.testing.assert_close(llava(llava_batch), hf_logits(llava, llava_batch.inputs))


@pytest.mark.parametrize("callee", ["second wrapper", "raw HF model"])
def test_a_hook_calling_another_wrapper_or_the_raw_model_is_a_clear_error(llava, llava_batch, callee):
    other = HookedMLLM.from_hf(llava.hf_model, llava.processor)

    def nested(act, hook):
        other(llava_batch) if callee == "second wrapper" else llava.hf_model(**llava_batch.inputs)

    with pytest.raises(RuntimeError, match="from inside one of its own hook functions"):
        llava.run_with_hooks(llava_batch, fwd_hooks=[("blocks.0.hook_resid_post", nested)])
    expected = hf_logits(llava, llava_batch.inputs)
    torch.testing.assert_close(llava(llava_batch), expected)  # both usable afterwards
    torch.testing.assert_close(other(llava_batch), expected)


@pytest.mark.parametrize("callee", ["second wrapper", "raw HF model"])
def test_two_wrappers_of_one_model_in_two_threads_get_a_clear_error(llava, llava_batch, callee):
    other = HookedMLLM.from_hf(llava.hf_model, llava.processor)
    started, release, errors = threading.Event(), threading.Event(), []

    def wait(act, hook):
        started.set()
        release.wait(timeout=30)

    worker = threading.Thread(
        target=lambda: llava.run_with_hooks(llava_batch, fwd_hooks=[("blocks.0.hook_resid_post", wait)])
    )
    worker.start()
    try:
        assert started.wait(timeout=30)
        try:
            other(llava_batch) if callee == "second wrapper" else llava.hf_model(**llava_batch.inputs)
        except RuntimeError as error:
            errors.append(str(error))
    finally:
        release.set()
        worker.join()
    assert len(errors) == 1 and "another thread is running this model" in errors[0]
    torch.testing.assert_close(other(llava_batch), hf_logits(llava, llava_batch.inputs))


# -- empty inputs and loading -------------------------------------------------------------


def test_empty_prompts_are_clear_errors(llava):
    with pytest.raises(ValueError, match="prompts is empty"):
        llava.prepare(prompts=[])
    with pytest.raises(ValueError, match=r"Row\(s\) \[0\] of input_ids hold no tokens"):
        llava.prepare(prompts=[""], chat_template=False)
    with pytest.raises(ValueError, match="hold no tokens"):
        llava(input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_from_pretrained_pins_the_processor_with_the_weights(tmp_path, monkeypatch):
    import transformers

    t.tiny_llava("llama", n_layers=1).save_pretrained(tmp_path)
    t.tiny_processor().save_pretrained(tmp_path)
    seen = {}
    original = transformers.AutoProcessor.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", spy)
    model = HookedMLLM.from_pretrained(
        str(tmp_path), revision="main", cache_dir=str(tmp_path / "cache"), local_files_only=True, token=False
    )
    assert {k: seen.get(k) for k in ("revision", "cache_dir", "local_files_only", "token")} == {
        "revision": "main",
        "cache_dir": str(tmp_path / "cache"),
        "local_files_only": True,
        "token": False,
    }
    assert model.processor is not None


def test_cache_is_not_changed_by_a_later_in_place_edit_of_the_model(llava, llava_batch):
    """A value edited in place after the hook read it (Molmo adds image features into its embedding
    output) is cached as it was when the hook point fired."""
    layer = llava.hf_model.model.language_model.layers[0]
    with torch.no_grad():
        ref = llava.hf_model(**llava_batch.inputs, output_hidden_states=True).hidden_states[0]
    handle = layer.register_forward_hook(lambda module, args, out: args[0].add_(1.0))
    try:
        _, cache = llava.run_with_cache(llava_batch, names_filter="blocks.0.hook_resid_pre")
    finally:
        handle.remove()
    torch.testing.assert_close(cache["resid_pre", 0], ref)


def test_a_block_returning_a_tuple_is_read_and_written_at_its_first_element():
    """Older remote code (Molmo) returns ``(hidden, cache)`` from its blocks, where HF returns a tensor."""
    from nnsight import NNsight

    from hooked_mllm._runtime import runner
    from hooked_mllm.hook_points import HookPoint, Site

    class Block(torch.nn.Module):
        def forward(self, x):
            return x * 2, None

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)[0] + 1

    nn = NNsight(Net())
    point = HookPoint(name="blocks.0.hook_resid_post", site=Site("block"))
    seen = []

    def fn(act, hook):
        seen.append(act.clone())
        return act * 0

    bodies = runner.bodies(nn, [runner.HookFn(point, fn)], lambda name: 0)
    out = runner.interleave(runner.edited(nn, bodies), "__call__", {"x": torch.ones(2, 3)})
    torch.testing.assert_close(seen[0], torch.full((2, 3), 2.0))
    torch.testing.assert_close(out, torch.ones(2, 3))


def test_from_pretrained_falls_back_to_the_causal_lm_class_of_remote_code(tmp_path, monkeypatch):
    import transformers

    t.tiny_llava("llama", n_layers=1).save_pretrained(tmp_path)
    t.tiny_processor().save_pretrained(tmp_path)
    loaded = []

    def unrecognised(*args, **kwargs):
        raise ValueError("Unrecognized configuration class MolmoConfig for this kind of AutoModel")

    def causal(*args, **kwargs):
        loaded.append(kwargs.get("trust_remote_code"))
        return t.tiny_llava("llama", n_layers=1)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", unrecognised)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", causal)
    model = HookedMLLM.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert loaded == [True] and model.cfg.n_layers == 1
