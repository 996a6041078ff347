"""The hook-point reference, generated from the code (``docs/hook_points.md``).

:func:`hook_reference_markdown` lists every hook point of a model with the module it
reads, whether it is the module's input or output, its shape and whether hooks may
replace it; block points are shown once with ``{l}`` for the layer. ``make docs`` (and
``hooked-mllm hooks --markdown``) writes it for the LLaVA adapter, plus a section per
architecture with gated cross-attention layers (Mllama) listing those layers' points; a
test keeps the file in step with the code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .hook_kinds import kind_of
from .hook_points import HookPoint
from .model import HookedMLLM


def _shape(generic: str) -> str:
    """The shape of a generic name, from the table of hook kinds (vision blocks: per image and patch)."""
    kind = kind_of(generic)
    shape = kind.shape if kind is not None else "[batch, pos, d_model]"
    if generic.startswith("vision.blocks."):
        return (
            shape.replace("d_model]", "vision_d_model]")
            .replace("batch, pos", "n_images, n_patches")
            .replace("batch, n_heads", "n_images, n_heads")
            .replace("query_pos, key_pos", "patch, patch")
        )
    return shape


def hook_reference_markdown(model: HookedMLLM) -> str:
    """A markdown table of every hook point of ``model`` (block points once, with ``{l}``)."""
    lines = [
        f"# Hook points ({model.adapter.name})",
        "",
        "Generated from the code by `hooked-mllm hooks --markdown`; do not edit by hand.",
        "`{l}` is the layer index. *Site* is the module (path from the HF model) whose input or",
        "output holds the value; `resid_mid` is the sum of the layer input and the attention",
        "output, written back through the attention output. Patterns exist under eager",
        "attention, which runs that read them switch on for the run.",
        "",
        "| hook name | site | value | shape | writable |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += _rows(model.hook_points)
    lines += _cross_attention_section()
    return "\n".join(lines) + "\n"


def _rows(points: Iterable[HookPoint]) -> list[str]:
    """One table row per generic hook name (the first layer that has it stands for all)."""
    lines, seen = [], set()
    for point in points:
        generic = re.sub(r"(blocks)\.\d+\.", r"\1.{l}.", point.name)
        if generic in seen:
            continue
        seen.add(generic)
        site = (
            re.sub(r"\.(\d+)(\.|$)", r".{l}\2", point.site.path)
            if point.layer is not None
            else point.site.path
        )
        value = point.site.io if point.site.index is None else f"output[{point.site.index}]"
        if point.scale is not None:
            value = f"{value} x `{point.scale.rpartition('.')[2]}`"
        if point.base is not None:
            value = f"input of block + {value}"
        lines.append(
            f"| `{generic}` | `{site}` | {value} | {_shape(generic)} | "
            f"{'yes' if point.writable else 'no (read-only)'} |"
        )
    return lines


def _cross_attention_section() -> list[str]:
    """The hook points of gated cross-attention layers, for every adapter that has them (Mllama)."""
    from .architectures import registered_adapters
    from .hook_points import HookPoints

    adapters = {a.name: a for a in registered_adapters().values() if a.modules.cross is not None}
    lines = []
    for name, adapter in sorted(adapters.items()):
        points = HookPoints.build(adapter, n_layers=1, n_heads=1, n_kv_heads=1, cross_layers=frozenset({0}))
        cross = adapter.modules.cross
        assert cross is not None  # adapters with cross-attention layers only
        gate_attn, gate_mlp = cross.gates
        lines += [
            "",
            f"## Cross-attention layers ({name})",
            "",
            f"In the `{name}` architecture the layers listed in the text config's `{cross.layers_attr}`",
            "attend to the vision states instead of the sequence. They are `blocks.{l}` like every other",
            "layer, with these hook points instead of the self-attention ones. The residual receives",
            f"`tanh({gate_attn}) * hook_cross_attn_out` and `tanh({gate_mlp}) * row_mask * hook_mlp_out`",
            "(both hooks are the modules' outputs, before the gates; `row_mask` is 0 at text positions",
            "that see no image). `hook_resid_mid` is read at the MLP norm's input and is read-only.",
            "",
            "| hook name | site | value | shape | writable |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += _rows(point for point in points if point.layer is not None)
    return lines
