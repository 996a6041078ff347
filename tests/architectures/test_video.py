"""Video inputs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): every entry point against HF's own forward, the video token
geometry against the processor's rules, video selectors and ``cache.video`` against independent
index arithmetic, and the refusals (families without covered video)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hooked_mllm import HookedMLLM, positions
from hooked_mllm import testing as t
from hooked_mllm.cache import ActivationCache
from hooked_mllm.patching import activation_patching, logit_diff
from hooked_mllm.testing.video import TorchQwen2VLVideoProcessor

from .families import image

PROMPTS = ["what color is the circle ?", "how many"]


def frames(seed: int, n: int, height: int, width: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(a) for a in rng.integers(0, 255, (n, height, width, 3), dtype=np.uint8)]


def array_video(seed: int, n: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, height, width, 3), dtype=np.uint8)


_MODELS: dict[str, HookedMLLM] = {}


@pytest.fixture(scope="module", params=["2", "2.5", "3"])
def model(request) -> HookedMLLM:
    if request.param not in _MODELS:
        if request.param == "3":  # each time step its own run, a timestamp before it; deepstack
            _MODELS["3"] = HookedMLLM.from_hf(*t.tiny_qwen3_vl(attn_implementation="eager"))
        else:
            hf_model = t.tiny_qwen2_vl(request.param, attn_implementation="eager")
            processor = t.tiny_qwen2_vl_processor(version=request.param)
            _MODELS[request.param] = HookedMLLM.from_hf(hf_model, processor)
    return _MODELS[request.param]


@pytest.fixture(scope="module")
def videos():
    # 4 frames of 16x24 (PIL) and 3 frames of 16x16 (an array): rows of different lengths (left padding)
    return [frames(0, 4, 16, 24), array_video(1, 3, 16, 16)]


@pytest.fixture(scope="module")
def batch(model, videos):
    return model.prepare(videos=videos, prompts=PROMPTS)


def video_tokens(batch, row: int) -> list[int]:
    """The row's video-token positions read off input_ids (one video per row in these tests)."""
    return (batch.input_ids[row].eq(_video_id(batch)) & ~batch.pad_mask[row]).nonzero().flatten().tolist()


def _video_id(batch) -> int:
    ids = batch.input_ids[batch.video_mask]
    assert ids.unique().numel() == 1
    return int(ids[0])


def hf(model, inputs, **kw):
    with torch.no_grad():
        return model.hf_model(**inputs, **kw)


# -- the torch video processor ----------------------------------------------------------


def test_video_processor_matches_the_image_processors_patches_for_a_still_video():
    """Two copies of one frame (no resize needed) give exactly the patches HF's Qwen2-VL image
    processor gives for that image (it tiles an image over the temporal patch)."""
    processor = t.tiny_qwen2_vl_processor()
    still = image(3, 16, 24)
    video = processor.video_processor([[still, still]], return_tensors="pt")
    ref = processor.image_processor(images=[still], return_tensors="pt")
    torch.testing.assert_close(video["pixel_values_videos"], ref["pixel_values"], atol=1e-6, rtol=0)
    assert video["video_grid_thw"].tolist() == ref["image_grid_thw"].tolist()


def test_video_processor_pads_frames_and_refuses_non_videos():
    processor = TorchQwen2VLVideoProcessor(patch_size=4)
    out = processor([array_video(0, 3, 16, 16)])
    assert out["video_grid_thw"].tolist() == [[2, 4, 4]]  # 3 frames -> 2 temporal patches (last repeated)
    last = out["pixel_values_videos"].view(2, 16, 3, 2, 4, 4)[1]  # [patches, c, t, p, p] of step 1
    torch.testing.assert_close(last[:, :, 0], last[:, :, 1])
    with pytest.raises(ValueError, match=r"\[T, H, W, C\]"):
        processor([np.zeros((2, 2, 16, 16, 3))])


# -- geometry -----------------------------------------------------------------------------


def test_video_spans_follow_the_processor_geometry(model, batch, videos):
    """Each video: ceil(frames / 2) time steps of (h / 8, w / 8) tokens (patch 4, 2x2 merge), the
    video tokens' run in input_ids, frame after frame."""
    expected = [(2, (2, 3)), (2, (2, 2))]  # (4 frames, 16x24), (3 frames, 16x16)
    assert [(s.time, s.grid) for s in batch.videos] == expected
    assert [s.frames_per_step for s in batch.videos] == [2, 2]
    assert batch.videos_per_row == (1, 1)
    video_id = model.hf_model.config.video_token_id
    for span in batch.videos:
        run = (batch.input_ids[span.row] == video_id).nonzero().flatten().tolist()
        assert list(span.token_positions) == run
        assert span.n_tokens == span.time * span.grid[0] * span.grid[1]
    assert torch.equal(batch.video_mask, batch.input_ids.eq(video_id) & ~batch.pad_mask)
    assert (
        not (batch.text_mask & batch.video_mask).any() and not (batch.special_mask & batch.video_mask).any()
    )
    assert batch.pad_mask[1].any()  # the shorter row is left-padded
    if model.adapter.name == "qwen2_5_vl":  # Qwen2.5-VL's processor: seconds per time step, per video
        seconds = batch.inputs["second_per_grid_ts"]
        torch.testing.assert_close(seconds, torch.full((2,), 2 / 24))  # HF's default 24 fps, 2 frames a step
        torch.testing.assert_close(batch.row(1).inputs["second_per_grid_ts"], seconds[1:])


def test_qwen3_vl_time_steps_are_runs_with_a_timestamp_before_each(model, batch):
    """Qwen3-VL's processor writes ``<t seconds>`` + vision start before each time step and vision end
    after it: each step of a span is one contiguous run of rows * cols video tokens, and the tokens
    between two steps (timestamp, markers) are neither video nor image tokens."""
    if model.adapter.name != "qwen3_vl":
        pytest.skip("one run per video in Qwen2-VL and Qwen2.5-VL")
    tok = model.processor.tokenizer
    start, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    for span in batch.videos:
        rows, cols = span.grid
        runs = [span.frame_positions(k) for k in range(span.time)]
        assert all(run == list(range(run[0], run[0] + rows * cols)) for run in runs)
        for before, after in zip(runs, runs[1:]):
            ids = batch.input_ids[span.row, before[-1] + 1 : after[0]].tolist()
            assert ids[0] == end and ids[-1] == start and len(ids) > 2  # timestamp text between markers
            between = list(range(before[-1] + 1, after[0]))  # the tiny tokenizer reads "<0.0" as <unk>
            assert not (batch.video_mask | batch.image_mask)[span.row, between].any()
        assert list(span.token_positions) == [p for run in runs for p in run]


def test_contradicting_video_geometry_keeps_positions_and_refuses_frames(model, batch):
    inputs = dict(batch.inputs, video_grid_thw=batch.inputs["video_grid_thw"].flip(0))
    with pytest.warns(UserWarning, match="Video geometry unknown"):
        degraded = model.to_batch(inputs)
    assert torch.equal(degraded.video_mask, batch.video_mask)
    assert degraded.videos and {(s.time, s.grid) for s in degraded.videos} == {(None, None)}
    assert torch.equal(positions.resolve("video", degraded), batch.video_mask)
    with pytest.raises(ValueError, match="no frame geometry"):
        positions.video(frames=0).mask(degraded)
    missing = {k: v for k, v in batch.inputs.items() if k != "video_grid_thw"}
    with pytest.raises(ValueError, match="no video geometry"):
        model.to_batch(missing)


# -- against HF ---------------------------------------------------------------------------


def test_logits_and_hidden_states_equal_hf(model, batch):
    n = model.cfg.n_layers
    logits, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_resid_post"))
    ref = hf(model, batch.inputs, output_hidden_states=True)
    keep = ~batch.pad_mask
    torch.testing.assert_close(logits[keep], ref.logits[keep])
    for layer in range(n - 1):
        torch.testing.assert_close(cache["resid_post", layer][keep], ref.hidden_states[layer + 1][keep])
    captured = {}
    layer = model.adapter.module(model.hf_model, f"{model.adapter.modules.lm_layers}.{n - 1}")
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        hf(model, batch.inputs)
    finally:
        handle.remove()
    out = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    torch.testing.assert_close(cache["resid_post", n - 1][keep], out[keep])


def test_a_write_on_video_tokens_equals_a_torch_hook(model, batch):
    """Zeroing the second time step's tokens at layer 0's input: run_with_hooks equals HF's forward
    with a plain torch pre-hook doing the same, and differs from the clean run."""
    where = positions.video(frames=1).mask(batch)

    def zero(act, hook):
        act = act.clone()
        act[where] = 0
        return act

    hooked = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre", zero)])
    layer0 = model.adapter.module(model.hf_model, f"{model.adapter.modules.lm_layers}.0")

    def pre(module, args, kwargs):
        hidden = args[0].clone() if args else kwargs["hidden_states"].clone()
        hidden[where] = 0
        return ((hidden, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=hidden))

    handle = layer0.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        ref = hf(model, batch.inputs).logits
    finally:
        handle.remove()
    keep = ~batch.pad_mask
    torch.testing.assert_close(hooked[keep], ref[keep])
    assert not torch.allclose(hooked[keep], hf(model, batch.inputs).logits[keep])


def check_every_entry_point(model, batch, videos):
    """(prepare / HF keywords / the processor's own output) x (forward, run_with_cache,
    run_with_hooks, generate, trace) against HF's forward and generate on the same tensors
    (shared by every family's video tests)."""
    processor = model.processor
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
        )
        for p in PROMPTS
    ]
    processor.tokenizer.padding_side = "left"
    direct = processor(videos=videos, text=texts, padding=True, return_tensors="pt")
    for key in batch.inputs:
        assert torch.equal(direct[key], batch.inputs[key]), key
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    ref = hf(model, batch.inputs).logits
    with torch.no_grad():
        ref_gen = model.hf_model.generate(**batch.inputs, max_new_tokens=2, do_sample=False)
    keep = ~batch.pad_mask
    for form, (args, kwargs) in {
        "prepare": ((batch,), {}),
        "keywords": ((), dict(direct)),
        "processor": ((direct,), {}),
    }.items():
        torch.testing.assert_close(model(*args, **kwargs)[keep], ref[keep], msg=f"forward({form})")
        logits, cache = model.run_with_cache(*args, names_filter=last, **kwargs)
        torch.testing.assert_close(logits[keep], ref[keep], msg=f"run_with_cache({form})")
        seen: list[str] = []
        hooked = model.run_with_hooks(
            *args,
            fwd_hooks=[(last, lambda act, hook: seen.append(hook.name))],  # noqa: B023 (runs at once)
            **kwargs,
        )
        torch.testing.assert_close(hooked[keep], ref[keep], msg=f"run_with_hooks({form})")
        assert seen == [last]
        out = model.generate(*args, max_new_tokens=2, **kwargs)
        torch.testing.assert_close(out.sequences, ref_gen, msg=f"generate({form})")
        with model.trace(*args, **kwargs):
            traced = model.nnsight.output.save()
        torch.testing.assert_close(traced.logits[keep], ref[keep], msg=f"trace({form})")


def test_every_entry_point_takes_every_input_form(model, batch, videos):
    check_every_entry_point(model, batch, videos)


def test_vision_tower_hooks_see_the_video_patches(model, batch):
    """On a video batch the tower's embedding hook holds every video patch (HF's patch embed output)."""
    embedded = check_tower_embed(model, batch)
    assert embedded.shape[0] == int(batch.inputs["video_grid_thw"].prod(-1).sum())


def test_a_row_alone_equals_its_row_in_the_batch(model, batch):
    logits = model(batch)
    for row in range(len(batch)):
        alone = batch.row(row)
        assert [(s.time, s.grid) for s in alone.videos] == [(s.time, s.grid) for s in batch.videos_of(row)]
        keep = ~batch.pad_mask[row]
        torch.testing.assert_close(model(alone)[0], logits[row, keep], atol=1e-5, rtol=1e-4)
    twice = batch.row(1).repeat(2)
    torch.testing.assert_close(model(twice)[1], model(batch.row(1))[0], atol=1e-5, rtol=1e-4)


def test_a_batch_mixing_an_image_row_and_a_video_row(model, videos):
    """Language-model points and logits equal HF on the mixed batch (its tower points:
    test_video_mixed.py)."""
    mixed = model.prepare(images=[image(0, 16, 24), None], videos=[None, videos[0]], prompts=PROMPTS)
    assert [len(mixed.images_of(r)) for r in range(2)] == [1, 0]
    check_mixed_batch(model, mixed)


def check_mixed_batch(model, mixed) -> None:
    """On a batch of an image row and a video row: logits and the first layer's output equal HF's, and
    each row alone (its own modality's tensors only) equals its row (shared by every family's video tests)."""
    assert [len(mixed.videos_of(r)) for r in range(2)] == [0, 1]
    logits, cache = model.run_with_cache(mixed, names_filter="blocks.0.hook_resid_post")
    ref = hf(model, mixed.inputs, output_hidden_states=True)
    keep = ~mixed.pad_mask
    torch.testing.assert_close(logits[keep], ref.logits[keep])
    torch.testing.assert_close(cache["resid_post", 0][keep], ref.hidden_states[1][keep])
    for row in range(2):
        alone = mixed.row(row)
        torch.testing.assert_close(model(alone)[0], logits[row, keep[row]], atol=1e-5, rtol=1e-4)


# -- selectors and cache.video ------------------------------------------------------------


def _cell(batch, span, t, r, c):
    rows, cols = span.grid
    return video_tokens(batch, span.row)[(t * rows + r) * cols + c]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_video_selectors_pick_the_cells_index_arithmetic_gives(batch, data):
    vb = batch
    cells = data.draw(
        st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)), max_size=6)
    )
    expected = torch.zeros_like(vb.pad_mask)
    if any(a >= b for a, b in zip(cells, cells[1:])):
        with pytest.raises(ValueError, match="sequence order"):
            positions.video(cells=cells)
    else:
        for span in vb.videos:
            for cell in cells:
                expected[span.row, _cell(vb, span, *cell)] = True
        assert torch.equal(positions.video(cells=cells).mask(vb), expected)
    steps = data.draw(st.lists(st.integers(-3, 2), max_size=4))
    if any(not -2 <= s < 2 for s in steps):
        with pytest.raises(IndexError):
            positions.video(frames=steps).mask(vb)
        return
    normal = [s % 2 for s in steps]
    if any(a >= b for a, b in zip(normal, normal[1:])):
        with pytest.raises(ValueError, match="increasing order"):
            positions.video(frames=steps).mask(vb)
        return
    expected = torch.zeros_like(vb.pad_mask)
    for span in vb.videos:
        rows, cols = span.grid
        for s in normal:
            expected[span.row, video_tokens(vb, span.row)[s * rows * cols : (s + 1) * rows * cols]] = True
    assert torch.equal(positions.video(frames=steps).mask(vb), expected)


def test_named_video_and_video_index_and_range(model, batch):
    assert torch.equal(positions.resolve("video", batch), batch.video_mask)
    assert not (positions.resolve("image", batch)).any()
    first = positions.video(frames=slice(0, 1)).mask(batch)
    assert torch.equal(first, positions.video(frames=[0]).mask(batch))
    assert int(first.sum()) == sum(s.grid[0] * s.grid[1] for s in batch.videos)
    with pytest.raises(IndexError, match="video"):
        positions.video(index=1).mask(batch)
    with pytest.raises(IndexError, match="out of range"):
        positions.video(cells=[(2, 0, 0)]).mask(batch)


def test_cache_video_gathers_frames_in_the_order_given_with_repeats(model, batch):
    name = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=name)
    grids = {s.grid for s in batch.videos}
    assert len(grids) == 2  # rows differ in geometry: one tensor per row
    per_row = cache.video(name, frames=[1, 0, 1])
    assert isinstance(per_row, list)
    for span, got in zip(batch.videos, per_row):
        rows, cols = span.grid
        whole = cache[name][span.row, video_tokens(batch, span.row)].reshape(span.time, rows, cols, -1)
        torch.testing.assert_close(got, whole[[1, 0, 1]])
        r, c = rows - 1, cols - 1
        torch.testing.assert_close(got[0, r, c], cache[name][span.row, _cell(batch, span, 1, r, c)])
    one = batch.row(0)
    _, cache1 = model.run_with_cache(one, names_filter=name)
    full = cache1.video(name)
    span = one.videos[0]
    assert full.shape == (1, span.time, *span.grid, model.cfg.d_model)
    with pytest.raises(IndexError):
        cache1.video(name, frames=[2])


def test_a_saved_cache_keeps_the_video_geometry(model, batch, tmp_path):
    name = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(batch.row(0), names_filter=name)
    cache.save(tmp_path / "v.cache")
    loaded = ActivationCache.load(tmp_path / "v.cache")
    assert loaded.batch.videos == cache.batch.videos
    torch.testing.assert_close(loaded.video(name), cache.video(name))


# -- refusals -----------------------------------------------------------------------------


def test_families_without_covered_video_refuse_it_naming_those_that_do(videos):
    llava = HookedMLLM.from_hf(t.tiny_llava("llama", n_layers=2), t.tiny_processor())
    with pytest.raises(
        ValueError,
        match=r"not covered for the 'llava'.*llava_onevision, molmo2, qwen2_5_vl, qwen2_vl, qwen3_vl",
    ):
        llava.prepare(videos=[videos[0]], prompts=["what"])
    batch = llava.prepare(images=[image(0, 32, 32)], prompts=["what"])
    with pytest.raises(TypeError, match="pixel_values_videos"):  # LLaVA's HF forward takes no video
        llava.to_batch(dict(batch.inputs, pixel_values_videos=torch.zeros(4, 8)))
    with pytest.raises(ValueError, match="video is not covered"):
        positions.video().mask(batch)


def test_bad_video_entries_are_refused(model):
    with pytest.raises(ValueError, match="one entry per prompt"):
        model.prepare(videos=[frames(0, 2, 16, 16)], prompts=PROMPTS)
    with pytest.raises(ValueError, match="neither a video"):
        model.prepare(videos=["clip.mp4", None], prompts=PROMPTS)
    with pytest.raises(ValueError, match="frames= or cells="):
        positions.video(frames=0, cells=[(0, 0, 0)])
    with pytest.raises(TypeError, match="frames= takes ints"):
        positions.video(frames=[0, True])
    with pytest.raises(TypeError, match=r"\(t, r, c\) triples"):
        positions.video(cells=[(0, 0)])


# -- patching over frames -----------------------------------------------------------------


def check_frame_patching(model, clean, corrupted, metric, result) -> None:
    """Each unit's patched metric in ``result`` (layer 1's ``resid_pre``) equals HF's forward on the
    corrupted input with a plain torch pre-hook writing the clean run's layer-1 input at the unit's
    positions (shared by every family's video tests)."""
    layer1 = model.adapter.module(model.hf_model, f"{model.adapter.modules.lm_layers}.1")
    seen: dict = {}  # layer 1's input on the clean clip (Qwen3-VL: after layer 0's deepstack addition)

    def keep_input(module, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = layer1.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        hf(model, clean.inputs)
    finally:
        handle.remove()
    clean_in = seen["in"]
    for step, unit in enumerate(result.units):

        def pre(module, args, kwargs, unit=unit):
            hidden = (args[0] if args else kwargs["hidden_states"]).clone()
            hidden[:, unit] = clean_in[:, unit]
            return ((hidden, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=hidden))

        handle = layer1.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            expected = metric(hf(model, corrupted.inputs).logits, corrupted)
        finally:
            handle.remove()
        torch.testing.assert_close(result.values[0, step], expected[0], atol=1e-5, rtol=1e-4)


def check_tower_embed(model, batch):
    """``vision.hook_embed`` on ``batch`` equals HF's patch embedding output (a plain torch hook);
    returns the cached value (shared by every family's video tests)."""
    _, cache = model.run_with_cache(batch, names_filter="vision.hook_embed")
    captured = {}
    embed = model.adapter.module(model.hf_model, model.adapter.modules.vision_embed)
    handle = embed.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        hf(model, batch.inputs)
    finally:
        handle.remove()
    torch.testing.assert_close(cache["vision.hook_embed"], captured["out"])
    return cache["vision.hook_embed"]


def test_activation_patching_over_frames_equals_a_torch_patch(model, videos):
    """Each time step's patched metric equals HF's forward on the corrupted clip with a plain torch
    pre-hook that writes the clean clip's layer-1 input at that step's positions."""
    clean = model.prepare(videos=[videos[0]], prompts=[PROMPTS[0]])
    corrupted = model.prepare(videos=[frames(7, 4, 16, 24)], prompts=[PROMPTS[0]])
    metric = logit_diff(3, 4)
    result = activation_patching(model, clean, corrupted, metric, hook="resid_pre", layers=[1], over="frame")
    span = clean.videos[0]
    rows, cols = span.grid
    assert result.labels == [f"vid0[t{k}]" for k in range(span.time)]
    tokens = video_tokens(clean, 0)
    assert result.units == [tokens[t * rows * cols : (t + 1) * rows * cols] for t in range(span.time)]
    check_frame_patching(model, clean, corrupted, metric, result)
    assert result.values.shape == (1, span.time)
    with pytest.raises(ValueError, match="share their token"):
        activation_patching(
            model,
            clean,
            model.prepare(videos=[frames(7, 2, 16, 24)], prompts=[PROMPTS[0]]),
            metric,
            layers=[1],
            over="frame",
        )
    image_row = model.prepare(images=[image(0, 16, 24)], prompts=[PROMPTS[0]])
    with pytest.raises(ValueError, match="holds no video"):
        activation_patching(model, image_row, image_row, metric, layers=[1], over="frame")


@pytest.mark.parametrize(
    "key", ["pixel_values_videos", "video_grids", "video_token_pooling", "image_sizes_videos"]
)
def test_video_inputs_of_a_family_without_video_are_refused_not_read_as_text(key):
    """Any covered family's video key given to one without video (LLaVA) is refused, not ignored."""
    from hooked_mllm.architectures import LLAVA
    from hooked_mllm.batch import MultimodalBatch

    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), key: torch.zeros(1, 2)}
    with pytest.raises(ValueError, match=rf"The inputs hold {key}: video is not covered.*qwen2_vl"):
        MultimodalBatch.from_hf(inputs, image_token_id=9, adapter=LLAVA, config=None)
