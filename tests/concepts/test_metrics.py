"""Tests for hooked_mllm.concepts.metrics against independent hand or library computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import normalized_mutual_info_score

from hooked_mllm.concepts.decompose import PCAConcepts
from hooked_mllm.concepts.metrics import (
    CLIPScorer,
    ImageTextScorer,
    Sparsity,
    attribute_recovery,
    clip_concept_score,
    clip_style_score,
    concept_overlap,
    hoyer_sparsity,
    overlap_matrix,
    project,
    random_word_lists,
    reconstruction_error,
    sparsity,
    top_concept_words,
)


def test_reconstruction_error_factors_and_model():
    rng = np.random.default_rng(0)
    V, U = rng.random((20, 3)), rng.normal(size=(3, 6))
    Z = V @ U
    assert reconstruction_error(Z, (V, U)) == pytest.approx(0.0, abs=1e-12)
    noise = rng.normal(size=Z.shape)
    expected = np.sqrt((noise**2).sum() / ((Z + noise) ** 2).sum())
    assert reconstruction_error(torch.from_numpy(Z + noise), (V, U)) == pytest.approx(expected)
    pca = PCAConcepts(n_components=3).fit(Z)  # rank-3 data: PCA (with its mean) reconstructs exactly
    assert reconstruction_error(Z, pca) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="Shapes do not compose"):
        reconstruction_error(Z, (V, U[:2]))
    with pytest.raises(TypeError, match="fitted decomposer"):
        reconstruction_error(Z, "pca")
    with pytest.raises(ValueError, match="all zeros"):
        reconstruction_error(np.zeros((2, 2)), (np.zeros((2, 1)), np.zeros((1, 2))))


def test_hoyer_on_known_vectors():
    # one-hot -> 1, flat -> 0, and the closed form on [3, 4, 0, 0]: (2 - 7/5) / (2 - 1) = 0.6
    got = hoyer_sparsity(np.array([[0.0, 0, 0, 2], [1, 1, 1, 1], [3, 4, 0, 0], [0, 0, 0, 0]]))
    np.testing.assert_allclose(got, [1.0, 0.0, 0.6, 1.0])
    with pytest.raises(ValueError, match="at least 2 entries"):
        hoyer_sparsity(np.ones((3, 1)))


def test_sparsity_summary():
    V = np.array([[1.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.0, 1e-6]])
    s = sparsity(V)
    assert isinstance(s, Sparsity)
    assert s.fraction_near_zero == pytest.approx(5 / 8)  # 1e-6 <= 1e-3 * 4 counts as zero
    expected_row2 = (2 - (7 + 1e-6) / np.sqrt(25 + 1e-12)) / (2 - 1)
    assert s.hoyer == pytest.approx((1.0 + expected_row2) / 2)


def test_overlap_hand_computed():
    words = [["dog", "fur", "brown"], ["dog", "cat"], ["car", "road", "red", "fast"]]
    overlap = overlap_matrix(words)
    # O_01 = 1/3, O_02 = 0, O_10 = 1/2, O_12 = 0, O_20 = 0, O_21 = 0
    expected = np.array([[np.nan, 1 / 3, 0], [1 / 2, np.nan, 0], [0, 0, np.nan]])
    np.testing.assert_allclose(overlap, expected)
    assert concept_overlap(words) == pytest.approx((1 / 3 + 1 / 2) / 6)
    assert concept_overlap([["a"], ["a"]]) == 1.0  # identical concepts: worst case
    assert concept_overlap([("a", "a", "b"), ["c"]]) == 0.0  # duplicates count once


@pytest.mark.parametrize(
    "words, error",
    [(["dog", "cat"], TypeError), ([["dog"]], ValueError)],
)
def test_overlap_rejects_bad_input(words, error):
    with pytest.raises(error):
        concept_overlap(words)


def test_project_uses_fitted_decomposer():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(30, 5))
    pca = PCAConcepts(n_components=2).fit(Z)
    new = rng.normal(size=(4, 5))
    np.testing.assert_allclose(project(new, pca), (new - pca.mean_) @ pca.components_.T)
    with pytest.raises(NotFittedError):
        project(new, PCAConcepts(n_components=2))


def test_top_concept_words_and_clip_style_score():
    V = np.array([[0.1, 0.9, 0.5], [0.8, 0.0, 0.1]])
    words = [["dog", "fur"], ["car", "red"], ["red", "apple"]]
    per_image = top_concept_words(V, words, top_k=2)
    assert per_image == [["car", "red", "apple"], ["dog", "fur", "red", "apple"]]

    seen = {}

    def scorer(images, texts):
        seen["texts"] = list(texts)
        return torch.tensor([len(t) + i for i, t in enumerate(texts)], dtype=torch.float32)

    assert isinstance(scorer, ImageTextScorer)
    scores = clip_style_score(scorer, ["img0", "img1"], per_image)
    assert seen["texts"] == [
        "A photo is described by the words car, red, apple",
        "A photo is described by the words dog, fur, red, apple",
    ]
    np.testing.assert_allclose(scores, [len(seen["texts"][0]), len(seen["texts"][1]) + 1])
    assert scores.dtype == np.float64


def test_clip_style_score_errors():
    with pytest.raises(ValueError, match="one score per pair"):
        clip_style_score(lambda i, t: [1.0], ["a", "b"], [["x"], ["y"]])
    with pytest.raises(ValueError, match="must match 1:1"):
        clip_style_score(lambda i, t: [1.0], ["a"], [["x"], ["y"]])
    with pytest.raises(ValueError, match="slot"):
        clip_style_score(lambda i, t: [1.0], ["a"], [["x"]], template="no slot")
    with pytest.raises(TypeError, match="one list of words per image"):
        clip_style_score(lambda i, t: [1.0], ["a"], ["dog"])
    with pytest.raises(ValueError, match="top_k"):
        top_concept_words(np.ones((1, 2)), [["a"], ["b"]], top_k=3)


def test_attribute_recovery_matches_sklearn_and_hand_purity():
    rng = np.random.default_rng(2)
    colour = np.array(["red", "red", "blue", "blue", "green", "green", "red", "blue"])
    assign = np.array([0, 0, 1, 1, 2, 1, 0, 0])  # concept 1 mixes blue/green, concept 0 has one blue
    V = rng.random((8, 3)) * 0.5
    V[np.arange(8), assign] += 1.0
    got = attribute_recovery(torch.from_numpy(V), colour)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(colour, assign))
    # purity by hand: concept 0 -> 3 red of 4, concept 1 -> 2 blue of 3, concept 2 -> 1 green of 1
    assert got["purity"] == pytest.approx((3 + 2 + 1) / 8)
    perfect = attribute_recovery(np.eye(3)[[0, 1, 2, 0]], ["a", "b", "c", "a"])
    assert perfect == {"nmi": 1.0, "purity": 1.0}
    with pytest.raises(ValueError, match="one entry per row"):
        attribute_recovery(V, colour[:5])


def test_empty_word_list_overlaps_nothing():
    overlap = overlap_matrix([["dog"], [], ["dog", "cat"]])
    np.testing.assert_allclose(overlap[1], [0.0, np.nan, 0.0])  # no words: shares none
    assert overlap[0, 2] == 1.0 and overlap[2, 0] == 0.5
    assert concept_overlap([["dog"], [], ["dog", "cat"]]) == pytest.approx((1 + 0 + 0 + 0 + 0.5 + 0) / 6)


def test_clip_concept_score_averages_each_concept():
    V = np.array([[0.9, 0.5, 0.1], [0.0, 0.2, 0.7]])
    words = [["dog", "fur"], ["car"], []]
    texts = []

    def scorer(images, batch_texts):
        texts.extend(batch_texts)
        return [10.0 * ("dog" in t) + len(im) for im, t in zip(images, batch_texts)]

    got = clip_concept_score(scorer, ["a", "bb"], V, words, top_k=2)
    # image 0: concepts 0 and 1 scored apart -> (10 + 1 + 0 + 1) / 2;
    # image 1: concepts 2 (no words: 0) and 1 -> 2 / 2
    np.testing.assert_allclose(got, [(11 + 1) / 2, (0 + 2) / 2])
    assert "A photo is described by the words dog, fur" in texts and len(texts) == 3


def test_random_words_baseline():
    vocab = [f"w{i}" for i in range(50)]
    lists = random_word_lists(vocab, 5, n_words=10, seed=1)
    assert len(lists) == 5 and all(len(set(w)) == 10 and set(w) <= set(vocab) for w in lists)
    assert lists == random_word_lists(vocab, 5, n_words=10, seed=1) != random_word_lists(vocab, 5, 10, seed=2)
    # chance overlap of 10-word lists from 50 words is about 10 / 50
    assert 0.1 < concept_overlap(random_word_lists(vocab, 40, 10, seed=0)) < 0.3
    with pytest.raises(ValueError, match="distinct words"):
        random_word_lists(["a"], 2, n_words=2)


def test_clip_scorer_on_a_tiny_random_clip():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    from hooked_mllm.testing import random_image

    sentences = ["A photo is described by the words dog, fur, red, car, road, sky"] * 3
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()

    def processor(text, images, return_tensors, padding):
        enc = tokenizer(text, padding=True, return_tensors="pt")
        pixels = torch.stack(
            [
                torch.from_numpy(np.asarray(im.resize((32, 32)), dtype=np.float32) / 255).permute(2, 0, 1)
                for im in images
            ]
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": pixels,
        }

    images = [random_image(i) for i in range(3)]
    texts = [
        "A photo is described by the words dog, fur",
        "A photo is described by the words car",
        "A photo is described by the words sky, red, road",
    ]
    got = CLIPScorer(clip, processor, batch_size=2)(images, texts)
    inputs = processor(texts, images, "pt", True)
    with torch.no_grad():
        out = clip(**inputs)
    cos = (
        (out.logits_per_image / clip.logit_scale.exp()).diagonal().detach().double().numpy()
    )  # plain HF forward
    np.testing.assert_allclose(got, 2.5 * np.maximum(cos, 0), atol=1e-5)
    assert isinstance(CLIPScorer(clip, processor), ImageTextScorer)
