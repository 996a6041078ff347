"""Steering vectors: the arithmetic, and application through the hook library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_mllm.concepts.steering import (
    concept_difference,
    evaluate_steering,
    mean_difference,
    normalize_answer,
    rank_steering_vectors,
    split_by,
    steering_hooks,
    vqa_accuracy,
)
from hooked_mllm.testing import random_image


def test_vectors_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    np.testing.assert_allclose(
        mean_difference(torch.tensor(a), torch.tensor(b)).numpy(), a.mean(0) - b.mean(0), rtol=1e-5
    )
    z = np.concatenate([a, b])
    labels = ["no"] * 5 + ["yes"] * 7
    np.testing.assert_allclose(split_by(z, labels, "no", "yes").numpy(), a.mean(0) - b.mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="No samples labelled"):
        split_by(z, labels, "maybe", "yes")
    u = rng.normal(size=(3, 4))
    np.testing.assert_allclose(concept_difference(u, 0, 2).numpy(), u[2] - u[0], rtol=1e-6)


def test_steering_through_hooks(llama_model):
    samples = [(random_image(i), "is there a red square ?", "yes") for i in range(3)]
    zero = torch.zeros(llama_model.cfg.d_model)
    report = evaluate_steering(llama_model, samples, samples[:1], zero, layer=1, alpha=3.0, target="no")
    assert [a[2] for a in report.answers] == [a[3] for a in report.answers]  # a zero vector changes nothing
    assert report.other_accuracy_before == report.other_accuracy_after
    v = torch.randn(llama_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    batch = llama_model.prepare(images=[samples[0][0]], prompts=[samples[0][1]])
    steered = llama_model.run_with_hooks(batch, fwd_hooks=steering_hooks(v, 1, 2.0, "prompt"))
    manual = llama_model.run_with_hooks(
        batch, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: a + 2.0 * v)]
    )
    torch.testing.assert_close(steered, manual)


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("The two dogs!", "2 dogs"),
        ("3.5", "3.5"),
        ("  A Red Car ", "red car"),
        ("none", "0"),
        ("dont", "don't"),
        ("left, right", "left right"),
    ],
)
def test_normalize_answer_like_vqa(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_soft_accuracy_by_hand():
    refs = ["2"] * 2 + ["3"] * 8
    # leave-one-out: dropping one of the two "2"s leaves 1 match (1/3), dropping a "3" leaves 2 (2/3)
    assert vqa_accuracy("two", refs) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("3", refs) == 1.0 and vqa_accuracy("4", refs) == 0.0
    assert vqa_accuracy("Yes.", "yes") == 1.0 and vqa_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("x", [])


def test_report_details_and_ranking(llama_model):
    targeted = [(random_image(4), "is there a red square ?", "yes")] * 3  # one answer, whatever it is
    others = [(random_image(10 + i), "how many objects", ["2", "two", "3"], "number") for i in range(2)]
    others += [(random_image(20), "what color is the circle ?", "red", "other")]
    zero = torch.zeros(llama_model.cfg.d_model)
    big = 50 * torch.randn(llama_model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    report = evaluate_steering(llama_model, targeted, others, zero, layer=1, alpha=1.0, target="no")
    assert report.changed_targeted == 0 and report.changed_other == 0 and report.side_effect == 0
    assert set(report.other_by_type) == {"number", "other"}
    assert sum(report.histogram_before.values()) == len(targeted) + len(others)
    assert report.histogram_before == report.histogram_after
    ranked = rank_steering_vectors(
        llama_model,
        {"zero": zero, "big": big},
        targeted,
        others,
        layer=1,
        alpha=1.0,
        target=report.answers[0][2],
    )
    # the unsteered answers are the target for the zero vector: target rate 1, no side effect: it ranks first
    assert [name for name, _ in ranked] == ["zero", "big"]
    assert ranked[0][1].target_rate == 1.0 and ranked[1][1].changed_targeted + ranked[1][1].changed_other > 0
    assert ranked[0][1].to_dict()["side_effect"] == 0
