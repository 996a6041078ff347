"""Time and memory of each tool on a real-width LLaVA-1.5-7B-like model on the CPU, side by side.

Builds a LLaVA-1.5-7B-shaped model from :mod:`hooked_mllm.geometry` (Llama LM: head_dim 128,
d_mlp = 11008 / 4096 x d_model, vocabulary 32,064; CLIP ViT-L/14 tower of width 1024) with random
bfloat16 weights, with a few LM layers and a few vision layers (the published model has 32 and 24:
per-layer costs add up linearly, so the full model's numbers are extrapolated from a second
real-width build with more layers and labelled so). For each d_model in ``--widths`` and each
image-token count in ``--tokens`` (144 tokens: a 168 px tower; 576: 336 px, as published; 2,916: a
756 px tower, the size of Qwen2-VL's 2,880 tokens of a 1344 x 1680 image) it measures, in one process:

* ``forward``: HF's plain forward (no hooks);
* ``cache_resid``: ``run_with_cache`` of every ``blocks.{l}.hook_resid_post``;
* ``cache_all``: ``run_with_cache`` of every hook point, when ``estimate_cache`` says the cache fits
  ``--budget-gib`` (otherwise only the estimate is reported);
* ``locations_top``: ``image_locations`` with the top head; ``attention_map``;
* ``locations_all``: ``image_locations(heads="all", layers=[last])``: every head of one layer at every
  image position read out through the LM head (per layer: the full model's cost is ``n_layers`` times),
  when it reads at most ``--all-heads-max`` vectors (otherwise only ``estimate_tool``'s numbers);
* ``extraction``: ``concepts.extract`` of one sample's last position at the last layer;

with each one's time (median of ``--repeats``, after one warm-up forward per model), its ratio to
the plain forward, and the peak resident memory added during the call (``/proc/self/statm``
sampled every 2 ms: cached tensors and temporaries, not the weights). Results print as a
Markdown table and, with ``--json PATH``, are written out.

Usage: ``python benchmarks/real_size.py [--widths 512,2048,4096] [--tokens 144,576] [--layers 2]
[--vision-layers 2] [--repeats 1] [--tiny]`` (``--tiny``: a seconds-long check at small sizes).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from hooked_mllm import HookedMLLM, estimate_cache, geometry
from hooked_mllm.concepts import Sample, extract
from hooked_mllm.estimate import estimate_tool
from hooked_mllm.mechanism import attention_map, image_locations
from hooked_mllm.testing import random_image, tiny_processor

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _fixed_mmap_threshold() -> None:
    """Make glibc map every allocation over 64 KiB on its own and unmap it when freed, so resident
    memory follows the live tensors (by default glibc raises the threshold after large frees and keeps
    freed memory, which hides a later call's peak)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def measured(
    fn: Callable[[], Any], repeats: int, device: torch.device | None = None
) -> tuple[float, float, int]:
    """Median wall seconds and process CPU seconds over ``repeats`` runs, and the largest memory added
    during one (resident memory on the CPU, sampled every 5 ms; allocated device memory on CUDA).

    CPU seconds (every thread of this process) count the work done, so they move less than wall time
    when other processes share the cores; on CUDA they are the host's."""
    cuda = device is not None and device.type == "cuda"
    times, cpu, peaks = [], [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base, peak, done = _rss(), [0], threading.Event()

            def watch(base: int, peak: list[int], done: threading.Event) -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], _rss() - base)
                    time.sleep(0.005)

            watcher = threading.Thread(target=watch, args=(base, peak, done))
            watcher.start()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if cuda:
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        else:
            peak[0] = max(peak[0], _rss() - base)
            done.set()
            watcher.join()
            peaks.append(peak[0])
        del out
    return statistics.median(times), statistics.median(cpu), max(peaks)


def build(
    d_model: int,
    image_tokens: int,
    n_layers: int,
    vision_layers: int,
    vision_width: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str | None = None,
) -> tuple[HookedMLLM, Any]:
    """A random LLaVA-1.5-7B-shaped model of width ``d_model`` (bfloat16 by default) and a one-image
    batch on ``device``; ``attn_implementation`` ``"sdpa"`` or ``"eager"`` (default: HF's choice)."""
    from transformers import LlavaForConditionalGeneration
    from transformers.initialization import no_init_weights

    side = int(round(image_tokens**0.5)) * 14
    processor = tiny_processor(image_size=side, patch_size=14)
    config = geometry.hf_config(
        "llava-1.5-7b",
        n_layers=n_layers,
        vision_layers=vision_layers,
        hidden_size=d_model,
        intermediate_size=round(11008 * d_model / 4096),
        num_attention_heads=max(1, d_model // 128),
        num_key_value_heads=max(1, d_model // 128),
    )
    config.vision_config.image_size = side
    if vision_width is not None:  # the --tiny check only
        config.vision_config.hidden_size = vision_width
        config.vision_config.intermediate_size = 4 * vision_width
        config.vision_config.num_attention_heads = max(1, vision_width // 64)
    config.image_seq_length = (side // 14) ** 2
    config.image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # random values below: HF's initialisers take minutes at this size
        with no_init_weights(), torch.device(device):
            hf = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0) if "norm" in name else param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model = HookedMLLM.from_hf(hf, processor)
    batch = model.prepare(images=[random_image(0, side)], prompts=["what color is the circle ?"])
    return model, batch.to(device)


def row(
    model: HookedMLLM,
    batch: Any,
    repeats: int,
    budget_gib: float,
    only: tuple[str, ...] = (),
    all_heads_gflop: float = 1300.0,
) -> dict[str, Any]:
    """Every tool's (or ``only`` these tools') time, ratio and added memory on one model (after a warm-up
    forward)."""
    hf = model.hf_model
    last = model.cfg.n_layers - 1
    resid = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    side = int(batch.inputs["pixel_values"].shape[-1])
    sample = [Sample("0", random_image(0, side), "what color is the circle ?")]

    def plain() -> Any:
        with torch.no_grad():
            return hf(**batch.inputs)

    est_all = estimate_cache(model, batch)
    est_resid = estimate_cache(model, batch, names_filter=resid)
    tools: dict[str, Callable[[], Any]] = {
        "forward": plain,
        "cache_resid": lambda: model.run_with_cache(batch, names_filter=resid),
        # an explained token of the stand-in vocabulary: a random model's argmax may be an id past it
        "locations_top": lambda: image_locations(model, batch, target="yes"),
        "attention_map": lambda: attention_map(model, batch, target="yes"),
        "extraction": lambda: extract(model, sample, resid[-1], "last", batch_size=1, progress=False),
    }
    est_heads = estimate_tool(model, batch, "image_locations", heads="all", layers=[last])
    readout_gflop = 2 * est_heads.n_vectors * model.cfg.d_model * model.cfg.d_vocab / 1e9
    if readout_gflop <= all_heads_gflop:
        tools["locations_all"] = lambda: image_locations(
            model, batch, heads="all", layers=[last], target="yes"
        )
    if est_all.nbytes <= budget_gib * 2**30:
        tools["cache_all"] = lambda: model.run_with_cache(batch)
    if only:
        tools = {name: fn for name, fn in tools.items() if name in only}
    plain()
    out: dict[str, Any] = {
        "d_model": model.cfg.d_model,
        "image_tokens": int(batch.image_mask.sum()),
        "seq": int(batch.input_ids.shape[1]),
        "lm_layers": model.cfg.n_layers,
        "vision_layers": model.cfg.vision_n_layers,
        "cache_all_estimate_mib": est_all.nbytes / 2**20,
        "cache_resid_estimate_mib": est_resid.nbytes / 2**20,
        "locations_all_vectors": est_heads.n_vectors,
        "locations_all_readout_gflop": readout_gflop,
        "locations_all_estimate_mib": est_heads.peak / 2**20,
        "locations_all_chunks": est_heads.n_chunks,
    }
    for name, fn in tools.items():
        seconds, cpu, peak = measured(fn, repeats, model.device)
        out[f"{name}_s"], out[f"{name}_cpu_s"], out[f"{name}_peak_mib"] = seconds, cpu, peak / 2**20
    _, cache = model.run_with_cache(batch, names_filter=resid)
    actual = sum(cache[n].numel() * cache[n].element_size() for n in cache.keys())
    if actual != est_resid.nbytes:
        raise AssertionError(f"estimate {est_resid.nbytes} != cached {actual} bytes")
    for name in tools:
        out[f"{name}_ratio"] = out[f"{name}_s"] / out["forward_s"]
        out[f"{name}_cpu_ratio"] = out[f"{name}_cpu_s"] / out["forward_cpu_s"]
    return out


TOOLS = ("cache_resid", "cache_all", "locations_top", "locations_all", "attention_map", "extraction")


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| d_model | image tokens | LM / vision layers | forward: wall s, CPU s | cache resid | cache all | "
        "locations (top) | locations (all heads, 1 layer) | attention_map | extraction | "
        "cache all (estimate) | all heads (estimate) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:

        def cell(name: str, r: dict[str, Any] = r) -> str:
            if f"{name}_s" not in r:
                return "not run"
            return (
                f"{r[f'{name}_ratio']:.2f}x wall, {r[f'{name}_cpu_ratio']:.2f}x CPU, "
                f"+{r[f'{name}_peak_mib']:.0f} MiB"
            )

        lines.append(
            f"| {r['d_model']} | {r['image_tokens']} | {r['lm_layers']} / {r['vision_layers']} | "
            f"{r['forward_s']:.2f}, {r['forward_cpu_s']:.2f} (+{r['forward_peak_mib']:.0f} MiB) | "
            + " | ".join(cell(t) for t in TOOLS)
            + f" | {r['cache_all_estimate_mib']:.0f} MiB | {r.get('locations_all_vectors', 0)} vectors, "
            f"{r.get('locations_all_estimate_mib', 0):.0f} MiB in {r.get('locations_all_chunks', 0)} chunks |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """CPU-time ratio to the forward and memory added, against d_model (top, one line per tool and image-token
    count) and against image tokens (bottom, at the largest d_model), written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colors = dict(zip(("forward", *TOOLS), "kbcrymg", strict=True))
    counts = sorted({r["image_tokens"] for r in rows})
    styles = dict(zip(counts, (":", "--", "-", "-."), strict=False))
    for count in counts:
        chosen = sorted((r for r in rows if r["image_tokens"] == count), key=lambda r: r["d_model"])
        widths = [r["d_model"] for r in chosen]
        for tool in ("forward", *TOOLS):
            points = [(w, r) for w, r in zip(widths, chosen, strict=True) if f"{tool}_s" in r]
            if not points:
                continue
            xs, kept = [w for w, _ in points], [r for _, r in points]
            kw = dict(marker="o", color=colors[tool], label=f"{tool}, {count} tokens")
            if tool != "forward":
                axes[0][0].plot(xs, [r[f"{tool}_cpu_ratio"] for r in kept], styles[count], **kw)
            axes[0][1].plot(xs, [max(1.0, r[f"{tool}_peak_mib"]) for r in kept], styles[count], **kw)
    widest = max(r["d_model"] for r in rows)
    chosen = sorted((r for r in rows if r["d_model"] == widest), key=lambda r: r["image_tokens"])
    for tool in ("forward", *TOOLS):
        kept = [r for r in chosen if f"{tool}_s" in r]
        if not kept:
            continue
        kw = dict(marker="o", color=colors[tool], label=tool)
        xs = [r["image_tokens"] for r in kept]
        if tool != "forward":
            axes[1][0].plot(xs, [r[f"{tool}_cpu_ratio"] for r in kept], **kw)
        axes[1][1].plot(xs, [max(1.0, r[f"{tool}_peak_mib"]) for r in kept], **kw)
    axes[0][0].set(
        xlabel="d_model", ylabel="CPU time / plain forward", xscale="log", yscale="log", title=title
    )
    axes[0][1].set(
        xlabel="d_model",
        ylabel="memory added during the call (MiB; under 1 drawn at 1)",
        xscale="log",
        yscale="log",
    )
    axes[1][0].set(
        xlabel="image tokens",
        ylabel="CPU time / plain forward",
        xscale="log",
        yscale="log",
        title=f"d_model {widest}",
    )
    axes[1][1].set(xlabel="image tokens", ylabel="memory added (MiB)", xscale="log", yscale="log")
    for ax in (axes[0][0], axes[1][0]):
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0][1].legend(fontsize=6, ncol=2)
    axes[1][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="512,2048,4096", help="LM d_model values (comma-separated)")
    parser.add_argument(
        "--tokens", default="144,576,2916", help="image-token counts (squares of whole numbers)"
    )
    parser.add_argument("--layers", type=int, default=2, help="LM layers (published: 32)")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision layers (published: 24)")
    parser.add_argument(
        "--slope-layers", type=int, default=4, help="LM layers of the extrapolation build (0: none)"
    )
    parser.add_argument(
        "--slope-tokens", type=int, default=576, help="image tokens of the extrapolation build"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--budget-gib", type=float, default=2.0, help="largest cache_all run")
    parser.add_argument(
        "--all-heads-gflop",
        type=float,
        default=1300.0,
        help="largest locations_all run (GFLOP of its float32 readout through the LM head)",
    )
    parser.add_argument(
        "--cross",
        action="store_true",
        help="only the cells on two axes: every width at the middle token count, every token count at "
        "the largest width (instead of every pair)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--tiny", action="store_true", help="small sizes: a seconds-long check")
    parser.add_argument("--plot", default=None, help="draw the grid into this image (matplotlib)")
    parser.add_argument("--from-json", default=None, help="only redraw --plot from an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        if args.plot:
            first = saved["rows"][0]
            plot(
                saved["rows"],
                args.plot,
                f"{first['lm_layers']} LM / {first['vision_layers']} vision layers, {saved['machine']}",
            )
        return dict(saved)
    widths = [int(w) for w in args.widths.split(",")]
    tokens = [int(t) for t in args.tokens.split(",")]
    vision_width = None
    if args.tiny:
        widths, tokens, args.layers, args.vision_layers, args.slope_layers, vision_width = (
            [128],
            [16],
            2,
            1,
            3,
            64,
        )
    _fixed_mmap_threshold()
    rows: list[dict[str, Any]] = []
    cells = [(w, t) for w in widths for t in tokens]
    if args.cross:
        middle = tokens[len(tokens) // 2]
        cells = [(w, middle) for w in widths] + [(widths[-1], t) for t in tokens if t != middle]
    for d_model, count in cells:
        model, batch = build(d_model, count, args.layers, args.vision_layers, vision_width)
        rows.append(row(model, batch, args.repeats, args.budget_gib, all_heads_gflop=args.all_heads_gflop))
        del model, batch
        print(table(rows[-1:]), flush=True)
        if args.json:  # what is done so far, in case a long run is stopped
            with open(args.json, "w") as f:
                json.dump({"rows": rows}, f, indent=1)
    result: dict[str, Any] = {
        "rows": rows,
        "machine": f"{os.cpu_count()} CPU threads, torch {torch.__version__}",
        "load_average_1min_after_grid": os.getloadavg()[0],
    }
    if args.slope_layers:
        d_model = widths[-1]
        count = args.slope_tokens if args.slope_tokens in tokens else tokens[-1]
        model, batch = build(d_model, count, args.slope_layers, args.vision_layers, vision_width)
        more = row(model, batch, args.repeats, args.budget_gib, only=("forward", "cache_resid"))
        del model, batch
        less = next(r for r in rows if r["d_model"] == d_model and r["image_tokens"] == more["image_tokens"])
        extra = args.slope_layers - args.layers
        result["extrapolated_32_layers"] = {
            key: less[key] + (32 - args.layers) * (more[key] - less[key]) / extra
            for key in ("forward_s", "forward_cpu_s", "cache_resid_s", "cache_resid_cpu_s")
        }
        result["slope_row"] = more
    print(result["machine"], "| load average (1 min) after the grid:", result["load_average_1min_after_grid"])
    print(table(rows))
    if "extrapolated_32_layers" in result:
        print("extrapolated to 32 LM layers (linear in layers):", result["extrapolated_32_layers"])
    if args.plot:
        plot(rows, args.plot, f"{args.layers} LM / {args.vision_layers} vision layers, {result['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
