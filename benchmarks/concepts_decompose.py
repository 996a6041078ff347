"""Decomposition benchmark: the papers' sparse objective against scikit-learn, and at scale.

Part 1 (side by side, one run): on data with known sparse non-negative codes over unit-norm atoms,
fit scikit-learn's ``DictionaryLearning`` with the reference code's settings, our ``SparseDictionary``
(same objective) and ``SemiNMF``; print the time, the speed ratio to scikit-learn and the recovery of
the true atoms (mean |cosine| after Hungarian matching).

Part 2 (scale): time and peak memory of ``SparseDictionary`` (K=20) on n x 4096 float32 features for
each ``--sizes`` n, full batch and minibatch, each in a fresh subprocess so its peak RSS is its own.

Run: ``python benchmarks/concepts_decompose.py [--sizes 10000 50000 100000] [--skip-scale]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def sparse_case(n: int, d: int, k: int, seed: int = 0, noise: float = 0.01, dtype: type = np.float64):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(k, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    V = rng.exponential(size=(n, k)) * (rng.random((n, k)) < 0.25) * 3
    V[np.arange(n), rng.integers(0, k, n)] += 1
    return (V @ U + noise * rng.normal(size=(n, d))).astype(dtype), U


def recovery(U_true: np.ndarray, U_found: np.ndarray) -> float:
    found = U_found / np.maximum(np.linalg.norm(U_found, axis=1, keepdims=True), 1e-12)
    cos = np.abs(U_true @ found.T)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


METHODS = {
    "sklearn DictionaryLearning (reference settings)": "sklearn",
    "SparseDictionary float64": "sparse64",
    "SparseDictionary float32": "sparse32",
    "SemiNMF (no sparsity term)": "seminmf",
}


def method_child(method: str, n: int, d: int, k: int) -> None:
    """Fit one method in this (fresh) process; print its time and recovery as JSON."""
    from sklearn.decomposition import DictionaryLearning

    from hooked_mllm.concepts import SemiNMF, SparseDictionary

    Z, U = sparse_case(n, d, k)
    make = {
        "sklearn": lambda: DictionaryLearning(
            k,
            alpha=1.0,
            positive_code=True,
            fit_algorithm="cd",
            transform_algorithm="lasso_cd",
            max_iter=5000,
            tol=1e-8,
            random_state=0,
        ),
        "sparse64": lambda: SparseDictionary(k, alpha=1.0, random_state=0),
        "sparse32": lambda: SparseDictionary(k, alpha=1.0, random_state=0, dtype="float32"),
        "seminmf": lambda: SemiNMF(k, random_state=0),
    }[method]
    make().fit(Z[:200])  # warm up (kernels, thread pools) before timing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        est = make().fit(Z)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "recovery": recovery(U, est.components_)}))


def side_by_side(n: int, d: int, k: int) -> None:
    """Each method in its own subprocess, so no thread pool left spinning by one slows the next."""
    rows = []
    for name, key in METHODS.items():
        cmd = [sys.executable, __file__, "--method", key, str(n), str(d), str(k)]
        r = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        )
        rows.append((name, r["seconds"], r["recovery"]))
    base = rows[0][1]
    print(
        f"\nSynthetic sparse codes: n={n}, d={d}, K={k}, alpha=1, noise 0.01 (each method in a fresh process)"
    )
    print(f"{'method':50s} {'time s':>8s} {'speed vs sklearn':>17s} {'atom recovery':>14s}")
    for name, seconds, rec in rows:
        print(f"{name:50s} {seconds:8.2f} {base / seconds:16.1f}x {rec:14.4f}")


def scale_child(n: int, d: int, k: int, batch_size: int | None, max_iter: int) -> None:
    from hooked_mllm.concepts import SparseDictionary

    _, U = sparse_case(1, d, k)  # the true atoms (drawn first from seed 0)
    Z = np.empty((n, d), dtype=np.float32)  # built in blocks so that making the data does not set the peak
    rng = np.random.default_rng(1)
    for start in range(0, n, 2_000):
        m = min(2_000, n - start)
        V = rng.exponential(size=(m, k)) * (rng.random((m, k)) < 0.25) * 3
        V[np.arange(m), rng.integers(0, k, m)] += 1
        Z[start : start + m] = V @ U + 0.01 * rng.normal(size=(m, d))
    with open("/proc/self/statm") as handle:  # resident memory before fitting: imports plus the data
        before_mb = int(handle.read().split()[1]) * resource.getpagesize() / 2**20
    start = time.perf_counter()
    est = SparseDictionary(k, alpha=1.0, max_iter=max_iter, batch_size=batch_size, random_state=0).fit(Z)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    V = est.transform(Z)
    transform = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": n,
                "batch_size": batch_size,
                "fit_s": fit,
                "transform_s": transform,
                "peak_mb": peak_mb,
                "before_mb": before_mb,
                "data_mb": Z.nbytes / 2**20,
                "recovery": recovery(U, est.components_),
                "zero_codes": float((V == 0).mean()),
                "iters": est.n_iter_,
            }
        )
    )


def scale(sizes: list[int], max_iter: int) -> None:
    print(f"\nSparseDictionary at scale: d=4096, K=20, float32, {torch.get_num_threads()} torch threads")
    print(
        f"{'rows':>8s} {'mode':>16s} {'fit s':>8s} {'transform s':>12s} {'peak MB':>9s} {'pre-fit MB':>11s} "
        f"{'data MB':>8s} {'recovery':>9s}"
    )
    for n in sizes:
        for batch in (None, 8192):
            cmd = [sys.executable, __file__, "--child", str(n), str(batch or 0), str(max_iter)]
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            mode = "full batch" if batch is None else f"minibatch {batch}"
            print(
                f"{n:8d} {mode:>16s} {r['fit_s']:8.1f} {r['transform_s']:12.1f} {r['peak_mb']:9.0f} "
                f"{r['before_mb']:11.0f} {r['data_mb']:8.0f} {r['recovery']:9.4f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 100_000])
    parser.add_argument(
        "--max-iter", type=int, default=20, help="scale part: iterations (full) / passes (mini)"
    )
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        method_child(args.method[0], *map(int, args.method[1:]))
        return
    if args.child:
        n, batch, max_iter = args.child
        scale_child(n, 4096, 20, batch or None, max_iter)
        return
    side_by_side(2000, 64, 10)
    if not args.skip_scale:
        scale(args.sizes, args.max_iter)


if __name__ == "__main__":
    main()
