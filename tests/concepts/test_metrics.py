"""Tests for hooked_mllm.concepts.metrics against independent hand or library computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import normalized_mutual_info_score

from hooked_mllm.concepts.decompose import PCAConcepts
from hooked_mllm.concepts.metrics import (
    ImageTextScorer,
    Sparsity,
    attribute_recovery,
    clip_style_score,
    concept_overlap,
    hoyer_sparsity,
    overlap_matrix,
    project,
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
    [(["dog", "cat"], TypeError), ([["dog"]], ValueError), ([["dog"], []], ValueError)],
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
