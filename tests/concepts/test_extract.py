"""Extraction to disk: values equal run_with_cache, resume without loss or duplicates."""

from __future__ import annotations

import json

import pytest
import torch

from hooked_mllm.concepts.extract import Features, Sample, TokenRule, extract, folder_dataset
from hooked_mllm.testing import random_image

PROMPTS = ["what color is the circle ?", "how many objects", "is there a red square ?"]


@pytest.fixture(scope="module")
def samples():
    return [Sample(f"s{i}", random_image(100 + i), PROMPTS[i % 3]) for i in range(7)]


def reference(model, sample, hook, which):
    batch = model.prepare(images=[sample.image], prompts=[sample.prompt])
    _, cache = model.run_with_cache(batch, names_filter=hook)
    act = cache[hook][0]
    return act[-1] if which == "last" else act[batch.image_mask[0]].mean(0)


def test_extract_matches_cache_and_resumes(llama_model, samples, tmp_path):
    hook = "blocks.1.hook_resid_post"
    calls = {"n": 0}

    def interrupt(act, h):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        with llama_model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", interrupt)]):
            extract(llama_model, samples, hook, "last", batch_size=2, out=tmp_path, shard_size=2, progress=False,
                    predict=False)
    partial = json.loads((tmp_path / "manifest.json").read_text())
    assert 0 < sum(len(s["ids"]) for s in partial["shards"]) < len(samples)
    feats = extract(llama_model, samples, hook, "last", batch_size=2, out=tmp_path, shard_size=2, progress=False,
                    predict=False)
    assert feats.ids == [s.id for s in samples]
    for sample, feature in zip(samples, feats.features):
        torch.testing.assert_close(feature, reference(llama_model, sample, hook, "last"), atol=1e-5, rtol=1e-4)
    again = Features.load(tmp_path)
    assert again.ids == feats.ids and torch.equal(again.features, feats.features)
    with pytest.raises(ValueError, match="holds features with hook"):
        extract(llama_model, samples, "blocks.0.hook_resid_post", "last", out=tmp_path, progress=False)


def test_rules(llama_model, samples):
    hook = "blocks.2.hook_resid_post"
    mean = extract(llama_model, samples[:3], hook, "image_mean", progress=False, predict=False)
    for sample, feature in zip(samples[:3], mean.features):
        torch.testing.assert_close(feature, reference(llama_model, sample, hook, "image"), atol=1e-5, rtol=1e-4)
    each = extract(llama_model, samples[:2], hook, "image_each", progress=False, predict=False)
    assert each.features.shape == (2, 16, llama_model.cfg.d_model)
    # The position predicting the first answer token is the last prompt position.
    first = llama_model.generate(llama_model.prepare(images=[samples[0].image], prompts=[samples[0].prompt]),
                                 max_new_tokens=1)
    word = llama_model.processor.tokenizer.convert_ids_to_tokens(int(first.new_tokens[0, 0]))
    pred = extract(llama_model, samples[:1], hook, TokenRule("predicting", token=word), progress=False)
    torch.testing.assert_close(pred.features[0], reference(llama_model, samples[0], hook, "last"), atol=1e-5, rtol=1e-4)
    assert pred.predictions[0].split()[0] == word
    missing = extract(llama_model, samples[:1], hook, TokenRule("token", token="<unk>"), progress=False)
    assert len(missing) == 0 and missing.manifest["skipped"][0]["id"] == "s0"
    with pytest.raises(ValueError, match="Unknown token rule"):
        TokenRule("middle")


def test_folder_dataset(tmp_path):
    for i in range(2):
        random_image(i).save(tmp_path / f"img{i}.png")
    data = folder_dataset(tmp_path, "describe the image .")
    assert [s.id for s in data] == ["img0.png", "img1.png"] and data[0].prompt == "describe the image ."
