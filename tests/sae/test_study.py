"""The toy-world SAE study: the ground truth of image tokens agrees with the objects' pixels, the AUROC is
sklearn's, units are chosen on one split and graded on another, the steering edit is the decoder
direction added at the object's tokens, and the whole study runs end to end on tiny settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sae_lens")

from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402

from hooked_mllm.sae.study import (  # noqa: E402
    _answers,
    attribute_values,
    auroc,
    image_token_activations,
    image_token_labels,
    run_study,
    score_units,
    steer_colour,
)
from hooked_mllm.toy.world import PATCH, PATCH_GRID, World  # noqa: E402

from .helpers import random_sae  # noqa: E402


@pytest.fixture(scope="module")
def toy_model():
    from hooked_mllm import toy

    return toy.load("toy-llava")


def test_auroc_is_sklearns_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    scores = np.stack(
        [
            rng.integers(0, 4, 300).astype(float),  # many ties
            np.where(rng.random(300) < 0.7, 0.0, rng.random(300)),  # mostly zero, as SAE features
            y + rng.normal(0, 0.5, 300),
            -(y + rng.normal(0, 0.5, 300)),  # anti-correlated: below 0.5
        ],
        axis=1,
    )
    expected = [roc_auc_score(y, scores[:, j]) for j in range(scores.shape[1])]
    np.testing.assert_allclose(auroc(scores, y), expected, rtol=1e-12)
    assert auroc(scores, y)[3] < 0.5 < auroc(scores, y)[2]
    with pytest.raises(ValueError, match="both positives and negatives"):
        auroc(scores, np.zeros(300, dtype=bool))


def test_labels_follow_the_objects_pixels():
    scenes = World(seed=4).sample(12)
    labels = image_token_labels(scenes)
    n = PATCH_GRID * PATCH_GRID
    for i, scene in enumerate(scenes):
        expected = {a: [""] * n for a in labels}
        for obj in scene.objects:
            rows, cols = np.nonzero(obj.mask)  # the object's own pixels, not its patch_indices
            for p in {int(r // PATCH) * PATCH_GRID + int(c // PATCH) for r, c in zip(rows, cols)}:
                for a in labels:
                    expected[a][p] = getattr(obj, a)
        for a in labels:
            assert list(labels[a][i * n : (i + 1) * n]) == expected[a]
    assert set(labels["color"]) - {""} <= set(attribute_values("color"))
    with pytest.raises(ValueError, match="Unknown attribute"):
        attribute_values("size")


def test_activations_are_the_image_tokens_in_label_order(toy_model):
    scenes = World(seed=5).sample(3)
    hook = "blocks.1.hook_resid_post"
    x = image_token_activations(toy_model, scenes, hook, batch_size=2)
    for i, scene in enumerate(scenes):
        batch = toy_model.prepare(images=[scene.image], prompts=["what is it ?"])  # another prompt: same rows
        _, cache = toy_model.run_with_cache(batch, names_filter=hook)
        positions = list(batch.images_of(0)[0].token_positions)
        torch.testing.assert_close(x[i * 36 : (i + 1) * 36], cache[hook][0, positions], atol=1e-5, rtol=1e-5)


def _labels(values):
    return {
        "color": np.asarray(values, dtype=object),
        "shape": np.full(len(values), ""),
        "position": np.full(len(values), ""),
    }


def test_units_are_chosen_on_the_selection_split_and_graded_on_the_test_split():
    rng = np.random.default_rng(1)
    colours = rng.choice(["red", "blue", ""], 400)
    select, test = _labels(colours[:200]), _labels(colours[200:])
    red_s, red_t = select["color"] == "red", test["color"] == "red"
    # unit 0: perfect for red on the selection split, noise on the test split; unit 1: good on both
    s = np.stack([red_s + 0.0, red_s + rng.normal(0, 0.6, 200), rng.random(200)], axis=1)
    t = np.stack([rng.random(200), red_t + rng.normal(0, 0.6, 200), rng.random(200)], axis=1)
    scores = {x.value: x for x in score_units("m", s, t, select, test, attributes=("color",))}
    assert set(scores) == {"red", "blue"}  # values absent from the data are left out
    red = scores["red"]
    assert red.unit == 0 and red.select_auroc == 1.0
    assert red.auroc == pytest.approx(roc_auc_score(red_t, t[:, 0]))  # graded where it was not chosen
    assert red.f1 == pytest.approx(f1_score(red_t, t[:, 0] >= red.threshold))
    assert red.n_positive == int(red_t.sum())


def test_steering_adds_the_decoder_direction_at_the_object(toy_model):
    hook = "blocks.1.hook_resid_post"
    sae = random_sae(toy_model.cfg.d_model, hook, d_sae=32, seed=3)
    scene = next(s for s in World(seed=6).sample(40) if len(s.objects) == 2)
    obj = scene.objects[0]
    questions = [(scene, f"what color is the {obj.shape} ?", obj), (scene, "how many objects ?", obj)]

    def edit(rows):
        rows[:, 5] += 400.0

    steered = _answers(toy_model, sae, questions, edit, batch_size=2)
    unedited = _answers(toy_model, sae, questions, lambda rows: None, batch_size=2)
    # the same edit without the SAE: the decoder row added at the object's image tokens
    batch = toy_model.prepare(images=[scene.image] * 2, prompts=[q for _, q, _ in questions])
    where = [batch.images_of(r)[0].token_positions[p] for p in obj.patch_indices for r in (0,)]

    def add(act, hook):
        act = act.clone()
        act[:, where] += 400.0 * sae.W_dec[5].detach()
        return act

    tokenizer = toy_model.processor.tokenizer
    for fwd_hooks, answers in (([(hook, add)], steered), ([], unedited)):
        logits = toy_model.run_with_hooks(batch, fwd_hooks=fwd_hooks)
        last = logits[torch.arange(2), batch.last_positions()].argmax(-1)
        assert tokenizer.convert_ids_to_tokens(last.tolist()) == answers
    assert steered != unedited  # (a push this strong changes an answer: the check can fail)


def test_steer_colour_without_an_edit_changes_nothing(toy_model):
    sae = random_sae(toy_model.cfg.d_model, "blocks.1.hook_resid_post", d_sae=32, seed=4)
    outcome = steer_colour(toy_model, sae, World(seed=7).sample(30), feature=3, strength=0.0)
    assert outcome.n_objects > 0
    assert outcome.kept_source == outcome.baseline_source
    assert outcome.others_changed == 0 and outcome.count_changed == 0
    with pytest.raises(ValueError, match="out of range"):
        steer_colour(toy_model, sae, World(seed=7).sample(3), feature=99, strength=1.0)
    with pytest.raises(ValueError, match="different colours"):
        steer_colour(toy_model, sae, World(seed=7).sample(3), feature=1, strength=1.0, target="blue")


def test_study_end_to_end_on_tiny_settings(toy_model):
    result = run_study(
        toy_model, "blocks.0.hook_resid_post", n_train=6, n_select=12, n_test=12, d_sae=48, k=4,
        total_tokens=512, train_batch_size=64, dictionaries=("kmeans",), n_components=6,
        steer_scenes=20, steer_strengths=(2.0,), batch_size=6,
    )  # fmt: skip
    assert result.methods == ("sae", "kmeans")
    assert {(s.method, s.attribute) for s in result.scores} == {
        (m, a) for m in result.methods for a in ("color", "shape", "position")
    }
    # one score recomputed independently: the SAE's own encode of the test scenes' tokens, sklearn's AUROC
    test = World(seed=20_002).sample(12)
    batch = toy_model.prepare(images=[s.image for s in test], prompts=["describe the image ."] * 12)
    _, cache = toy_model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post")
    x = cache["blocks.0.hook_resid_post"][:, list(batch.images_of(0)[0].token_positions)]
    with torch.no_grad():
        feats = result.sae.encode(x.reshape(-1, x.shape[-1])).numpy()
    truth = []
    for scene in test:
        for patch in range(36):
            owner = next((o for o in scene.objects if patch in o.patch_indices), None)
            truth.append(owner is not None and owner.color == "red")
    red = result.best("sae", "color", "red")
    assert red.auroc == pytest.approx(roc_auc_score(truth, feats[:, red.unit]), abs=1e-6)
    assert result.n_tokens == {"train": 6 * 36, "select": 12 * 36, "test": 12 * 36}
    assert "| color | red |" in result.markdown() and len(result.steering) == 2
    assert result.steering[1].remove == result.best("sae", "color", "blue").unit
    assert set(result.unmet(threshold=1.01)) == set(attribute_values("color")) | set(
        attribute_values("shape")
    )
