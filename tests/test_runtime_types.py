"""The suite runs with hooked_mllm's annotations and jaxtyping shapes checked at run time.

pyproject's pytest ``addopts`` pass ``--jaxtyping-packages=hooked_mllm,<beartype>``: jaxtyping's import hook
then checks every call into the package against its annotations. These tests call public functions with a
tensor of the wrong rank, and with two tensors whose shared ``d_model`` differs (which torch would broadcast
silently), and expect jaxtyping's error; they are skipped when the suite runs without the option.
"""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from hooked_mllm.lens import frozen_final_norm, top_tokens


@pytest.fixture(autouse=True)
def _checks_on(request):
    packages = request.config.getoption("jaxtyping_packages", None) or ""
    if "hooked_mllm" not in packages.split(","):
        pytest.skip("run-time type checks are off (pytest runs without --jaxtyping-packages=hooked_mllm,...)")


def test_wrong_rank_is_refused(llama_model):
    vocab = llama_model.cfg.d_vocab
    assert len(top_tokens(llama_model, torch.randn(vocab), k=3)) == 3  # one logit vector: accepted
    with pytest.raises(TypeCheckError, match="logits"):
        top_tokens(llama_model, torch.randn(2, vocab), k=3)  # a batch of them: the annotation says " d_vocab"


def test_mismatched_named_dimension_is_refused(llama_model):
    d = llama_model.cfg.d_model
    resid = torch.randn(2, d)
    assert frozen_final_norm(llama_model, resid, resid).shape == (2, d)
    with pytest.raises(TypeCheckError, match="d_model"):
        # without the check this broadcasts: the scale is a mean over the last axis of either width
        frozen_final_norm(llama_model, resid, torch.randn(2, d - 1))


def test_a_plain_hf_model_where_a_hooked_model_is_annotated_is_refused(llama_model):
    """``HookedMLLM`` annotations are checked too (the model class is imported at run time, not only for type
    checkers): a bare Hugging Face model fails at the call, naming the parameter."""
    from hooked_mllm.lens import logit_lens

    resid = torch.randn(2, llama_model.cfg.d_model)
    assert logit_lens(llama_model, resid).shape == (2, llama_model.cfg.d_vocab)
    with pytest.raises(TypeCheckError, match="model"):
        logit_lens(llama_model.hf_model, resid)
