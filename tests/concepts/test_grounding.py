"""Grounding: words through the unembedding, top samples, patch maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_mllm.concepts import PCAConcepts
from hooked_mllm.concepts.grounding import STOPWORDS, concept_map, text_grounding, visual_grounding


def test_text_grounding_reads_the_unembedding(llama_model):
    tok = llama_model.processor.tokenizer
    w_u = llama_model.hf_model.lm_head.weight.detach()
    target = tok.convert_tokens_to_ids("circle")
    u = w_u[target][None] * 10.0  # a vector pointing at "circle"'s unembedding
    assert text_grounding(llama_model, u, top_k=1, n_words=1)[0] == ["circle"]
    raw = text_grounding(llama_model, u, top_k=10)
    expected = [
        t.lower()
        for t in tok.convert_ids_to_tokens((u @ w_u.T)[0].topk(10).indices.tolist())
        if t.isalpha() and len(t) > 2 and t.lower() not in STOPWORDS
    ]
    assert raw[0] == expected[: len(raw[0])]
    normed = text_grounding(llama_model, u, top_k=10, apply_norm=True)
    assert normed[0][0] == "circle"


def test_visual_grounding_and_maps():
    v = np.array([[0.1, 3.0], [2.0, 0.0], [1.0, 1.0]])
    assert visual_grounding(v, ["a", "b", "c"], top=2) == [["b", "c"], ["a", "c"]]
    feats = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    dec = PCAConcepts(n_components=2).fit(feats.numpy())
    grid = concept_map(dec, feats, (4, 4), concept=1)
    np.testing.assert_allclose(grid.flatten(), dec.transform(feats.numpy())[:, 1], rtol=1e-5)
    with pytest.raises(ValueError, match="do not fill"):
        concept_map(dec, feats[:5], (4, 4), 0)


def test_shift_grounding_reads_every_vector_set(llama_model):
    from hooked_mllm.concepts import KMeansConcepts, analyze_shift, shift_grounding

    rng = np.random.default_rng(0)
    w_u = llama_model.hf_model.lm_head.weight.detach().numpy()
    A = np.repeat(w_u[[10, 20]] * 5, 10, axis=0) + 0.01 * rng.normal(size=(20, w_u.shape[1]))
    B = A + np.repeat(w_u[[30, 40]] * 5, 10, axis=0)
    result = analyze_shift(A, B, KMeansConcepts(2, random_state=0), KMeansConcepts(2, random_state=0))
    words = shift_grounding(llama_model, result, top_k=5)
    assert words["shift"] == text_grounding(llama_model, result.shift_vectors, top_k=5)
    assert words["finetuned"] == text_grounding(llama_model, result.concepts_b, top_k=5)
    # the shifted concepts equal b's concepts here, so they share all of b's words; the originals fewer
    assert words["overlap_shifted"] == [1.0, 1.0]
    assert all(o <= s for o, s in zip(words["overlap_original"], words["overlap_shifted"]))
