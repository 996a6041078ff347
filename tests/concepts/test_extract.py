"""Extraction: values equal a plain run_with_cache, one pass for several hooks, a safe resumable store."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.concepts import (
    Features,
    Sample,
    TokenRule,
    extract,
    folder_dataset,
    hf_dataset,
    jsonl_dataset,
)
from hooked_mllm.concepts._store import folder_lock
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor

PROMPTS = ["what color is the circle ?", "how many objects", "is there a red square ?"]


@pytest.fixture(scope="module")
def samples():
    return [Sample(f"s{i}", random_image(100 + i), PROMPTS[i % 3]) for i in range(7)]


def reference(model, sample, hook, which):
    batch = model.prepare(images=[sample.image], prompts=[sample.prompt])
    _, cache = model.run_with_cache(batch, names_filter=hook)
    act = cache[hook][0]
    return act[-1] if which == "last" else act.mean(0) if which == "all" else act[batch.image_mask[0]].mean(0)


def counter(model):
    calls = {"prompt": 0, "steps": 0}

    def count(act, hook):
        calls["prompt" if hook.step == 0 else "steps"] += 1

    return calls, model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", count)])


def test_extract_matches_cache_and_resumes(llama_model, samples, tmp_path):
    hook = "blocks.1.hook_resid_post"
    calls = {"n": 0}

    def interrupt(act, h):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        with llama_model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", interrupt)]):
            extract(
                llama_model, samples, hook, "last", batch_size=2, out=tmp_path, shard_size=4, progress=False
            )
    partial = json.loads((tmp_path / "manifest.json").read_text())
    assert (
        sum(len(s["ids"]) for s in partial["shards"]) == 4
    )  # the completed batches are saved on the way out
    feats = extract(
        llama_model, samples, hook, "last", batch_size=2, out=tmp_path, shard_size=4, progress=False
    )
    assert feats.ids == [s.id for s in samples] and feats.predictions == [""] * 7
    for sample, feature in zip(samples, feats.features):
        torch.testing.assert_close(
            feature, reference(llama_model, sample, hook, "last"), atol=1e-5, rtol=1e-4
        )
    again = Features.load(tmp_path)
    assert again.ids == feats.ids and torch.equal(again.features, feats.features)
    mask = 0o666 & ~_umask()
    for file in tmp_path.iterdir():
        if file.name != ".lock":
            assert stat.S_IMODE(file.stat().st_mode) == mask, file  # readable by others, not 0600
    with pytest.raises(ValueError, match=r"hooks: stored \['blocks.1"):
        extract(llama_model, samples, "blocks.0.hook_resid_post", "last", out=tmp_path, progress=False)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_store_refuses_other_checkpoint_prompt_and_second_writer(llama_model, samples, tmp_path):
    hook = "blocks.1.hook_resid_post"
    extract(llama_model, samples[:3], hook, "last", out=tmp_path, progress=False)
    other = HookedMLLM.from_hf(tiny_llava("llama", seed=1), tiny_processor())  # same class, other weights
    with pytest.raises(ValueError, match="model.weights_digest: stored"):
        extract(other, samples, hook, "last", out=tmp_path, progress=False)
    reprompted = [Sample(s.id, s.image, "describe the image .") for s in samples[:3]]
    with pytest.raises(ValueError, match="'s0' is in the store with another prompt or image"):
        extract(llama_model, reprompted, hook, "last", out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="rule.kind"):
        extract(llama_model, samples, hook, "image_mean", out=tmp_path, progress=False)
    with folder_lock(tmp_path):  # another run holds the folder
        with pytest.raises(RuntimeError, match="being written by another extraction"):
            extract(llama_model, samples, hook, "last", out=tmp_path, progress=False)
    assert len(Features.load(tmp_path)) == 3  # nothing was added by the refused runs


@pytest.mark.parametrize("edit", ["one MLP weight", "last embedding row"])
def test_an_edit_of_one_weight_is_refused(samples, tmp_path, edit):
    hook = "blocks.1.hook_resid_post"
    model = HookedMLLM.from_hf(tiny_llava("llama"), tiny_processor())
    extract(model, samples[:2], hook, "last", out=tmp_path, progress=False)
    lm = model.hf_model.model.language_model
    with torch.no_grad():
        if edit == "one MLP weight":
            weight = lm.layers[-1].mlp.down_proj.weight
            weight[-1, -1] = torch.nextafter(weight[-1, -1], torch.tensor(1.0))  # the smallest change
        else:
            lm.embed_tokens.weight[-1] += 1e-3
    with pytest.raises(ValueError, match="model.weights_digest: stored"):
        extract(model, samples, hook, "last", out=tmp_path, progress=False)
    assert len(Features.load(tmp_path)) == 2  # nothing from the edited model was appended


def test_corrupted_or_truncated_shard_is_named(llama_model, samples, tmp_path):
    hook = "blocks.1.hook_resid_post"
    extract(llama_model, samples[:4], hook, "last", out=tmp_path, shard_size=2, batch_size=2, progress=False)
    shard = tmp_path / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00001.safetensors is corrupted"):
        Features.load(tmp_path)
    with pytest.raises(ValueError, match="shard_00001.safetensors is corrupted"):
        extract(llama_model, samples, hook, "last", out=tmp_path, progress=False)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="shard_00001.safetensors is truncated"):
        Features.load(tmp_path)


def test_several_hooks_one_pass_with_vision_and_projector(llama_model, samples, tmp_path):
    hooks = [
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_post",
        "vision.blocks.1.hook_resid_post",
        "projector.hook_out",
    ]
    calls, ctx = counter(llama_model)
    with ctx:
        feats = extract(
            llama_model, samples[:4], hooks, "image_mean", batch_size=2, out=tmp_path, progress=False
        )
    assert calls == {"prompt": 2, "steps": 0}  # one forward per batch, no generation
    assert feats.hooks == hooks
    with pytest.raises(ValueError, match="holds 4 hook points"):
        feats.features  # noqa: B018 (the access is what raises)
    for row, sample in enumerate(samples[:4]):
        batch = llama_model.prepare(images=[sample.image], prompts=[sample.prompt])
        _, cache = llama_model.run_with_cache(batch, names_filter=hooks)  # one plain run for all four points
        for hook in hooks:
            act = cache[hook][0]
            expected = act[batch.image_mask[0]].mean(0) if hook.startswith("blocks") else act.mean(0)
            torch.testing.assert_close(feats[hook].features[row], expected, atol=1e-5, rtol=1e-4)
    blocks = list(Features.load(tmp_path).iter_rows(block=3, hook="projector.hook_out"))
    assert [len(b) for b in blocks] == [3, 1]
    with pytest.raises(ValueError, match="use the image_mean or image_each rule"):
        extract(llama_model, samples[:1], "projector.hook_out", "last", progress=False)


def test_answer_rules_cache_during_generation(llama_model, samples):
    hook = "blocks.2.hook_resid_post"
    batch = llama_model.prepare(
        images=[s.image for s in samples[:3]], prompts=[s.prompt for s in samples[:3]]
    )
    gen = llama_model.generate(batch, max_new_tokens=4)
    tokenizer = llama_model.processor.tokenizer
    calls, ctx = counter(llama_model)
    with ctx:
        mean = extract(
            llama_model, samples[:3], hook, "answer_mean", batch_size=3, max_new_tokens=4, progress=False
        )
        second = extract(
            llama_model,
            samples[:3],
            hook,
            TokenRule("token", token=tokenizer.decode(gen.new_tokens[0, 1:2])),
            batch_size=3,
            max_new_tokens=4,
            progress=False,
        )
    assert calls["prompt"] == 2  # no second full forward after generating
    for row in range(3):
        ids = gen.new_tokens[row].tolist()
        ids = ids[: ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids
        full = torch.cat([gen.sequences[row, : batch.shape[1]], torch.tensor(ids, dtype=torch.long)])
        run = llama_model.prepare(images=[samples[row].image], prompts=[samples[row].prompt])
        run = llama_model.to_batch(
            input_ids=full[None],
            pixel_values=run.inputs["pixel_values"],
            attention_mask=torch.cat([batch.attention_mask[row], torch.ones(len(ids), dtype=torch.long)])[
                None
            ],
        )
        _, cache = llama_model.run_with_cache(run, names_filter=hook)
        acts = cache[hook][0]
        torch.testing.assert_close(mean.features[row], acts[batch.shape[1] :].mean(0), atol=1e-4, rtol=1e-4)
        assert mean.predictions[row] == tokenizer.decode(ids, skip_special_tokens=True).strip()
        if row == 0:  # the second answer token, which the last generation step still runs through the model
            torch.testing.assert_close(second.features[0], acts[batch.shape[1] + 1], atol=1e-4, rtol=1e-4)


def test_word_rules_on_the_prompt(llama_model, samples):
    hook = "blocks.1.hook_resid_post"
    sample = samples[2]  # "is there a red square ?"
    batch = llama_model.prepare(images=[sample.image], prompts=[sample.prompt])
    tokens = llama_model.processor.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    red = tokens.index("red")
    _, cache = llama_model.run_with_cache(batch, names_filter=hook)
    acts = cache[hook][0]
    rules = {
        TokenRule("token", token="RED", search="prompt"): acts[red],
        TokenRule("predicting", token=("blue", "red"), search="prompt"): acts[red - 1],
        TokenRule("token", token="red square", search="prompt", reduce="mean"): acts[red : red + 2].mean(0),
        TokenRule("range", search="prompt", start=-3, end=-1): acts[-3:-1].mean(0),
    }
    for rule, expected in rules.items():
        got = extract(llama_model, [sample], hook, rule, progress=False)
        torch.testing.assert_close(got.features[0], expected, atol=1e-5, rtol=1e-4)
    missing = extract(
        llama_model, samples[:1], hook, TokenRule("token", token="zebra", search="prompt"), progress=False
    )
    assert len(missing) == 0 and missing.manifest["skipped"][0]["id"] == "s0"
    with pytest.raises(ValueError, match="Unknown token rule"):
        TokenRule("middle")


def test_lazy_datasets(tmp_path):
    for i in range(2):
        random_image(i).save(tmp_path / f"img{i}.png")
    data = folder_dataset(tmp_path, "describe the image .")
    assert [s.id for s in data] == ["img0.png", "img1.png"] and data[0].image == tmp_path / "img0.png"
    (tmp_path / "d.jsonl").write_text(
        '{"id": "a", "image": "img1.png", "prompt": "how many objects"}\n\n{"image": "img0.png"}\n'
    )
    rows = list(jsonl_dataset(tmp_path / "d.jsonl", prompt="fallback"))
    assert [(r.id, r.image, r.prompt) for r in rows] == [
        ("a", tmp_path / "img1.png", "how many objects"),
        ("2", tmp_path / "img0.png", "fallback"),
    ]
    table = [{"image": random_image(0), "question": "q0", "qid": 7}]
    assert next(hf_dataset(table, prompt_column="question", id_column="qid")).id == "7"
    with pytest.raises(KeyError, match="no column 'prompt'"):
        next(hf_dataset(table))
    with pytest.raises(ValueError, match="prompt_column= .* or prompt="):
        next(hf_dataset(table, prompt_column=None))
    assert next(hf_dataset(table, prompt_column=None, prompt="p")).prompt == "p"


def test_paths_are_read_per_batch(llama_model, tmp_path):
    for i in range(3):
        random_image(i).save(tmp_path / f"{i}.png")
    hook = "blocks.1.hook_resid_post"
    feats = extract(
        llama_model, folder_dataset(tmp_path, PROMPTS[0]), hook, "last", batch_size=2, progress=False
    )
    expected = reference(llama_model, Sample("0", random_image(0), PROMPTS[0]), hook, "last")
    torch.testing.assert_close(feats.features[0], expected, atol=1e-5, rtol=1e-4)


def test_config_fingerprint_ignores_where_the_checkpoint_lives():
    from hooked_mllm.concepts._store import config_fingerprint

    a = {"_name_or_path": "/a/ckpt", "transformers_version": "5.0", "hidden_size": 8, "id2label": {0: "x"}}
    b = {"_name_or_path": "/b/ckpt", "transformers_version": "5.1", "hidden_size": 8, "id2label": {0: "x"}}
    assert config_fingerprint(a) == config_fingerprint(b) != config_fingerprint(dict(b, hidden_size=16))
