"""Reading a feature: its top tokens are the highest of the SAE's own encoding over the dataset, image
tokens name their grid cell, the decoder words are the lenses of W_dec[f], the page escapes every string."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_mllm.lens import embedding_lens, logit_lens  # noqa: E402
from hooked_mllm.sae.features import decoder_words, feature_html, top_examples  # noqa: E402
from hooked_mllm.testing import random_image  # noqa: E402

from .helpers import random_sae  # noqa: E402

HOOK = "blocks.1.hook_resid_post"


@torch.no_grad()
def test_top_examples_are_the_highest_activations(hooked):
    data = [(random_image(i), p) for i, p in enumerate(["what color is it ?", "how many objects", "where"])]
    sae = random_sae(hooked.cfg.d_model, HOOK, d_sae=32, seed=7)
    batch = hooked.prepare(images=[image for image, _ in data], prompts=[p for _, p in data])
    _, cache = hooked.run_with_cache(batch, names_filter=HOOK)
    acts = sae.encode(cache[HOOK])
    acts[batch.pad_mask] = 0
    busiest = (acts != 0).flatten(0, 1).sum(0).topk(2).indices.tolist()
    examples, values = top_examples(hooked, sae, data, busiest, k=4, batch_size=3)
    for f in busiest:
        column = acts[..., f]
        expected = column.flatten().topk(4).values
        assert [e.activation for e in examples[f]] == pytest.approx(expected.tolist(), rel=1e-5)
        assert values[f].numel() == int((column != 0).sum())
        for e in examples[f]:  # each example is where it says: its own sample, run alone (no padding)
            image, prompt = data[e.sample]
            alone = hooked.prepare(images=[image], prompts=[prompt])
            _, own = hooked.run_with_cache(alone, names_filter=HOOK)
            assert float(sae.encode(own[HOOK])[0, e.position, f]) == pytest.approx(e.activation, abs=1e-4)
            assert (
                bool(alone.image_mask[0, e.position]) == (e.cell is not None) == e.token.startswith("<image")
            )
    images, _ = top_examples(hooked, sae, data, list(range(32)), k=50)
    cells = [e for found in images.values() for e in found if e.cell is not None]
    assert cells and all(0 <= e.cell[0] < e.grid[0] and 0 <= e.cell[1] < e.grid[1] for e in cells)
    with pytest.raises(ValueError, match="out of range"):
        top_examples(hooked, sae, data, [32])


def test_decoder_words_are_the_lenses_of_the_direction(hooked):
    sae = random_sae(hooked.cfg.d_model, HOOK, d_sae=16, seed=2)
    words = decoder_words(hooked, sae, 3, k=3)
    direction = sae.W_dec[3].detach()
    tokenizer = hooked.processor.tokenizer
    expected = tokenizer.convert_ids_to_tokens(
        logit_lens(hooked, direction, apply_norm=False).topk(3).indices.tolist()
    )
    assert [w for w, _ in words["logit lens"]] == expected
    nearest = tokenizer.convert_ids_to_tokens(embedding_lens(hooked, direction).topk(3).indices.tolist())
    assert [w for w, _ in words["embedding lens"]] == nearest


def test_page_escapes_every_string(hooked, tmp_path):
    sae = random_sae(hooked.cfg.d_model, HOOK, d_sae=16, seed=1)
    sae.cfg.metadata.hook_name = HOOK
    data = [(random_image(0), "what <script>alert(1)</script> is it ?")]
    examples, _ = top_examples(hooked, sae, data, [0, 1, 2, 3], k=2)
    feature = next(f for f, found in examples.items() if found)
    html = feature_html(hooked, sae, data, feature, k=2)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<h2>Decoder direction</h2>" in html and "<svg" in html
    # the histogram's axes are labelled with the real extremes: the largest activation and bin count
    _, values = top_examples(hooked, sae, data, [feature], k=2)
    acts = values[feature]
    largest_bin = int(torch.histc(acts, bins=20, min=0.0, max=float(acts.max())).max())
    assert f">{float(acts.max()):.3g}</text>" in html and f">{largest_bin}</text>" in html
    assert ">activation</text>" in html and ">tokens</text>" in html
