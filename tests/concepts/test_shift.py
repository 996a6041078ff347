"""Tests for hooked_mllm.concepts.shift on synthetic features where B = A + known per-cluster offsets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from hooked_mllm.concepts.decompose import KMeansConcepts, SemiNMF
from hooked_mllm.concepts.shift import (
    ShiftResult,
    align_ids,
    analyze_shift,
    assign_concepts,
    concept_shift_vectors,
    match_concepts,
    shift_baselines,
    shift_consistency,
    shift_improvement,
    shifted_concepts,
)

K, D_MODEL, PER = 3, 6, 20


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tensors here are tiny: extra OpenMP threads only contend on a loaded 2-core box."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def clusters(seed: int = 0):
    """A: K well-separated clusters; B = A + offsets[cluster]. Returns A, B, true labels, offsets."""
    rng = np.random.default_rng(seed)
    centers = 10 * rng.normal(size=(K, D_MODEL))
    labels = np.repeat(np.arange(K), PER)
    A = centers[labels] + 0.3 * rng.normal(size=(K * PER, D_MODEL))
    offsets = 3 * rng.normal(size=(K, D_MODEL))
    return A, A + offsets[labels], labels, offsets


def test_recovers_known_offsets_with_perfect_consistency():
    A, B, labels, offsets = clusters()
    V = KMeansConcepts(K, random_state=0).fit(A).transform(A)
    assign = assign_concepts(V)
    D, counts = concept_shift_vectors(A, B, assign, K)
    assert counts.tolist() == [PER] * K
    for c in range(K):  # concept ids are a permutation of the true cluster ids
        (concept,) = set(assign[labels == c])
        np.testing.assert_allclose(D[concept], offsets[c], atol=1e-12)
    np.testing.assert_allclose(shift_consistency(A, B, assign, K), 1.0, atol=1e-12)
    for reduce in ("median", "trimmed"):
        np.testing.assert_allclose(concept_shift_vectors(A, B, assign, K, reduce=reduce)[0], D, atol=1e-12)


def test_analyze_shift_shifted_concepts_match_b_better():
    A, B, _, offsets = clusters()
    result = analyze_shift(
        torch.from_numpy(A), B, KMeansConcepts(K, random_state=0), KMeansConcepts(K, random_state=1)
    )
    assert isinstance(result, ShiftResult)
    assert result.mean_consistency == pytest.approx(1.0)
    imp = result.improvement
    # k-means centroids of B are exactly the centroids of A plus the offsets, so U^s == U^b after matching
    np.testing.assert_allclose(result.shifted[imp.matching.index_x], result.concepts_b[imp.matching.index_y])
    np.testing.assert_allclose(imp.matching.cosine, 1.0)
    expected_gain = np.linalg.norm(offsets, axis=1)  # ||u_b - u_a|| - 0
    np.testing.assert_allclose(np.sort(imp.distance_gain), np.sort(expected_gain))
    assert imp.mean_distance_gain > 0 and imp.mean_cosine_gain > 0 and (imp.cosine_gain >= -1e-12).all()


def test_analyze_shift_with_seminmf():
    A, B, _, _ = clusters(seed=1)
    result = analyze_shift(
        A, B, SemiNMF(K, max_iter=100, random_state=0), SemiNMF(K, max_iter=100, random_state=0)
    )
    assert result.concepts_a.shape == result.shifted.shape == (K, D_MODEL)
    assert result.activations_a.shape == (K * PER, K) and (result.activations_a >= 0).all()
    assert result.improvement.mean_distance_gain > 0


def test_analyze_shift_does_not_fit_callers_estimator():
    A, B, _, _ = clusters()
    unfitted = KMeansConcepts(K, random_state=0)
    result = analyze_shift(A, B, unfitted)
    assert result.improvement is None and result.concepts_b is None
    with pytest.raises(NotFittedError):
        unfitted.transform(A)
    fitted = KMeansConcepts(K, random_state=0).fit(A)
    np.testing.assert_array_equal(analyze_shift(A, B, fitted).concepts_a, fitted.components_)


def test_noisy_shifts_and_robust_reductions():
    A, B, labels, offsets = clusters()
    rng = np.random.default_rng(5)
    B = B + 0.2 * rng.normal(size=B.shape)
    cons = shift_consistency(A, B, labels, K)
    assert (cons > 0.8).all() and (cons < 1).all()
    B_out = B.copy()
    B_out[:2] += 1000.0  # two outliers in cluster 0
    mean = concept_shift_vectors(A, B_out, labels, K, reduce="mean")[0]
    med = concept_shift_vectors(A, B_out, labels, K, reduce="median")[0]
    trim = concept_shift_vectors(A, B_out, labels, K, reduce="trimmed", trim=0.2)[0]
    assert np.abs(mean[0] - offsets[0]).max() > 50
    assert np.abs(med[0] - offsets[0]).max() < 0.5 and np.abs(trim[0] - offsets[0]).max() < 0.5


def test_consistency_hand_computed_and_empty_concepts():
    A = np.zeros((5, 2))
    B = np.array([[1.0, 0], [0, 2.0], [1.0, 1.0], [5.0, 5.0], [3.0, 0]])
    assign = np.array([0, 0, 0, 2, 2])
    # concept 0: cos pairs (e1,e2)=0, (e1,d)=1/sqrt2, (e2,d)=1/sqrt2 -> mean sqrt2/3; concept 2: 1/sqrt2
    cons = shift_consistency(A, B, assign, n_concepts=4)
    np.testing.assert_allclose(cons[[0, 2]], [np.sqrt(2) / 3, 1 / np.sqrt(2)])
    assert np.isnan(cons[[1, 3]]).all()
    D, counts = concept_shift_vectors(A, B, assign, n_concepts=4)
    assert counts.tolist() == [3, 0, 2, 0] and not D[[1, 3]].any()


def test_match_concepts_recovers_permutation_and_is_optimal():
    rng = np.random.default_rng(3)
    U = rng.normal(size=(4, 5))
    perm = np.array([2, 0, 3, 1])
    m = match_concepts(U, 3.0 * U[perm])  # scaling must not matter
    np.testing.assert_array_equal(perm[m.index_y], m.index_x)
    np.testing.assert_allclose(m.cosine, 1.0)
    X, Y = rng.normal(size=(4, 5)), rng.normal(size=(5, 5))
    cos = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (Y / np.linalg.norm(Y, axis=1, keepdims=True)).T
    best = max(cos[np.arange(4), list(p)].sum() for p in itertools.permutations(range(5), 4))
    m = match_concepts(X, Y)
    assert len(m.index_x) == 4 and m.cosine.sum() == pytest.approx(best)


def test_shift_improvement_hand_case():
    U_a = np.array([[1.0, 0.0], [0.0, 1.0]])
    U_s = np.array([[1.0, 1.0], [0.0, 1.0]])
    U_b = np.array([[0.0, 2.0], [1.0, 1.0]])  # b's concepts in the other order
    r = shift_improvement(U_a, U_s, U_b)
    # U_s[0] -> U_b[1] (cos 1), U_s[1] -> U_b[0] (cos 1)
    np.testing.assert_array_equal(r.matching.index_y, [1, 0])
    np.testing.assert_allclose(r.distance_gain, [1.0 - 0.0, 1.0 - 1.0])
    np.testing.assert_allclose(r.cosine_gain, [1 - 1 / np.sqrt(2), 0.0])
    assert r.mean_distance_gain == pytest.approx(0.5)
    assert shifted_concepts(U_a, U_s - U_a, alpha=1.0).tolist() == U_s.tolist()


def bad_input(message: str):
    """Our ValueError, or jaxtyping/beartype's TypeCheckError when run-time type checking is switched on."""
    return pytest.raises((ValueError, TypeError), match=f"{message}|Type-check error")


def test_clear_errors():
    A, B, labels, _ = clusters()
    with bad_input("same samples"):
        concept_shift_vectors(A, B[:5], labels)
    with bad_input("1-D integer of length"):
        shift_consistency(A, B, labels[:5])
    with bad_input(r"in \[0, 2\)"):
        concept_shift_vectors(A, B, labels, n_concepts=2)
    with bad_input("reduce must be"):
        concept_shift_vectors(A, B, labels, reduce="mode")
    with bad_input("both be"):
        shifted_concepts(np.ones((2, 3)), np.ones((3, 3)))
    with bad_input("match_on"):
        shift_improvement(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), match_on="b")


def test_baselines_global_and_random_assignment():
    A, B, labels, offsets = clusters()
    result = analyze_shift(A, B, KMeansConcepts(K, random_state=0), KMeansConcepts(K, random_state=1))
    base = result.baselines
    # the global baseline moves every concept by the mean of all shifts: computed by hand
    U_a, U_b, m = result.concepts_a, result.concepts_b, result.improvement.matching
    U_g = U_a + (B - A).mean(axis=0)
    by_hand = shift_improvement(U_a, U_g, U_b)
    assert base["global_mean_shift"]["mean_distance_gain"] == pytest.approx(by_hand.mean_distance_gain)
    # concept-wise shifts are exact here, so they beat both baselines
    for name in ("global_mean_shift", "random_assignment"):
        assert result.improvement.mean_distance_gain > base[name]["mean_distance_gain"] + 0.5
    # a random assignment with equal concept sizes: every concept gets roughly the global mean shift
    assert base["random_assignment"]["mean_distance_gain"] == pytest.approx(
        base["global_mean_shift"]["mean_distance_gain"], abs=1.0
    )
    assert m.index_x.tolist() == sorted(m.index_x.tolist())
    summary = result.summary()
    assert summary["baselines"] == base and len(summary["matching"]) == K
    # if every sample moves by one common offset, the global shift is as good as the concept-wise one
    common = analyze_shift(
        A, A + offsets[0], KMeansConcepts(K, random_state=0), KMeansConcepts(K, random_state=1)
    )
    assert common.improvement.mean_distance_gain == pytest.approx(
        common.baselines["global_mean_shift"]["mean_distance_gain"]
    )
    direct = shift_baselines(A, B, U_a, U_b, result.assignment, n_random=2, random_state=3)
    assert direct["global_mean_shift"] == base["global_mean_shift"]


def test_match_on_original_is_passed_through():
    A, B, _, _ = clusters()
    r = analyze_shift(
        A,
        B,
        KMeansConcepts(K, random_state=0),
        KMeansConcepts(K, random_state=1),
        match_on="original",
        baselines=False,
    )
    expected = shift_improvement(r.concepts_a, r.shifted, r.concepts_b, match_on="original")
    np.testing.assert_allclose(r.improvement.distance_gain, expected.distance_gain)
    assert r.baselines is None


def test_align_ids_is_linear_and_keeps_order():
    ia, ib = align_ids(["a", "b", "c", "d"], ["d", "x", "b"])
    assert ia.tolist() == [1, 3] and ib.tolist() == [2, 0]
    n = 200_000
    ids = [str(i) for i in range(n)]
    import time

    start = time.perf_counter()
    ia, ib = align_ids(ids, ids[::-1])
    assert time.perf_counter() - start < 5  # the former list.index scan took hours at this size
    assert (ib == n - 1 - ia).all()
