"""Tensor parallelism is refused up front, for the reason ``hooked_mllm/_runtime/loading.py`` gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers.distributed.tensor_parallel as hf_tp
from transformers import DistributedConfig

from hooked_mllm import HookedMLLM, toy
from hooked_mllm._runtime.loading import refuse_tensor_parallel


def test_from_pretrained_refuses_a_tensor_parallel_load_before_loading():
    with pytest.raises(
        ValueError, match=r"Tensor parallelism \(tp_plan=\) is not supported: nnsight 0\.8\.1"
    ):
        HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-llava"), tp_plan="auto")
    with pytest.raises(ValueError, match=r"\(tp_size=\)"):
        HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-llava"), tp_size=2)
    with pytest.raises(ValueError, match=r"\(distributed_config=\)"):
        refuse_tensor_parallel({"distributed_config": DistributedConfig(tp_size=2)})
    refuse_tensor_parallel({"tp_size": 1, "dtype": "float32"})  # nothing sharded: accepted


def test_the_reason_still_holds():
    """nnsight 0.8.1's tensor-parallel support imports this private transformers function. When it exists
    again, run ``torchrun --standalone --nproc_per_node 2 benchmarks/tensor_parallel_probe.py``: if the traces
    pass there, lift the refusal and test tensor parallelism instead."""
    from nnsight.modeling.tp import fragments

    assert "_get_parameter_plan" in Path(fragments.__file__).read_text()
    assert not hasattr(hf_tp, "_get_parameter_plan")
