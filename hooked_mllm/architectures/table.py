"""The supported-models table of docs/architectures.md, generated from the registry.

:func:`supported_models_markdown` renders every registered adapter, each followed by the
config-specialised ``variants`` it can turn into (family, HF config classes, where the
LM / vision tower / projector live, image-token geometry, whether ``videos=`` is covered
(``tokens.videos``; other families refuse video inputs), what the conformance suite runs it on,
notes). ``tests/architectures/test_docs_and_discovery.py`` checks that
the file in docs/ begins with exactly this text, followed by its hand-written "Adding a family"
guide (:data:`GUIDE_HEADING`); regenerate the table, keeping the guide, with
``python -m hooked_mllm.architectures.table docs/architectures.md`` (without a path it prints
the table).
"""

from __future__ import annotations

from pathlib import Path

from .base import Adapter

GUIDE_HEADING = "## Adding a family"
"""The heading of the hand-written guide that follows the generated table in docs/architectures.md."""

_HEADER = """# Supported architectures

Generated from the adapter registry (`hooked_mllm.architectures`) by
`python -m hooked_mllm.architectures.table docs/architectures.md` (which keeps the hand-written
"Adding a family" guide after the table); a test keeps it in sync.
Each family is one declarative adapter file whose docstring shows its HF module tree; block layouts that
several families share (CLIP / SigLIP, Pixtral, Gemma) are in `hooked_mllm/architectures/blocks.py`.
"Verified" means the conformance suite (`tests/architectures/test_conformance.py`) runs the
family on a tiny random model built from its config and checks hidden states, logits,
residual identities, patterns, generation, batching, hook cleanup and image geometry
against Hugging Face; every entry point (`forward`, `run_with_cache`, `run_with_hooks`,
`generate`, `trace`) with every input form (`model.prepare(...)`, HF keyword tensors, the
processor's own output dict); and that a write at every writable hook point, returned or made
in place, reaches the logits while read-only points refuse writes
(`hooked_mllm.testing.conformance`, which you can run on your own model).
"Video" says whether `model.prepare(videos=...)` and HF video inputs are covered (checked against
Hugging Face in `tests/architectures/test_video*.py`, see [Video](video.md)); the others refuse
them with an error naming the families that take them.

Models without a registered adapter are mapped from their module tree by
`hooked_mllm.architectures.discover`: attention, MLP and norms from the block's children, then
one probe forward on a short text-only input finds by data flow what each norm reads
(sandwich norms under any name, attention and MLP in parallel off one norm, layer scales) and
checks the residual identities at every layer against Hugging Face's hidden states
(`verify_adapter`). A layout that fails is refused, naming the identity, the layer and by how
much; a block the mapper cannot read is refused naming the sub-module it could not recognise.
Tested on Aya Vision (parallel blocks), GLM-4V (sandwich norms, fused gate-and-up) and
GOT-OCR 2 (`tests/architectures/test_discovery_verified.py`). The vision tower of a discovered
model is mapped by its children's names; the text-only probe does not run it, so check it with
`verify_adapter(model.hf_model, model.adapter, batch.inputs)` on a batch with images.
"""


def _grid(adapter: Adapter) -> str:
    if adapter.tokens.grids is not None or adapter.tokens.views is not None:
        return "from the processor's inputs"
    probe = adapter.tokens.grid(16, None)
    return "square (rows x cols)" if probe == (4, 4) else "none"


def _row(adapter: Adapter) -> str:
    modules, about = adapter.modules, adapter.about
    block = modules.block
    extras = []
    if block.attn_out is not None or block.mlp_out is not None:
        extras.append("sandwich norms")
    if block.norm_offset:
        extras.append(f"norm weight + {block.norm_offset:g}")
    vision = f"`{modules.vision_layers}`" if modules.vision_layers else "-"
    if modules.vision_block is not None and modules.vision_block.pattern_index is None:
        vision += " (fused qkv: no q/k/v or patterns)"
    if modules.vision_block is not None and modules.vision_block.attn_scale is not None:
        vision += " (layer scale: attn_out / mlp_out include it)"
    cells = [
        f"`{adapter.name}`",
        ", ".join(f"`{name}`" for name in adapter.config_classes),
        f"`{modules.lm_layers}`" + (f" ({', '.join(extras)})" if extras else ""),
        vision,
        f"`{modules.projector}`" if modules.projector else "-",
        _grid(adapter),
        "yes ([video](video.md))" if adapter.tokens.videos is not None else "refused",
        "yes"
        if about.verified
        else f"by script: `{about.checked_by}`"
        if about.checked_by
        else "**no** (published layout only)",
        about.test_model or "-",
        about.notes or "",
    ]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def supported_models_markdown(adapters: list[Adapter] | None = None) -> str:
    """The Markdown of docs/architectures.md for ``adapters`` (default: the registry), one row
    per adapter and one per each of its ``variants``."""
    if adapters is None:
        from . import registered_adapters

        adapters = list({id(a): a for a in registered_adapters().values()}.values())
    lines = [
        _HEADER,
        "| Family | HF config | LM layers | Vision layers | Projector | Image grid | Video | Verified "
        "| Conformance model | Notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(layout) for adapter in adapters for layout in (adapter, *adapter.variants)]
    return "\n".join(lines) + "\n"


def rewrite(path: str | Path) -> None:
    """Regenerate the table at the top of the Markdown file ``path``, keeping its guide (the text from
    :data:`GUIDE_HEADING` on); written atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    at = text.find(GUIDE_HEADING)
    if at < 0:
        raise ValueError(f"{path} has no {GUIDE_HEADING!r} section to keep; refusing to overwrite it.")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(supported_models_markdown() + "\n" + text[at:], encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        rewrite(sys.argv[1])
    else:
        sys.stdout.write(supported_models_markdown())
