"""Checks and timings for a CUDA machine: half precision, the dictionary's GPU path, a model of 7B shape.

Run on a machine with a CUDA device (``python benchmarks/gpu_checks.py``); it never runs in the test
suite's GPU-less default except as a CPU dry run at tiny sizes (``--device cpu --tiny``, which a test
uses to keep the script working). It prints absolute times and ratios measured side by side:

1. **Overhead in half precision**: on a mid-size random LLaVA (``--tiny``: a tiny one) in bfloat16 and
   float16, ``run_with_cache`` of every ``blocks.{l}.hook_resid_post`` against HF's forward with
   ``output_hidden_states=True``, and one identity hook against a plain forward; the cached residuals are
   checked against HF's hidden states (exactly: same kernels, same order).
2. **Sparse dictionary**: ``SparseDictionary`` fitted on the device against the CPU, on synthetic
   sparse codes (time ratio, atom recovery of both).
3. **A random model of 7B shape** (LLaVA-1.5-7B's sizes: Llama d_model 4096 x 32 layers, MLP 11008,
   CLIP-L/336 tower, 576 image tokens; the configuration of ``geometry.PRESETS["llava-1.5-7b"]`` with
   random weights built on the device, nothing downloaded; ``--tiny``: a 2-layer stand-in): forward and
   ``run_with_cache`` times, their ratio, and peak device memory.
4. **Every tool at real size** (``benchmarks/real_size.py``'s table on the device): LLaVA-1.5-7B's
   shape with all 32 LM and 24 vision layers in bfloat16, at 144 and 576 image tokens, with SDPA and
   with eager attention: plain forward, ``run_with_cache`` of the residual stream and of every hook
   point (when ``estimate_cache`` fits 8 GiB), ``image_locations`` (top head, and every head of the last
   layer), ``attention_map`` and ``concepts.extract``; time ratios to the forward and peak device memory
   added (caches go to the CPU, the default).
   ``--tiny`` runs it at tiny sizes (also on the CPU dry run).

Usage: ``python benchmarks/gpu_checks.py [--device cuda] [--tiny] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooked_mllm import HookedMLLM
from hooked_mllm.concepts import SparseDictionary
from hooked_mllm.testing import random_image, tiny_llava, tiny_processor


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up (synchronising the device)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead(device: torch.device, dtype: torch.dtype, tiny: bool, repeats: int) -> dict[str, float]:
    size, patch, sizes = (
        (32, 8, dict(d_model=64, n_layers=2, vision_d_model=32, vision_layers=2))
        if tiny
        else (336, 14, dict(d_model=2048, n_layers=16, vision_d_model=1024, vision_layers=8, n_heads=16))
    )
    hf = tiny_llava("llama", image_size=size, patch_size=patch, **sizes).to(device=device, dtype=dtype)
    model = HookedMLLM.from_hf(hf, tiny_processor(image_size=size, patch_size=patch))
    batch = model.prepare(images=[random_image(0, size)], prompts=["what color is the circle ?"]).to(device)
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    inputs = batch.inputs

    def hf_hidden():
        with torch.no_grad():
            return hf(**inputs, output_hidden_states=True)

    def hf_plain():
        with torch.no_grad():
            return hf(**inputs)

    def ours_cache():
        return model.run_with_cache(batch, names_filter=names, device=device)

    def ours_identity():
        return model.run_with_hooks(batch, fwd_hooks=[(names[0], lambda act, hook: None)])

    _, cache = ours_cache()
    hidden = hf_hidden().hidden_states
    for layer, name in enumerate(names[:-1]):  # the last HF hidden state is after the final norm
        if not torch.equal(cache[name].to(device), hidden[layer + 1]):
            raise AssertionError(f"{name} differs from HF's hidden state {layer + 1} in {dtype}")
    t = {
        name: timed(fn, repeats, device)
        for name, fn in (
            ("hf_hidden", hf_hidden),
            ("hf_plain", hf_plain),
            ("cache", ours_cache),
            ("identity", ours_identity),
        )
    }
    return {
        "cache_ratio": t["cache"] / t["hf_hidden"],
        "identity_ratio": t["identity"] / t["hf_plain"],
        "hf_forward_s": t["hf_plain"],
    }


def dictionary(device: torch.device, tiny: bool) -> dict[str, float]:
    n, d, k = (600, 32, 6) if tiny else (50_000, 1024, 64)
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(k, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = rng.exponential(size=(n, k)) * (rng.random((n, k)) < 0.1)
    data = (codes @ atoms + 0.01 * rng.normal(size=(n, d))).astype(np.float32)

    def recovery(model: SparseDictionary) -> float:
        cos = np.abs(atoms @ model.components_.T.astype(np.float64))
        return float(cos.max(axis=1).mean())

    out = {}
    for where in ("cpu", str(device)):
        start = time.perf_counter()
        fitted = SparseDictionary(n_components=k, alpha=0.1, max_iter=30, random_state=0, device=where).fit(
            data
        )
        out[f"{where}_s"], out[f"{where}_recovery"] = time.perf_counter() - start, recovery(fitted)
    return out


def seven_b(device: torch.device, dtype: torch.dtype, repeats: int, tiny: bool) -> dict[str, float]:
    """A random model of LLaVA-1.5-7B's shape (``geometry.PRESETS["llava-1.5-7b"]``, through
    ``real_size.build``), 576 image tokens; ``tiny``: a 2-layer d_model-128 stand-in (the CPU dry run)."""
    real_size = _real_size()
    if tiny:
        model, batch = real_size.build(128, 16, 2, 1, 64, device=device, dtype=dtype)
    else:
        model, batch = real_size.build(4096, 576, 32, 24, device=device, dtype=dtype)
    hf = model.hf_model
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def plain():
        with torch.no_grad():
            return hf(**batch.inputs)

    forward = timed(plain, repeats, device)
    cache = timed(lambda: model.run_with_cache(batch, names_filter=names), repeats, device)
    return {
        "params_b": sum(p.numel() for p in hf.parameters()) / 1e9,
        "forward_s": forward,
        "cache_ratio": cache / forward,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan"),
    }


def _real_size() -> Any:
    """benchmarks/real_size.py, beside this script."""
    spec = importlib.util.spec_from_file_location("real_size", Path(__file__).with_name("real_size.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tools(device: torch.device, tiny: bool, repeats: int) -> dict[str, dict[str, float]]:
    """real_size.py's table on ``device``: SDPA and eager, 144 and 576 image tokens."""
    real_size = _real_size()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = (
        dict(d_model=128, n_layers=2, vision_layers=1, vision_width=64)
        if tiny
        else dict(d_model=4096, n_layers=32, vision_layers=24, vision_width=None)
    )
    out: dict[str, dict[str, float]] = {}
    for attn in ("sdpa", "eager"):
        for count in (16,) if tiny else (144, 576):
            model, batch = real_size.build(
                sizes["d_model"],
                count,
                sizes["n_layers"],
                sizes["vision_layers"],
                sizes["vision_width"],
                device=device,
                dtype=dtype,
                attn_implementation=attn,
            )
            # on a GPU every head of the last layer: 32 x 576 vectors through the LM head
            row = real_size.row(model, batch, repeats, budget_gib=8.0, all_heads_gflop=1e9)
            out[f"tools_{attn}_{count}"] = {k: float(v) for k, v in row.items()}
            del model, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(real_size.table(list(out.values())))
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and no 7B model (a quick dry run)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "No CUDA device here: run on a GPU machine, or pass --device cpu --tiny for a dry run."
        )
    results: dict[str, dict[str, float]] = {}
    dtypes = (torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)
    for dtype in dtypes:
        results[f"overhead_{str(dtype)[6:]}"] = overhead(device, dtype, args.tiny, args.repeats)
    results["sparse_dictionary"] = dictionary(device, args.tiny)
    results["llava_7b_shape_bf16"] = seven_b(device, torch.bfloat16, args.repeats, args.tiny)
    results.update(tools(device, args.tiny, args.repeats))
    for name, values in results.items():
        print(name, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return results


if __name__ == "__main__":
    main()
