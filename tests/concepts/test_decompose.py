"""Conformance and correctness tests for hooked_mllm.concepts.decompose (tiny sizes, CPU, a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.decomposition import DictionaryLearning
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from hooked_mllm.concepts import _seminmf
from hooked_mllm.concepts.decompose import (
    DECOMPOSERS,
    DictionaryLearningSemiNMF,
    ICAConcepts,
    KMeansConcepts,
    NMFConcepts,
    PCAConcepts,
    SemiNMF,
    SparseDictionary,
    TopNormConcepts,
    make_decomposer,
)

K = 3
# Small but valid settings for every registered decomposer (max_iter kept low where it only costs time).
SMALL = {
    "seminmf": dict(max_iter=300, random_state=0),
    "sparse": dict(alpha=0.01, max_iter=100, random_state=0, dtype="float64"),
    "dictlearn": dict(max_iter=30, random_state=0),
    "kmeans": dict(random_state=0),
    "pca": dict(random_state=0),
    "nmf": dict(max_iter=400, random_state=0),
    "ica": dict(max_iter=400, random_state=0),
    "topnorm": dict(),
}
ignore_convergence = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tensors here are tiny: extra OpenMP threads only contend on a loaded 2-core box (100x slowdowns)."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def make(name: str, n_components: int = K, **extra):
    return make_decomposer(name, n_components=n_components, **{**SMALL[name], **extra})


def low_rank(
    n: int = 60, d: int = 10, k: int = K, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z = V U with sparse non-negative V and non-negative U (so every method, NMF included, applies)."""
    rng = np.random.default_rng(seed)
    V = rng.exponential(size=(n, k)) * (rng.random((n, k)) < 0.7)
    V[np.arange(n), rng.integers(0, k, n)] += 1.0  # no all-zero rows
    U = rng.random((k, d)) + 0.1
    return V @ U, V, U


def test_registry_is_complete():
    assert set(DECOMPOSERS) == {"seminmf", "sparse", "dictlearn", "kmeans", "pca", "nmf", "ica", "topnorm"}
    assert set(SMALL) == set(DECOMPOSERS)


# sklearn's own conformance suite; no check is expected to fail (NMF declares positive_only input instead).
@ignore_convergence
@parametrize_with_checks(
    [
        SemiNMF(2, max_iter=50, random_state=0),
        SparseDictionary(2, alpha=0.1, max_iter=50, random_state=0),
        DictionaryLearningSemiNMF(2, max_iter=30, random_state=0),
        KMeansConcepts(2, random_state=0),
        PCAConcepts(2),
        NMFConcepts(2, max_iter=200, random_state=0),
        ICAConcepts(2, max_iter=200, random_state=0),
        TopNormConcepts(2),
    ]
)
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


@ignore_convergence
@pytest.mark.parametrize("name", sorted(DECOMPOSERS))
class TestConformance:
    def test_fit_returns_self_and_shapes(self, name):
        Z, _, _ = low_rank()
        est = make(name)
        assert est.fit(Z) is est
        assert est.components_.shape == (K, Z.shape[1])
        V = est.transform(Z)
        assert isinstance(V, np.ndarray) and V.dtype.kind == "f" and V.shape == (Z.shape[0], K)
        assert est.inverse_transform(V).shape == Z.shape
        np.testing.assert_allclose(est.fit_transform(Z), V)

    def test_deterministic_given_random_state(self, name):
        Z, _, _ = low_rank()
        a, b = make(name).fit(Z), make(name).fit(Z)
        np.testing.assert_array_equal(a.components_, b.components_)
        np.testing.assert_array_equal(a.transform(Z), b.transform(Z))

    def test_clone_round_trip(self, name):
        est = make(name)
        twin = clone(est)
        assert twin is not est and twin.get_params() == est.get_params()
        assert twin.set_params(n_components=2).n_components == 2 and est.n_components == K
        with pytest.raises(NotFittedError):
            twin.transform(np.ones((3, 10)))

    def test_torch_input_and_unseen_data(self, name):
        Z, _, _ = low_rank(n=80)
        train, test = Z[:60], Z[60:]
        est = make(name).fit(torch.from_numpy(train))
        V_test = est.transform(torch.from_numpy(test).to(torch.float32))
        assert V_test.shape == (20, K) and np.isfinite(V_test).all()
        np.testing.assert_allclose(V_test, est.transform(test), rtol=1e-4, atol=1e-4)

    def test_shape_errors(self, name):
        Z, _, _ = low_rank()
        with pytest.raises(ValueError, match="2D array"):
            make(name).fit(Z[0])
        with pytest.raises(ValueError, match="n_components must be a positive int"):
            make(name, n_components=0).fit(Z)
        est = make(name).fit(Z)
        with pytest.raises(ValueError, match="features"):
            est.transform(Z[:, :4])
        with pytest.raises(ValueError, match="V of shape"):
            est.inverse_transform(np.ones((2, K + 1)))


@pytest.mark.parametrize("name", ["seminmf", "kmeans", "topnorm"])
def test_too_few_samples_is_a_clear_error(name):
    Z, _, _ = low_rank(n=2)
    with pytest.raises(ValueError, match=r"n_samples=2 < n_components=3"):
        make(name).fit(Z)


@pytest.mark.parametrize("name", ["pca", "ica"])
def test_too_few_features_is_a_clear_error(name):
    Z, _, _ = low_rank(d=2)
    with pytest.raises(ValueError, match=r"n_features=2 < n_components=3"):
        make(name).fit(Z)


@ignore_convergence
@pytest.mark.parametrize("name, bound", [("seminmf", 2e-2), ("pca", 1e-8), ("ica", 1e-6), ("nmf", 5e-2)])
def test_inverse_transform_reconstructs_low_rank_data(name, bound):
    Z, _, _ = low_rank()
    est = make(name).fit(Z)
    Z_hat = est.inverse_transform(est.transform(Z))
    assert np.linalg.norm(Z - Z_hat) / np.linalg.norm(Z) < bound


def test_make_decomposer_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown decomposer 'semi_nmf'.*dictlearn.*seminmf.*topnorm"):
        make_decomposer("semi_nmf")


def test_nmf_rejects_negative_data():
    with pytest.raises(ValueError, match=r"Negative values in data.*SemiNMF"):
        NMFConcepts(2).fit(np.array([[1.0, -2.0], [0.5, 1.0], [2.0, 1.0]]))


@ignore_convergence
def test_dictionary_learning_wraps_reference_settings():
    est = DictionaryLearningSemiNMF()
    assert (est.n_components, est.alpha, est.max_iter) == (20, 1.0, 5000)
    inner = est._make()
    assert inner.positive_code and inner.fit_algorithm == "cd" and inner.transform_algorithm == "lasso_cd"
    Z, _, _ = low_rank()
    assert (DictionaryLearningSemiNMF(K, max_iter=30, random_state=0).fit(Z).transform(Z) >= 0).all()


def test_kmeans_activation_is_inverse_distance():
    Z, _, _ = low_rank()
    est = make("kmeans").fit(Z)
    np.testing.assert_allclose(est.transform(Z), 1 / (1 + cdist(Z, est.components_)))
    nearest = cdist(Z, est.components_).argmin(1)
    np.testing.assert_allclose(est.inverse_transform(est.transform(Z)), est.components_[nearest])


def test_topnorm_picks_largest_rows():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(12, 5))
    order = np.argsort(-np.linalg.norm(Z, axis=1))[:K]
    est = TopNormConcepts(K).fit(Z)
    np.testing.assert_array_equal(est.sample_indices_, order)
    np.testing.assert_allclose(est.components_, Z[order] / np.linalg.norm(Z[order], axis=1, keepdims=True))
    np.testing.assert_allclose(est.transform(Z), Z @ est.components_.T)
    raw = TopNormConcepts(K, normalize=False, activation="cosine").fit(Z)
    np.testing.assert_allclose(raw.components_, Z[order])
    cos = 1 - cdist(Z, Z[order], metric="cosine")
    np.testing.assert_allclose(raw.transform(Z), cos, atol=1e-12)
    with pytest.raises(ValueError, match="activation must be"):
        TopNormConcepts(K, activation="dot").fit(Z)


@ignore_convergence
def test_ica_components_are_mixing_directions():
    Z, _, _ = low_rank()
    est = make("ica").fit(Z)
    np.testing.assert_allclose(est.components_, est.estimator_.mixing_.T)
    np.testing.assert_allclose(est.transform(Z) @ est.components_ + est.mean_, Z, atol=1e-8)


# ----------------------------------------------------------------------------------------------- Semi-NMF
def test_seminmf_recovers_exact_factorisation_monotonically():
    rng = np.random.default_rng(0)  # Z = V U with known sparse non-negative V and unconstrained random U
    V_true = rng.exponential(size=(120, K)) * (rng.random((120, K)) < 0.6)
    Z = V_true @ rng.normal(size=(K, 16))
    est = SemiNMF(K, max_iter=300, tol=0, random_state=0).fit(Z)
    V = est.transform(Z)
    assert (V >= 0).all()
    hist = np.asarray(est.error_history_)
    assert est.n_iter_ == len(hist) and est.reconstruction_err_ == hist[-1]
    assert np.all(np.diff(hist) <= 1e-9 * np.linalg.norm(Z)), "error must not increase across iterations"
    assert hist[-1] / np.linalg.norm(Z) < 1e-2
    assert hist[0] / hist[-1] > 3  # it actually improved on the k-means start


def numpy_seminmf(Z: np.ndarray, V: np.ndarray, n_iter: int) -> list[float]:
    """Independent transcription of Ding, Li & Jordan (2010), X = F G^T with X = Z^T, F = U^T, G = V."""
    X, G, errors = Z.T, V.copy(), []
    for _ in range(n_iter):
        F = X @ G @ np.linalg.inv(G.T @ G)
        XtF, FtF = X.T @ F, F.T @ F
        pos, neg = (np.abs(XtF) + XtF) / 2, (np.abs(XtF) - XtF) / 2
        fpos, fneg = (np.abs(FtF) + FtF) / 2, (np.abs(FtF) - FtF) / 2
        G = G * np.sqrt((pos + G @ fneg) / (neg + G @ fpos))
        errors.append(np.linalg.norm(X - F @ G.T))
    return errors


def test_seminmf_matches_independent_numpy_implementation():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(40, 7))
    Zt = torch.from_numpy(Z)
    labels = _seminmf.kmeans_torch(Zt, K, torch.Generator().manual_seed(5))
    V0 = np.eye(K)[labels.numpy()] + 0.2
    reference = numpy_seminmf(Z, V0, 25)
    _, _, hist = _seminmf.fit_seminmf(Zt, K, 25, 0.0, torch.Generator().manual_seed(5))
    np.testing.assert_allclose(hist, reference, rtol=1e-8)


def test_seminmf_error_between_svd_and_kmeans_bounds():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(60, 8))
    err = SemiNMF(K, max_iter=200, random_state=0).fit(Z).reconstruction_err_
    s = np.linalg.svd(Z, compute_uv=False)
    assert err >= np.sqrt((s[K:] ** 2).sum()) - 1e-9  # Eckart-Young: nothing of rank K does better
    km = KMeans(K, n_init=5, random_state=0).fit(Z)
    assert err <= np.sqrt(km.inertia_)  # k-means is the special case V = cluster indicators


def test_seminmf_transform_solves_nnls():
    from scipy.optimize import nnls

    rng = np.random.default_rng(5)
    Z = rng.normal(size=(30, 6))
    est = SemiNMF(K, max_iter=50, random_state=0).fit(Z)
    V = est.transform(Z[:5])
    expected = np.stack([nnls(est.components_.T, z)[0] for z in Z[:5]])
    np.testing.assert_allclose(V, expected, atol=1e-6)


def test_seminmf_float32_and_parameter_errors():
    Z, _, _ = low_rank()
    est = SemiNMF(K, max_iter=100, random_state=0, dtype="float32", device="cpu").fit(Z)
    assert est.transform(Z).dtype == np.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        SemiNMF(K, dtype="half").fit(Z)
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        SemiNMF(K, max_iter=0).fit(Z)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seminmf_on_gpu_matches_cpu():
    Z, _, _ = low_rank()
    cpu = SemiNMF(K, max_iter=100, random_state=0).fit(Z)
    gpu = SemiNMF(K, max_iter=100, random_state=0, device="cuda").fit(torch.from_numpy(Z).cuda())
    np.testing.assert_allclose(gpu.components_, cpu.components_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gpu.transform(Z), cpu.transform(Z), atol=1e-6)


def sparse_codes_case(n=400, d=32, k=6, seed=0, noise=0.01):
    """Known unit-norm atoms and sparse non-negative codes (about 1.5 active atoms per row) plus noise."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(k, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    V = rng.exponential(size=(n, k)) * (rng.random((n, k)) < 0.25) * 3
    V[np.arange(n), rng.integers(0, k, n)] += 1
    return V @ U + noise * rng.normal(size=(n, d)), V, U


def atom_recovery(U_true, U_found):
    cos = np.abs(U_true @ (U_found / np.linalg.norm(U_found, axis=1, keepdims=True)).T)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return cos[rows, cols].mean()


@ignore_convergence
def test_sparse_dictionary_recovers_atoms_like_sklearn():
    Z, _, U = sparse_codes_case()
    ours = SparseDictionary(6, alpha=1.0, random_state=0).fit(Z)
    ref = DictionaryLearning(
        6,
        alpha=1.0,
        positive_code=True,
        fit_algorithm="cd",
        transform_algorithm="lasso_cd",
        max_iter=200,
        random_state=0,
    ).fit(Z)
    assert atom_recovery(U, ours.components_) >= 0.98
    assert atom_recovery(U, ours.components_) >= atom_recovery(U, ref.components_) - 0.005
    np.testing.assert_allclose(np.linalg.norm(ours.components_, axis=1), 1.0, atol=1e-5)
    # transform solves the same non-negative lasso as sklearn's, for our atoms
    V = ours.transform(Z[:20])
    from sklearn.decomposition import sparse_encode

    expected = sparse_encode(
        Z[:20],
        ours.components_.astype(np.float64),
        algorithm="lasso_cd",
        alpha=1.0,
        positive=True,
        max_iter=5000,
    )
    np.testing.assert_allclose(V, expected, atol=2e-3)
    assert (V >= 0).all() and (V == 0).mean() > 0.3  # sparse codes, unlike Semi-NMF's dense ones
    assert SemiNMF(6, random_state=0).fit(Z).transform(Z).__eq__(0).mean() < (V == 0).mean()


def test_sparse_dictionary_minibatch_and_streaming():
    Z, _, U = sparse_codes_case(n=1200)
    mini = SparseDictionary(6, alpha=1.0, batch_size=200, max_iter=3, random_state=0).fit(Z)
    assert atom_recovery(U, mini.components_) >= 0.97
    stream = SparseDictionary(6, alpha=1.0, random_state=0)
    for _ in range(3):
        for block in np.array_split(Z, 6):
            stream.partial_fit(block)
    assert atom_recovery(U, stream.components_) >= 0.97
    with pytest.raises(ValueError, match="features"):
        stream.partial_fit(Z[:5, :10])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparse_dictionary_on_gpu_matches_cpu():
    Z, _, _ = sparse_codes_case()
    cpu = SparseDictionary(6, alpha=1.0, random_state=0).fit(Z)
    gpu = SparseDictionary(6, alpha=1.0, random_state=0, device="cuda").fit(torch.from_numpy(Z).cuda())
    np.testing.assert_allclose(gpu.components_, cpu.components_, atol=1e-6)
    np.testing.assert_allclose(gpu.transform(Z), cpu.transform(Z), atol=1e-5)
