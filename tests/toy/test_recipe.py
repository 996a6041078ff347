"""LLaVA's recipe on the toy world: text data, stages that freeze what they should, the embedding lens, the
image-token read-out and the ``toy science`` command, on tiny runs (seconds)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from hooked_mllm import toy
from hooked_mllm.lens import embedding_lens, nearest_tokens
from hooked_mllm.toy.data import encode_text, sample_dialogue, scene_text, text_prompt
from hooked_mllm.toy.model import build_model
from hooked_mllm.toy.processor import build_processor
from hooked_mllm.toy.recipe import (
    PARTS,
    STAGES,
    build_text_lm,
    grow_text_lm,
    set_trainable,
    train_stage,
    vlm_from_text_lm,
)
from hooked_mllm.toy.science import LENSES, format_readout, image_token_readout
from hooked_mllm.toy.tokenizer import build_tokenizer
from hooked_mllm.toy.world import World


def _scene_with(n_objects: int):
    return next(s for s in World(seed=3) if len(s.objects) == n_objects)


def test_scene_text_and_text_prompt():
    s = _scene_with(3)
    a, b, c = s.objects
    expected = f"a {a.name} {a.position} , a {b.name} {b.position} and a {c.name} {c.position} ."
    assert scene_text(s) == expected
    one = _scene_with(1)
    assert scene_text(one) == f"a {one.objects[0].name} {one.objects[0].position} ."
    assert text_prompt(one, "how many objects ?") == f"USER: {scene_text(one)} how many objects ? ASSISTANT:"
    tok = build_tokenizer()
    for sc in World(seed=9).sample(30):
        ids = tok(scene_text(sc), add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids and len(ids) == len(scene_text(sc).split())


def test_encode_text_labels():
    tok = build_tokenizer()
    scenes = World(seed=0).sample(3)
    dialogues = [sample_dialogue(s, random.Random(i), 2, caption_style="scene", p_caption=0.5)
                 for i, s in enumerate(scenes)]  # fmt: skip
    every = encode_text(tok, scenes, dialogues, loss="all")
    ids, mask, labels = every["input_ids"], every["attention_mask"], every["labels"]
    assert ids[:, -1].ne(tok.pad_token_id).all() and (ids[:, 0] == tok.pad_token_id).any(), "left padding"
    real = (mask == 1) & (ids != tok.bos_token_id)
    assert torch.equal(labels != -100, real) and torch.equal(labels[real], ids[real])
    answers = encode_text(tok, scenes, dialogues, loss="answer")["labels"]
    for row, d in zip(answers, dialogues):
        assert tok.decode(row[row != -100]) == " ".join(f"{a} </s>" for _, a in d)
    prompts = encode_text(tok, scenes, ["how many objects ?"] * 3)
    assert "labels" not in prompts
    assert tok.decode(prompts["input_ids"][0][prompts["attention_mask"][0] == 1]) == "<s> " + text_prompt(
        scenes[0], "how many objects ?"
    )
    with pytest.raises(ValueError, match="one dialogue per scene"):
        encode_text(tok, scenes, dialogues[:2])


def test_text_lm_and_vlm_share_the_language_model():
    lm = build_text_lm(seed=1)
    assert lm.config.num_hidden_layers >= 6 and lm.config.tie_word_embeddings
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    vlm = vlm_from_text_lm(lm, seed=1)
    for name, p in lm.model.state_dict().items():
        assert torch.equal(vlm.model.language_model.state_dict()[name], p), name
    assert vlm.lm_head.weight.data_ptr() == vlm.model.language_model.embed_tokens.weight.data_ptr()


def test_set_trainable_groups():
    vlm = build_model(seed=0, vision_layers=1, text_layers=1, tie_embeddings=True)
    groups = set_trainable(vlm, ("projector",))
    assert set(groups) == set(PARTS) and all(groups[p] for p in PARTS)
    learning = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert learning == set(groups["projector"]) and all("multi_modal_projector" in n for n in learning)
    assert groups["patch_embedding"] == ["model.vision_tower.embeddings.patch_embedding.weight"]


def _weights(path):
    cls = (
        LlamaForCausalLM
        if json.loads((path / "toy_meta.json").read_text()).get("kind") == "text"
        else (LlavaForConditionalGeneration)
    )
    return {n: p.detach().clone() for n, p in cls.from_pretrained(path).named_parameters()}


def test_grow_text_lm_preserves_the_function():
    lm = build_text_lm(0, text_layers=2, text_hidden=32, text_heads=2, text_intermediate=64)
    deep = grow_text_lm(lm, 6)
    assert deep.config.num_hidden_layers == 6 and deep.config.tie_word_embeddings
    ids = torch.randint(5, 40, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(deep(ids).logits, lm(ids).logits, atol=1e-6, rtol=1e-6)
    for j in (0, 3):  # base layers 0 and 1 sit at 0 * 6 // 2 and 1 * 6 // 2
        src = lm.model.layers[j // 3].state_dict()
        assert all(torch.equal(p, src[n]) for n, p in deep.model.layers[j].state_dict().items())
    for j in (1, 2, 4, 5):
        layer = deep.model.layers[j]
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
        assert layer.self_attn.q_proj.weight.any(), "new layers are initialised, only their outputs are zero"
    with pytest.raises(ValueError, match="Cannot grow"):
        grow_text_lm(deep, 4)


def test_recipe_stages_run_and_keep_frozen_parts_frozen(tmp_path):
    torch.set_num_threads(1)
    kw = {"steps": 2, "batch_size": 4, "progress": False}
    base_dir, lm_dir, align_dir, inst_dir, ft_dir = (
        tmp_path / n for n in ("base", "lm", "align", "inst", "ft")
    )
    first = train_stage("toy-lm-base", out=base_dir, **kw)
    assert len(first.losses) == 2 and json.loads((base_dir / "toy_meta.json").read_text())["kind"] == "text"
    with pytest.raises(ValueError, match="not shipped: pass its directory"):
        train_stage("toy-lm", out=lm_dir, **kw)
    restart_dir, small_dir = tmp_path / "restart", tmp_path / "small"
    train_stage("toy-lm-restart", out=restart_dir, init_dir=base_dir, **kw)
    train_stage("toy-lm-small", out=small_dir, init_dir=restart_dir, **kw)
    base_w, small_w = _weights(base_dir), _weights(small_dir)
    assert LlamaForCausalLM.from_pretrained(small_dir).config.num_hidden_layers == 2  # not grown yet
    assert base_w.keys() == small_w.keys() and any(not torch.equal(base_w[n], small_w[n]) for n in base_w)
    train_stage("toy-lm", out=lm_dir, init_dir=small_dir, **kw)
    assert LlamaForCausalLM.from_pretrained(lm_dir).config.num_hidden_layers == STAGES["toy-lm"].layers == 6
    train_stage("toy-llava-deep-align", out=align_dir, init_dir=lm_dir, **kw)
    lm_w, align_w = _weights(lm_dir), _weights(align_dir)
    for name, w in lm_w.items():  # the LM is frozen during alignment
        assert torch.equal(align_w[name.replace("model.", "model.language_model.", 1)], w), name
    donor = _weights(toy.checkpoint_dir("toy-llava"))  # the pretrained vision tower, frozen
    tower = {n: w for n, w in align_w.items() if n.startswith("model.vision_tower")}
    assert tower and all(torch.equal(w, donor[n]) for n, w in tower.items())
    fresh = vlm_from_text_lm(
        LlamaForCausalLM.from_pretrained(lm_dir), seed=0, vision_from=toy.checkpoint_dir("toy-llava")
    ).state_dict()
    moved = {n for n in align_w if not torch.equal(align_w[n], fresh[n])}
    assert moved and all("multi_modal_projector" in n for n in moved), "alignment trains the projector only"
    train_stage("toy-llava-deep", out=inst_dir, init_dir=align_dir, **kw)
    inst_w = _weights(inst_dir)
    changed = {n for n in inst_w if not torch.equal(inst_w[n], align_w[n])}
    assert any(n.startswith("model.language_model.layers") for n in changed), (
        "instruction tuning trains the LM"
    )
    assert any("multi_modal_projector" in n for n in changed)
    frozen = {n for n in inst_w if "vision_tower" in n or "embed_tokens" in n}
    assert frozen and not (frozen & changed), (
        "instruction tuning keeps the vision tower and embeddings frozen"
    )
    train_stage("toy-llava-deep-ft", out=ft_dir, init_dir=inst_dir, **kw)
    meta = json.loads((ft_dir / "toy_meta.json").read_text())
    assert meta["caption_style"] == "colored" and meta["steps_done"] == 2
    with pytest.raises(ValueError, match="Unknown recipe stage"):
        train_stage("toy-gpt", out=tmp_path / "x", **kw)


def test_embedding_lens_is_cosine_to_input_embeddings():
    vlm = build_model(seed=0, vision_layers=1, text_layers=1)
    w = vlm.get_input_embeddings().weight.detach().numpy()
    x = torch.randn(3, 2, w.shape[1])
    sims = embedding_lens(vlm, x)
    assert sims.shape == (3, 2, w.shape[0])
    ref = cosine_similarity(x.reshape(-1, w.shape[1]).numpy(), w).reshape(3, 2, -1)  # zero rows (pad) give 0
    np.testing.assert_allclose(sims.numpy(), ref, atol=1e-5)
    # an embedding row reads as its own token
    e = vlm.get_input_embeddings().weight[7].detach()
    assert int(embedding_lens(vlm, e).argmax()) == 7
    assert nearest_tokens(vlm, embedding_lens(vlm, e), k=2)[0] == ("7", pytest.approx(1.0, abs=1e-5))
    with pytest.raises(ValueError, match="width"):
        embedding_lens(vlm, torch.randn(5))
    with pytest.raises(TypeError, match="get_input_embeddings"):
        embedding_lens(object(), x)


def test_embedding_lens_on_a_hooked_model(tmp_path):
    from hooked_mllm import HookedMLLM
    from hooked_mllm.toy.model import save_checkpoint

    torch.set_num_threads(1)
    vlm = build_model(seed=0, vision_layers=1, text_layers=1)
    save_checkpoint(vlm, build_processor(), tmp_path / "ck")
    model = HookedMLLM.from_pretrained(str(tmp_path / "ck"))
    x = torch.randn(4, vlm.config.text_config.hidden_size)
    torch.testing.assert_close(embedding_lens(model, x), embedding_lens(vlm, x))
    tok = build_processor().tokenizer
    word = tok.convert_tokens_to_ids("red")
    top = nearest_tokens(model, embedding_lens(model, vlm.get_input_embeddings().weight[word].detach()), k=1)
    assert top[0][0] == "red"


def test_image_token_readout_against_a_plain_computation(tmp_path):
    """The read-out's hit rates equal a direct count over the hidden states Hugging Face returns with
    output_hidden_states, read through the model's own norm + head and through plain cosine similarity."""
    from hooked_mllm.toy.data import encode
    from hooked_mllm.toy.processor import CAPTION_PROMPT
    from hooked_mllm.toy.world import COLORS, SHAPES

    torch.set_num_threads(1)
    vlm = build_model(seed=2, vision_layers=1, text_layers=2, tie_embeddings=True)
    proc = build_processor()
    rows = image_token_readout(vlm, proc, seed=11, n_scenes=6, batch_size=4)
    assert [(r.lens, r.layer) for r in rows] == [(lens, layer) for lens in LENSES for layer in (-1, 0, 1)]
    scenes = World(seed=11).sample(6)
    batch = encode(proc, [s.image for s in scenes], [CAPTION_PROMPT] * 6)
    with torch.no_grad():
        hs = vlm(**batch, output_hidden_states=True).hidden_states  # (input, block 0, final-normed block 1)
    tok = proc.tokenizer
    cid, sid = tok.convert_tokens_to_ids(list(COLORS)), tok.convert_tokens_to_ids(list(SHAPES))
    for lens in LENSES:
        for layer, h in ((-1, hs[0]), (0, hs[1])):  # the last HF hidden state is already normed: skip it
            hits = chits = n = 0
            for b, s in enumerate(scenes):
                pos = torch.nonzero(batch["input_ids"][b] == proc.image_token_id).flatten()
                for o in s.objects:
                    v = h[b, pos[list(o.patch_indices)]]
                    with torch.no_grad():
                        sc = (
                            vlm.lm_head(vlm.model.language_model.norm(v))
                            if lens == "logit"
                            else torch.nn.functional.cosine_similarity(
                                v[:, None], vlm.get_input_embeddings().weight[None], dim=-1
                            )
                        )
                    hits += int((sc[:, sid].argmax(-1) == SHAPES.index(o.shape)).sum())
                    chits += int((sc[:, cid].argmax(-1) == list(COLORS).index(o.color)).sum())
                    n += len(v)
            row = next(r for r in rows if r.lens == lens and r.layer == layer)
            assert row.n_patches == n and row.shape_patch == pytest.approx(hits / n)
            assert row.color_patch == pytest.approx(chits / n)
    assert "colour mean/patch" in format_readout(rows)
    assert all(0 <= r.color_mean <= 1 and r.n_objects == sum(len(s.objects) for s in scenes) for r in rows)


def test_cli_science_and_text_eval(tmp_path, capsys):
    from hooked_mllm.toy.cli import main
    from hooked_mllm.toy.science import SECTIONS, science_report

    torch.set_num_threads(1)
    lm_dir, vlm_dir = tmp_path / "lm", tmp_path / "vlm"
    assert (
        main(["train", "--name", "toy-lm-base", "--out", str(lm_dir), "--steps", "1", "--batch-size", "2"])
        == 0
    )
    assert main(["train", "--name", "toy-llava-deep-align", "--init-dir", str(lm_dir), "--out", str(vlm_dir),
                 "--steps", "1", "--batch-size", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--path", str(lm_dir), "--n", "3"]) == 0
    assert "caption style scene" in capsys.readouterr().out
    assert main(["science", "--path", str(lm_dir), "--path", str(vlm_dir), "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "textual QA" in out and "image tokens read as words" in out and "embedding lens" in out
    assert out.count("== ") == 3 and "vs textual QA" in out and "correlation of the head maps" in out
    assert "heads that raise log p(answer)" in out
    # the report is open for more sections
    SECTIONS["extra"] = lambda name, path, seed, n: f"extra for {name}"
    try:
        assert "extra for x" in science_report({"x": vlm_dir}, n=2, sections=("extra",))
    finally:
        del SECTIONS["extra"]
    with pytest.raises(ValueError, match="Unknown science sections"):
        science_report({"x": vlm_dir}, sections=("nope",))
