"""Check the ``molmo`` adapter against Molmo's own remote code (allenai/Molmo-7B-D-0924), on a tiny random
model.

Molmo's modeling code is not part of transformers and not part of this repository: it lives in
the checkpoint's Hugging Face repository (``modeling_molmo.py``, ``config_molmo.py``). Give this
script a folder holding those two files (a download of the checkpoint repository without the
weights is enough); it copies them to a temporary folder with a tiny ``config.json``, loads the
classes with ``trust_remote_code``, builds a tiny random ``MolmoForCausalLM`` (2 LM layers of width
32, a 3-layer ViT of width 32 on 28 px crops of 7 px patches, 2x2 attention pooling, the
checkpoint's ``vit_layers=[-2, -9]`` rule applied to the tiny tower as ``[-2, -3]``) and checks,
against Molmo's own forward:

* logits, every LM ``resid_post`` against Molmo's ``hidden_states`` (the last one after ``ln_f``);
* the residual identities of every LM and ViT block;
* the projector's rows are what is added at the image positions (``image_input_idx``);
* every writable hook point takes writes (returned and in place), read-only ones refuse them
  (the ViT blocks after the last one ``vit_layers`` reads are read-only);
* generation, where the remote code offers ``generate``.

Usage::

    python benchmarks/molmo_remote_check.py /path/to/Molmo-7B-D-0924

Prints one line per check (``ok`` / ``FAIL`` / ``skip``) and exits non-zero if any fails.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

TINY_CONFIG = {
    "architectures": ["MolmoForCausalLM"],
    "auto_map": {
        "AutoConfig": "config_molmo.MolmoConfig",
        "AutoModelForCausalLM": "modeling_molmo.MolmoForCausalLM",
    },
    "model_type": "molmo",
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
    "embedding_size": 96,
    "max_position_embeddings": 256,
    "qkv_bias": True,
    "layer_norm_eps": 1e-6,
    "layer_norm_type": "rms",
    "tie_word_embeddings": False,
    "weight_tying": False,
    "rope_theta": 10000.0,
    "use_cache": True,
    "attention_layer_norm": False,
    "norm_after": False,
}


def build(code_dir: Path, work: Path) -> torch.nn.Module:
    """A tiny random MolmoForCausalLM from the remote code in ``code_dir``."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    for name in ("modeling_molmo.py", "config_molmo.py"):
        shutil.copy(code_dir / name, work / name)
    (work / "config.json").write_text(json.dumps(TINY_CONFIG))
    config = AutoConfig.from_pretrained(work, trust_remote_code=True)
    cls = get_class_from_dynamic_module("modeling_molmo.MolmoForCausalLM", str(work))
    remote = sys.modules[cls.__module__]
    vision = remote.VisionBackboneConfig(
        image_default_input_size=(28, 28),
        image_patch_size=7,
        image_pos_patch_size=7,
        image_emb_dim=32,
        image_num_heads=4,
        image_num_key_value_heads=4,
        image_num_layers=3,
        image_head_dim=8,
        image_mlp_dim=64,
        image_mlp_activations="quick_gelu",
        image_num_pos=17,
        image_norm_eps=1e-5,
    )
    full = remote.FullMolmoConfig(  # MolmoForCausalLM's own settings, at tiny sizes
        image_padding_embed="pad_and_partial_pad",
        image_pooling_2d="attention-meanq",
        attention_layer_norm=False,
        rope_impl="llama",
        vocab_size=config.vocab_size,
        max_sequence_length=256,
        qkv_bias=True,
        norm_after=False,
        embedding_size=config.embedding_size,
        attention_type="sdpa",
        embedding_dropout=0,
        attention_dropout=0,
        residual_dropout=0,
        rope=True,
        weight_tying=False,
        include_bias=False,
        d_model=32,
        mlp_hidden_size=128,
        n_layers=2,
        additional_vocab_size=128,
        n_heads=4,
        n_kv_heads=2,
        rope_theta=10000.0,
        layer_norm_eps=1e-6,
        layer_norm_type="rms",
        vit_layers=[-2, -3],
        vision_backbone=vision,
    )
    torch.manual_seed(0)
    model = cls(config, model=remote.Molmo(full, init_params=True)).eval()
    with torch.no_grad():  # non-trivial norms and padding embeddings
        for name, param in model.named_parameters():
            if "norm" in name or "pad_embed" in name:
                param.uniform_(0.5, 1.5)
    return model


def main(code_dir: str) -> int:
    from hooked_mllm import HookedMLLM
    from hooked_mllm.testing.conformance import read_only_refusals, unreached_writes

    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, bool(ok), detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")

    with tempfile.TemporaryDirectory() as tmp:
        hf_model = build(Path(code_dir), Path(tmp))
        model = HookedMLLM.from_hf(hf_model)
        check("adapter", model.adapter.name == "molmo", repr(model))
        ids = torch.tensor([[3, 4, 9, 9, 9, 9, 5, 6, 7], [3, 9, 9, 9, 9, 8, 5, 6, 7]])
        generator = torch.Generator().manual_seed(0)
        inputs = {
            "input_ids": ids,
            "images": torch.randn(2, 1, 16, 147, generator=generator),
            "image_masks": torch.ones(2, 1, 16),
            "attention_mask": torch.ones_like(ids),
            "image_input_idx": torch.tensor([[[2, 3, 4, 5]], [[1, 2, 3, 4]]]),
        }
        with torch.no_grad():
            ref = hf_model(**inputs, output_hidden_states=True)
        logits, cache = model.run_with_cache(inputs)
        check("logits equal Molmo's", torch.equal(logits, ref.logits))
        n = model.cfg.n_layers
        for layer in range(n - 1):
            check(
                f"blocks.{layer}.hook_resid_post = hidden_states[{layer + 1}]",
                torch.allclose(cache["resid_post", layer], ref.hidden_states[layer + 1], atol=1e-6),
            )
        normed = torch.allclose(cache["ln_final.hook_normalized"], ref.hidden_states[-1], atol=1e-6)
        raw = torch.allclose(cache["resid_post", n - 1], ref.hidden_states[-1], atol=1e-6)
        check(
            "the adapter's hidden_states_normed says which of ln_final / resid_post(last) is "
            "hidden_states[-1]",
            normed != raw and model.adapter.modules.hidden_states_normed == normed,
        )
        for prefix, count in (("", n), ("vision.", model.cfg.vision_n_layers)):
            worst = 0.0
            for layer in range(count):
                b = f"{prefix}blocks.{layer}."
                worst = max(
                    worst,
                    float(
                        (
                            cache[b + "hook_resid_pre"]
                            + cache[b + "hook_attn_out"]
                            - cache[b + "hook_resid_mid"]
                        )
                        .abs()
                        .max()
                    ),
                    float(
                        (
                            cache[b + "hook_resid_mid"]
                            + cache[b + "hook_mlp_out"]
                            - cache[b + "hook_resid_post"]
                        )
                        .abs()
                        .max()
                    ),
                )
                if layer + 1 < count:
                    worst = max(
                        worst,
                        float(
                            (
                                cache[b + "hook_resid_post"]
                                - cache[f"{prefix}blocks.{layer + 1}.hook_resid_pre"]
                            )
                            .abs()
                            .max()
                        ),
                    )
            check(f"{prefix or 'LM '}residual identities", worst < 1e-5, f"max error {worst:.2g}")
        rows = cache["projector.hook_out"].reshape(2, 4, -1)
        placed = torch.stack(
            [
                cache["resid_pre", 0][r, inputs["image_input_idx"][r, 0]]
                - cache["hook_embed"][r, inputs["image_input_idx"][r, 0]]
                for r in range(2)
            ]
        )
        check("projector rows are added at image_input_idx", torch.allclose(placed, rows, atol=1e-6))
        batch = model.to_batch(inputs)
        writes = unreached_writes(model, batch)
        check("every writable point takes writes", writes == {"returned": [], "in_place": []}, str(writes))
        refusals = read_only_refusals(model, batch)
        check("read-only points refuse writes", refusals == {"returned": [], "in_place": []}, str(refusals))
        dead = [p.name for p in model.hook_points if p.name.startswith("vision.blocks.2.") and not p.writable]
        check("ViT block after the last vit_layers one is read-only", len(dead) > 0, f"{len(dead)} points")
        if hasattr(hf_model, "generate"):
            out = model.generate(inputs, max_new_tokens=2)
            with torch.no_grad():
                expected = hf_model.generate(**inputs, max_new_tokens=2, do_sample=False)
            check("generate equals Molmo's", torch.equal(out.sequences, expected))
        else:
            print(
                "skip generate: this remote code's MolmoForCausalLM has no generate() under the installed "
                "transformers (it relied on PreTrainedModel inheriting GenerationMixin, which transformers "
                "4.50 dropped); HookedMLLM.generate needs it, Molmo's own generate_from_batch is not wrapped"
            )
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
