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
    assert metrics.l0 <= 4  # top-4
    assert metrics.explained_variance > 0.5 and metrics.loss_recovered is not None
    recovered = (metrics.loss_zero - metrics.loss_spliced) / (metrics.loss_zero - metrics.loss_clean)
    assert metrics.loss_recovered == pytest.approx(recovered)
    assert metrics.loss_clean == pytest.approx(float(model(batch, return_type="loss")), rel=1e-4)
    # the feature shown is the colour feature chosen on the training scenes by ground truth (recomputed here
    # with sklearn from the scenes' own objects), graded on the held-out scenes' tokens read above
    counts = (feats > 0).sum(0)
    colour, auroc, other = _colour_choice(model, result, feats)
    assert (result.colour, result.auroc, result.other_auroc) == (
        colour,
        pytest.approx(auroc),
        pytest.approx(other),
    )
    assert result.auroc > 0.9 > result.other_auroc  # it marks one colour, not every object
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
    assert f"Feature {result.feature} marks {colour} objects" in page
    assert "most often active" not in page and "the feature that marks one colour best" in page
    assert f"AUROC {result.auroc:.3f} for {colour} on the held-out" in page
    assert f"It is active on {int(counts[result.feature])} of" in page


def _truth(scenes):
    """Each image token's colour ('' for background), from the patches each object's pixels touch."""
    truth = []
    for scene in scenes:
        labels = [""] * 36
        for obj in scene.objects:
            for patch in obj.patch_indices:
                labels[patch] = obj.color
        truth += labels
    return truth


def _colour_choice(model, result, held_out_features):
    """(colour, held-out AUROC, held-out best other colour's AUROC) of the chosen feature, by sklearn."""
    from sklearn.metrics import roc_auc_score

    from hooked_mllm.toy import World
    from hooked_mllm.toy.world import COLORS

    train = World(seed=4).sample(len(result.train))
    assert [s.image for s in result.train] == [s.image for s in train]
    batch = model.prepare(images=[s.image for s in train], prompts=[s.prompt for s in result.train])
    _, cache = model.run_with_cache(batch, names_filter=result.hook_name)
    feats = result.sae.encode(cache[result.hook_name][batch.image_mask].float()).numpy()
    truth = _truth(train)
    colours = list(COLORS)
    areas = [
        [roc_auc_score([t == c for t in truth], feats[:, f]) for f in range(feats.shape[1])] for c in colours
    ]
    best = max(
        (areas[i][f] - max(areas[j][f] for j in range(len(colours)) if j != i), i, f)
        for i in range(len(colours))
        for f in range(feats.shape[1])
    )
    _, i, f = best
    assert f == result.feature
    held = _truth(World(seed=5).sample(len(result.held_out)))
    scores = held_out_features[:, f].numpy()
    graded = [roc_auc_score([t == c for t in held], scores) for c in colours]
    return colours[i], graded[i], max(g for j, g in enumerate(graded) if j != i)


def test_demo_calls_the_section_when_sae_lens_is_importable(monkeypatch):
    import hooked_mllm.sae.demo as sae_demo

    calls = []
    monkeypatch.setattr(sae_demo, "sae_section", lambda *args, **kw: calls.append((args, kw)))
    report = Report("t")
    model = toy.load("toy-llava")
    _sae_section(model, 3, report)
    assert calls == [((model, 3, report), {"layer": 2})]
    assert SAE_NOTE not in report.render()


def test_make_demo_runs_end_to_end_with_its_sae_section(tmp_path):
    """``hooked-mllm demo`` (``make demo``'s command) in the SAE environment: every section, the SAE one
    with its colour feature rather than the note, and no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    from hooked_mllm.sae.demo import TITLE

    cli = Path(sys.executable).with_name("hooked-mllm")
    done = subprocess.run(
        [str(cli), "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"<h2>{TITLE}</h2>" in page and html_lib.escape(SAE_NOTE, quote=True) not in page
    assert re.search(r"Feature \d+ marks (red|green|blue|yellow|purple) objects", page)
    assert page.count("<h2>") == 9
