"""Steering vectors: the arithmetic, and application through the hook library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_mllm.concepts.steering import (concept_difference, evaluate_steering, mean_difference, split_by,
                                           steering_hooks)
from hooked_mllm.testing import random_image


def test_vectors_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    np.testing.assert_allclose(mean_difference(torch.tensor(a), torch.tensor(b)).numpy(), a.mean(0) - b.mean(0),
                               rtol=1e-5)
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
    manual = llama_model.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: a + 2.0 * v)])
    torch.testing.assert_close(steered, manual)
