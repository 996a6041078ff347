"""One forward, cached for the mechanism methods: what the last position reads, and the frozen readout.

:func:`capture` runs :meth:`HookedMLLM.run_with_cache` once and keeps only what the
per-head per-position decomposition at each row's last position ``T`` needs: the last
query row of every attention pattern, the values at every source position, the layer
input / attention output / MLP output at ``T``, and the final residual at ``T`` (whose
final-norm scale the readout freezes). :class:`MechanismRun` holds it and computes

* ``contributions(l)``: ``c[l, h, j] = attn[l, h, T, j] * v[l, j, kv(h)] @ W_O[l, h]``
  (grouped-query heads read their key/value head), mapped into the residual stream the way
  the block adds it (a post-attention "sandwich" norm, as in Gemma 2/3, is applied with its
  scale frozen at the attention output at ``T``, so contributions stay additive);
* ``log_prob(z, row)``: ``log p(y | z)`` with the final norm's scale frozen at the final
  residual of that row at ``T``, then the LM head and the model's final logit soft cap.

Used by :mod:`.scores` (head / layer scores, the location map, explaining positions) and
:mod:`.baselines` (the attention map).

Examples:
    >>> run = capture(model, batch)                          # doctest: +SKIP
    >>> run.contributions(2).shape                           # [batch, head, pos, d_model]  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..inputs import MultimodalBatch
from ..lens import frozen_final_norm, logit_lens, softcap_logits
from ..model import HookedMLLM

_CHUNK_FLOATS = 1 << 24  # logits held at once by the readout


@dataclass(frozen=True, eq=False, kw_only=True)
class MechanismRun:
    """What one forward leaves for the mechanism methods, at each row's last position ``T``.

    Attributes:
        model: The model that ran.
        batch: The batch that ran.
        last: ``[batch]`` each row's ``T`` (its last non-padding position).
        target: ``[batch]`` the token ``y`` explained per row (default: the model's prediction).
        logits: ``[batch, d_vocab]`` the model's own logits at ``T``.
        pattern: ``[layer, batch, head, pos]`` attention from ``T`` to every position.
        v: ``[layer, batch, pos, kv_head, d_head]`` the values at every position.
        resid_pre: ``[layer, batch, d_model]`` each layer's input at ``T``.
        attn_out: ``[layer, batch, d_model]`` each layer's attention output at ``T``.
        mlp_out: ``[layer, batch, d_model]`` each layer's MLP output at ``T``.
        final: ``[batch, d_model]`` the final residual at ``T`` (before the final norm).
    """

    model: HookedMLLM
    batch: MultimodalBatch
    last: Int[Tensor, " batch"]
    target: Int[Tensor, " batch"]
    logits: Float[Tensor, "batch d_vocab"]
    pattern: Float[Tensor, "layer batch head pos"]
    v: Float[Tensor, "layer batch pos kv d_head"]
    resid_pre: Float[Tensor, "layer batch d_model"]
    attn_out: Float[Tensor, "layer batch d_model"]
    mlp_out: Float[Tensor, "layer batch d_model"]
    final: Float[Tensor, "batch d_model"]

    @property
    def n_layers(self) -> int:
        return self.pattern.shape[0]

    @property
    def n_heads(self) -> int:
        return self.pattern.shape[2]

    def target_tokens(self) -> list[str]:
        """The target tokens as strings: ids where no tokenizer is known, ``<id N>`` for an id past the
        tokenizer's vocabulary (the LM head can be wider, e.g. LLaVA-1.5's 32064 rows for 32002 tokens)."""
        tokenizer = getattr(self.model.processor, "tokenizer", None)
        ids = self.target.tolist()
        if tokenizer is None:
            return [str(i) for i in ids]
        return [
            t if t is not None else f"<id {i}>" for i, t in zip(ids, tokenizer.convert_ids_to_tokens(ids))
        ]

    # -- the frozen readout ------------------------------------------------------------

    def log_prob(
        self, z: Float[Tensor, "... d_model"], row: int, chunk_rows: int | None = None
    ) -> Float[Tensor, "..."]:
        """``log p(target[row] | z)`` with the final norm's scale frozen at row ``row``'s final residual.

        Any leading shape; computed in float32 in chunks of ``chunk_rows`` vectors (default: 2^24
        logits at a time; the full vocabulary is needed for the normaliser).
        """
        w_u, bias = self._unembed
        w_u, bias = w_u.to(z.device), None if bias is None else bias.to(z.device)
        ref = self.final[row].to(z.device)
        flat = z.reshape(-1, z.shape[-1])
        step = chunk_rows or max(1, _CHUNK_FLOATS // w_u.shape[0])
        out = []
        for chunk in flat.split(step):
            logits = frozen_final_norm(self.model, chunk, ref) @ w_u.T
            if bias is not None:
                logits = logits + bias
            logits = softcap_logits(self.model, logits)
            out.append(logits[:, int(self.target[row])] - logits.logsumexp(-1))
        return torch.cat(out).reshape(z.shape[:-1])

    @cached_property
    def _unembed(self) -> tuple[Tensor, Tensor | None]:
        head = self.model.adapter.module(self.model.hf_model, self.model.adapter.modules.unembed)
        bias = getattr(head, "bias", None)
        weight = head.weight.detach().float()  # type: ignore[operator]  # nn.Module attribute
        return weight, None if bias is None else bias.detach().float()

    # -- per-head per-position contributions -------------------------------------------

    def _kv_index(self) -> Tensor:
        n_kv = self.v.shape[3]
        return torch.arange(self.n_heads, device=self.v.device) // (self.n_heads // n_kv)

    def _w_o(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        return self.model.W_O(layer).detach().float().to(self.v.device)

    def _o_bias(self, layer: int) -> Tensor | None:
        adapter = self.model.adapter
        modules = adapter.modules
        o_proj = adapter.module(self.model.hf_model, f"{modules.lm_layers}.{layer}.{modules.block.o}")
        bias = getattr(o_proj, "bias", None)
        return None if bias is None else bias.detach().float().to(self.v.device)

    def _raw(self, layer: int, heads: Sequence[int] | None, positions: Any, rows: Any = None) -> Tensor:
        """``[batch, head, pos, d_model]`` ``attn * v @ W_O`` before the block's post-attention map."""
        rows = slice(None) if rows is None else rows
        attn = self.pattern[layer][rows]  # [batch, head, pos]
        values = self.v[layer][rows]  # [batch, pos, kv, d_head]
        kv, w_o = self._kv_index(), self._w_o(layer)
        if positions is not None:  # select before gathering the heads' values: chunks stay small
            index = torch.as_tensor(positions, device=attn.device)
            attn, values = attn[..., index], values[:, index]
        if heads is not None:
            index = torch.as_tensor(list(heads), device=attn.device)
            attn, kv, w_o = attn[:, index], kv[index], w_o[index]
        values = values[:, :, kv]  # [batch, pos, head, d_head]
        projected = torch.einsum("bphd,hdm->bhpm", values, w_o)
        return attn[..., None] * projected

    def head_outputs(self, layer: int) -> Float[Tensor, "batch head d_model"]:
        """Each head's output at ``T`` as added to the residual (contributions summed over positions)."""
        attn = self.pattern[layer]
        values = self.v[layer][:, :, self._kv_index()]
        z = torch.einsum("bhp,bphd->bhd", attn, values)
        return self.post_attention(layer, torch.einsum("bhd,hdm->bhm", z, self._w_o(layer)))

    def contributions(
        self,
        layer: int,
        heads: Sequence[int] | None = None,
        positions: Any = None,
        rows: Sequence[int] | None = None,
    ) -> Float[Tensor, "batch head pos d_model"]:
        """``c[l, h, j]`` for ``layer``, the chosen heads, source positions and rows (all by default).

        Summed over every position and head (plus the output projection's bias, mapped the
        same way) it is the layer's ``hook_attn_out`` at ``T``.
        """
        index = None if rows is None else torch.as_tensor(list(rows), device=self.v.device)
        return self.post_attention(layer, self._raw(layer, heads, positions, index), index)

    def post_attention(
        self, layer: int, x: Float[Tensor, "batch *rest d_model"], rows: Tensor | None = None
    ) -> Float[Tensor, "batch *rest d_model"]:
        """Map parts of the attention output (``o_proj`` space) into the residual as the block does.

        Identity for plain pre-norm blocks. A post-attention norm (``BlockLayout.attn_out``)
        is applied with its scale frozen at the full attention output at ``T``; a layer
        scale (``BlockLayout.attn_scale``) multiplies.
        """
        block = self.model.adapter.modules.block
        prefix = f"{self.model.adapter.modules.lm_layers}.{layer}"
        if block.attn_out is not None:
            norm = self.model.adapter.module(self.model.hf_model, f"{prefix}.{block.attn_out}")
            sel = slice(None) if rows is None else rows
            attn = self.pattern[layer][sel]
            values = self.v[layer][sel][:, :, self._kv_index()]
            o_full = torch.einsum("bhp,bphd,hdm->bm", attn, values, self._w_o(layer))
            bias = self._o_bias(layer)
            if bias is not None:
                o_full = o_full + bias
            eps = (
                getattr(norm, "variance_epsilon", None)
                or getattr(norm, "eps", None)
                or self.model.cfg.norm_eps
            )
            if block.norm == "layer":
                x = x - x.mean(-1, keepdim=True)
                scale = (o_full.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
            else:
                scale = (o_full.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            scale = scale.view(scale.shape[0], *([1] * (x.dim() - 2)), 1)
            weight = norm.weight.detach().float()  # type: ignore[operator]  # nn.Module attribute
            weight = weight.to(x.device) + block.norm_offset
            x = x / scale * weight
        if block.attn_scale is not None:
            gamma = self.model.adapter.module(self.model.hf_model, prefix).get_parameter(block.attn_scale)
            x = x * gamma.detach().float().to(x.device)
        return x


def capture(model: HookedMLLM, inputs: Any, target: Any = None) -> MechanismRun:
    """Run once and keep what the mechanism methods read at each row's last position.

    Args:
        model: A :class:`~hooked_mllm.HookedMLLM` whose decoder has per-head value
            projections (``blocks.{l}.attn.hook_v``) and exposes patterns.
        inputs: A :class:`~hooked_mllm.MultimodalBatch` (or a :class:`MechanismRun`,
            returned as is).
        target: The token explained per row: None (the model's prediction at ``T``), a token
            id, a one-token string, or one of those per row.

    Examples:
        >>> batch = model.prepare(images=[img], prompts=["what color is the circle ?"])  # doctest: +SKIP
        >>> capture(model, batch).target_tokens()                                        # doctest: +SKIP
        ['red']
    """
    if isinstance(inputs, MechanismRun):
        if target is not None:
            raise ValueError("This MechanismRun already fixed its target; capture again with target=...")
        return inputs
    batch = model.to_batch(inputs)
    n_layers = model.cfg.n_layers
    if model.adapter.cross_layers(model.hf_model.config):
        raise ValueError(
            f"The {model.adapter.name!r} architecture reads images through cross-attention layers; "
            "the per-head decomposition over image positions does not apply to it."
        )
    names = set(model.hook_names("lm"))
    needed = [f"blocks.{l}.attn.hook_{x}" for l in range(n_layers) for x in ("v", "pattern")]
    missing = [n for n in needed if n not in names]
    if missing:
        raise ValueError(
            f"The {model.adapter.name!r} adapter offers no {missing[0]} (fused QKV projection or a "
            "fused attention kernel), so per-head contributions cannot be computed for it."
        )
    cached = [
        f"blocks.{l}.{x}"
        for l in range(n_layers)
        for x in ("attn.hook_pattern", "hook_resid_pre", "hook_attn_out", "hook_mlp_out")
    ]
    cached.append(f"blocks.{n_layers - 1}.hook_resid_post")
    values: dict[int, Tensor] = {}

    def keep_v(act: Tensor, hook: Any) -> None:  # every source position: outside the "last" selection
        if hook.step == 0:
            values[hook.layer()] = act.detach().float()

    run_batch = batch
    if "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters:
        # only T's logits are read, and they are recomputed below from the final residual:
        # skip the LM head over every other position
        run_batch = replace(batch, inputs={**batch.inputs, "logits_to_keep": 1})  # type: ignore[dict-item]  # an HF keyword
    _, cache = model.run_with_cache(
        run_batch,
        names_filter=cached,
        positions="last",
        device=None,
        dtype=torch.float32,
        fwd_hooks=[([f"blocks.{l}.attn.hook_v" for l in range(n_layers)], keep_v)],
    )
    last = batch.last_positions()
    final = cache["resid_post", n_layers - 1][:, 0]
    final_logits = logit_lens(model, final).float()  # the model's logits at T (final norm, head, soft cap)

    def at_t(name: str) -> Tensor:
        return torch.stack([cache[name.format(l=l)][:, 0] for l in range(n_layers)])

    return MechanismRun(
        model=model,
        batch=batch,
        last=last,
        target=resolve_target(model, target, final_logits),
        logits=final_logits,
        pattern=torch.stack([cache["pattern", l][:, :, 0] for l in range(n_layers)]),
        v=torch.stack([values[l] for l in range(n_layers)]),
        resid_pre=at_t("blocks.{l}.hook_resid_pre"),
        attn_out=at_t("blocks.{l}.hook_attn_out"),
        mlp_out=at_t("blocks.{l}.hook_mlp_out"),
        final=final,
    )


def resolve_target(
    model: HookedMLLM, target: Any, logits: Float[Tensor, "batch d_vocab"]
) -> Int[Tensor, " batch"]:
    """Per-row target ids: the argmax of ``logits`` for None, else the given id(s) or one-token string(s)."""
    n = logits.shape[0]
    if target is None:
        return logits.argmax(-1).cpu()
    items = (
        list(target)
        if isinstance(target, (list, tuple)) or (isinstance(target, Tensor) and target.dim())
        else [target] * n
    )
    if len(items) != n:
        raise ValueError(f"Got {len(items)} targets for a batch of {n} rows; give one, or one per row.")
    ids = []
    for item in items:
        if isinstance(item, str):
            tokenizer = getattr(model.processor, "tokenizer", None)
            if tokenizer is None:
                raise ValueError("String targets need a processor with a tokenizer; pass token ids instead.")
            found = tokenizer.encode(item, add_special_tokens=False)
            if len(found) != 1:
                raise ValueError(f"Target {item!r} is {len(found)} tokens; give one token (or its id).")
            ids.append(found[0])
        else:
            ids.append(int(item))
    return torch.tensor(ids)
