"""Patching sweeps on tiny random models: exactness, layout, attribution agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hooked_mllm.patching import (
    activation_patching,
    attribution_patching,
    blur_region,
    correlation,
    logit_diff,
    mask_region,
    noise_image_tokens,
)
from hooked_mllm.testing import image_pair, random_image


@pytest.fixture
def pair(llama_model):
    return image_pair(llama_model, (20, 21))


def test_sweep_layout_and_exact_endpoints(llama_model, pair):
    clean, corrupted = pair
    metric = logit_diff(5, 6)
    result = activation_patching(
        llama_model, clean, corrupted, metric, hook="resid_pre", over="cell", batch_size=8
    )
    assert result.values.shape == (3, 4, 4) and result.labels[5] == "r1c1"
    assert result.forward_passes == 2 + 3 * 2 and result.rows == 2 + 3 * 16
    # Patching one image token equals doing it by hand.
    unit = result.units[5]
    _, cache = llama_model.run_with_cache(clean, names_filter="blocks.1.hook_resid_pre")

    def by_hand(act, hook):
        act = act.clone()
        act[:, unit] = cache["resid_pre", 1][:, unit]
        return act

    logits = llama_model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_resid_pre", by_hand)])
    torch.testing.assert_close(result.values[1, 1, 1], metric(logits, corrupted)[0], atol=1e-4, rtol=1e-4)
    pos = activation_patching(llama_model, clean, corrupted, metric, hook="resid_post", layers=[0])
    assert pos.values.shape == (1, clean.shape[1]) and pos.labels[0].endswith("USER")
    img = pos.values[0, clean.image_mask[0]]
    assert img.numel() == 16
    heads = activation_patching(llama_model, clean, corrupted, metric, hook="z", over="head", layers=[2])
    assert heads.values.shape == (1, llama_model.cfg.n_heads)


def test_attribution_agrees_in_layout_and_linear_limit(llama_model, pair):
    clean, corrupted = pair
    metric = logit_diff(5, 6)
    act = activation_patching(llama_model, clean, corrupted, metric, hook="resid_pre", over="cell")
    attr = attribution_patching(llama_model, clean, corrupted, metric, hook="resid_pre", over="cell")
    assert attr.values.shape == act.values.shape and attr.backward_passes == 1 and attr.forward_passes == 2
    assert attr.corrupted_metric == pytest.approx(act.corrupted_metric, abs=1e-4)
    assert correlation(attr.values, act.values) > 0.5


def test_noise_corruption_and_image_edits(llama_model, pair):
    clean, _ = pair
    hook = noise_image_tokens(llama_model, clean, scale=3.0, seed=0)
    a = llama_model.run_with_hooks(clean, fwd_hooks=[hook])
    b = llama_model.run_with_hooks(clean, fwd_hooks=[hook])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, llama_model(clean))
    text_only = ~clean.image_mask[0]
    first_image = int(clean.image_mask[0].nonzero()[0])
    torch.testing.assert_close(a[0, :first_image], llama_model(clean)[0, :first_image])
    assert text_only.any()
    result = activation_patching(
        llama_model,
        clean,
        clean,
        logit_diff(5, 6),
        hook="resid_post",
        over="cell",
        layers=[1],
        corrupted_hooks=[hook],
    )
    assert result.corrupted_metric != pytest.approx(result.clean_metric)
    image = random_image(3)
    masked = mask_region(image, (0, 0, 8, 8))
    assert masked.getpixel((3, 3)) == (0, 0, 0) and masked.getpixel((20, 20)) == image.getpixel((20, 20))
    blurred = blur_region(image, (8, 8, 24, 24))
    assert blurred.getpixel((0, 0)) == image.getpixel((0, 0)) and blurred.getpixel(
        (16, 16)
    ) != image.getpixel((16, 16))


def test_mismatched_pair_is_refused(llama_model, pair):
    clean, _ = pair
    other = llama_model.prepare(images=[random_image(1)], prompts=["how many objects ?"])
    with pytest.raises(ValueError, match="share their token layout"):
        activation_patching(llama_model, clean, other, logit_diff(5, 6))


def test_save_plot_is_atomic(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from hooked_mllm.patching import PatchingResult

    result = PatchingResult(
        values=torch.randn(2, 3),
        hook="blocks.{l}.hook_resid_pre",
        layers=[0, 1],
        over="position",
        labels=["a", "b", "c"],
        units=[[0], [1], [2]],
        clean_metric=1.0,
        corrupted_metric=0.0,
        forward_passes=6,
        rows=6,
    )
    path = tmp_path / "sweep.png"
    assert result.save_plot(str(path)) == str(path)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(result.to_image()))
    before = path.read_bytes()

    def interrupted(self, file, *args, **kwargs):
        Path(file).write_bytes(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(OSError, match="No space left"):
        result.save_plot(str(path))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["sweep.png"]
