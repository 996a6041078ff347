"""Whether transformers' tensor parallelism can be traced through nnsight here: run under torchrun.

Usage: ``torchrun --standalone --nproc_per_node 2 benchmarks/tensor_parallel_probe.py`` (CPU and
gloo are enough). Loads the shipped toy LLaVA with ``tp_plan="auto"`` and prints, per rank:
the plain Hugging Face forward against the unsharded model; a plain nnsight trace of a layer's
output; the same with nnsight's tensor-parallel support; and what ``HookedMLLM.from_hf`` says.
With nnsight 0.8.1 and transformers 5.24 the plain forward matches and both traces fail, which
is why ``hooked_mllm`` refuses tensor parallelism (``hooked_mllm/_runtime/loading.py``).
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForImageTextToText

from hooked_mllm import HookedMLLM, toy


def attempt(rank: int, what: str, fn) -> None:
    try:
        print(f"[rank {rank}] {what}: {fn()}", flush=True)
    except Exception as error:  # noqa: BLE001 - the probe reports every failure
        print(f"[rank {rank}] {what}: FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)


def main() -> None:
    from nnsight import NNsight

    rank = int(os.environ.get("RANK", "0"))
    path = toy.checkpoint_dir("toy-llava")
    sharded = AutoModelForImageTextToText.from_pretrained(path, tp_plan="auto")
    whole = HookedMLLM.from_pretrained(path)
    scene = toy.World(seed=3).sample(1)[0]
    inputs = whole.prepare(images=[scene.image], prompts=[scene.questions[0].question]).inputs
    with torch.no_grad():
        expected = whole.hf_model(**inputs).logits

    def plain() -> str:
        with torch.no_grad():
            return (
                f"max |logits - unsharded| = {(sharded(**inputs).logits - expected).abs().max().item():.2e}"
            )

    def trace(**kwargs) -> str:
        model = NNsight(sharded, **kwargs)
        with torch.no_grad(), model.trace(**inputs):
            out = model.model.language_model.layers[1].output.save()
        return f"layer 1 output {tuple(out.shape)}"

    def with_tp_support() -> str:
        from nnsight.intervention.interleaver import Interleaver
        from nnsight.modeling.tp import TPFragments

        return trace(interleaver=Interleaver(fragments=TPFragments()))

    attempt(rank, "plain HF forward, tp_plan='auto'", plain)
    attempt(rank, "nnsight trace", trace)
    attempt(rank, "nnsight trace with its tensor-parallel support", with_tp_support)
    attempt(rank, "HookedMLLM.from_hf", lambda: HookedMLLM.from_hf(sharded, whole.processor))


if __name__ == "__main__":
    main()
