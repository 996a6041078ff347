"""Logit-lens grids against Hugging Face's own hidden states and logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_mllm.viz import image_lens_grid, logit_lens_grid


def reference(model, batch, row):
    """Top token and probability per layer from HF's hidden states (its last one is already normed)."""
    with torch.no_grad():
        out = model.hf_model(**batch.inputs, output_hidden_states=True)
        head = model.hf_model.lm_head
        norm = model.hf_model.model.language_model.norm
        hidden = out.hidden_states
        n = model.cfg.n_layers
        logits = [head(norm(hidden[layer][row])) for layer in range(n)]  # embed, L0 .. L(n-2)
        logits.append(out.logits[row])  # L(n-1): the model's own logits
        probs = torch.stack(logits).float().softmax(-1)
    return probs.max(-1)


def test_grid_matches_hf_hidden_states_and_logits(run):
    model, batch, cache, _, _ = run
    tok = model.processor.tokenizer
    for row in range(2):
        grid = logit_lens_grid(model, cache, row=row)
        values, ids = reference(model, batch, row)
        keep = (~batch.pad_mask[row]).nonzero().flatten().tolist()
        assert grid.positions == keep
        assert grid.layers == ["embed"] + [f"L{layer}" for layer in range(model.cfg.n_layers)]
        np.testing.assert_allclose(grid.probs, values[:, keep].numpy(), atol=1e-5)
        assert grid.tokens == [
            tok.convert_ids_to_tokens(ids[i, keep].tolist()) for i in range(len(grid.layers))
        ]


def test_parts_positions_and_image_grid(run):
    model, batch, cache, _, _ = run
    text = logit_lens_grid(model, cache, part="text", include_embed=False)
    assert (
        not any(label.startswith("img") for label in text.labels) and len(text.layers) == model.cfg.n_layers
    )
    image = logit_lens_grid(model, cache, part="image", include_embed=False)
    cells = image_lens_grid(model, cache)
    rows, cols = cells.grid
    assert cells.probs.shape == (model.cfg.n_layers, rows, cols)
    np.testing.assert_allclose(cells.probs.reshape(model.cfg.n_layers, -1), image.probs, atol=1e-6)
    assert cells.tokens == image.tokens
    picked = logit_lens_grid(model, cache, positions=[batch.shape[1] - 1])
    assert picked.labels == [batch.tokens[0][-1]]


def test_html_and_figures_show_every_cell(run):
    model, _, cache, _, _ = run
    grid = logit_lens_grid(model, cache, part="text")
    html = grid._repr_html_()
    assert html.count("<td") == grid.probs.size and "background:rgb(" in html
    fig = grid.figure()
    assert len(fig.axes[0].texts) == grid.probs.size
    cells = image_lens_grid(model, cache, include_embed=True)
    assert cells.layers[0] == "embed"
    assert cells.to_html().count("<td") == cells.probs.size
    fig = cells.figure()
    assert sum(len(ax.texts) for ax in fig.axes) == cells.probs.size


def test_refusals(run, eager_model):
    model, batch, cache, _, _ = run
    _, only_patterns = eager_model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(Exception, match="resid"):
        logit_lens_grid(model, only_patterns)
    _, partial = eager_model.run_with_cache(batch, names_filter=lambda n: "resid" in n, positions="last")
    with pytest.raises(ValueError, match="only some positions"):
        logit_lens_grid(model, partial)
    with pytest.raises(ValueError, match="no patch grid"):
        image_lens_grid(model, cache, image=3)
