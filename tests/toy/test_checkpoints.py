"""The shipped toy checkpoints load like Hub checkpoints and meet their quality bar on unseen scenes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hooked_mllm import toy
from hooked_mllm.toy.evaluation import evaluate
from hooked_mllm.toy.world import World

N_SCENES = 200
SEED = 4321  # never used in training (training worlds use seeds >= 10000)


@pytest.fixture(scope="module", params=["toy-llava", "toy-llava-ft"])
def shipped(request):
    torch.set_num_threads(1)
    path = toy.checkpoint_dir(request.param)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    return request.param, path, model, processor


def test_checkpoint_dir_errors():
    with pytest.raises(ValueError, match="toy-llava"):
        toy.checkpoint_dir("toy-gpt")


def test_loads_like_a_hub_checkpoint(shipped):
    name, path, model, processor = shipped
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert (path / "model.safetensors").stat().st_size < 20 * 2**20
    meta = json.loads((path / "toy_meta.json").read_text())
    assert meta["name"] == name
    assert meta["caption_style"] == ("colored" if name.endswith("-ft") else "plain")


def test_generates_answer_then_eos(shipped):
    _, _, model, processor = shipped
    scene = World(seed=SEED).scene(0)
    content = [{"type": "image"}, {"type": "text", "text": "how many objects ?"}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(images=[scene.image], text=[text], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    new = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1] :])
    assert new == f"{scene.questions_of('count')[0].answer} </s>"


def _report(shipped):
    name, _, model, processor = shipped
    style = "colored" if name.endswith("-ft") else "plain"
    return evaluate(
        model, seed=SEED, n=N_SCENES, processor=processor, questions_per_type=1, caption_style=style,
        progress=False,
    )  # fmt: skip


def test_quality_targets(shipped):
    """Every question type >= 97 % and exact captions >= 90 % on scenes never seen in training
    (docs/toy.md).
    """
    report = _report(shipped)
    assert all(acc >= 0.97 for acc in report.accuracy.values()), report.format()
    assert report.caption_exact >= 0.90, report.format()


def test_load_into_hooked_mllm():
    try:
        from hooked_mllm import HookedMLLM  # noqa: F401
    except ImportError:
        pytest.skip("hooked_mllm.HookedMLLM is not available yet")
    model = toy.load("toy-llava")
    assert model is not None
