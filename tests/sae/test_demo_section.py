"""The demo report's SAE section (``make demo`` with SAELens): its numbers are the trained SAE's own,
recomputed here from its ``encode``/``decode`` on the held-out scenes' image tokens, and the report shows
them."""

from __future__ import annotations

import html as html_lib
import re

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_mllm import toy  # noqa: E402
from hooked_mllm.demo import SAE_NOTE, _sae_section  # noqa: E402
from hooked_mllm.sae.demo import TITLE  # noqa: E402
from hooked_mllm.viz.report import Report  # noqa: E402


@pytest.fixture(scope="module")
def section():
    model = toy.load("toy-llava-deep")
    report = Report("t")
    from hooked_mllm.sae.demo import sae_section

    result = sae_section(model, 0, report)
    return model, result, report.render()


@torch.no_grad()
def test_section_numbers_are_the_saes_own(section):
    model, result, page = section
    samples = result.held_out
    batch = model.prepare(images=[s.image for s in samples], prompts=[s.prompt for s in samples])
    _, cache = model.run_with_cache(batch, names_filter=result.hook_name)
    x = cache[result.hook_name][batch.image_mask].float()  # every image token, read straight from the cache
    feats = result.sae.encode(x)
    recon = result.sae.decode(feats)
    metrics = result.metrics
    assert metrics.n_tokens == x.shape[0] == len(samples) * 36  # the toy's 6 x 6 image tokens
    assert metrics.l0 == pytest.approx(float((feats != 0).sum(-1).float().mean()), rel=1e-5)
    variance = float(((x - x.mean(0)) ** 2).sum())
    assert metrics.explained_variance == pytest.approx(
        1 - float(((x - recon) ** 2).sum()) / variance, rel=1e-4
    )
    assert metrics.dead_features == int(((feats != 0).sum(0) == 0).sum())
    assert metrics.l0 <= 8  # top-8
    assert metrics.explained_variance > 0.5 and metrics.loss_recovered is not None
    recovered = (metrics.loss_zero - metrics.loss_spliced) / (metrics.loss_zero - metrics.loss_clean)
    assert metrics.loss_recovered == pytest.approx(recovered)
    assert metrics.loss_clean == pytest.approx(float(model(batch, return_type="loss")), rel=1e-4)
    # the feature shown is the one active on the most image tokens; its examples are its top activations
    counts = (feats > 0).sum(0)
    assert int(counts[result.feature]) == int(counts.max())
    top = feats[:, result.feature].topk(len(result.examples)).values
    assert [e.activation for e in result.examples] == pytest.approx(top.tolist(), rel=1e-4)
    # the report shows these numbers, escaped, and one picture per example
    assert f"<h2>{TITLE}</h2>" in page and html_lib.escape(SAE_NOTE, quote=True) not in page
    row = re.search(r"<th>dead features</th></tr><tr>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells == [
        str(metrics.n_tokens),
        f"{metrics.l0:.3f}",
        f"{metrics.explained_variance:.3f}",
        f"{metrics.loss_recovered:.3f}",
        f"{metrics.loss_clean:.3f} / {metrics.loss_spliced:.3f} / {metrics.loss_zero:.3f}",
        f"{metrics.dead_features} of {result.sae.cfg.d_sae}",
    ]
    shown = re.search(r"<div class='sae-feature'>(.*?)</div>", page).group(1)
    assert shown.count("data:image/png;base64,") == len(result.examples) > 0
    assert ("Zeroing the image tokens does not raise" in page) == (metrics.loss_zero <= metrics.loss_clean)
    assert f"Feature {result.feature} is active on {int(counts[result.feature])} of" in page


def test_demo_calls_the_section_when_sae_lens_is_importable(monkeypatch):
    import hooked_mllm.sae.demo as sae_demo

    calls = []
    monkeypatch.setattr(sae_demo, "sae_section", lambda *args, **kw: calls.append((args, kw)))
    report = Report("t")
    model = toy.load("toy-llava")
    _sae_section(model, 3, report)
    assert calls == [((model, 3, report), {"layer": 2})]
    assert SAE_NOTE not in report.render()
