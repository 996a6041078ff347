"""docs/architectures.md is generated from the registry; auto-discovery maps every family's tree or refuses
clearly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from hooked_mllm import HookedMLLM, architectures
from hooked_mllm.architectures import discover, registered_adapters
from hooked_mllm.architectures.table import GUIDE_HEADING, rewrite, supported_models_markdown

from .families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
_FIELDS = (
    "lm_layers",
    "embed",
    "final_norm",
    "unembed",
    "block",
    "vision_layers",
    "vision_embed",
    "vision_block",
    "projector",
)


def test_architectures_doc_is_generated_from_the_registry(tmp_path):
    text = supported_models_markdown()
    doc = (ROOT / "docs" / "architectures.md").read_text()
    assert doc.startswith(text + "\n" + GUIDE_HEADING), (
        "regenerate: python -m hooked_mllm.architectures.table docs/architectures.md"
    )
    stale = tmp_path / "architectures.md"  # the rewrite replaces the table and keeps the guide
    stale.write_text("# old table\n\n" + doc[len(text) :])
    rewrite(stale)
    assert stale.read_text() == doc and oct(stale.stat().st_mode & 0o777) == "0o644"
    for adapter in registered_adapters().values():
        for layout in (adapter, *adapter.variants):
            assert f"| `{layout.name}` |" in text


def test_adding_a_family_guide_runs_as_written(tmp_path, monkeypatch):
    """The guide's example: an adapter written by hand for the tiny LLaVA under a new name passes
    verify_adapter on a batch with an image, and its cache matches HF's hidden states."""
    guide = (ROOT / "docs" / "architectures.md").read_text(encoding="utf-8").split(GUIDE_HEADING, 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "adding_a_family.py"  # a real file: nnsight reads hook functions' source
    script.write_text("\n".join(blocks), encoding="utf-8")
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), namespace)  # noqa: S102 - our own docs
    adapter, model = namespace["MY_VLM"], namespace["model"]
    assert (
        model.adapter is adapter
        and adapter.name == "my_vlm"
        and adapter.name not in {a.name for a in registered_adapters().values()}
    )
    assert namespace["checked"].modules.hidden_states_normed
    hidden, cache = namespace["hidden"], namespace["cache"]
    assert all(
        torch.allclose(cache["resid_post", layer], hidden[layer + 1], atol=1e-5)
        for layer in range(model.cfg.n_layers - 1)
    )
    assert "vision.blocks.0.hook_resid_pre" in cache


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already has the adapter"):
        architectures.register_adapter(next(iter(registered_adapters().values())))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.adapter)
def test_discovery_finds_each_registered_layout(family):
    hf_model, _ = family.build()
    if family.adapter == "mllama":  # its cross-attention layers skip a text-only probe: unverifiable, refused
        with pytest.raises(ValueError, match=r"LM layer 1 \(model.language_model.layers.1\) did not run"):
            discover(hf_model)
        hf_model.config.text_config.cross_attention_layers = []  # the same tree, read by names only
        found = discover(hf_model, verify=False)
        hf_model.config.text_config.cross_attention_layers = [1]
    else:  # the probe's corrections and self-check agree with the hand-written adapter
        found = discover(hf_model)
    expected = registered_adapters()[type(hf_model.config).__name__].for_config(hf_model.config)
    assert expected.name == family.adapter and not found.about.verified
    for name in _FIELDS:
        assert getattr(found.modules, name) == getattr(expected.modules, name), name


def test_unregistered_model_runs_through_discovery(monkeypatch, caplog):
    family = next(f for f in FAMILIES if f.adapter == "gemma3")
    hf_model, processor = family.build()
    monkeypatch.setattr(architectures, "_REGISTRY", {})
    with caplog.at_level("WARNING"):
        model = HookedMLLM.from_hf(hf_model, processor)
    assert model.adapter.name == "discovered" and "discovered" in caplog.text
    batch = model.prepare(images=family.images[:1], prompts=family.prompts[:1])
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: "resid" in n or n.endswith("_out"))
    with torch.no_grad():
        ref = hf_model(**batch.inputs)
    torch.testing.assert_close(logits, ref.logits)
    torch.testing.assert_close(cache["resid_pre", 1] + cache["attn_out", 1], cache["resid_mid", 1])


def test_discovery_refuses_clearly():
    class NotAnLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
            self.config = object()

    with pytest.raises(ValueError, match=r"Cannot map NotAnLM automatically: found no LM head"):
        discover(NotAnLM())
    with pytest.raises(
        ValueError, match=r"No adapter for NotAnLM .*auto-discovery failed.*Supported config classes"
    ):
        architectures.adapter_for(NotAnLM())
