"""Vision-tower and projector hook points on a batch mixing images and videos (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, LLaVA-OneVision, LLaVA-NeXT-Video): HF's forward runs the tower twice (images, then videos).
The cache, a write, ``hook.call``, a backward hook, ``generate`` and ``model.trace`` with ``tracer.iter``
are checked against plain torch hooks on the same HF module, which fire twice too."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm import testing as t
from hooked_mllm.hooks import CacheTo

from .families import image
from .test_video import PROMPTS, array_video, frames, hf

POINTS = ["vision.hook_embed", "vision.blocks.0.hook_resid_post", "projector.hook_out"]
_MODELS: dict[str, HookedMLLM] = {}


@pytest.fixture(scope="module", params=["2", "2.5", "3", "onevision", "next_video"])
def model(request) -> HookedMLLM:
    if request.param not in _MODELS:
        if request.param == "3":
            _MODELS["3"] = HookedMLLM.from_hf(*t.tiny_qwen3_vl(attn_implementation="eager"))
        elif request.param == "onevision":
            _MODELS["onevision"] = HookedMLLM.from_hf(*t.tiny_llava_onevision(attn_implementation="eager"))
        elif request.param == "next_video":
            _MODELS["next_video"] = HookedMLLM.from_hf(*t.tiny_llava_next_video(attn_implementation="eager"))
        else:
            hf_model = t.tiny_qwen2_vl(request.param, attn_implementation="eager")
            processor = t.tiny_qwen2_vl_processor(version=request.param)
            _MODELS[request.param] = HookedMLLM.from_hf(hf_model, processor)
    return _MODELS[request.param]


@pytest.fixture(scope="module")
def mixed(model):
    stacked = model.adapter.name in ("llava_onevision", "llava_next_video")  # one frame count, tower-sized
    clip = array_video(1, 3, 16, 16) if stacked else frames(0, 4, 16, 24)
    return model.prepare(images=[image(0, 16, 24), None], videos=[None, clip], prompts=PROMPTS)


def _site(model, name):
    point = model.hook_points.resolve(name)
    assert point.site.io == "output" and point.base is None and point.scale is None and point.heads is None
    return point, model.adapter.module(model.hf_model, point.site.path)


def _value(point, out):
    if point.site.index is not None:
        return out[point.site.index]
    return out[0] if isinstance(out, tuple) else out


def _replace(point, out, new):
    if point.site.index is None and not isinstance(out, tuple):
        return new
    items = list(out)
    items[point.site.index or 0] = new
    return type(out)(items)


def torch_calls(model, mixed, name):
    """Each call's value of ``name``'s module in HF's forward (a plain torch forward hook)."""
    point, module = _site(model, name)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(_value(point, o).detach().clone()))
    try:
        hf(model, mixed.inputs)
    finally:
        handle.remove()
    return seen


def test_the_cache_holds_both_calls_images_first(model, mixed):
    """run_with_cache: the image call's rows, then the video call's, concatenated on the packed axis; a
    point whose calls do not stack (LLaVA-NeXT-Video's projector: pooled video frames) is refused."""
    calls = {name: torch_calls(model, mixed, name) for name in POINTS}
    assert all(len(c) == 2 for c in calls.values())  # HF runs each module once on the images, once on videos
    stack = [name for name in POINTS if len({tuple(c.shape[1:]) for c in calls[name]}) == 1]
    _, cache = model.run_with_cache(mixed, names_filter=stack)
    for name in stack:
        torch.testing.assert_close(cache[name], torch.cat(calls[name]), msg=name)
    store: dict = {}
    model.run_with_hooks(mixed, fwd_hooks=[(stack[-1], CacheTo(store))])  # the composable cache hook too
    torch.testing.assert_close(store[stack[-1]], cache[stack[-1]])
    unstacked = [name for name in POINTS if name not in stack]
    assert bool(unstacked) == (model.adapter.name == "llava_next_video")
    for name in unstacked:
        with pytest.raises(ValueError, match="do not stack into one tensor"):
            model.run_with_cache(mixed, names_filter=name)
        with pytest.raises(ValueError, match="do not stack into one tensor"):
            model.run_with_hooks(mixed, fwd_hooks=[(name, CacheTo({}))])
    first = torch_calls(model, mixed.row(0), "vision.hook_embed")  # the image row alone: its call only
    assert len(first) == 1
    torch.testing.assert_close(cache["vision.hook_embed"][: len(first[0])], first[0])


@pytest.mark.parametrize("name", POINTS)
def test_a_write_applies_to_both_calls_as_a_torch_hook(model, mixed, name):
    """A run_with_hooks write (different per call, from hook.call) equals a torch forward hook doing the
    same on each call; hook.call / hook.calls / hook.step say which call it is."""
    seen: list[tuple[int, int, int]] = []

    def scale(act, hook):
        seen.append((hook.step, hook.call, hook.calls))
        return act * (0.5 + hook.call)

    hooked = model.run_with_hooks(mixed, fwd_hooks=[(name, scale)])
    assert seen == [(0, 0, 2), (0, 1, 2)]
    point, module = _site(model, name)
    count = []

    def torch_scale(m, i, out):
        call = len(count)
        count.append(call)
        return _replace(point, out, _value(point, out) * (0.5 + call))

    handle = module.register_forward_hook(torch_scale, prepend=True)  # before HF records hidden states
    try:
        ref = hf(model, mixed.inputs).logits
    finally:
        handle.remove()
    assert count == [0, 1]
    keep = ~mixed.pad_mask
    torch.testing.assert_close(hooked[keep], ref[keep])
    for call in (0, 1):  # each call's write matters: the other alone gives other logits
        one = model.run_with_hooks(
            mixed,
            fwd_hooks=[(name, lambda act, hook, c=call: act * (0.5 + hook.call) if hook.call == c else None)],
        )
        assert not torch.allclose(one[keep], ref[keep])


def test_backward_hooks_and_generate_see_both_calls(model, mixed):
    name = "vision.blocks.0.hook_resid_post"
    grads: dict[int, torch.Tensor] = {}

    def keep(grad, hook):
        assert hook.calls == 2 and hook.call not in grads
        grads[hook.call] = grad.detach().clone()

    loss = model.run_with_hooks(mixed, return_type="loss", bwd_hooks=[(name, keep)])
    loss.backward()
    point, module = _site(model, name)
    kept: list[torch.Tensor] = []

    def keep_grad(m, i, out):
        value = _value(point, out)
        value.register_hook(lambda g: kept.append(g.detach().clone()))

    handle = module.register_forward_hook(keep_grad)
    try:
        model.hf_model.zero_grad()
        model.run_with_hooks(mixed, return_type="loss", grad=True).backward()
    finally:
        handle.remove()
    model.hf_model.zero_grad()
    assert sorted(grads) == [0, 1] and len(kept) == 2
    torch.testing.assert_close(grads[0], kept[1])  # torch's tensor hooks fire last call first
    torch.testing.assert_close(grads[1], kept[0])
    seen: list[tuple[int, int]] = []
    model.generate(mixed, max_new_tokens=2, fwd_hooks=[(name, lambda a, h: seen.append((h.step, h.call)))])
    assert seen == [(0, 0), (0, 1)]


def test_trace_reaches_the_second_call_through_tracer_iter(model, mixed):
    calls = torch_calls(model, mixed, "vision.hook_embed")
    outs: list = []
    with model.trace(mixed) as tracer:
        for _ in tracer.iter[0:2]:
            outs.append(model.hook_point("vision.hook_embed").output.save())
    assert len(outs) == 2
    for out, ref in zip(outs, calls):
        torch.testing.assert_close(out, ref)
